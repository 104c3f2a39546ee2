"""Attribution capture overhead: ModelFactory training with ``InRunInfluence`` attached (what ``royalty attribution
index build`` runs when it replays a training run) against the same training without it (issue 6: <= 15%).

Run:  .venv/bin/python benchmarks/attribution/capture.py            (5 rounds of 200 steps)
      .venv/bin/python benchmarks/attribution/capture.py --quick    (2 rounds of 30 steps; writes nothing)

Setup: benchmarks/train.py's (a node with 400 synthetic instruction records, a tiny Llama of ~1M parameters, LoRA
r=8 on q_proj/v_proj, batch 8, fp32). Each round trains twice in fresh subprocesses, once plainly and once with
the in-run accumulator and a factorised projection to ``--dim`` (1,024) numbers per example, alternating which goes
first; both must produce the byte-identical adapter (capture observes, it does not change training). Overhead = the
median over rounds of (time with capture / time without) − 1, ``fit`` timed whole in both. Results replace the
"attribution_capture" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from report import publish, run_worker  # noqa: E402
from train import RECORDS, prepare  # noqa: E402  (benchmarks/train.py: the same node, data and model)

DIM = 1024


def run(root: Path, name: str, capture: bool, dim: int) -> dict[str, Any]:
    import royalty
    from royalty.attribution.capture import LoraGradientCapture
    from royalty.attribution.inrun import InRunInfluence
    from royalty.attribution.projection import Projector
    from royalty.factory.config import load_config
    from royalty.factory.train import fit, setup

    cfg = load_config(json.loads((root / "config.json").read_text()))
    node = royalty.open_node(root / "home")
    try:
        run = setup(node, cfg, out_dir=root / name)
        inrun = None
        if capture:
            with LoraGradientCapture(run.model) as layout:
                inrun = InRunInfluence(Projector(layout.layout, dim, seed=1))
            run.callbacks.append(inrun)
        start = time.perf_counter()
        result = fit(run)
        seconds = time.perf_counter() - start
    finally:
        node.close()
    return {"seconds": seconds, "steps": result.steps, "tokens": result.tokens,
            "rows": 0 if inrun is None else int(inrun.rows.shape[0]),
            "dim": 0 if inrun is None else int(inrun.rows.shape[1])}


def measure(kind: str, root: Path, name: str, dim: int) -> dict[str, Any]:
    return run_worker(__file__, "--worker", kind, "--root", str(root), "--name", name, "--dim", str(dim))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 30 steps; writes nothing")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; quick 2)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 200; quick 30)")
    parser.add_argument("--dim", type=int, default=DIM, help="projected row length")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--no-write", action="store_true", help="print results only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--worker", choices=("plain", "capture"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run(args.root, args.name, args.worker == "capture", args.dim)
        result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (30 if args.quick else 200)

    results: dict[str, list[dict[str, Any]]] = {"plain": [], "capture": []}
    with tempfile.TemporaryDirectory(prefix="royalty-bench-capture-") as tmp:
        root = Path(tmp)
        prepare(root, steps, args.threads)
        for i in range(rounds):
            for kind in (("plain", "capture") if i % 2 == 0 else ("capture", "plain")):
                r = measure(kind, root, f"{kind}-{i}", args.dim)
                assert r["steps"] == steps, r
                results[kind].append(r)
                print(f"round {i + 1}/{rounds} {kind:>7}: {r['seconds']:.2f} s, peak RSS {r['maxrss_mib']:,.0f} MiB",
                      flush=True)
        same = ((root / "plain-0" / "adapter" / "adapter_model.safetensors").read_bytes()
                == (root / "capture-0" / "adapter" / "adapter_model.safetensors").read_bytes())
    ratios = [c["seconds"] / p["seconds"] for p, c in zip(results["plain"], results["capture"], strict=True)]
    overhead = statistics.median(ratios) - 1.0
    plain_s = statistics.median(r["seconds"] for r in results["plain"])
    capture_s = statistics.median(r["seconds"] for r in results["capture"])
    rss = {k: max(r["maxrss_mib"] for r in v) for k, v in results.items()}
    dim = results["capture"][0]["dim"]
    print(f"overhead {overhead:+.1%} (median of {', '.join(f'{x:.3f}' for x in ratios)}); adapters identical: {same}")
    rows = [
        ("training time with in-run capture (median)", f"{capture_s:.2f} s", f"{plain_s:.2f} s without capture",
         f"{overhead:+.1%}", "<= +15%", overhead <= 0.15 and same),
        ("peak memory (RSS of the process)", f"{rss['capture']:,.0f} MiB", f"{rss['plain']:,.0f} MiB",
         f"{rss['capture'] / rss['plain']:.2f}x", "reported", True),
    ]
    notes = (f"{rounds} rounds x {steps} optimizer steps, {RECORDS} examples, rows projected to {dim} numbers "
             f"(factorised), {args.threads} torch threads, each run in a fresh process, order alternating. "
             + ("Both runs trained the byte-identical adapter." if same else "The adapters DIFFER: capture changed "
                "training."))
    return publish("attribution_capture", "Attribution: in-run capture overhead",
                   "python benchmarks/attribution/capture.py", rows, notes, write=not (args.no_write or args.quick),
                   setup="Setup: see the docstring of benchmarks/attribution/capture.py.")


if __name__ == "__main__":
    sys.exit(main())
