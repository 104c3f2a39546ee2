"""In-run influence rows (attribution/inrun.py) against a slow, obvious replay of the same training run.

The reference follows ``factory.train.fit`` step by step in a plain loop: before each step it takes every example's
gradient with plain autograd (one example at a time), and after the step multiplies it by the step's learning rate,
clipping factor, loss weight and AdamW's 1/(sqrt(v̂)+ε), adding it to the example's row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from factory_fixtures import one_torch_thread, tiny_model_dir  # noqa: F401
from test_attribution_capture import autograd_rows, make_cfg, node, relative_errors  # noqa: F401
from transformers import get_scheduler

from royalty.attribution.capture import LoraGradientCapture
from royalty.attribution.inrun import InRunInfluence
from royalty.attribution.projection import Projector
from royalty.errors import InvalidInput
from royalty.factory.callbacks import Batch, pad_id
from royalty.factory.train import fit, setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_rows(node: Any, cfg: Any, out: Path) -> tuple[np.ndarray, list[int]]:
    """[n, D] rows from a plain replay of the run (see the module docstring), and the examples' indexes."""
    run = setup(node, cfg, out_dir=out)
    model, cfg = run.model, run.config
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=0.0)
    scheduler = get_scheduler(cfg.train.scheduler, optimizer,
                              num_warmup_steps=math.ceil(cfg.train.warmup_ratio * run.total_steps),
                              num_training_steps=run.total_steps)
    examples = run.data.train
    row_of = {e.index: i for i, e in enumerate(examples)}
    rows = np.zeros((len(examples), sum(p.numel() for p in params)))
    pad, size = pad_id(run.tokenizer), cfg.train.batch_size
    for planned in run.plan:
        micro = [planned.examples[at : at + size] for at in range(0, len(planned.examples), size)]
        terms = []
        for positions in micro:
            batch = Batch.collate([examples[p] for p in positions], pad, micro_batches=len(micro))
            slow = autograd_rows(model, [examples[p] for p in positions])  # [B, D], named-parameter order
            terms += [(examples[p].index, batch.loss_scale * slow[j]) for j, p in enumerate(positions)]
        model.train()
        for positions in micro:
            batch = Batch.collate([examples[p] for p in positions], pad, micro_batches=len(micro))
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
            (loss / len(micro)).backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        v_hat = torch.cat([(optimizer.state[p]["exp_avg_sq"] / (1 - 0.999 ** float(optimizer.state[p]["step"])))
                           .flatten() for p in params])
        scale = 1.0 / (v_hat.sqrt() + 1e-8) * lr * min(1.0, cfg.train.max_grad_norm / (norm + 1e-6))
        for index, term in terms:
            rows[row_of[index]] += (term * scale).double().numpy()
    return rows, [e.index for e in examples]


def test_rows_equal_a_slow_replay_and_training_is_unchanged(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tmp_path / "run", dropout=0.0)  # batch 2 × accumulation 2, 4 steps
    inrun = InRunInfluence()
    captured = fit(setup(node, cfg, out_dir=tmp_path / "captured", callbacks=[inrun]))
    plain = fit(setup(node, cfg, out_dir=tmp_path / "plain"))
    assert (captured.adapter_dir / "adapter_model.safetensors").read_bytes() == \
        (plain.adapter_dir / "adapter_model.safetensors").read_bytes()  # capturing changes nothing
    ref, order = reference_rows(node, cfg, tmp_path / "reference")
    assert [e.index for e in inrun.examples] == order and inrun.steps == 4
    assert (np.linalg.norm(ref, axis=1) > 0).all()  # every example was in some step
    assert max(relative_errors(inrun.rows, torch.from_numpy(ref))) <= 1e-5


def test_projected_rows_are_the_projection_of_full_rows(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tmp_path / "run", dropout=0.0)
    full = InRunInfluence()
    fit(setup(node, cfg, out_dir=tmp_path / "full", callbacks=[full]))
    run = setup(node, cfg, out_dir=tmp_path / "projected")
    with LoraGradientCapture(run.model) as capture:
        projector = Projector(capture.layout, 64, seed=5)
    projected = InRunInfluence(projector)
    fit(setup(node, cfg, out_dir=tmp_path / "projected2", callbacks=[projected]))
    expected = projector.project_rows(torch.from_numpy(full.rows).float()).double().numpy()
    assert projected.rows.shape == (len(full.rows), projector.dim)
    assert max(relative_errors(projected.rows, torch.from_numpy(expected))) <= 1e-4


def test_a_resumed_run_is_refused(node: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = make_cfg(tiny_model_dir, tmp_path / "run", dropout=0.0)
    first = fit(setup(node, cfg, out_dir=tmp_path / "r", should_stop=lambda: True))  # stops after step 1
    assert first.interrupted
    with pytest.raises(InvalidInput, match="first step"):
        fit(setup(node, cfg, out_dir=tmp_path / "r", resume=True, callbacks=[InRunInfluence()]))
