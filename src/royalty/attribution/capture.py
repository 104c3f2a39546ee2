"""Exact per-example gradients of a LoRA adapter's parameters, from hooks (LoGra-style), for attribution.

What is measured. An example's loss is the SUM of the negative log-likelihoods of its trained tokens (labels !=
-100 after the causal shift: the response, never the prompt), ``S = −log p(response | prompt)``; its gradient is
``g = ∇θ S`` over the LoRA parameters θ: every module's lora_A then lora_B weight, modules in ``named_modules``
order, each row-major (``Projector`` maps it to fewer numbers). The sum, not the mean, is the quantity whose
log-likelihood the receipt talks about, and it does not depend on how examples were batched. A query (prompt,
response) uses the same definition, so ``⟨g_train, g_query⟩ > 0`` means a gradient step on the training example
lowers the query's loss: a higher score means a more helpful example.

How. A peft LoRA Linear computes ``y = W x + s · B(A(drop(x)))``. Forward hooks on its ``lora_A`` keep
``x' = drop(x)`` [B, T, d_in] and ``u = A x'`` [B, T, r]; tensor hooks keep ``gu = ∂L/∂u`` [B, T, r] and
``gz = ∂L/∂z`` [B, T, d_out] for ``z = B u``, the output of ``lora_B`` *before* peft multiplies it by the scaling
s (so gz = s · ∂L/∂y: the scaling, LoRA's or rsLoRA's, is already in it). Then for each example b

    gB_b = Σ_t gz_bt ⊗ u_bt   [d_out, r]          gA_b = Σ_t gu_bt ⊗ x'_bt   [r, d_in]

which are exactly the per-example terms autograd sums into the weights' gradients (no full-model gradient, no
vmap, no per-example backward). Dropout is inside x', so a capture during training is exact for that forward.
Right padding adds nothing: padded positions come after every real token and carry label -100, so their
gradients are exactly zero. A module called more than once in a pass adds up its calls.

Refused with InvalidInput: a model without LoRA modules, LoRA on non-Linear layers, several active adapters,
merged or disabled adapters, DoRA and other LoRA variants, LoRA biases (``lora_bias``), gradient checkpointing
(it reruns the forward inside backward).

Numbers are float32; the per-token sums run in a fixed order for given shapes, so a pass is repeatable bit for bit
with the same batches and thread count. A row depends on its batch's padding width only at rounding level.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from ..errors import InvalidInput
from ..factory.callbacks import Batch, TrainCallback, TrainContext, pad_id
from ..factory.data import IGNORE, Example
from .projection import LoraModuleShape, Projector, full_dim

if TYPE_CHECKING:
    import torch

    from ..factory.train import RunResult

_PEFT_PREFIX = "base_model.model."  # PeftModel's wrapper prefix: layout names are the base model's module names


class LoraGradientCapture:
    """Hooks on every LoRA module of a PeftModel that turn one backward pass into per-example gradients.

    Use as a context manager (hooks are attached on enter and removed on exit; the LoRA weights require grad
    inside, as they did before after). Inside: run a forward of a batch and a backward of a loss that is a sum
    over examples of each example's own loss (times one common factor), then ``per_example()``.
    ``layout`` lists the LoRA modules; ``dim`` is the row length (the projector's, or the number of LoRA
    parameters). Forwards under ``torch.no_grad`` and forwards while ``active`` is False are not recorded.
    """

    def __init__(self, model: Any, *, projector: Projector | None = None) -> None:
        self.model = model
        self._modules = _lora_modules(model)  # [(layout name, lora_A module, lora_B module)]
        self.layout = [LoraModuleShape(name, a.in_features, b.out_features, a.out_features)
                       for name, a, b in self._modules]
        if projector is not None and projector.layout != self.layout:
            raise InvalidInput("the projector was made for another model or LoRA config (its layout differs from "
                               "this adapter's LoRA modules); build it from this model's layout", field="projector")
        self.projector = projector
        self.dim = projector.dim if projector is not None else full_dim(self.layout)
        self.active = True
        self._calls: dict[str, list[dict[str, Any]]] = {}  # per module, per forward call: x, u, gu, gz
        self._handles: list[Any] = []
        self._saved_requires_grad: list[tuple[Any, bool]] = []

    def __enter__(self) -> Self:
        for name, a, b in self._modules:
            self._handles.append(a.register_forward_hook(self._hook_a(name)))
            self._handles.append(b.register_forward_hook(self._hook_b(name)))
        self._saved_requires_grad = [(w, w.requires_grad) for w in self.weights()]
        for w, _ in self._saved_requires_grad:
            w.requires_grad_(True)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for w, flag in self._saved_requires_grad:
            w.requires_grad_(flag)
        self.clear()

    def weights(self) -> list[torch.Tensor]:
        """The LoRA weights in layout order (A then B per module): what the gradient is taken over."""
        return [w for _, a, b in self._modules for w in (a.weight, b.weight)]

    def clear(self) -> None:
        """Forget what the hooks recorded (``per_example`` does this itself)."""
        self._calls = {}

    def per_example(self, *, loss_scale: float = 1.0) -> torch.Tensor:
        """[B, dim] float32: each example's gradient of its own loss, projected when a projector is set.

        Call after the backward of ``loss_scale · Σ_b S_b``; the rows are divided by ``loss_scale`` (in training,
        ``Batch.loss_scale``). Clears the recorded pass. Raises InvalidInput when no complete forward and backward
        pass was recorded since the last call.
        """
        import torch

        rows = []
        for module in self.layout:
            calls = self._calls.get(module.name)
            if not calls or any("gu" not in c or "gz" not in c for c in calls):
                self.clear()
                raise InvalidInput(
                    f"no complete forward and backward pass was recorded for LoRA module {module.name}: run the "
                    "forward with gradients enabled and backpropagate the summed loss before per_example()",
                    field="model",
                )
            # gA_b = Σ_t gu_bt ⊗ x'_bt: [B, T, r] x [B, T, d_in] -> [B, r, d_in]; gB_b = Σ_t gz_bt ⊗ u_bt -> [B, d_out, r]
            g_a = sum(torch.einsum("btr,bti->bri", c["gu"].float(), c["x"].float()) for c in calls)
            g_b = sum(torch.einsum("bto,btr->bor", c["gz"].float(), c["u"].float()) for c in calls)
            if loss_scale != 1.0:
                g_a, g_b = g_a / loss_scale, g_b / loss_scale
            if self.projector is not None:
                rows.append(self.projector.project_module(module.name, g_a, g_b))  # [B, module_dims[name]]
            else:
                rows.append(torch.cat([g_a.flatten(1), g_b.flatten(1)], dim=1))  # [B, r·(d_in + d_out)]
        self.clear()
        return torch.cat(rows, dim=1)

    def gradients(self, examples: Sequence[Example], pad_token_id: int, *, batch_size: int = 8,
                  sink: Callable[[list[Example], np.ndarray], None] | None = None) -> np.ndarray:
        """Per-example gradients of ``examples`` (their summed response NLL) at the model's current weights, in
        batches of ``batch_size`` in the given order, with the model in eval mode (no dropout) and its training
        mode restored after. Returns [n, dim] float32; with ``sink``, each batch goes to ``sink(examples, rows)``
        instead and the result is empty ([0, dim]). Parameters' ``.grad`` and the RNG are left untouched.
        """
        import torch

        if batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1 (got {batch_size})", field="batch_size")
        device = next(self.model.parameters()).device
        weights = self.weights()
        was_training, was_active = self.model.training, self.active
        out: list[np.ndarray] = []
        self.model.eval()
        self.active = True
        try:
            with torch.enable_grad():
                for at in range(0, len(examples), batch_size):
                    chunk = list(examples[at : at + batch_size])
                    batch = Batch.collate(chunk, pad_token_id)
                    self.clear()
                    logits = self.model(input_ids=batch.input_ids.to(device),
                                        attention_mask=batch.attention_mask.to(device)).logits  # [B, T, V]
                    loss = summed_nll(logits, batch.labels.to(device))
                    # autograd.grad, not backward: nothing accumulates into .grad (a training step may follow).
                    torch.autograd.grad(loss, weights)
                    rows = self.per_example().cpu().numpy()
                    if sink is not None:
                        sink(chunk, rows)
                    else:
                        out.append(rows)
        finally:
            self.clear()
            self.active = was_active
            self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def _hook_a(self, name: str) -> Callable[..., None]:
        def hook(_module: Any, inputs: tuple[Any, ...], output: Any) -> None:
            if not (self.active and output.requires_grad):
                return
            call: dict[str, Any] = {"x": inputs[0].detach(), "u": output.detach()}
            self._calls.setdefault(name, []).append(call)
            output.register_hook(lambda grad: call.__setitem__("gu", grad))

        return hook

    def _hook_b(self, name: str) -> Callable[..., None]:
        def hook(_module: Any, _inputs: tuple[Any, ...], output: Any) -> None:
            calls = self._calls.get(name)
            if not (self.active and output.requires_grad and calls):
                return
            call = calls[-1]  # lora_B runs right after the lora_A call that fed it
            output.register_hook(lambda grad: call.__setitem__("gz", grad))

        return hook


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ over examples and trained tokens of −log p(token): ``logits`` [B, T, V], ``labels`` [B, T] with -100
    where not trained; position t's logits predict label t+1 (the causal shift), in float32."""
    import torch

    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def example_gradients(model: Any, tokenizer_pad_id: int, examples: Sequence[Example], *,
                      projector: Projector | None = None, batch_size: int = 8) -> np.ndarray:
    """[n, D] float32: the gradient of each example's summed response NLL at the model's current weights
    (post-hoc pass, eval mode, batches of ``batch_size`` in order). D is ``projector.dim`` or the number of
    LoRA parameters. Rebuilding an index bit for bit needs the same batch size and thread count."""
    with LoraGradientCapture(model, projector=projector) as capture:
        return capture.gradients(examples, tokenizer_pad_id, batch_size=batch_size)


