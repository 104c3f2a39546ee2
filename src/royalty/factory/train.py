"""Training a LoRA adapter: ``setup`` (guard the output, load, build data, create LoRA) then ``fit`` (the loop).

A plain loop, readable top to bottom, deterministic on CPU: the same config, data and thread count give the same
adapter bytes, and a run stopped at any step and resumed gives the bytes of an uninterrupted run.

What makes that hold:
- ``torch.manual_seed(train.seed)`` (and Python's and NumPy's) runs after the base model is loaded and before
  ``get_peft_model``, so the LoRA initialisation depends only on the seed.
- The data order is planned up front from ``data.epoch_order`` (seeded per epoch) and does not depend on RNG
  state; a step's examples are ``plan[step]`` whether or not the run was resumed.
- A checkpoint holds the adapter weights, the AdamW and scheduler state and the RNG states (torch CPU, Python,
  NumPy: LoRA dropout draws from torch's), and resume restores all of them before the next step.
- The thread count is recorded in run.json and reused on resume (reductions split differently across threads).
- AdamW uses torch's default implementation for the device (the single-tensor loop on CPU; foreach/fused are
  CUDA defaults) and its state_dict round-trips exactly; tests/test_factory_train.py checks resume bit for bit,
  with dropout, DoRA and rsLoRA on. The library versions are assumed unchanged (run.json records them).

The run directory::

    run.yaml            the resolved config            run.json     status, config hash, base, sources, lineage
    examples.jsonl      every example (train and eval)  order.jsonl  {"step", "epoch", "examples": [index, ...]}
    metrics.jsonl       one record per optimizer step   tensorboard/ when tensorboard is installed
    checkpoints/step-NNNNNN/   adapter_config.json, adapter_model.safetensors, optimizer.pt, scheduler.pt,
                               rng_state.json, trainer_state.json (written under .tmp-step-NNNNNN, then renamed)
    adapter/            the final PEFT adapter (save_pretrained)

Torch, transformers and peft are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from ..errors import Conflict, InvalidInput, NotFound
from .adapters import file_sha256
from .callbacks import Batch, TrainCallback, TrainContext, pad_id

if TYPE_CHECKING:
    from ..node import Node
    from .basemodel import BaseModelIdentity
    from .config import TrainConfig
    from .data import DataSplit

Events = Callable[[str, dict[str, Any]], None]

CHECKPOINTS = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")


@dataclass(frozen=True)
class PlannedStep:
    """One optimizer step of the plan: ``examples`` are positions in ``DataSplit.train`` (batch_size ×
    grad_accum of them, fewer at the end of an epoch), ``offset`` is where they start in the epoch's order."""

    epoch: int
    offset: int
    examples: list[int]


@dataclass
class RunResult:
    """What ``fit`` did. ``adapter_dir`` is None when the run was interrupted; ``checkpoint`` is the newest
    checkpoint (the one ``resume`` continues from). ``steps``/``tokens``/``seconds`` count every session of the
    run; ``train_loss`` is the mean step loss over all steps done, ``last_loss`` the last step's."""

    out_dir: Path
    adapter_dir: Path | None
    checkpoint: Path | None
    steps: int
    total_steps: int
    tokens: int
    seconds: float
    train_loss: float | None
    last_loss: float | None
    interrupted: bool
    metrics: dict[str, Any]


@dataclass
class TrainingRun:
    """Everything ``fit`` needs, made by ``setup``. ``previous`` is the run.json of the run being resumed
    (None for a fresh run), ``checkpoint`` the checkpoint it resumes from (None: start at step 0)."""

    config: TrainConfig
    config_hash: str
    out_dir: Path
    model: Any  # peft.PeftModel
    tokenizer: Any
    data: DataSplit
    base: BaseModelIdentity
    plan: list[PlannedStep]
    threads: int
    parent: dict[str, Any] | None
    previous: dict[str, Any] | None
    checkpoint: Path | None
    clock: Callable[[], int]
    rng: dict[str, Any]  # the RNG states right after LoRA creation: a fresh run starts from them
    callbacks: list[TrainCallback] = field(default_factory=list)
    events: Events | None = None
    should_stop: Callable[[], bool] | None = None
    progress: bool = False

    @property
    def total_steps(self) -> int:
        return len(self.plan)


