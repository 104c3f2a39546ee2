"""``node.factory``: one call from a TrainConfig to a registered Adapter.

``Factory.train`` runs setup → fit → evaluate → write_artifact → register. The CLI (``royalty train``), the
jobs worker (``royalty jobs submit train``) and later the web app all call it, so a run started anywhere
produces the same files, manifest and journal events.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InsufficientFunds, InvalidInput
from ..ledger.amounts import format_amount
from .adapters import file_sha256

if TYPE_CHECKING:
    from ..node import Node
    from .adapters import Adapter
    from .callbacks import TrainCallback
    from .config import TrainConfig
    from .train import RunResult

Events = Callable[[str, dict[str, Any]], None]


@dataclass
class TrainResult:
    """What ``Factory.train`` did. ``adapter`` is None when the run was interrupted (resume it later).
    ``model`` (the PEFT model, adapter active) and ``tokenizer`` stay in memory for a caller that wants to use the
    result at once (the demo asks it a question); they are not part of ``to_dict``."""

    run: RunResult
    evaluation: dict[str, Any] | None
    adapter: Adapter | None
    model: Any = None
    tokenizer: Any = None
    attribution_index: dict[str, Any] | None = None  # the build record of an index recorded during the run

    @property
    def interrupted(self) -> bool:
        return self.run.interrupted

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run.out_dir),
            "interrupted": self.run.interrupted,
            "steps": self.run.steps,
            "tokens": self.run.tokens,
            "seconds": round(self.run.seconds, 3),
            "train_loss": self.run.train_loss,
            "evaluation": self.evaluation,
            "adapter": None if self.adapter is None else self.adapter.to_dict(),
            **({} if self.attribution_index is None else {"attribution_index": {
                **self.attribution_index,  # without the projection seed: the index's secret
                "params": {k: v for k, v in self.attribution_index["params"].items() if k != "seed"}}}),
        }


def check_attribution_capture(attribution_dim: int | None, resume: bool) -> None:
    """Refuse (InvalidInput) recording an attribution index during a resumed run: the index is recorded from a
    run's first step. Checked where a run is asked for (train, job submission), before any work."""
    if attribution_dim is not None and resume:
        raise InvalidInput("an attribution index is recorded from a run's first step and cannot follow a resumed "
                           "run: resume without it, then build the index by replay (royalty attribution index build "
                           "ADAPTER)", field="attribution_index")


