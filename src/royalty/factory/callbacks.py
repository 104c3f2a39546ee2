"""The training callback interface: how code outside the loop watches a run (``fit(run)`` calls these).

A callback subclasses :class:`TrainCallback` and overrides what it needs; every method is a no-op by default.
``setup(..., callbacks=[...])`` hands them to the loop, which calls them in the order given:

    on_train_begin(ctx)                 once per session (a resumed run calls it again, with ctx.step > 0)
    for each optimizer step:
        for each micro-batch:
            on_batch_begin(ctx, batch)  before the forward pass
            on_batch_end(ctx, batch, loss)   after backward, before the optimizer step: the LoRA parameters'
                                        ``.grad`` hold the gradient accumulated so far in this step
        on_step_end(ctx)                after optimizer.step() and scheduler.step(); ctx.step is the step done
    on_checkpoint(ctx, path)            after a checkpoint directory is complete (renamed into place)
    on_train_end(ctx, result)           when fit returns (finished or interrupted)

A callback must not touch the torch RNG (dropout draws from it; resume restores it from the checkpoint) nor
change parameters or gradients, or the run is no longer reproducible.

How the loss relates to per-example gradients (what attribution needs)
------------------------------------------------------------------------
A micro-batch ``b`` holds examples ``i`` with ``n_i`` trained tokens (labels != -100 after the causal shift);
``N_b = sum_i n_i``. The model's loss is the mean token loss of the micro-batch,
``L_b = (1 / N_b) * sum_i S_i`` with ``S_i`` = example i's summed token cross-entropy. An optimizer step
accumulates ``k`` micro-batches and backpropagates ``L_b / k`` for each, so the step's gradient is

    G = sum_b sum_i (1 / (k * N_b)) * grad S_i  =  sum_b sum_i (n_i / (k * N_b)) * grad mean_loss_i

``Batch.loss_scale`` is that ``1 / (k * N_b)``: the factor between example i's summed-loss gradient and its share
of ``G``. Gradients seen inside backward (hooks) are already multiplied by it.

How the attribution issue captures per-example LoRA gradients (LoGra-style; not implemented here)
--------------------------------------------------------------------------------------------------
For a LoRA linear ``y = W x + s * B (A x')`` (``x'`` = x after LoRA dropout) the gradient of ``B`` for one example
is a sum over its tokens of outer products ``g_t (x) h_t`` with ``g_t = s * dL/dy_t`` (the gradient of lora_B's
output) and ``h_t = A x'_t`` (lora_A's output); the gradient of ``A`` is ``sum_t (B^T g_t) (x) x'_t``. Every
factor is visible per token without materialising per-example gradients (plain LoRA; DoRA adds a magnitude term):

- ``on_train_begin``: register a forward hook on every ``lora_A`` module (captures its input ``x'`` [B, T, d_in]
  and output ``h`` [B, T, r]) and a full backward hook on every ``lora_B`` module (captures the gradient of its
  output ``g`` [B, T, d_out]).
- ``on_batch_begin``: remember ``batch.example_indices``; the hooks fill per-layer buffers during the pass.
- ``on_batch_end``: for each example (row of the batch, padding masked by ``batch.attention_mask``) form the
  per-example gradient of ``lora_B`` as ``sum_t g_t (x) h_t`` ([d_out, r]),
  optionally through a random projection on each side (LoGra: project ``g`` and ``h`` separately, so the
  feature is ``(P_out g)^T (P_in h)``, a few hundred numbers per layer), divide by ``batch.loss_scale`` to get
  the gradient of ``S_i``, and store it keyed by ``(ctx.step, example index)``; clear the hooks'
  buffers. ``ctx.model`` is the PeftModel; ``ctx.data.train`` maps indices to contribution ids.
- ``on_checkpoint``: flush the stored features next to the checkpoint (TracIn-style scores sum over checkpoints).
- ``on_train_end``: remove the hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .config import TrainConfig
    from .data import DataSplit, Example
    from .train import RunResult


@dataclass
class Batch:
    """One micro-batch, right-padded to its longest example.

    ``example_indices[j]`` is ``Example.index`` of row ``j`` (the index ``order.jsonl`` and ``examples.jsonl``
    use). ``input_ids``, ``attention_mask`` and ``labels`` are [B, T] int64; padding has attention 0 and label
    -100. ``loss_scale`` = 1 / (k · N) with N the trained tokens of this micro-batch and k the micro-batches in
    its optimizer step (see the module docstring).
    """

    example_indices: list[int]
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], -100 where not trained
    loss_scale: float = 1.0

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the micro-batch."""
        return int(self.attention_mask.sum())

    @property
    def trained_tokens(self) -> int:
        """Tokens the loss is taken over: labels != -100 after the causal shift (the first label never counts)."""
        return int((self.labels[:, 1:] != -100).sum())

    @classmethod
    def collate(cls, examples: Sequence[Example], pad_token_id: int, *, micro_batches: int = 1) -> Batch:
        """Right-pad ``examples`` to the longest; ``micro_batches`` = k of the step, for ``loss_scale``."""
        import torch

        width = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example.input_ids)
            input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
        batch = cls([e.index for e in examples], input_ids, attention_mask, labels)
        batch.loss_scale = 1.0 / (micro_batches * max(1, batch.trained_tokens))
        return batch


def pad_id(tokenizer: Any) -> int:
    """The id padding uses: the tokenizer's pad token, else EOS, else 0 (its value never matters: padded
    positions have attention 0 and label -100, and right padding comes after every real token)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


@dataclass
class TrainContext:
    """What callbacks see. The loop updates ``step`` (optimizer steps done) and ``epoch`` (0-based, of the step in
    progress or just done)."""

    config: TrainConfig
    model: Any  # peft.PeftModel
    tokenizer: Any
    data: DataSplit
    out_dir: Path
    step: int
    epoch: int
    total_steps: int
    # the last optimizer step's: what attribution needs to replay its update (set before on_step_end)
    optimizer: Any = None  # torch.optim.AdamW over the trainable parameters
    last_lr: float = 0.0  # the learning rate the step used
    grad_norm: float = 0.0  # the gradient norm before clipping


class TrainCallback:
    """Base class: override any of these; each is a no-op here. See the module docstring for when each runs."""

    def on_train_begin(self, ctx: TrainContext) -> None:
        """Once per fit() call, after the model, optimizer and (on resume) the checkpoint are loaded."""

    def on_batch_begin(self, ctx: TrainContext, batch: Batch) -> None:
        """Before the forward pass of one micro-batch."""

    def on_batch_end(self, ctx: TrainContext, batch: Batch, loss: torch.Tensor) -> None:
        """After backward of one micro-batch, before the optimizer step. ``loss`` is the micro-batch's mean token
        loss (detached, not divided by k)."""

    def on_step_end(self, ctx: TrainContext) -> None:
        """After optimizer.step(), scheduler.step() and zero_grad; ``ctx.step`` counts this step."""

    def on_checkpoint(self, ctx: TrainContext, path: Path) -> None:
        """After the checkpoint at ``path`` (``checkpoints/step-NNNNNN``) is complete."""

    def on_train_end(self, ctx: TrainContext, result: RunResult) -> None:
        """When fit() returns; ``result.interrupted`` says whether the run will be resumed."""