# ----------------------------------------------------------------------------------------------------------------
# setup
# ----------------------------------------------------------------------------------------------------------------


def setup(
    node: Node,
    cfg: TrainConfig,
    *,
    out_dir: Path | None = None,
    resume: bool = False,
    init_adapter: Path | None = None,
    callbacks: Sequence[TrainCallback] = (),
    events: Events | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> TrainingRun:
    """Validate the output directory, build the data, load the base model and create the LoRA adapter.

    ``out_dir`` defaults to ``node.factory.out_dir(cfg)``. An existing run there must have
    been produced by the same config (hash); a finished run is never touched again; an unfinished one is only
    continued with ``resume=True`` (from its newest complete checkpoint). ``init_adapter`` is a parent adapter
    directory whose LoRA weights the new adapter starts from (same r, target modules and DoRA switch).

    Raises:
        Conflict: the output holds another config's run, a finished run, an unfinished run without
            ``resume``, or files that are not a run.
        NotFound: ``resume`` but nothing to resume.
        InvalidInput: the parent adapter does not fit the config, a target module is not in the model, or
            (from basemodel/data) the model or data cannot be used.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from .basemodel import identity, load_base, load_tokenizer
    from .data import build_data

    out_dir = Path(out_dir) if out_dir is not None else node.factory.out_dir(cfg)
    config_hash = cfg.config_hash()
    previous = _check_out_dir(out_dir, config_hash, resume)
    recorded = previous["lineage"]["parent"] if previous is not None else None
    if recorded is not None and init_adapter is None:
        init_adapter = Path(recorded["path"])  # a resumed "continue" run keeps its parent
    parent = _parent_info(Path(init_adapter), cfg) if init_adapter is not None else None
    if previous is not None and parent != recorded:
        raise Conflict(
            f"the run in {out_dir} started from parent adapter {recorded['path'] if recorded else '(none)'} and this "
            f"call gives {parent['path'] if parent else '(none)'} (or its weights changed); resume with the same "
            "parent, or start a new run under another output.name",
            field="parent",
        )
    threads = int(previous["threads"]) if previous is not None else (cfg.train.threads or torch.get_num_threads())

    # The data first: bad rows are reported before a large model is read.
    tokenizer = load_tokenizer(cfg.model.base)
    data = build_data(node, cfg, tokenizer)
    plan = plan_steps(data, cfg)
    if not plan:
        raise InvalidInput("no training examples: every example went to the eval split; lower data.eval_fraction "
                           "or add data", field="data.eval_fraction")
    if previous is not None and previous["total_steps"] != len(plan):
        raise Conflict(
            f"the run in {out_dir} planned {previous['total_steps']} steps and this data gives {len(plan)}; the data "
            "changed under the same config: start a new run under another output.name",
            field="output.name",
        )

    model, _ = load_base(cfg.model.base, dtype=cfg.model.dtype)
    base = identity(cfg.model.base)
    if previous is not None and previous["base_model"]["weights_sha256"] != base.weights_sha256:
        raise Conflict(
            f"the base model {cfg.model.base} changed since the run in {out_dir} started (weights hash "
            f"{base.weights_sha256[:12]}, was {previous['base_model']['weights_sha256'][:12]}); restore it, or start "
            "a new run under another output.name",
            field="model.base",
        )
    _check_targets(model, cfg.lora.target_modules)
    # The seed goes in right before the LoRA weights are created, so their initialisation depends on it alone.
    _seed_all(cfg.train.seed)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        use_rslora=cfg.lora.use_rslora,
        use_dora=cfg.lora.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if init_adapter is not None:
        _load_adapter_weights(model, Path(init_adapter), "parent adapter", field="parent")

    return TrainingRun(
        config=cfg, config_hash=config_hash, out_dir=out_dir, model=model, tokenizer=tokenizer, data=data,
        base=base, plan=plan, threads=threads, parent=parent, previous=previous,
        checkpoint=latest_checkpoint(out_dir) if previous is not None else None, clock=node.clock,
        rng=_rng_state(), callbacks=list(callbacks), events=events, should_stop=should_stop, progress=progress,
    )


def plan_steps(data: DataSplit, cfg: TrainConfig) -> list[PlannedStep]:
    """Every optimizer step of the run: each epoch's order (``data.epoch_order``) cut into groups of
    batch_size × grad_accum examples (the last group of an epoch may be smaller), capped at ``train.max_steps``."""
    from .data import epoch_order

    per_step = cfg.train.batch_size * cfg.train.grad_accum
    limit = cfg.train.max_steps or math.inf
    plan: list[PlannedStep] = []
    for epoch in range(cfg.train.epochs):
        if len(plan) >= limit:
            break
        order = epoch_order(data, cfg, epoch)
        plan += [PlannedStep(epoch, at, order[at : at + per_step]) for at in range(0, len(order), per_step)]
    return plan[: cfg.train.max_steps] if cfg.train.max_steps else plan


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (``checkpoints/step-NNNNNN``; ``.tmp-*`` ones are unfinished)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_NAME.match(p.name)) and p.is_dir()]
    return max(steps)[1] if steps else None


def _check_out_dir(out_dir: Path, config_hash: str, resume: bool) -> dict[str, Any] | None:
    """The run.json of the run to resume, or None for a fresh run in an empty (or absent) directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"output directory {out_dir} is a file; choose another output.dir", field="output.dir")
    run_file = out_dir / "run.json"
    if not run_file.exists():
        if out_dir.exists() and any(out_dir.iterdir()):
            raise Conflict(
                f"output directory {out_dir} is not empty and holds no royalty run; choose another output.name "
                "(or output.dir), or empty it",
                field="output.dir",
            )
        if resume:
            raise NotFound(f"nothing to resume in {out_dir}: no run was started there; run without --resume",
                           field="resume")
        return None
    previous = json.loads(run_file.read_text(encoding="utf-8"))
    if previous.get("config_hash") != config_hash:
        raise Conflict(
            f"{out_dir} holds a run of a different config (hash {str(previous.get('config_hash'))[:12]}, this config "
            f"{config_hash[:12]}); choose another output.name (or output.dir), or rerun {out_dir / 'run.yaml'}",
            field="output.name",
        )
    if previous["status"] == "finished":
        raise Conflict(
            f"the run in {out_dir} is finished (adapter in {out_dir / 'adapter'}); to train further, start a new run "
            "from its registered adapter: royalty train CONFIG [KEY=VALUE ...] --continue-from NAME@VERSION",
            field="output.name",
        )
    if not resume:
        raise Conflict(
            f"{out_dir} holds an unfinished run ({previous['status']} at step {previous['step']} of "
            f"{previous['total_steps']}); continue it with --resume, or choose another output.name",
            field="output.name",
        )
    return previous


