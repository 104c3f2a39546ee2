"""Held-out evaluation of an adapter against its base model: loss, perplexity, best and worst examples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .callbacks import Batch, pad_id

if TYPE_CHECKING:
    from .data import Example


def evaluate(
    model: Any, tokenizer: Any, examples: Sequence[Example], *, batch_size: int = 8, top: int = 3
) -> dict[str, Any]:
    """Loss and perplexity of ``examples`` with the adapter (``model``, a PeftModel) and without it (the base,
    through ``model.disable_adapter()``), over the same trained tokens as training (labels != -100).

    ``loss`` is the mean cross-entropy per trained token over all examples (so perplexity = exp(loss) is the
    usual corpus perplexity); each example's own loss is the mean over its tokens. ``best`` / ``worst`` are the
    ``top`` examples with the lowest / highest adapter loss: ``{index, contribution_id, datanet, version,
    position, loss, base_loss}``. Empty ``examples`` give zero counts and None losses. Dropout is off during
    evaluation and the model's train/eval mode is restored afterwards.
    """
    import torch

    if not examples:
        return {"examples": 0, "tokens": 0, "loss": None, "perplexity": None, "base_loss": None,
                "base_perplexity": None, "best": [], "worst": []}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            adapter_sums, counts = _summed_losses(model, examples, pad_id(tokenizer), batch_size)
            with model.disable_adapter():
                base_sums, _ = _summed_losses(model, examples, pad_id(tokenizer), batch_size)
    finally:
        model.train(was_training)

    tokens = sum(counts)
    loss, base_loss = sum(adapter_sums) / tokens, sum(base_sums) / tokens
    rows = [
        {"index": e.index, "contribution_id": e.contribution_id, "datanet": e.datanet, "version": e.version,
         "position": e.position, "loss": round(a / n, 6), "base_loss": round(b / n, 6)}
        for e, a, b, n in zip(examples, adapter_sums, base_sums, counts, strict=True)
    ]
    ranked = sorted(rows, key=lambda r: (r["loss"], r["index"]))
    return {
        "examples": len(examples), "tokens": tokens,
        "loss": round(loss, 6), "perplexity": round(math.exp(loss), 4),
        "base_loss": round(base_loss, 6), "base_perplexity": round(math.exp(base_loss), 4),
        "best": ranked[:top], "worst": ranked[::-1][:top],
    }


def _summed_losses(model: Any, examples: Sequence[Example], pad: int, batch_size: int) -> tuple[list[float], list[int]]:
    """Per example: the summed token cross-entropy over its trained tokens, and how many there are."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    sums: list[float] = []
    counts: list[int] = []
    for at in range(0, len(examples), batch_size):
        batch = Batch.collate(examples[at : at + batch_size], pad)
        logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
        labels = batch.labels[:, 1:].to(device)  # [B, T-1]: token t+1 is predicted at position t
        ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        sums += ce.sum(dim=1).tolist()  # [B]; ignored positions contribute 0
        counts += (labels != -100).sum(dim=1).tolist()
    if any(n == 0 for n in counts):
        raise ValueError("an example without trained tokens reached evaluate; build_data must drop it")
    return sums, counts