def query_gradient(model: Any, prompt_ids: Sequence[int], response_ids: Sequence[int], *,
                   projector: Projector | None = None) -> np.ndarray:
    """[D] float32: ∇θ of −log p(response | prompt), the same quantity as a training row (see the module
    docstring: a positive inner product with a row means that example lowers this response's loss).

    ``prompt_ids`` are the tokens before the response exactly as the model sees them (``factory.data.encode_chat``
    with the generation prompt: BOS and template included); ``response_ids`` the response's tokens (with EOS if
    the answer ended there). Raises InvalidInput for an empty response or ids that are not integers in the
    model's vocabulary.
    """
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = [*prompt_ids, *response_ids]
    if not response_ids:
        raise InvalidInput("the response has no tokens: attribution needs at least one response token",
                           field="response")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
        raise InvalidInput(f"prompt and response ids must be integers in [0, {vocab}) (the model's vocabulary)",
                           field="prompt")
    example = Example(index=0, contribution_id="", contributor="", datanet_id="", datanet="", version=0,
                      position=0, input_ids=ids, labels=[IGNORE] * len(prompt_ids) + list(response_ids))
    with LoraGradientCapture(model, projector=projector) as capture:
        return capture.gradients([example], 0)[0]


@dataclass
class CapturedRows:
    """Rows a :class:`CaptureCallback` hands to its sink.

    ``step`` is the number of optimizer steps applied to the weights the gradients were taken at (so rows of
    step s pair with checkpoint ``step-s``); ``source`` is ``"train"`` (the examples of a micro-batch, captured
    inside the training pass, dropout included) or ``"checkpoint"`` (a pass over every training example at a
    checkpoint, eval mode). ``grads[j]`` is ``examples[j]``'s gradient, [B, D] float32.
    """

    step: int
    source: str
    examples: list[Example]
    grads: np.ndarray