def _parent_info(adapter_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Check that a parent adapter fits this config (same r, target modules, DoRA) and describe it for lineage."""
    config_file, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not (config_file.is_file() and weights.is_file()):
        raise InvalidInput(
            f"{adapter_dir} is not a PEFT adapter directory (needs adapter_config.json and "
            "adapter_model.safetensors); give the directory of a trained adapter",
            field="parent",
        )
    parent = json.loads(config_file.read_text(encoding="utf-8"))
    mismatches = []
    if parent.get("peft_type") != "LORA":
        mismatches.append(f"it is a {parent.get('peft_type')} adapter, not LoRA")
    if parent.get("r") != cfg.lora.r:
        mismatches.append(f"lora.r={parent.get('r')} (this config: {cfg.lora.r})")
    targets = parent.get("target_modules") or []
    if sorted([targets] if isinstance(targets, str) else targets) != sorted(cfg.lora.target_modules):
        mismatches.append(f"lora.target_modules={sorted(targets)} (this config: {sorted(cfg.lora.target_modules)})")
    if bool(parent.get("use_dora")) != cfg.lora.use_dora:
        mismatches.append(f"lora.use_dora={bool(parent.get('use_dora'))} (this config: {cfg.lora.use_dora})")
    if mismatches:
        raise InvalidInput(
            f"cannot continue from {adapter_dir}: the parent has " + "; ".join(mismatches)
            + "; set the same values in this config",
            field="lora",
        )
    return {"path": str(adapter_dir.resolve()), "adapter_sha256": file_sha256(weights)}


def _check_targets(model: Any, targets: Sequence[str]) -> None:
    """Every target module must name a Linear layer of the base model (peft's own error is a traceback)."""
    import torch

    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    missing = [t for t in targets if t not in linear]
    if missing:
        raise InvalidInput(
            f"lora.target_modules: {', '.join(missing)} not in the base model; its linear layers are "
            f"{', '.join(linear)}",
            field="lora.target_modules",
        )


def _load_adapter_weights(model: Any, adapter_dir: Path, what: str, *, field: str) -> None:
    """Load ``adapter_model.safetensors`` into the model's LoRA weights; the keys and shapes must match exactly."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    own = get_peft_model_state_dict(model)
    wrong = sorted(set(own) ^ set(weights)) or [k for k in own if own[k].shape != weights[k].shape]
    if wrong:
        raise InvalidInput(
            f"the {what} in {adapter_dir} does not fit this model and LoRA config (first mismatch: {wrong[0]}); "
            "use an adapter trained on the same base model with the same lora settings",
            field=field,
        )
    set_peft_model_state_dict(model, weights)


# ----------------------------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------------------------


def fit(run: TrainingRun) -> RunResult:
    """Train: the loop over ``run.plan`` from the resumed step (or 0) to the end, or until stopped.

    Each optimizer step takes ``plan[step].examples`` in micro-batches of ``train.batch_size`` (right-padded to
    the longest in the micro-batch), backpropagates each micro-batch's mean token loss divided by the number of
    micro-batches in the step (see callbacks.py for how per-example gradients relate), clips the gradient norm
    to ``train.max_grad_norm``, then steps AdamW (weight decay 0) and the scheduler.

    After every step: a line in order.jsonl and metrics.jsonl, ``events("step", ...)``, the progress bar; every
    ``train.save_every`` steps a checkpoint (``events("checkpoint", ...)``). Ctrl-C (SIGINT, in the main thread)
    or ``should_stop()`` returning true finish the current step, save a checkpoint, mark the run interrupted,
    emit ``events("interrupted", ...)`` and return ``interrupted=True``; a second Ctrl-C aborts at once. At the
    end: a final checkpoint, the adapter (``save_pretrained``) in ``out_dir/adapter``, run.json finished and
    ``events("done", ...)``.
    """
    import torch
    from transformers import get_scheduler

    cfg, model = run.config, run.model
    threads_before = torch.get_num_threads()
    torch.set_num_threads(run.threads)
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=0.0)
        scheduler = get_scheduler(
            cfg.train.scheduler, optimizer,
            num_warmup_steps=math.ceil(cfg.train.warmup_ratio * run.total_steps),
            num_training_steps=run.total_steps,
        )
        if run.checkpoint is not None:
            state = _load_checkpoint(run, optimizer, scheduler)
        else:
            state = _TrainerState()
            _set_rng_state(run.rng)
            _start_run_dir(run)
        _mark(run, "running", state.step)
        return _loop(run, params, optimizer, scheduler, state)
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class _TrainerState:
    """Counters that survive a resume (trainer_state.json)."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0  # training time of earlier sessions
    loss_sum: float = 0.0
    last_loss: float | None = None


def _loop(run: TrainingRun, params: list[Any], optimizer: Any, scheduler: Any, state: _TrainerState) -> RunResult:
    import torch
    from tqdm import tqdm

    cfg, model, train = run.config, run.model, run.data.train
    total, batch_size, pad = run.total_steps, cfg.train.batch_size, pad_id(run.tokenizer)
    device = next(model.parameters()).device
    emit = run.events or (lambda _type, _data: None)
    ctx = TrainContext(cfg, model, run.tokenizer, run.data, run.out_dir, state.step,
                       run.plan[min(state.step, total - 1)].epoch, total)
    logs = _Logs(run.out_dir, state.step)
    bar = tqdm(total=total, initial=state.step, desc=f"train {cfg.output.name}", unit="step", file=sys.stderr,
               disable=None if run.progress else True, dynamic_ncols=True)  # None: only on a terminal
    stop = _StopRequest()
    session_start, session_steps, session_tokens = time.perf_counter(), 0, 0
    saved_at = run.checkpoint  # the checkpoint of the current step, if any (a resume at the very end has one)
    model.train()
    try:
        with stop:
            for cb in run.callbacks:
                cb.on_train_begin(ctx)
            while state.step < total:
                planned = run.plan[state.step]
                ctx.epoch = planned.epoch
                micro = [planned.examples[at : at + batch_size] for at in range(0, len(planned.examples), batch_size)]
                step_loss, step_tokens = 0.0, 0
                for positions in micro:
                    batch = Batch.collate([train[p] for p in positions], pad, micro_batches=len(micro))
                    for cb in run.callbacks:
                        cb.on_batch_begin(ctx, batch)
                    # loss: mean cross-entropy over the micro-batch's trained tokens (transformers shifts labels)
                    loss = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                                 labels=batch.labels.to(device)).loss
                    (loss / len(micro)).backward()
                    for cb in run.callbacks:
                        cb.on_batch_end(ctx, batch, loss.detach())
                    step_loss += loss.item() / len(micro)
                    step_tokens += batch.tokens
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm))  # before clipping
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                state.step += 1
                state.tokens += step_tokens
                state.loss_sum += step_loss
                state.last_loss = step_loss
                session_steps += 1
                session_tokens += step_tokens
                ctx.step, ctx.optimizer, ctx.last_lr, ctx.grad_norm = state.step, optimizer, lr, grad_norm
                for cb in run.callbacks:
                    cb.on_step_end(ctx)

                session_s = time.perf_counter() - session_start
                record = {
                    "step": state.step, "total_steps": total, "epoch": planned.epoch, "loss": step_loss, "lr": lr,
                    "grad_norm": grad_norm, "tokens": step_tokens, "tokens_per_s": session_tokens / session_s,
                    "elapsed_s": state.seconds + session_s,
                    "eta_s": (total - state.step) * session_s / session_steps,
                }
                logs.step(record, [train[p].index for p in planned.examples])
                emit("step", record)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}",
                                epoch=f"{planned.epoch + 1}/{cfg.train.epochs}", refresh=False)

                saved_at = None
                if state.step == total:
                    break
                if cfg.train.save_every and state.step % cfg.train.save_every == 0:
                    saved_at = _checkpoint(run, ctx, optimizer, scheduler, state, session_start)
                if stop.requested or (run.should_stop is not None and run.should_stop()):
                    checkpoint = saved_at or _checkpoint(run, ctx, optimizer, scheduler, state, session_start)
                    _mark(run, "interrupted", state.step)
                    result = _result(run, state, session_start, checkpoint, interrupted=True)
                    emit("interrupted", {"step": state.step, "total_steps": total, "checkpoint": str(checkpoint)})
                    for cb in run.callbacks:
                        cb.on_train_end(ctx, result)
                    return result

            checkpoint = saved_at or _checkpoint(run, ctx, optimizer, scheduler, state, session_start)
            adapter_dir = _save_adapter(run)
            _mark(run, "finished", state.step)
            result = _result(run, state, session_start, checkpoint, interrupted=False, adapter_dir=adapter_dir)
            emit("done", {**result.metrics, "adapter_dir": str(adapter_dir)})
            for cb in run.callbacks:
                cb.on_train_end(ctx, result)
            return result
    finally:
        bar.close()
        logs.close()


