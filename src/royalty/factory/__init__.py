"""ModelFactory: datanet versions → LoRA adapters, reproducibly, with lineage (``node.factory``).

The main flow, in the order it runs (``Factory.train``)::

    config.load_config      TrainConfig from YAML + key=value overrides, every problem reported at once
    train.setup             output-dir guard, base model (basemodel.load_base), data (data.build_data), LoRA
    train.fit               the loop: checkpoints, resume, Ctrl-C, metrics.jsonl, order.jsonl, callbacks
    evaluate.evaluate       held-out loss/perplexity, base vs adapter, best and worst examples
    adapters.write_artifact model card README.md + royalty.json manifest (hashes of every file)
    node.adapters.register  copied into the node, journaled, registration fee charged

Nothing here imports torch at module level: a node opens and non-ML commands run without it.
"""

from .service import Factory, TrainResult

__all__ = ["Factory", "TrainResult"]
