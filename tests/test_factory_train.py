"""The training loop (factory/train.py), callbacks and evaluation on a tiny local Llama, CPU only.

One node with a small instruction datanet serves the whole module (training only reads it); every test trains into
its own output directory. Runs use one thread, so resumed and uninterrupted runs are comparable bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FREE_PUBLISHING
from factory_fixtures import one_torch_thread, tiny_model_dir  # noqa: F401

import royalty
from royalty.errors import Conflict, InvalidInput, NotFound
from royalty.factory.callbacks import Batch, TrainCallback
from royalty.factory.config import load_config
from royalty.factory.data import Example
from royalty.factory.evaluate import evaluate
from royalty.factory.train import RunResult, fit, latest_checkpoint, setup

FACTS = [
    ("What colour is the sky?", "Blue."),
    ("What do bees make?", "Honey."),
    ("How many legs has a spider?", "Eight."),
    ("What is frozen water?", "Ice."),
    ("Which planet is red?", "Mars."),
    ("What do cows drink?", "Water."),
    ("What is two plus two?", "Four."),
    ("Where do fish live?", "In water."),
    ("What gives us light by day?", "The sun."),
    ("What is the opposite of hot?", "Cold."),
    ("What animal barks?", "A dog."),
    ("What colour is grass?", "Green."),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # torch on one thread in every test here


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    node, _ = royalty.init_node(tmp_path_factory.mktemp("train") / "home", params=FREE_PUBLISHING)
    alice = node.accounts.create("alice", with_key=False)[0].id
    node.datanets.create("facts", title="Facts", kind="instruction", licenses=["CC-BY-4.0"], policy="open", owner=alice)
    records = [{"prompt": p, "response": r} for p, r in FACTS]
    report = node.datanets.contribute_records("facts", records, contributor=alice)
    assert len(report.accepted) == len(FACTS)
    node.datanets.publish("facts", actor=alice)
    yield node
    node.close()


def make_cfg(model_dir: Path, out: Path, **sections: dict[str, Any]) -> Any:
    """A small config: 12 examples, batch 2 x accumulation 2 (3 steps an epoch), 2 epochs, dropout on."""
    raw: dict[str, Any] = {
        "model": {"base": str(model_dir)},
        "data": {"datanets": ["facts@1"], "eval_fraction": 0.0, "max_seq_len": 64},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 2, "batch_size": 2, "grad_accum": 2, "learning_rate": 1e-2, "seed": 7, "threads": 1},
        "output": {"name": "facts-lora", "dir": str(out)},
    }
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return load_config(raw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stop_at(*steps: int) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    """An events recorder and a should_stop that says yes right after each of ``steps`` (once each)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    pending = list(steps)

    def should_stop() -> bool:
        last = [d["step"] for t, d in seen if t == "step"][-1]
        if pending and last == pending[0]:
            pending.pop(0)
            return True
        return False

    return seen, should_stop


# ----------------------------------------------------------------------------------------------------------------
# the loop, resume, interruption
# ----------------------------------------------------------------------------------------------------------------