def _result(run: TrainingRun, state: _TrainerState, session_start: float, checkpoint: Path, *, interrupted: bool,
            adapter_dir: Path | None = None) -> RunResult:
    seconds = state.seconds + (time.perf_counter() - session_start)
    train_loss = state.loss_sum / state.step if state.step else None
    metrics = {
        "steps": state.step, "total_steps": run.total_steps, "tokens": state.tokens, "seconds": seconds,
        "tokens_per_s": state.tokens / seconds if seconds > 0 else 0.0, "train_loss": train_loss,
        "last_loss": state.last_loss, "threads": run.threads,
    }
    return RunResult(run.out_dir, adapter_dir, checkpoint, state.step, run.total_steps, state.tokens, seconds,
                     train_loss, state.last_loss, interrupted, metrics)


class _StopRequest:
    """Ctrl-C asks the loop to stop after the current optimizer step; a second Ctrl-C aborts at once.

    Installed only in the main thread (Python delivers signals there; a worker thread keeps the default).
    The previous handler is restored on exit."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort without saving)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _Logs:
    """order.jsonl, metrics.jsonl (and TensorBoard when installed), cut back to ``step`` first: steps after
    the checkpoint a run resumes from are run again and logged again."""

    def __init__(self, out_dir: Path, step: int) -> None:
        for name in ("order.jsonl", "metrics.jsonl"):
            _truncate_jsonl(out_dir / name, step)
        self.order = (out_dir / "order.jsonl").open("a", encoding="utf-8")
        self.metrics = (out_dir / "metrics.jsonl").open("a", encoding="utf-8")
        self.tensorboard: Any = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"))

    def step(self, record: dict[str, Any], examples: list[int]) -> None:
        self.order.write(json.dumps({"step": record["step"], "epoch": record["epoch"], "examples": examples}) + "\n")
        self.metrics.write(json.dumps(record) + "\n")
        self.order.flush()
        self.metrics.flush()
        if self.tensorboard is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                self.tensorboard.add_scalar(f"train/{key}", record[key], record["step"])

    def close(self) -> None:
        self.order.close()
        self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _truncate_jsonl(path: Path, step: int) -> None:
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    kept: list[str] = []
    for line in lines:  # in step order
        try:
            if json.loads(line)["step"] > step:
                break
        except json.JSONDecodeError:  # the last line, cut short by a crash: a step after the checkpoint
            break
        kept.append(line + "\n")
    if "".join(kept) != text:
        _write_atomic(path, "".join(kept))


# ----------------------------------------------------------------------------------------------------------------
# checkpoints and the run directory
# ----------------------------------------------------------------------------------------------------------------


def _checkpoint(run: TrainingRun, ctx: TrainContext, optimizer: Any, scheduler: Any, state: _TrainerState,
                session_start: float) -> Path:
    """Write ``checkpoints/step-NNNNNN`` (under a temporary name, renamed when complete)."""
    import torch

    planned = run.plan[state.step - 1]
    root = run.out_dir / CHECKPOINTS
    final, tmp = root / f"step-{state.step:06d}", root / f".tmp-step-{state.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run.model.save_pretrained(str(tmp))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    _write_atomic(tmp / "rng_state.json", json.dumps(_rng_state()))
    trainer_state = {
        "step": state.step, "total_steps": run.total_steps, "epoch": planned.epoch,
        "offset": planned.offset + len(planned.examples), "tokens": state.tokens,
        "seconds": state.seconds + (time.perf_counter() - session_start), "loss_sum": state.loss_sum,
        "last_loss": state.last_loss, "config_hash": run.config_hash, "threads": run.threads,
    }
    _write_atomic(tmp / "trainer_state.json", json.dumps(trainer_state, indent=2))
    if final.exists():  # the same step saved before a crash that lost the later steps
        shutil.rmtree(final)
    os.replace(tmp, final)
    if run.events is not None:
        run.events("checkpoint", {"step": state.step, "path": str(final)})
    for cb in run.callbacks:
        cb.on_checkpoint(ctx, final)
    return final


def _load_checkpoint(run: TrainingRun, optimizer: Any, scheduler: Any) -> _TrainerState:
    import torch

    path = run.checkpoint
    assert path is not None
    saved = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    if saved["config_hash"] != run.config_hash or saved["total_steps"] != run.total_steps:
        raise Conflict(f"checkpoint {path} belongs to another config or plan; start a new run under another "
                       "output.name", field="output.name")
    _load_adapter_weights(run.model, path, "checkpoint", field="resume")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    _set_rng_state(json.loads((path / "rng_state.json").read_text(encoding="utf-8")))
    for stale in (run.out_dir / CHECKPOINTS).glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return _TrainerState(saved["step"], saved["tokens"], saved["seconds"], saved["loss_sum"], saved["last_loss"])


def _start_run_dir(run: TrainingRun) -> None:
    """A fresh run (or a resumed one with no checkpoint yet): run.yaml, examples.jsonl and run.json."""
    import peft
    import torch
    import transformers

    from .. import __version__

    run.out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(run.out_dir / "run.yaml", run.config.to_yaml())
    _write_atomic(run.out_dir / "examples.jsonl", examples_jsonl(run.data))
    now = run.clock()
    run.previous = {
        "format": "royalty.run/1", "name": run.config.output.name, "config_hash": run.config_hash,
        "status": "running", "step": 0, "total_steps": run.total_steps, "started_ms": now, "updated_ms": now,
        "finished_ms": None, "base_model": run.base.to_dict(), "sources": run.data.sources,
        "lineage": {"parent": run.parent}, "threads": run.threads, "data_report": run.data.report.to_dict(),
        "versions": {"royalty": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
    }
    _write_atomic(run.out_dir / "run.json", json.dumps(run.previous, indent=2))


def examples_jsonl(data: DataSplit) -> str:
    """The text of a run's ``examples.jsonl``: one line per example (train, then eval) with its index, contribution,
    contributor, datanet, version, position, token counts and split. Its SHA-256 is the manifest's
    ``lineage.examples_sha256``, which attribution uses to check that it rebuilt the same examples."""
    lines = []
    for split, examples in (("train", data.train), ("eval", data.eval)):
        for e in examples:
            lines.append(json.dumps({
                "index": e.index, "contribution_id": e.contribution_id, "contributor": e.contributor,
                "datanet": e.datanet, "version": e.version, "position": e.position, "tokens": len(e.input_ids),
                "trained_tokens": e.trained_tokens, "split": split,
            }) + "\n")
    return "".join(lines)


def _mark(run: TrainingRun, status: str, step: int) -> None:
    """Update run.json's status (running | interrupted | finished) and step."""
    assert run.previous is not None
    now = run.clock()
    run.previous.update(status=status, step=step, updated_ms=now)
    if status == "finished":
        run.previous["finished_ms"] = now
    _write_atomic(run.out_dir / "run.json", json.dumps(run.previous, indent=2))


def _save_adapter(run: TrainingRun) -> Path:
    """The final adapter in ``out_dir/adapter`` (written under a temporary name, then renamed)."""
    final, tmp = run.out_dir / "adapter", run.out_dir / ".tmp-adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.save_pretrained(str(tmp))
    if final.exists():  # left by a crash between this rename and run.json's "finished"
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------
# RNG
# ----------------------------------------------------------------------------------------------------------------


def _seed_all(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """The torch CPU, Python and NumPy RNG states as JSON-able values (no pickle in checkpoints)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray.fromhex(state["torch"]), dtype=torch.uint8))