class CaptureCallback(TrainCallback):
    """Captures per-example gradients during ``fit`` into ``sink(CapturedRows)``.

    ``steps``: the optimizer steps whose micro-batches are captured inside the training pass (step s is the
    one that starts from the weights after s steps; None = every step, empty = none). ``checkpoints``: at
    every checkpoint, also a pass over all training examples at the checkpoint's weights (TracIn-CP rows;
    costs about one forward and backward per example, batches of ``batch_size``).

    A resumed run calls the sink again for the steps after its checkpoint: a sink that persisted rows of the
    interrupted session must drop those with ``step >= ctx.step`` of ``on_train_begin``. If ``fit`` raises,
    the hooks stay on the model (it is normally discarded).
    """

    def __init__(self, sink: Callable[[CapturedRows], None], *, projector: Projector | None = None,
                 steps: Collection[int] | None = None, checkpoints: bool = False, batch_size: int = 8) -> None:
        self.sink = sink
        self.projector = projector
        self.steps = steps
        self.checkpoints = checkpoints
        self.batch_size = batch_size
        self._capture: LoraGradientCapture | None = None

    def on_train_begin(self, ctx: TrainContext) -> None:
        if self._capture is None:
            self._capture = LoraGradientCapture(ctx.model, projector=self.projector).__enter__()
        self._capture.active = False

    def on_batch_begin(self, ctx: TrainContext, batch: Batch) -> None:
        assert self._capture is not None
        self._capture.clear()
        self._capture.active = self.steps is None or ctx.step in self.steps

    def on_batch_end(self, ctx: TrainContext, batch: Batch, loss: torch.Tensor) -> None:
        assert self._capture is not None
        if self._capture.active:
            rows = self._capture.per_example(loss_scale=batch.loss_scale).cpu().numpy()
            self.sink(CapturedRows(ctx.step, "train", [ctx.data.train[i] for i in batch.example_indices], rows))
        self._capture.active = False

    def on_checkpoint(self, ctx: TrainContext, path: Any) -> None:
        if not self.checkpoints:
            return
        assert self._capture is not None
        self._capture.gradients(
            ctx.data.train, pad_id(ctx.tokenizer), batch_size=self.batch_size,
            sink=lambda examples, rows: self.sink(CapturedRows(ctx.step, "checkpoint", examples, rows)),
        )

    def on_train_end(self, ctx: TrainContext, result: RunResult) -> None:
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None


