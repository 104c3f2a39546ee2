"""Per-example LoRA gradients from hooks (attribution/capture.py) and their projection (attribution/projection.py).

The reference everywhere is plain autograd: one example at a time, ``torch.autograd.grad`` of its summed response
NLL on the LoRA weights. Models are the session's tiny Llama (vocab 512, hidden 32, 2 layers) with real peft LoRA.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import FREE_PUBLISHING
from factory_fixtures import one_torch_thread, tiny_model_dir  # noqa: F401
from peft import LoraConfig, PeftModel, get_peft_model

import royalty
from royalty.attribution.capture import (
    CaptureCallback,
    CapturedRows,
    LoraGradientCapture,
    example_gradients,
    query_gradient,
    summed_nll,
)
from royalty.attribution.projection import LoraModuleShape, Projector, full_dim
from royalty.errors import InvalidInput
from royalty.factory.basemodel import load_base
from royalty.factory.callbacks import Batch, pad_id
from royalty.factory.config import load_config
from royalty.factory.data import IGNORE, Example
from royalty.factory.train import fit, setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_model(model_dir: Path, *, targets: list[str] | None = None, dropout: float = 0.0, seed: int = 0,
               **extra: Any) -> Any:
    """A peft LoRA model on the tiny base with random (non-zero) B, so both A and B gradients are non-trivial."""
    base, _ = load_base(str(model_dir))
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets or
                                            ["q_proj", "v_proj"], task_type="CAUSAL_LM", **extra))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    return model


def random_examples(n: int, seed: int, vocab: int = 512) -> list[Example]:
    """Examples of different lengths (so batches pad) whose first tokens (the "prompt") are not trained."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length, prompt = int(rng.integers(4, 20)), int(rng.integers(1, 4))
        ids = [int(t) for t in rng.integers(0, vocab, length)]
        out.append(Example(i, f"c{i}", f"acct{i % 3}", "dn", "facts", 1, i, ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def autograd_rows(model: Any, examples: list[Example]) -> torch.Tensor:
    """[n, P]: the slow reference, one example at a time, on every trainable LoRA weight (named order)."""
    model.eval()
    weights = [p for name, p in model.named_parameters() if "lora_" in name]
    rows = []
    for e in examples:
        logits = model(input_ids=torch.tensor([e.input_ids])).logits
        grads = torch.autograd.grad(summed_nll(logits, torch.tensor([e.labels])), weights)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def relative_errors(rows: np.ndarray | torch.Tensor, ref: torch.Tensor) -> list[float]:
    rows = torch.as_tensor(rows)
    return [float((rows[i] - ref[i]).norm() / ref[i].norm()) for i in range(len(ref))]


# ----------------------------------------------------------------------------------------------------------------
# exactness
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets,extra", [(["q_proj", "v_proj"], {}), (ALL_LINEAR, {"use_rslora": True})])
def test_hook_gradients_equal_an_autograd_loop(tiny_model_dir: Path, targets: list[str], extra: dict) -> None:
    model = lora_model(tiny_model_dir, targets=targets, **extra)
    examples = random_examples(7, seed=1)
    rows = example_gradients(model, 0, examples, batch_size=3)  # batches of 3: padding in every batch
    ref = autograd_rows(model, examples)
    assert rows.dtype == np.float32 and rows.shape == ref.shape
    assert ref.shape[1] == sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert max(relative_errors(rows, ref)) <= 1e-5
    assert min(float(r.norm()) for r in ref) > 0  # the comparison is not between zeros
    # the prompt tokens are not in the loss: changing a prompt's labels to trained changes the gradient
    trained_prompt = [Example(**{**e.__dict__, "labels": list(e.input_ids)}) for e in examples[:1]]
    assert max(relative_errors(example_gradients(model, 0, trained_prompt), ref[:1])) > 1e-2


def test_rows_of_a_training_pass_add_up_to_its_gradient(tiny_model_dir: Path) -> None:
    """Inside training (dropout on, the model's mean loss scaled by 1/k, as fit does): the rows divided back by
    Batch.loss_scale are the per-example summed-loss gradients; scaled and summed they give the weights' .grad."""
    model = lora_model(tiny_model_dir, targets=ALL_LINEAR, dropout=0.3)
    model.train()
    examples = random_examples(5, seed=2)
    batch = Batch.collate(examples, 0, micro_batches=2)
    with LoraGradientCapture(model) as capture:
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        (loss / 2).backward()
        rows = capture.per_example(loss_scale=batch.loss_scale)
        grad = torch.cat([w.grad.flatten() for w in capture.weights()])
    assert rows.shape == (5, grad.numel())
    total = rows.double().sum(0) * batch.loss_scale
    assert float((total - grad.double()).norm() / grad.double().norm()) <= 1e-5


def test_query_gradient_is_the_response_loss_gradient(tiny_model_dir: Path) -> None:
    model = lora_model(tiny_model_dir)
    prompt, response = [1, 17, 99, 4], [250, 251, 7, 2]
    q = query_gradient(model, prompt, response)
    again = query_gradient(model, prompt, response)
    assert q.tobytes() == again.tobytes()  # deterministic, bit for bit
    ref = autograd_rows(model, [Example(0, "", "", "", "", 0, 0, prompt + response, [IGNORE] * 4 + response)])[0]
    assert max(relative_errors(q[None], ref[None])) <= 1e-5
    assert all(w.grad is None for w in (p for n, p in model.named_parameters() if "lora_" in n))  # .grad untouched

    # sign: a small step against the query gradient lowers the response's loss (higher score = lower loss)
    def response_loss() -> float:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits
            return float(summed_nll(logits, torch.tensor([[IGNORE] * 4 + response])))

    before = response_loss()
    with torch.no_grad():
        offset = 0
        for w in (p for n, p in model.named_parameters() if "lora_" in n):
            w -= 1e-3 * torch.from_numpy(q[offset : offset + w.numel()]).reshape(w.shape)
            offset += w.numel()
    assert response_loss() < before


def test_projected_rows_are_the_projection_of_exact_rows(tiny_model_dir: Path) -> None:
    model = lora_model(tiny_model_dir, targets=ALL_LINEAR)
    examples = random_examples(4, seed=3)
    exact = example_gradients(model, 0, examples)
    with LoraGradientCapture(model) as capture:
        layout = capture.layout
    for kind in ("factorised", "dense"):
        projector = Projector(layout, 256, seed=11, kind=kind)
        rows = example_gradients(model, 0, examples, projector=projector)
        assert rows.shape == (4, projector.dim) and projector.dim <= 256
        offset, parts = 0, []
        for m in layout:  # project the exact rows module by module
            g = torch.from_numpy(exact[:, offset : offset + m.size])
            g_a, g_b = g[:, : m.r * m.d_in].reshape(4, m.r, m.d_in), g[:, m.r * m.d_in :].reshape(4, m.d_out, m.r)
            parts.append(projector.project_module(m.name, g_a, g_b))
            offset += m.size
        ref = torch.cat(parts, dim=1)
        assert max(relative_errors(rows, ref)) <= 1e-5


# ----------------------------------------------------------------------------------------------------------------
# projection
# ----------------------------------------------------------------------------------------------------------------

LAYOUT = [LoraModuleShape("layers.0.q", 48, 48, 8), LoraModuleShape("layers.0.v", 48, 16, 8),
          LoraModuleShape("layers.1.q", 48, 48, 8)]
_PROCESS_SNIPPET = """
import hashlib, sys, numpy as np, torch
torch.set_num_threads(1)
from royalty.attribution.projection import LoraModuleShape, Projector
layout = [LoraModuleShape("layers.0.q", 48, 48, 8), LoraModuleShape("layers.0.v", 48, 16, 8),
          LoraModuleShape("layers.1.q", 48, 48, 8)]
p = Projector(layout, 200, seed=2**70 + 5, kind=sys.argv[1])
g = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 8, 48)).astype(np.float32))
h = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 48, 8)).astype(np.float32))
print(p.fingerprint(), hashlib.sha256(p.project_module("layers.0.q", g, h).numpy().tobytes()).hexdigest())
"""


@pytest.mark.parametrize("kind", ["factorised", "dense"])
def test_projection_is_deterministic_across_runs_and_processes(kind: str) -> None:
    out = subprocess.run([sys.executable, "-c", _PROCESS_SNIPPET, kind], capture_output=True, text=True, check=True)
    here = Projector(LAYOUT, 200, seed=2**70 + 5, kind=kind)
    g = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 8, 48)).astype(np.float32))
    h = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 48, 8)).astype(np.float32))
    projected = here.project_module("layers.0.q", g, h)
    assert out.stdout.split() == [here.fingerprint(), hashlib.sha256(projected.numpy().tobytes()).hexdigest()]
    assert Projector.from_description(here.describe()).fingerprint() == here.fingerprint()
    assert Projector(LAYOUT, 200, seed=2**70 + 6, kind=kind).fingerprint() != here.fingerprint()
    assert here.dim == sum(here.module_dims.values()) <= 200
    if kind == "dense":
        assert here.dim == 200  # dense shares the dimension exactly


