"""In-run influence: what each training example contributed to the updates that made the adapter (issue 6).

For every optimizer step t of a run and every example i in its batch B_t, the part of the step's update that
example i is responsible for is, to first order in AdamW (weight decay 0):

    u_{t,i} = η_t · c_t · s_{t,i} · (P_t ⊙ g_i(θ_t))                                   [D]

- g_i(θ_t): the exact gradient of example i's summed response NLL at the weights the step started from, captured
  from the training backward itself (``capture.LoraGradientCapture``: the same forward, dropout included);
- s_{t,i}: the weight of that sum in the step's loss (``Batch.loss_scale`` = 1 / (k · N), the mean token loss);
- c_t = min(1, max_grad_norm / (‖∇‖ + 1e-6)): the factor ``clip_grad_norm_`` applied;
- η_t: the step's learning rate; P_t = 1 / (sqrt(v̂_t) + ε): AdamW's per-parameter scale after the step (v̂ the
  bias-corrected second moment). Momentum spreads u_{t,i} over the following steps; its weights sum to one, so the
  total moved is the same.

An example's **row** is Σ_t u_{t,i} over the steps it was in (every epoch), projected with the index's
``Projector`` (linear, so projecting each term and summing is the same). The weights moved by −Σ_i row_i in
total, so a query whose NLL gradient is q changed its log-likelihood by ≈ Σ_i ⟨q, row_i⟩: ⟨q, row_i⟩ > 0 means
the example made the answer more likely. Receipts score with the cosine ⟨q, row_i⟩ / (‖q‖ ‖row_i‖): Adam bounds how
far any one example moves the weights, so a row's length says more about how badly the example fitted than about
its effect (B1: unit rows raise LDS from 0.15 to 0.38 and stop junk with huge gradients from ranking first).

Compared with gradients at the final weights (Grad-Dot/Cos) or at a few checkpoints (TracIn-CP), a row follows the
whole trajectory: the gradient when the example was actually used, scaled as Adam scaled it. It costs one
per-example outer product per micro-batch during training (no extra forward or backward) and ``dim`` numbers per
example. ``benchmarks/attribution/b1.py`` compares it with the other methods; ``benchmarks/attribution/capture.py``
measures the overhead.

The accumulation is deterministic for a fixed thread count: terms are added in step order in float64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInput
from ..factory.callbacks import Batch, TrainCallback, TrainContext
from .capture import LoraGradientCapture
from .projection import Projector

if TYPE_CHECKING:
    import torch

    from ..factory.data import DataSplit, Example
    from ..factory.train import RunResult


class InRunInfluence(TrainCallback):
    """Accumulates every training example's row (see the module docstring) during ``factory.train.fit``.

    ``projector``: the index's projection (None keeps full LoRA-sized rows). After the run, ``rows`` [n, dim]
    float64 holds one row per ``examples`` entry (the run's training examples, in their order) and ``steps`` the
    number of optimizer steps seen. A run must be followed from step 0 (a resumed run would miss the steps before
    its checkpoint: refused).

    A training loop of its own can drive it without callbacks: ``start(model, examples)``, then per micro-batch
    (forward and backward of ``loss_scale · Σ_b S_b``) ``add_batch(example_indices)``, per optimizer step
    ``end_step(optimizer, lr, grad_norm, max_grad_norm)``, and ``close()`` at the end.
    """

    def __init__(self, projector: Projector | None = None) -> None:
        self.projector = projector
        self.rows: np.ndarray = np.zeros((0, 0))
        self.examples: list[Example] = []
        self.steps = 0
        self._capture: LoraGradientCapture | None = None
        self._position: dict[int, int] = {}  # Example.index -> row
        self._pending: list[tuple[list[int], Any]] = []  # the step's micro-batches: (rows, [B, D] scaled grads)
        self._weights: list[Any] = []  # the LoRA weights in layout order (keys of the optimizer's state)

    # --- the accumulator ----------------------------------------------------------------------------------------

    def start(self, model: Any, examples: list[Example]) -> None:
        """Attach to ``model`` (a PeftModel) for a run over ``examples`` (each with a distinct ``index``)."""
        capture = LoraGradientCapture(model)
        if self.projector is not None and self.projector.layout != capture.layout:
            raise InvalidInput("the projector was made for another model or LoRA config", field="projector")
        self._capture = capture.__enter__()
        self._capture.active = False
        self._weights = self._capture.weights()
        self.examples = list(examples)
        self._position = {e.index: row for row, e in enumerate(self.examples)}
        dim = self.projector.dim if self.projector is not None else self._capture.dim
        self.rows = np.zeros((len(self.examples), dim), dtype=np.float64)
        self.steps = 0

    def begin_batch(self) -> None:
        """Record the next forward and backward pass."""
        assert self._capture is not None, "start() first"
        self._capture.clear()
        self._capture.active = True

    def add_batch(self, example_indices: list[int]) -> None:
        """After the backward of one micro-batch whose rows are the examples with these ``Example.index``."""
        assert self._capture is not None, "start() first"
        # per_example() with the default scale returns the gradients of loss_scale · S_b: exactly each example's
        # term of the step's objective (s_{t,i} · g_i)
        grads = self._capture.per_example()  # [B, D] float32
        self._capture.active = False
        self._pending.append(([self._position[i] for i in example_indices], grads))

    def end_step(self, optimizer: Any, lr: float, grad_norm: float, max_grad_norm: float) -> None:
        """After ``optimizer.step()`` (AdamW) of a step that used learning rate ``lr`` and clipped a gradient of
        norm ``grad_norm`` to ``max_grad_norm``: add the step's terms to the rows of its examples."""
        import torch

        scale = lr * min(1.0, max_grad_norm / (grad_norm + 1e-6))  # η_t · c_t, as clip_grad_norm_ scales
        precondition = self._adam_scale(optimizer)  # [D] P_t
        with torch.no_grad():
            for rows, grads in self._pending:
                terms = grads * precondition * scale  # [B, D]
                if self.projector is not None:
                    terms = self.projector.project_rows(terms)  # [B, dim]
                # rows within one micro-batch are distinct examples, so this fancy-index add is exact
                self.rows[rows] += terms.double().cpu().numpy()
        self._pending = []
        self.steps += 1

    @property
    def attached(self) -> bool:
        """Whether it still follows a run (``start`` called, ``close`` not yet)."""
        return self._capture is not None

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None

    def _adam_scale(self, optimizer: Any) -> torch.Tensor:
        """[D] 1 / (sqrt(v̂) + ε) of every LoRA parameter in layout order, as AdamW divides the step by it."""
        import torch

        parts = []
        group = optimizer.param_groups[0]  # the factory's AdamW has one parameter group
        beta2, eps = group["betas"][1], group["eps"]
        for weight in self._weights:
            state = optimizer.state[weight]
            correction = 1.0 - beta2 ** float(state["step"])
            parts.append(((state["exp_avg_sq"] / correction).sqrt() + eps).reciprocal().flatten())
        return torch.cat(parts)

    # --- the factory's callback hooks ---------------------------------------------------------------------------

    def on_train_begin(self, ctx: TrainContext) -> None:
        if ctx.step != 0:
            raise InvalidInput("in-run influence must follow a run from its first step; this run resumes at step "
                               f"{ctx.step}: build the index by replaying the run from the start", field="resume")
        self.start(ctx.model, ctx.data.train)

    def on_batch_begin(self, ctx: TrainContext, batch: Batch) -> None:
        self.begin_batch()

    def on_batch_end(self, ctx: TrainContext, batch: Batch, loss: torch.Tensor) -> None:
        self.add_batch(batch.example_indices)

    def on_step_end(self, ctx: TrainContext) -> None:
        if ctx.optimizer is None:
            raise InvalidInput("in-run influence needs the optimizer in the training context", field="optimizer")
        self.end_step(ctx.optimizer, ctx.last_lr, ctx.grad_norm, ctx.config.train.max_grad_norm)

    def on_train_end(self, ctx: TrainContext, result: RunResult) -> None:
        self.close()


class IndexCapture(InRunInfluence):
    """``InRunInfluence`` for an attribution index recorded while the adapter trains (``Attribution.capture``): it
    makes its projector (``dim``, ``seed``, ``kind``) from the model it attaches to and keeps the run's data split,
    whose examples and texts the index needs."""

    def __init__(self, dim: int, seed: int, kind: str) -> None:
        super().__init__(None)
        self.dim, self.seed, self.kind = dim, seed, kind
        self.data: DataSplit | None = None

    def on_train_begin(self, ctx: TrainContext) -> None:
        if ctx.step != 0:
            raise InvalidInput("an attribution index can only be captured from a run's first step; this run resumes "
                               f"at step {ctx.step}: build the index by replay instead (royalty attribution index "
                               "build ADAPTER)", field="resume")
        with LoraGradientCapture(ctx.model) as capture:
            self.projector = Projector(capture.layout, self.dim, self.seed, self.kind)
        self.data = ctx.data
        super().on_train_begin(ctx)