def _lora_modules(model: Any) -> list[tuple[str, Any, Any]]:
    """(layout name, lora_A, lora_B) of every LoRA module of ``model``, in ``named_modules`` order; refuses
    what the hooks cannot capture exactly (see the module docstring)."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    # transformers' own flag on each module (its model-level property was renamed in v5, with a warning).
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        raise InvalidInput("gradient checkpointing is on: it reruns the forward inside backward, which the capture "
                           "hooks would count twice; disable it for attribution", field="model")
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        short = name.removeprefix(_PEFT_PREFIX)
        if not isinstance(module, LoraLinear):
            raise InvalidInput(f"LoRA module {short} wraps a {type(module.get_base_layer()).__name__}; gradient "
                               "capture supports LoRA on Linear layers only: target only linear layers",
                               field="lora.target_modules")
        active = [a for a in module.active_adapters if a in module.lora_A]
        if len(active) != 1:
            raise InvalidInput(f"LoRA module {short} has {len(active)} active adapters ({', '.join(active) or 'none'}); "
                               "gradient capture needs exactly one: set_adapter() the one to attribute",
                               field="model")
        adapter = active[0]
        if module.merged:
            raise InvalidInput(f"LoRA module {short} is merged into its base weights; unmerge the adapter "
                               "(unmerge_adapter()) before capturing gradients", field="model")
        if module.disable_adapters:
            raise InvalidInput(f"LoRA module {short} has its adapters disabled; enable them before capturing "
                               "gradients", field="model")
        if adapter in module.lora_variant:
            variant = "DoRA (lora.use_dora)" if module.use_dora.get(adapter) else type(module.lora_variant[adapter]).__name__
            raise InvalidInput(f"LoRA module {short} uses {variant}; gradient capture supports plain LoRA only: "
                               "train the adapter without it", field="lora.use_dora")
        a, b = module.lora_A[adapter], module.lora_B[adapter]
        if a.bias is not None or b.bias is not None:
            raise InvalidInput(f"LoRA module {short} has a LoRA bias (lora_bias); gradient capture covers the A and "
                               "B weights only: train without lora_bias", field="model")
        found.append((short, a, b))
    if not found:
        raise InvalidInput("the model has no LoRA modules: gradient capture needs a peft LoRA adapter (PeftModel)",
                           field="model")
    return found