def test_resume_after_two_interruptions_is_bit_identical(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    full_cfg = make_cfg(tiny_model_dir, tmp_path / "full")
    events: list[tuple[str, dict[str, Any]]] = []
    full = fit(setup(node, full_cfg, events=lambda t, d: events.append((t, d))))
    assert not full.interrupted and full.steps == full.total_steps == 6
    assert full.adapter_dir == tmp_path / "full" / "adapter"

    cfg = make_cfg(tiny_model_dir, tmp_path / "parts")
    seen, should_stop = stop_at(2, 4)
    first = fit(setup(node, cfg, events=lambda t, d: seen.append((t, d)), should_stop=should_stop))
    assert first.interrupted and first.steps == 2 and first.adapter_dir is None
    assert first.checkpoint == tmp_path / "parts" / "checkpoints" / "step-000002"
    assert json.loads((tmp_path / "parts" / "run.json").read_text())["status"] == "interrupted"
    assert seen[-1] == ("interrupted", {"step": 2, "total_steps": 6, "checkpoint": str(first.checkpoint)})

    second = fit(setup(node, cfg, resume=True, events=lambda t, d: seen.append((t, d)), should_stop=should_stop))
    assert second.interrupted and second.steps == 4
    third = fit(setup(node, cfg, resume=True, events=lambda t, d: seen.append((t, d)), should_stop=should_stop))
    assert not third.interrupted and third.steps == 6

    # the adapter, every logged loss and the example order are those of the uninterrupted run, bit for bit
    assert sha(third.adapter_dir / "adapter_model.safetensors") == sha(full.adapter_dir / "adapter_model.safetensors")
    strip = [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s", "eta_s")}
             for r in jsonl(tmp_path / "parts" / "metrics.jsonl")]
    assert strip == [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s", "eta_s")}
                     for r in jsonl(tmp_path / "full" / "metrics.jsonl")]
    assert (tmp_path / "parts" / "order.jsonl").read_bytes() == (tmp_path / "full" / "order.jsonl").read_bytes()
    assert third.train_loss == full.train_loss and third.tokens == full.tokens
    run_json = json.loads((tmp_path / "parts" / "run.json").read_text())
    assert run_json["status"] == "finished" and run_json["step"] == 6 and run_json["threads"] == 1
    assert [p.name for p in sorted((tmp_path / "parts" / "checkpoints").iterdir())] == [
        "step-000002", "step-000004", "step-000006"]

    steps = [d for t, d in events if t == "step"]
    assert [d["step"] for d in steps] == [1, 2, 3, 4, 5, 6]
    assert set(steps[0]) >= {"step", "total_steps", "epoch", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s",
                             "eta_s"}
    assert [d["epoch"] for d in steps] == [0, 0, 0, 1, 1, 1] and steps[-1]["eta_s"] == 0
    assert [t for t, _ in events][-2:] == ["checkpoint", "done"]


def test_dora_and_rslora_resume_bit_identically(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    lora = {"use_dora": True, "use_rslora": True}
    full = fit(setup(node, make_cfg(tiny_model_dir, tmp_path / "full", lora=lora, train={"epochs": 1})))
    cfg = make_cfg(tiny_model_dir, tmp_path / "parts", lora=lora, train={"epochs": 1})
    seen, should_stop = stop_at(1)
    assert fit(setup(node, cfg, events=lambda t, d: seen.append((t, d)), should_stop=should_stop)).interrupted
    resumed = fit(setup(node, cfg, resume=True))
    weights = (resumed.adapter_dir / "adapter_model.safetensors").read_bytes()
    assert b"lora_magnitude_vector" in weights
    assert weights == (full.adapter_dir / "adapter_model.safetensors").read_bytes()


def test_run_files_order_and_metrics(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tmp_path / "run", data={"eval_fraction": 0.25}, train={"save_every": 2})
    run = setup(node, cfg)
    result = fit(run)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"run.yaml", "run.json", "examples.jsonl", "order.jsonl",
                                               "metrics.jsonl", "checkpoints", "adapter"}
    assert not [p for p in out.rglob(".tmp*")]
    assert load_config(out / "run.yaml").config_hash() == cfg.config_hash()
    examples = jsonl(out / "examples.jsonl")
    assert {e["split"] for e in examples} == {"train", "eval"} and len(examples) == len(FACTS)
    train_ids = sorted(e.index for e in run.data.train)
    order = jsonl(out / "order.jsonl")
    assert len(order) == result.steps == len(jsonl(out / "metrics.jsonl"))
    for epoch in (0, 1):  # every training example exactly once per epoch (weight 1)
        assert sorted(i for r in order if r["epoch"] == epoch for i in r["examples"]) == train_ids
    assert all(len(r["examples"]) <= 4 for r in order)
    # checkpoints every 2 steps plus the last; each loadable by plain peft files
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names[-1] == f"step-{result.steps:06d}" and "step-000002" in names
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and {p.name for p in ckpt.iterdir()} >= {
        "adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.json",
        "trainer_state.json"}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == result.steps and state["epoch"] == 1 and state["config_hash"] == cfg.config_hash()
    assert sha(ckpt / "adapter_model.safetensors") == sha(out / "adapter" / "adapter_model.safetensors")


class Crash(TrainCallback):
    """Fails the run (as a killed process would leave it) when step ``at`` + 1 starts."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_batch_begin(self, ctx: Any, batch: Batch) -> None:
        if ctx.step == self.at:
            raise RuntimeError("crash")


def test_resume_after_a_crash(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    full = fit(setup(node, make_cfg(tiny_model_dir, tmp_path / "full", train={"save_every": 2})))

    # a crash after the step-2 checkpoint and step 3's log lines: resume re-runs step 3 and logs it once
    cfg = make_cfg(tiny_model_dir, tmp_path / "crash", train={"save_every": 2})
    with pytest.raises(RuntimeError, match="crash"):
        fit(setup(node, cfg, callbacks=[Crash(3)]))
    assert json.loads((tmp_path / "crash" / "run.json").read_text())["status"] == "running"
    with (tmp_path / "crash" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "tot')  # a line cut short by the crash
    with pytest.raises(Conflict, match="unfinished run"):
        setup(node, cfg)
    resumed = fit(setup(node, cfg, resume=True))
    assert sha(resumed.adapter_dir / "adapter_model.safetensors") == sha(full.adapter_dir / "adapter_model.safetensors")
    assert [r["step"] for r in jsonl(tmp_path / "crash" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "crash" / "order.jsonl").read_bytes() == (tmp_path / "full" / "order.jsonl").read_bytes()

    # a crash before any checkpoint: resume starts over from step 0
    cfg = make_cfg(tiny_model_dir, tmp_path / "early", train={"save_every": 2})
    with pytest.raises(RuntimeError, match="crash"):
        fit(setup(node, cfg, callbacks=[Crash(1)]))
    assert latest_checkpoint(tmp_path / "early") is None
    resumed = fit(setup(node, cfg, resume=True))
    assert sha(resumed.adapter_dir / "adapter_model.safetensors") == sha(full.adapter_dir / "adapter_model.safetensors")

    # a crash right after the final checkpoint: resume only writes the adapter
    class CrashAtEnd(TrainCallback):
        def on_checkpoint(self, ctx: Any, path: Path) -> None:
            if ctx.step == ctx.total_steps:
                raise RuntimeError("crash")

    cfg = make_cfg(tiny_model_dir, tmp_path / "late", train={"save_every": 2})
    with pytest.raises(RuntimeError, match="crash"):
        fit(setup(node, cfg, callbacks=[CrashAtEnd()]))
    assert not (tmp_path / "late" / "adapter").exists()
    calls: list[str] = []

    class Record(TrainCallback):
        def on_batch_begin(self, ctx: Any, batch: Batch) -> None:
            calls.append("batch")

        def on_checkpoint(self, ctx: Any, path: Path) -> None:
            calls.append("checkpoint")

    resumed = fit(setup(node, cfg, resume=True, callbacks=[Record()]))
    assert resumed.steps == 6 and calls == []
    assert sha(resumed.adapter_dir / "adapter_model.safetensors") == sha(full.adapter_dir / "adapter_model.safetensors")


def test_sigint_saves_a_checkpoint_and_restores_the_handler(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    class CtrlC(TrainCallback):
        def on_step_end(self, ctx: Any) -> None:
            if ctx.step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    cfg = make_cfg(tiny_model_dir, tmp_path / "run")
    result = fit(setup(node, cfg, callbacks=[CtrlC()]))
    assert result.interrupted and result.steps == 1
    assert signal.getsignal(signal.SIGINT) is before
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "step-000001"
    done = fit(setup(node, cfg, resume=True))
    assert not done.interrupted and done.steps == 6


# ----------------------------------------------------------------------------------------------------------------
# output-directory guards
# ----------------------------------------------------------------------------------------------------------------


def test_output_dir_guards(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = make_cfg(tiny_model_dir, out, train={"epochs": 1})
    with pytest.raises(NotFound, match="nothing to resume.*without --resume"):
        setup(node, cfg, resume=True)
    seen, should_stop = stop_at(1)
    fit(setup(node, cfg, events=lambda t, d: seen.append((t, d)), should_stop=should_stop))

    with pytest.raises(Conflict, match="unfinished run .*step 1 of 3.*--resume") as exc:
        setup(node, cfg)
    assert exc.value.field == "output.name"
    other = make_cfg(tiny_model_dir, out, train={"epochs": 1, "learning_rate": 0.5})
    with pytest.raises(Conflict, match="different config"):
        setup(node, other, resume=True)

    fit(setup(node, cfg, resume=True))
    with pytest.raises(Conflict, match="is finished.*--continue-from"):
        setup(node, cfg, resume=True)

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(Conflict, match="not empty and holds no royalty run"):
        setup(node, make_cfg(tiny_model_dir, junk))
    with pytest.raises(InvalidInput, match="lora.target_modules: nope_proj not in the base model") as bad:
        setup(node, make_cfg(tiny_model_dir, tmp_path / "x", lora={"target_modules": ["q_proj", "nope_proj"]}))
    assert bad.value.field == "lora.target_modules"


# ----------------------------------------------------------------------------------------------------------------
# continue from a parent adapter
# ----------------------------------------------------------------------------------------------------------------


def test_init_adapter_starts_from_the_parent_weights(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import get_peft_model_state_dict

    parent = fit(setup(node, make_cfg(tiny_model_dir, tmp_path / "parent", train={"epochs": 1})))
    assert parent.adapter_dir is not None
    child_cfg = make_cfg(tiny_model_dir, tmp_path / "child", train={"epochs": 1, "seed": 8},
                         output={"name": "facts-lora-2"})
    child = setup(node, child_cfg, init_adapter=parent.adapter_dir)
    from safetensors.torch import load_file

    parent_weights = load_file(str(parent.adapter_dir / "adapter_model.safetensors"))
    own = get_peft_model_state_dict(child.model)
    assert set(own) == set(parent_weights) and all(torch.equal(own[k], parent_weights[k]) for k in own)
    result = fit(child)
    lineage = json.loads((tmp_path / "child" / "run.json").read_text())["lineage"]
    assert lineage["parent"]["path"] == str(parent.adapter_dir.resolve())
    assert lineage["parent"]["adapter_sha256"] == sha(parent.adapter_dir / "adapter_model.safetensors")
    assert result.adapter_dir is not None

    with pytest.raises(InvalidInput, match=r"cannot continue from .*lora.r=4 \(this config: 8\)") as exc:
        setup(node, make_cfg(tiny_model_dir, tmp_path / "bad", lora={"r": 8}), init_adapter=parent.adapter_dir)
    assert exc.value.field == "lora"
    with pytest.raises(InvalidInput, match="not a PEFT adapter directory"):
        setup(node, make_cfg(tiny_model_dir, tmp_path / "bad"), init_adapter=tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# callbacks
# ----------------------------------------------------------------------------------------------------------------


class Counting(TrainCallback):
    """Counts every call and checks what each hook may rely on."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.batches: list[list[int]] = []
        self.checkpoints: list[str] = []
        self.result: RunResult | None = None

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def on_train_begin(self, ctx: Any) -> None:
        self._count("train_begin")
        assert ctx.step == 0 and ctx.total_steps == 6 and ctx.model is not None

    def on_batch_begin(self, ctx: Any, batch: Batch) -> None:
        self._count("batch_begin")
        lora = [p for n, p in ctx.model.named_parameters() if "lora_" in n]
        if self.calls["batch_begin"] % 2 == 1:  # first micro-batch of a step: gradients were cleared
            assert all(p.grad is None for p in lora)

    def on_batch_end(self, ctx: Any, batch: Batch, loss: torch.Tensor) -> None:
        self._count("batch_end")
        lora = [p for n, p in ctx.model.named_parameters() if "lora_" in n]
        assert lora and all(p.requires_grad and p.grad is not None for p in lora)
        assert any(float(p.grad.abs().sum()) > 0 for p in lora)
        assert loss.ndim == 0 and not loss.requires_grad
        # 2 micro-batches per step: scale = 1 / (2 x trained tokens)
        assert batch.loss_scale == pytest.approx(1 / (2 * batch.trained_tokens))
        self.batches.append(batch.example_indices)

    def on_step_end(self, ctx: Any) -> None:
        self._count("step_end")
        assert ctx.step == self.calls["step_end"]
        assert all(p.grad is None for n, p in ctx.model.named_parameters() if "lora_" in n)

    def on_checkpoint(self, ctx: Any, path: Path) -> None:
        self._count("checkpoint")
        assert (path / "trainer_state.json").exists()
        self.checkpoints.append(path.name)

    def on_train_end(self, ctx: Any, result: RunResult) -> None:
        self._count("train_end")
        self.result = result


def test_callbacks_are_called_with_gradients_in_place(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    counting = Counting()
    cfg = make_cfg(tiny_model_dir, tmp_path / "run", train={"save_every": 3})
    result = fit(setup(node, cfg, callbacks=[counting]))
    assert counting.calls == {"train_begin": 1, "batch_begin": 12, "batch_end": 12, "step_end": 6,
                              "checkpoint": 2, "train_end": 1}
    assert counting.checkpoints == ["step-000003", "step-000006"]
    assert counting.result is result
    order = jsonl(tmp_path / "run" / "order.jsonl")
    assert [i for r in order for i in r["examples"]] == [i for b in counting.batches for i in b]


def test_batch_collate_pads_right_and_scales() -> None:
    def ex(index: int, ids: list[int], labels: list[int]) -> Example:
        return Example(index=index, contribution_id=f"c{index}", contributor="a", datanet_id="d", datanet="facts",
                       version=1, position=index, input_ids=ids, labels=labels)

    batch = Batch.collate([ex(3, [1, 5, 6], [-100, 5, 6]), ex(9, [1, 7], [-100, 7])], pad_token_id=0, micro_batches=2)
    assert batch.example_indices == [3, 9]
    assert batch.input_ids.tolist() == [[1, 5, 6], [1, 7, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.labels.tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert batch.tokens == 5 and batch.trained_tokens == 3 and batch.loss_scale == pytest.approx(1 / 6)


# ----------------------------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------------------------


def test_evaluate_adapter_beats_base_on_memorised_data(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    # A random tiny base with tied embeddings (std 0.02) after a frozen RMSNorm cannot push logits far from uniform
    # (ln 512 = 6.24), so the margin is modest; LoRA on every projection gets closest to the bound.
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = make_cfg(tiny_model_dir, tmp_path / "run", lora={"dropout": 0.0, "r": 8, "alpha": 16,
                                                           "target_modules": targets},
                   train={"epochs": 20, "learning_rate": 3e-3, "grad_accum": 1, "batch_size": 4})
    run = setup(node, cfg)
    fit(run)
    report = evaluate(run.model, run.tokenizer, run.data.train, batch_size=5, top=2)
    assert report["examples"] == len(run.data.train) and report["tokens"] > 0
    assert report["loss"] < report["base_loss"] - 0.25, report
    assert report["perplexity"] < report["base_perplexity"]
    assert len(report["best"]) == len(report["worst"]) == 2
    best, worst = report["best"], report["worst"]
    assert best[0]["loss"] <= best[1]["loss"] <= worst[1]["loss"] <= worst[0]["loss"]
    assert set(report["best"][0]) == {"index", "contribution_id", "datanet", "version", "position", "loss", "base_loss"}
    assert run.model.training  # mode restored
    # the aggregate is the token-weighted mean: batch size does not change it
    again = evaluate(run.model, run.tokenizer, run.data.train, batch_size=1)
    assert again["loss"] == pytest.approx(report["loss"], abs=1e-5)
    assert evaluate(run.model, run.tokenizer, [])["loss"] is None
