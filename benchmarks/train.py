"""Training benchmark: tokens/s of ModelFactory's loop (``factory.train.fit``) against a plain transformers + peft
loop on the same model, data and settings, and the peak memory of each.

Run:  .venv/bin/python benchmarks/train.py            (5 rounds of 200 steps; ~5 minutes on 2 cores)
      .venv/bin/python benchmarks/train.py --quick    (2 rounds of 30 steps; a quick look, writes nothing)

Setup (once, in a temporary directory): a node with a synthetic instruction datanet (400 question/answer records
of 40-90 tokens, published as version 1) and a tiny Llama built with ``init_tiny`` (TinySpec: vocab 4096, hidden
128, 4 layers, 4 heads; ~1M parameters), random weights. Settings for both loops: LoRA r=8, alpha=16, dropout 0.05
on q_proj/v_proj; AdamW lr 2e-4, weight decay 0; linear schedule, no warmup; batch 8, no accumulation; gradient
clipping at 1.0; fp32; seed 42; the same thread count; the run stops after ``--steps`` optimizer steps.

- royalty: ``setup`` (not timed: loading, building the data), then ``fit`` timed whole: the optimizer, the run
  directory, order.jsonl + metrics.jsonl per step, the final checkpoint (adapter, optimizer, scheduler, RNG) and
  the adapter's save_pretrained.
- baseline: what a careful user writes with transformers + peft: AutoModelForCausalLM.from_pretrained,
  LoraConfig + get_peft_model after torch.manual_seed, the examples royalty built (input_ids + label masks) in
  the same order (``data.epoch_order``), both read from a file, so every batch is the same; right padding per
  batch, ``model(...).loss``, backward, clip, AdamW, ``get_scheduler``, ``loss.item()`` per step for logging, and
  save_pretrained at the end. Timed from creating the optimizer to the saved adapter. Both loops must train the
  byte-identical adapter (checked on round 1's pair), which shows they did the same work.

Each round runs both in fresh subprocesses, one after the other (the order alternates between rounds), so each
has its own peak RSS (``resource.getrusage``: model, data and all of torch) and neither warms the other's caches.
Throughput = non-padding tokens processed / timed seconds; the ratio is the median over rounds of royalty /
baseline. Target (issue 5): >= 0.95x. Results replace the "train" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish, run_worker  # noqa: E402  (benchmarks/ is on sys.path when run)

RECORDS = 400
SPEC = {"vocab_size": 4096, "hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 344}
SETTINGS = {"lr": 2e-4, "batch_size": 8, "r": 8, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "v_proj"],
            "seed": 42, "max_grad_norm": 1.0}


def make_records(count: int, seed: int = 3) -> list[dict[str, str]]:
    """Question/answer pairs of random words: varied lengths, so padding is as in real data."""
    rng = random.Random(seed)
    words = ("water fire stone river cloud bread salt iron glass paper garden winter summer bridge tower light "
             "shadow market harbour forest mountain valley letter number colour music signal engine doctor").split()
    records = []
    for i in range(count):
        question = f"Question {i}: what links " + " and ".join(rng.choices(words, k=rng.randint(2, 6))) + "?"
        answer = " ".join(rng.choices(words, k=rng.randint(20, 60))) + "."
        records.append({"prompt": question, "response": answer})
    return records


def config(model_dir: Path, steps: int, threads: int) -> dict[str, Any]:
    s = SETTINGS
    return {
        "model": {"base": str(model_dir)},
        "data": {"datanets": ["bench@1"], "eval_fraction": 0.0, "max_seq_len": 256},
        "lora": {"r": s["r"], "alpha": s["alpha"], "dropout": s["dropout"], "target_modules": s["targets"]},
        "train": {"epochs": 100, "max_steps": steps, "learning_rate": s["lr"], "batch_size": s["batch_size"],
                  "grad_accum": 1, "max_grad_norm": s["max_grad_norm"], "seed": s["seed"], "threads": threads,
                  "scheduler": "linear", "warmup_ratio": 0.0},
        "output": {"name": "bench"},
    }


def prepare(root: Path, steps: int, threads: int) -> None:
    """The node, datanet and base model the rounds share, plus the examples file the baseline reads."""
    import royalty
    from royalty.factory.basemodel import TinySpec, init_tiny, load_tokenizer
    from royalty.factory.config import load_config
    from royalty.factory.data import build_data, epoch_order

    node, _ = royalty.init_node(root / "home", params={"publish_fee_base": 0, "publish_fee_per_1k": 0})
    try:
        owner = node.accounts.create("bench", with_key=False)[0].id
        node.datanets.create("bench", title="bench", kind="instruction", licenses=["CC-BY-4.0"], policy="open",
                             owner=owner)
        node.datanets.contribute_records("bench", make_records(RECORDS), contributor=owner)
        node.datanets.publish("bench", actor=owner)
        init_tiny(root / "model", spec=TinySpec(**SPEC), seed=0)
        cfg = load_config(config(root / "model", steps, threads))
        split = build_data(node, cfg, load_tokenizer(str(root / "model")))
    finally:
        node.close()
    examples = [{"input_ids": e.input_ids, "labels": e.labels} for e in split.train]
    epochs = -(-steps * cfg.train.batch_size // len(examples))
    order = [epoch_order(split, cfg, epoch) for epoch in range(epochs)]
    (root / "examples.json").write_text(json.dumps({"examples": examples, "order": order}))
    (root / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))


# ----------------------------------------------------------------------------------------------------------------
# the two loops (each in its own subprocess)
# ----------------------------------------------------------------------------------------------------------------


def run_royalty(root: Path, name: str) -> dict[str, Any]:
    import royalty
    from royalty.factory.config import load_config
    from royalty.factory.train import fit, setup

    cfg = load_config(json.loads((root / "config.json").read_text()))
    node = royalty.open_node(root / "home")
    try:
        run = setup(node, cfg, out_dir=root / name)
        start = time.perf_counter()
        result = fit(run)
        seconds = time.perf_counter() - start
    finally:
        node.close()
    return {"tokens": result.tokens, "seconds": seconds, "steps": result.steps}


def run_plain(root: Path, name: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    cfg = json.loads((root / "config.json").read_text())
    s, steps = SETTINGS, cfg["train"]["max_steps"]
    torch.set_num_threads(cfg["train"]["threads"])
    tokenizer = AutoTokenizer.from_pretrained(str(root / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(root / "model"), dtype=torch.float32)
    torch.manual_seed(s["seed"])
    model = get_peft_model(model, LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                                             target_modules=s["targets"], task_type="CAUSAL_LM"))
    data = json.loads((root / "examples.json").read_text())
    examples, epochs = data["examples"], data["order"]
    pad = tokenizer.pad_token_id

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    start = time.perf_counter()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s["lr"], weight_decay=0.0)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=steps)
    step, tokens = 0, 0
    for order in epochs:
        for at in range(0, len(order), s["batch_size"]):
            batch = collate([examples[i] for i in order[at : at + s["batch_size"]]])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()  # what every loop logs
            tokens += int(batch["attention_mask"].sum())
            step += 1
            if step == steps:
                break
    model.save_pretrained(str(root / name))
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "steps": step}


def worker(kind: str, root: Path, name: str) -> None:
    result = (run_royalty if kind == "royalty" else run_plain)(root, name)
    result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps(result))


def measure(kind: str, root: Path, name: str) -> dict[str, Any]:
    return run_worker(__file__, "--worker", kind, "--root", str(root), "--name", name)


# ----------------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 30 steps; writes nothing")
    parser.add_argument("--rounds", type=int, help="rounds of both loops (default 5; quick 2)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 200; quick 30)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--no-write", action="store_true", help="print results only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--worker", choices=("royalty", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.root, args.name)
        return 0
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (30 if args.quick else 200)
    write = not (args.no_write or args.quick)

    results: dict[str, list[dict[str, Any]]] = {"royalty": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="royalty-bench-train-") as tmp:
        root = Path(tmp)
        prepare(root, steps, args.threads)
        for i in range(rounds):
            kinds = ("royalty", "plain") if i % 2 == 0 else ("plain", "royalty")
            for kind in kinds:
                r = measure(kind, root, f"{kind}-{i}")
                assert r["steps"] == steps, r
                results[kind].append(r)
                print(f"round {i + 1}/{rounds} {kind:>7}: {r['tokens'] / r['seconds']:,.0f} tokens/s "
                      f"({r['tokens']:,} tokens in {r['seconds']:.2f} s), peak RSS {r['maxrss_mib']:,.0f} MiB",
                      flush=True)
        # Same model, data, order, seed and settings: the two loops must have trained the same adapter.
        same = ((root / "royalty-0" / "adapter" / "adapter_model.safetensors").read_bytes()
                == (root / "plain-0" / "adapter_model.safetensors").read_bytes())
        print(f"adapters identical: {same}", flush=True)

    rate = {k: [r["tokens"] / r["seconds"] for r in v] for k, v in results.items()}
    ratio = statistics.median(a / b for a, b in zip(rate["royalty"], rate["plain"], strict=True))
    ours, plain = statistics.median(rate["royalty"]), statistics.median(rate["plain"])
    rss = {k: max(r["maxrss_mib"] for r in v) for k, v in results.items()}
    rows = [
        ("training throughput, tokens/s (median)", f"{ours:,.0f}", f"{plain:,.0f} (plain transformers + peft loop)",
         f"{ratio:.2f}x", ">= 0.95x", ratio >= 0.95),
        ("peak memory (RSS of the process)", f"{rss['royalty']:,.0f} MiB", f"{rss['plain']:,.0f} MiB",
         f"{rss['royalty'] / rss['plain']:.2f}x", "reported", True),
    ]
    notes = (
        f"{rounds} rounds x {steps} optimizer steps each, alternating which loop runs first, each run in a fresh "
        f"process with {args.threads} torch threads. Model: tiny Llama (vocab {SPEC['vocab_size']}, hidden "
        f"{SPEC['hidden_size']}, {SPEC['num_layers']} layers), LoRA r={SETTINGS['r']} on q_proj/v_proj, batch "
        f"{SETTINGS['batch_size']}, fp32, CPU; {RECORDS} synthetic instruction records. The ratio is the median of "
        "per-round ratios; royalty's time includes its per-step order/metrics lines and the final checkpoint "
        "(adapter, optimizer, scheduler, RNG state) besides the adapter both save. Peak RSS includes torch itself. "
        + ("Both loops produced the byte-identical adapter, so they did the same work."
           if same else "The two adapters DIFFER: the loops did not do the same work.")
    )
    return publish("train", "ModelFactory: training throughput", "python benchmarks/train.py", rows, notes,
                   write=write, setup="Setup: see the docstring of benchmarks/train.py.")


if __name__ == "__main__":
    sys.exit(main())