class Factory:
    """ModelFactory on one node. Heavy libraries are imported by the methods that need them."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def out_dir(self, cfg: TrainConfig, parent: Adapter | None = None) -> Path:
        """Where a run writes: ``output.dir`` when given, else ``<home>/runs/<output.name>/<key>`` where the key
        hashes the config and the parent adapter. So the same config (and parent) finds its run again for
        ``--resume``, and a changed config or a "continue" run gets a new directory instead of a refusal; an
        explicit ``output.dir`` written by a different config is refused by ``train.setup``."""
        if cfg.output.dir is not None:
            return Path(cfg.output.dir)
        key = hashlib.sha256(f"{cfg.config_hash()}:{parent.manifest_sha256 if parent else ''}".encode()).hexdigest()
        return self.node.home / "runs" / cfg.output.name / key[:12]

    def preview(self, cfg: TrainConfig, n: int = 3) -> str:
        """The token-by-token view of the first ``n`` training examples, trained tokens marked."""
        from .basemodel import load_tokenizer
        from .data import build_data, preview

        tokenizer = load_tokenizer(cfg.model.base)
        return preview(build_data(self.node, cfg, tokenizer), tokenizer, n)

    def train(
        self,
        cfg: TrainConfig,
        *,
        actor: str,
        resume: bool = False,
        parent: str | None = None,
        events: Events | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: bool = False,
        callbacks: Sequence[TrainCallback] = (),
        attribution_dim: int | None = None,
    ) -> TrainResult:
        """Train an adapter for ``actor`` (who owns it and pays its registration fee) and register it.

        ``parent`` (an adapter ref, ``name`` or ``name@N``) starts from that adapter's weights as a new run whose
        lineage points at it ("continue for more epochs"); ``resume`` continues this config's interrupted run.
        The owner's balance is checked before any training, so a run is not wasted on a fee they cannot pay.
        ``attribution_dim``: also record the adapter's attribution index during the run, rows of that size
        (``Attribution.capture``; the result's ``attribution_index``); refused with ``resume``.
        """
        from .adapters import write_artifact
        from .evaluate import evaluate
        from .train import fit, setup

        node = self.node
        owner = node.accounts.get(actor)
        self.check_registration_fee(owner.id)
        parent_adapter = node.adapters.get(parent) if parent is not None else None
        check_attribution_capture(attribution_dim, resume)
        capture = None
        if attribution_dim is not None:
            capture = node.attribution.capture(dim=attribution_dim)
            callbacks = [*callbacks, capture]
        run = setup(
            node, cfg, out_dir=self.out_dir(cfg, parent_adapter), resume=resume,
            init_adapter=None if parent_adapter is None else parent_adapter.path,
            callbacks=callbacks, events=events, should_stop=should_stop, progress=progress,
        )
        if parent_adapter is not None and parent_adapter.manifest["base_model"]["weights_sha256"] != run.base.weights_sha256:
            raise InvalidInput(
                f"adapter {parent_adapter.name}@{parent_adapter.version} was trained on a different base model; "
                "continue from an adapter of the same base, or train a new one without --continue-from",
                field="parent",
            )
        result = fit(run)
        if result.interrupted:
            return TrainResult(result, None, None, run.model, run.tokenizer)
        evaluation = evaluate(run.model, run.tokenizer, run.data.eval) if run.data.eval else None
        if events is not None and evaluation is not None:
            events("eval", evaluation)
        manifest = self._manifest(cfg, run, result, evaluation, owner.id, parent_adapter)
        write_artifact(result.adapter_dir, manifest)
        adapter = node.adapters.register(result.adapter_dir, owner=owner.id, actor=owner.id)
        if events is not None:
            events("registered", {"adapter": adapter.name, "version": adapter.version, "id": adapter.id})
        index = None
        if capture is not None:
            index = node.attribution.index_from_capture(adapter.ref, capture)
            if events is not None:
                events("attribution_index", {"rows": index["rows"], "dim": index["dim"]})
        return TrainResult(result, evaluation, adapter, run.model, run.tokenizer, index)

    def check_registration_fee(self, owner_id: str) -> None:
        """Raise InsufficientFunds unless ``owner_id`` can pay the adapter registration fee now. Called before
        training starts (and when a training job is queued), so hours of training are not lost to a fee."""
        fee = self.node.params.current().adapter_registration_fee
        available = self.node.tokens.balance(owner_id).available
        if available < fee:
            raise InsufficientFunds(
                f"registering the adapter costs {format_amount(fee)} OPEN and the owner has {format_amount(available)} "
                "available; fund the account first (royalty ledger transfer / faucet)",
                result="exceeds_credits", field="actor",
            )

    def _manifest(self, cfg: TrainConfig, run: Any, result: RunResult, evaluation: dict[str, Any] | None,
                  owner_id: str, parent: Adapter | None) -> dict[str, Any]:
        import peft
        import torch
        import transformers

        from .. import __version__

        return {
            "format": "royalty.adapter/1",
            "name": cfg.output.name,
            "owner": owner_id,
            "base_model": run.base.to_dict(),
            "datanets": run.data.sources,
            "config": cfg.model_dump(mode="json"),
            "config_sha256": cfg.config_hash(),
            "metrics": {
                "steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 3),
                "train_loss": result.train_loss, "eval": evaluation,
            },
            "price": {"input_per_1k": cfg.price.input_per_1k, "output_per_1k": cfg.price.output_per_1k},
            "lineage": {
                "run_dir": str(result.out_dir),
                "parent": None if parent is None else {
                    "adapter": f"{parent.name}@{parent.version}", "id": parent.id,
                    "manifest_sha256": parent.manifest_sha256,
                },
                "order_sha256": file_sha256(result.out_dir / "order.jsonl"),
                "examples_sha256": file_sha256(result.out_dir / "examples.jsonl"),
            },
            "versions": {
                "royalty": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "peft": peft.__version__,
            },
            "created_ms": self.node.clock(),
        }