@pytest.mark.parametrize("kind", ["factorised", "dense"])
def test_projected_inner_products_are_unbiased(kind: str) -> None:
    """JL sanity: over many seeds, ⟨Pg, Pg'⟩ averages to ⟨g, g'⟩ and ‖Pg‖² concentrates near ‖g‖²."""
    rng = np.random.default_rng(5)
    n = full_dim(LAYOUT)
    g = rng.standard_normal(n)
    h = 0.6 * g + 0.8 * rng.standard_normal(n)  # correlated, as gradients of related examples are

    def parts(v: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out, at = [], 0
        for m in LAYOUT:
            a = torch.from_numpy(v[at : at + m.r * m.d_in].astype(np.float32)).reshape(1, m.r, m.d_in)
            b = torch.from_numpy(v[at + m.r * m.d_in : at + m.size].astype(np.float32)).reshape(1, m.d_out, m.r)
            out.append((a, b))
            at += m.size
        return out

    gp, hp = parts(g), parts(h)
    dots, norms = [], []
    for seed in range(150):
        p = Projector(LAYOUT, 512, seed=seed, kind=kind)
        pg = torch.cat([p.project_module(m.name, *gp[i]) for i, m in enumerate(LAYOUT)], 1)[0].double()
        ph = torch.cat([p.project_module(m.name, *hp[i]) for i, m in enumerate(LAYOUT)], 1)[0].double()
        dots.append(float(pg @ ph))
        norms.append(float(pg @ pg))
    exact_dot, exact_norm = float(g @ h), float(g @ g)
    assert abs(np.mean(dots) / exact_dot - 1) < 0.03
    assert abs(np.mean(norms) / exact_norm - 1) < 0.03
    assert np.std(np.array(norms) / exact_norm) < 0.15  # one projection already preserves the norm within ~10%


def test_projector_refuses_bad_parameters() -> None:
    with pytest.raises(InvalidInput, match="projection dim must be an integer >= 6"):
        Projector(LAYOUT, 5, seed=0)
    with pytest.raises(InvalidInput, match="kind must be one of"):
        Projector(LAYOUT, 64, seed=0, kind="gaussian")
    with pytest.raises(InvalidInput, match="seed must be an integer"):
        Projector(LAYOUT, 64, seed=-1)
    with pytest.raises(InvalidInput, match="not in the projection layout"):
        Projector(LAYOUT, 64, seed=0).project_module("nope", torch.zeros(1, 8, 48), torch.zeros(1, 48, 8))
    with pytest.raises(InvalidInput, match="another model or LoRA config"):
        Projector(LAYOUT, 64, seed=0).project_module("layers.0.v", torch.zeros(1, 8, 48), torch.zeros(1, 48, 8))


# ----------------------------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------------------------


def test_unsupported_models_are_refused(tiny_model_dir: Path) -> None:
    base, _ = load_base(str(tiny_model_dir))
    with pytest.raises(InvalidInput, match="no LoRA modules"):
        LoraGradientCapture(base)
    dora = lora_model(tiny_model_dir, use_dora=True)
    with pytest.raises(InvalidInput, match="DoRA") as info:
        example_gradients(dora, 0, random_examples(1, seed=0))
    assert info.value.field == "lora.use_dora"
    model = lora_model(tiny_model_dir)
    with pytest.raises(InvalidInput, match="another model or LoRA config"):
        LoraGradientCapture(model, projector=Projector(LAYOUT, 64, seed=0))
    with pytest.raises(InvalidInput, match="no tokens"):
        query_gradient(model, [1, 2], [])
    with pytest.raises(InvalidInput, match="vocabulary"):
        query_gradient(model, [1, 2], [512])
    with LoraGradientCapture(model) as capture, pytest.raises(InvalidInput, match="no complete forward and backward"):
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3]]))
        capture.per_example()


# ----------------------------------------------------------------------------------------------------------------
# capture during a real fit
# ----------------------------------------------------------------------------------------------------------------

FACTS = [("What colour is the sky?", "Blue."), ("What do bees make?", "Honey."),
         ("How many legs has a spider?", "Eight."), ("What is frozen water?", "Ice."),
         ("Which planet is red?", "Mars."), ("What is two plus two?", "Four."),
         ("Where do fish live?", "In water."), ("What animal barks?", "A dog.")]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    node, _ = royalty.init_node(tmp_path_factory.mktemp("capture") / "home", params=FREE_PUBLISHING)
    alice = node.accounts.create("alice", with_key=False)[0].id
    node.datanets.create("facts", title="Facts", kind="instruction", licenses=["CC-BY-4.0"], policy="open", owner=alice)
    node.datanets.contribute_records("facts", [{"prompt": p, "response": r} for p, r in FACTS], contributor=alice)
    node.datanets.publish("facts", actor=alice)
    yield node
    node.close()


def make_cfg(model_dir: Path, out: Path, dropout: float) -> Any:
    """8 examples, batch 2 × accumulation 2: 2 optimizer steps an epoch, 2 epochs, a checkpoint every step."""
    return load_config({
        "model": {"base": str(model_dir)},
        "data": {"datanets": ["facts@1"], "eval_fraction": 0.0, "max_seq_len": 64},
        "lora": {"r": 4, "alpha": 8, "dropout": dropout, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 2, "batch_size": 2, "grad_accum": 2, "learning_rate": 1e-2, "seed": 7, "threads": 1,
                  "save_every": 1},
        "output": {"name": "capture-lora", "dir": str(out)},
    })


def test_capture_during_fit_equals_a_post_hoc_pass(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tmp_path / "run", dropout=0.0)
    rows: list[CapturedRows] = []
    run = setup(node, cfg)
    with LoraGradientCapture(run.model) as capture:
        projector = Projector(capture.layout, 96, seed=3)
    result = fit(setup(node, cfg, out_dir=tmp_path / "captured",
                       callbacks=[CaptureCallback(rows.append, projector=projector, steps={1, 2}, checkpoints=True)]))
    plain = fit(run)  # the same run without the callback: capture changes nothing
    assert (result.adapter_dir / "adapter_model.safetensors").read_bytes() == \
        (plain.adapter_dir / "adapter_model.safetensors").read_bytes()

    train_rows = [r for r in rows if r.source == "train"]
    assert sorted({r.step for r in train_rows}) == [1, 2]
    assert sorted({r.step for r in rows if r.source == "checkpoint"}) == [1, 2, 3, 4]
    for step in (1, 2):
        # the weights after `step` steps are checkpoint step-`step`; a fresh post-hoc pass there gives the same rows
        base, tokenizer = load_base(str(tiny_model_dir))
        model = PeftModel.from_pretrained(base, str(tmp_path / "captured" / "checkpoints" / f"step-{step:06d}"))
        examples = run.data.train
        ref = example_gradients(model, pad_id(tokenizer), examples, projector=projector, batch_size=3)
        assert not any(p.requires_grad for p in model.parameters())  # an inference model stays frozen after
        by_index = {e.index: i for i, e in enumerate(examples)}
        seen = [(e.index, r.grads[j]) for r in train_rows if r.step == step for j, e in enumerate(r.examples)]
        assert len(seen) == 4  # batch 2 × accumulation 2
        got = np.stack([g for _, g in seen])
        assert max(relative_errors(got, torch.from_numpy(ref[[by_index[i] for i, _ in seen]]))) <= 1e-5
        at_checkpoint = [r for r in rows if r.source == "checkpoint" and r.step == step]
        assert [e.index for r in at_checkpoint for e in r.examples] == [e.index for e in examples]
        assert max(relative_errors(np.concatenate([r.grads for r in at_checkpoint]), torch.from_numpy(ref))) <= 1e-5


def test_capture_with_dropout_leaves_training_bit_identical(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tmp_path / "run", dropout=0.2)
    rows: list[CapturedRows] = []
    run = setup(node, cfg, out_dir=tmp_path / "captured", callbacks=[CaptureCallback(rows.append, checkpoints=True)])
    captured = fit(run)
    plain = fit(setup(node, cfg))
    assert (captured.adapter_dir / "adapter_model.safetensors").read_bytes() == \
        (plain.adapter_dir / "adapter_model.safetensors").read_bytes()
    assert len([r for r in rows if r.source == "train"]) == 8  # 4 steps × 2 micro-batches
    assert all(np.isfinite(r.grads).all() and np.abs(r.grads).sum() > 0 for r in rows)
    assert not any(m._forward_hooks for m in run.model.modules())  # the hooks are gone after fit
