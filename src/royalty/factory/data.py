"""Datanet versions → tokenized training examples with label masks, an eval split and a per-epoch order.

Rendering. Every record becomes a list of *pieces* (text, trained?) whose concatenation is the rendered text:

- ``text`` records, under every template: the text and EOS, all trained (they are documents, not chats).
- ``instruction`` records are the chat ``[system?, user=prompt, assistant=response]``.
- ``chat`` records, template ``chat``: the tokenizer's own chat template. Each message's header and footer are
  found by rendering the conversation one message at a time with a placeholder content; every assistant turn's
  content is trained together with its end-of-turn text up to and including EOS (anything the template writes
  after EOS, such as a newline, is not). Template ``plain``: ``### System:`` / ``### Instruction:`` / ``### Response:``
  headers (users are "Instruction", assistants "Response", so an instruction record and a one-turn chat render
  the same), turns separated by a blank line, each response followed by EOS, trained.
- ``auto`` is ``chat`` when the tokenizer has a chat template, else ``plain``.

Tokenizing. The pieces are joined into the example's text, which is tokenized once, whole, by the model's fast
tokenizer (``return_offsets_mapping``, no special tokens added; BOS is prepended when the tokenizer has one and the
template did not write it). So the ids are the tokenizer's own tokenization of the rendered text, whatever its
kind: byte-level BPE, or SentencePiece-style tokenizers that mark a word start with "▁" and so tokenize a text
differently in pieces than whole (Llama-2, Mistral, Gemma). A token is trained when its character span overlaps a
trained piece: a token straddling the boundary (a merge of the header's last character with the response's first)
is trained, so no character of a response is left out of the loss, and the EOS of a trained turn, written inside
the trained piece, is always trained. The serving prompt (:func:`encode_chat`) is the same text up to the
assistant header tokenized the same way, hence token for token the untrained prefix of a training example
wherever the tokenizer does not merge across that boundary (headers end in a newline or a control token).

Special-token text in record contents (a ``</s>`` typed into a response) is text, not a control token; only the
template writes control tokens. The whole-text pass turns every special-token string into its token, so when one
of them lies inside a record's content, the text is cut around each such occurrence: the occurrence is tokenized
as plain text (``split_special_tokens``) and the stretches between occurrences normally, each stretch after the
start behind a newline whose tokens are dropped, so that SentencePiece does not mark it as the start of a text
(transformers' ``apply_chat_template(sanitize_control_tokens=True)`` does the same). A tokenizer that produces the
control token even from plain text (Unigram models hold control tokens as ordinary pieces) makes such a row bad.
A slow (Python) tokenizer has no character offsets and is refused.

Every example is checked: ``decode(input_ids)`` must read as the rendered text, up to one space more or less at
the start and after a special token (the "▁" SentencePiece adds there, decoded as a space). A tokenizer that fails
it (words it cannot encode become ``<unk>``, a decoder that loses whitespace) is refused rather than trained on
text that differs from what the template renders. An example longer than ``data.max_seq_len`` keeps its first
``max_seq_len`` tokens (a response cut short loses its EOS; the preview says so).

Bad rows (``data.on_bad_rows``): a contribution purged after the version was published (its content is gone),
an example whose trained tokens are all cut off by ``max_seq_len``, a conversation the chat template cannot
render, special-token text the tokenizer cannot encode as text. With ``error`` they are reported in one
InvalidInput before any training (datanet@version, position, contribution id, reason and fix; the first 50 one by
one, the rest counted by kind); with ``skip`` they are left out and recorded in ``DataReport.skipped``. A datanet
listed twice in the config is refused by the config; a version that is not published is NotFound (all such refs
reported together).

Eval split: a contribution is held out when SHA-256(seed, contribution id) falls below ``eval_fraction``, so the
split does not depend on row order, and the same record in two datanets (same content = same id) lands on the
same side (no train/eval leakage).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import os
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from ..node import Node
    from .config import TrainConfig

IGNORE = -100  # label of a token that is not trained (the ignore_index of torch's cross-entropy)
_PLAIN_HEADERS = {"system": "### System:\n", "user": "### Instruction:\n", "assistant": "### Response:\n"}
_PLAIN_SEPARATOR = "\n\n"
# Stands in for a message's content while the chat template renders it, to find the header and footer around it.
_PLACEHOLDER = "\u27e6royalty-content\u27e7"
_LISTED_BAD_ROWS = 50  # bad rows listed one by one in the error; the rest are counted by reason


@dataclass
class Example:
    """One tokenized example and where it came from. ``labels[i]`` is ``input_ids[i]`` where trained, else -100."""

    index: int  # position in the run's example list: train examples first (= position in DataSplit.train), then eval
    contribution_id: str
    contributor: str
    datanet_id: str
    datanet: str  # slug
    version: int
    position: int  # leaf position in the datanet version
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # cut to data.max_seq_len

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class DataReport:
    """What building the data did: counts, the resolved template and every skipped row."""

    template: str  # "chat" or "plain" (auto resolved)
    rows: int = 0
    examples: int = 0
    train: int = 0
    eval: int = 0
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    # [{datanet, version, position, contribution_id, code (purged | too_long | template | control_text), reason, fix}]
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DataSplit:
    train: list[Example]
    eval: list[Example]
    # per datanet ref: slug, datanet_id, version, root (hex), size, weight, examples_train, examples_eval
    sources: list[dict[str, Any]]
    report: DataReport


class _Piece(NamedTuple):
    text: str
    trained: bool
    literal: bool = False  # record content: special-token text in it is not turned into control tokens


class _BadRow(Exception):
    """A row that cannot be trained on. ``code``: purged | too_long | template | control_text."""

    def __init__(self, code: str, reason: str, fix: str) -> None:
        self.code, self.reason, self.fix = code, reason, fix


def build_data(node: Node, cfg: TrainConfig, tokenizer: Any) -> DataSplit:
    """Tokenized train and eval examples of the config's datanet versions, with label masks.

    Raises NotFound naming every datanet ref whose datanet or version does not exist; InvalidInput when the
    tokenizer cannot be used (slow, no EOS, no chat template for ``template: chat``, lossy), when ``on_bad_rows`` is
    ``error`` and any row is bad (all listed: datanet@version, position, contribution id, reason, fix), or when
    no training example is left.
    """
    template = _resolve_template(tokenizer, cfg.data.template)
    encoder = _Encoder(tokenizer)
    refs = _resolve_refs(node, cfg)
    report = DataReport(template=template)
    built: list[Example] = []
    for _, dn, version in refs:
        for row in list(node.datanets.rows(dn.slug, version=version.number)):
            report.rows += 1
            try:
                ids, labels, truncated = _encode_row(encoder, template, dn.kind, row, cfg.data.max_seq_len)
            except _BadRow as bad:
                report.skipped.append(
                    {
                        "datanet": dn.slug,
                        "version": version.number,
                        "position": row["position"],
                        "contribution_id": row["contribution_id"],
                        "code": bad.code,
                        "reason": bad.reason,
                        "fix": bad.fix,
                    }
                )
                continue
            built.append(Example(
                index=-1,
                contribution_id=row["contribution_id"],
                contributor=row["contributor"],
                datanet_id=dn.id,
                datanet=dn.slug,
                version=version.number,
                position=row["position"],
                input_ids=ids,
                labels=labels,
                truncated=truncated,
            ))
    if report.skipped and cfg.data.on_bad_rows == "error":
        raise InvalidInput(_bad_rows_message(report.skipped), field="data.on_bad_rows")

    held_out = [_held_out(cfg.train.seed, ex.contribution_id, cfg.data.eval_fraction) for ex in built]
    train = [ex for ex, out in zip(built, held_out) if not out]
    held = [ex for ex, out in zip(built, held_out) if out]
    for i, ex in enumerate(train + held):
        ex.index = i
    if not train:
        raise InvalidInput(
            f"no training examples: {report.rows} rows, {len(report.skipped)} skipped, {len(held)} held out for "
            "evaluation; add data, or lower data.eval_fraction",
            field="data.datanets",
        )
    report.examples, report.train, report.eval = len(built), len(train), len(held)
    report.truncated = sum(ex.truncated for ex in built)
    report.tokens = sum(len(ex.input_ids) for ex in built)
    report.trained_tokens = sum(ex.trained_tokens for ex in built)
    sources = [
        {
            "slug": dn.slug,
            "datanet_id": dn.id,
            "version": version.number,
            "root": version.root.hex(),
            "size": version.size,
            "weight": ref.weight,
            "examples_train": sum(1 for ex in train if ex.datanet_id == dn.id),
            "examples_eval": sum(1 for ex in held if ex.datanet_id == dn.id),
        }
        for ref, dn, version in refs
    ]
    split = DataSplit(train=train, eval=held, sources=sources, report=report)
    if not epoch_order(split, cfg, 0):
        raise InvalidInput(
            "the mixing weights select no example in an epoch: raise the weight of data.datanets", field="data.datanets"
        )
    return split


def epoch_order(split: DataSplit, cfg: TrainConfig, epoch: int) -> list[int]:
    """Indices into ``split.train`` (= ``Example.index``) in the order epoch ``epoch`` shows them.

    A datanet of weight ``w`` with ``n`` training examples contributes each example ``floor(w)`` times plus a
    sample (seeded by seed and epoch, so different each epoch) of ``round(frac(w) * n)`` examples once more; the
    whole list is then shuffled by a generator seeded from (seed, epoch). Every epoch has the same length.
    """
    rng = random.Random(f"royalty.epoch:{cfg.train.seed}:{epoch}")
    by_slug: dict[str, list[int]] = {}
    for ex in split.train:
        by_slug.setdefault(ex.datanet, []).append(ex.index)
    order: list[int] = []
    for ref in cfg.data.datanets:
        indices = by_slug.get(ref.slug, [])
        whole = math.floor(ref.weight)
        order += indices * whole
        extra = math.floor((ref.weight - whole) * len(indices) + 0.5)
        order += rng.sample(indices, extra)
    rng.shuffle(order)
    return order


def encode_chat(
    tokenizer: Any, template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a conversation exactly as training encodes it (BOS, template, literal contents), followed by
    the assistant's header when ``add_generation_prompt``: the prompt to generate from at serving time.
    ``template`` is the config's ``data.template`` ("auto" resolves as in training)."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _PLAIN_HEADERS or not isinstance(m.get("content"), str):
            raise InvalidInput(
                f"messages[{i}] must be {{role: system|user|assistant, content: text}}", field=f"messages[{i}]"
            )
    resolved = _resolve_template(tokenizer, template)
    encoder = _Encoder(tokenizer)
    try:
        if resolved == "plain":
            pieces = _plain_pieces(tokenizer, messages, add_generation_prompt)
        else:
            pieces = _chat_template_pieces(tokenizer, messages, add_generation_prompt)
        ids, _ = encoder.encode(pieces)
    except _BadRow as bad:
        raise InvalidInput(f"{bad.reason}; {bad.fix}", field="messages") from None
    return ids


def preview(split: DataSplit, tokenizer: Any, n: int = 3) -> str:
    """A text view of the first ``n`` examples (training ones first): every token, escaped, in ``[...]`` when it is
    not trained and ``«...»`` when it is, then its counts and whether EOS is trained. Plain text (no colours)."""
    r = split.report
    lines = [
        (
            f"template: {r.template} · {r.train} train / {r.eval} eval examples from {r.rows} rows · "
            f"{len(r.skipped)} skipped · {r.truncated} truncated · {r.trained_tokens:,} of {r.tokens:,} tokens trained"
        ),
        "tokens: [not trained] «trained»",
    ]
    for bad in r.skipped:
        lines.append(
            f"skipped: {bad['datanet']}@{bad['version']} position {bad['position']}, contribution "
            f"{bad['contribution_id']}: {bad['reason']}"
        )
    eos = tokenizer.eos_token_id
    for ex in (split.train + split.eval)[:n]:
        which = "train" if ex.index < len(split.train) else "eval"
        lines += [
            "",
            (
                f"example {ex.index} ({which}) · {ex.datanet}@{ex.version} position {ex.position} · contribution "
                f"{ex.contribution_id}"
            ),
        ]
        shown = []
        for token, label in zip(ex.input_ids, ex.labels):
            text = repr(tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False))[1:-1]
            shown.append(f"«{text}»" if label != IGNORE else f"[{text}]")
        lines += _wrap(shown, 110)
        eos_trained = any(t == eos and label != IGNORE for t, label in zip(ex.input_ids, ex.labels))
        why = " (cut off by data.max_seq_len)" if not eos_trained and ex.truncated else ""
        lines.append(
            f"tokens: {len(ex.input_ids)} · trained: {ex.trained_tokens} · EOS trained: "
            f"{'yes' if eos_trained else 'no' + why}"
        )
    return "\n".join(lines)


# --- refs and the tokenizer ------------------------------------------------------------------------------------


def _resolve_refs(node: Node, cfg: TrainConfig) -> list[tuple[Any, Any, Any]]:
    """(ref, Datanet, DatanetVersion) per configured ref; NotFound listing every ref that does not resolve."""
    out, problems = [], []
    for i, ref in enumerate(cfg.data.datanets):
        try:
            dn = node.datanets.get(ref.slug)
            out.append((ref, dn, node.datanets.version(dn.slug, ref.version)))
        except NotFound as exc:
            problems.append(f"data.datanets[{i}] {ref.ref}: {exc.message}")
    if problems:
        raise NotFound("\n".join(problems), field="data.datanets")
    return out


def _resolve_template(tokenizer: Any, template: str) -> str:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "chat" if has_template else "plain"
    if template == "chat" and not has_template:
        raise InvalidInput(
            "data.template is chat but the tokenizer of model.base has no chat template: use data.template=plain "
            "(or auto)",
            field="data.template",
        )
    if template not in ("chat", "plain"):
        raise InvalidInput(f"template {template!r} is unknown: choose auto, chat or plain", field="data.template")
    return template


def _check_tokenizer(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidInput(
            f"the tokenizer of model.base is a slow (Python) tokenizer ({type(tokenizer).__name__}), which cannot say "
            "which characters each token covers, so trained tokens cannot be marked: use the fast tokenizer (give "
            "model.base a tokenizer.json; transformers.convert_slow_tokenizer builds one for most slow tokenizers)",
            field="model.base",
        )
    eos = tokenizer.eos_token
    if eos is None or tokenizer.eos_token_id is None:
        raise InvalidInput(
            "the tokenizer of model.base has no EOS token, so a trained response could never end: use a model whose "
            "tokenizer defines eos_token",
            field="model.base",
        )
    if tokenizer(eos, add_special_tokens=False)["input_ids"] != [tokenizer.eos_token_id]:
        raise InvalidInput(
            f"the tokenizer of model.base does not encode its EOS text {eos!r} as the single EOS token",
            field="model.base",
        )


# --- rendering ---------------------------------------------------------------------------------------------------


def _encode_row(
    encoder: _Encoder, template: str, kind: str, row: dict[str, Any], max_len: int
) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) of one row; _BadRow when it cannot be trained on."""
    if row["purged"]:
        raise _BadRow(
            "purged",
            "purged after this version was published: its content is erased",
            "train on a version published after the purge (royalty datanet publish)",
        )
    tokenizer = encoder.tokenizer
    if kind == "text":
        pieces = [_Piece(row["text"], True, True), _Piece(tokenizer.eos_token, True)]
    else:
        render = _plain_pieces if template == "plain" else _chat_template_pieces
        pieces = render(tokenizer, _messages(kind, row), False)
    ids, labels = encoder.encode(pieces)
    if len(ids) <= max_len:
        return ids, labels, False
    if all(label == IGNORE for label in labels[:max_len]):
        raise _BadRow(
            "too_long",
            f"the example has {len(ids)} tokens and all {sum(1 for label in labels if label != IGNORE)} trained ones "
            f"lie beyond data.max_seq_len={max_len}",
            "raise data.max_seq_len, or shorten the prompt",
        )
    return ids[:max_len], labels[:max_len], True


def _messages(kind: str, row: dict[str, Any]) -> list[dict[str, str]]:
    if kind == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*system, {"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def _plain_pieces(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[_Piece]:
    pieces: list[_Piece] = []
    for i, m in enumerate(messages):
        trained = m["role"] == "assistant"
        if i:
            pieces.append(_Piece(_PLAIN_SEPARATOR, False))
        pieces.append(_Piece(_PLAIN_HEADERS[m["role"]], False))
        pieces.append(_Piece(m["content"], trained, True))
        if trained:
            pieces.append(_Piece(tokenizer.eos_token, True))
    if add_generation_prompt:
        pieces.append(_Piece((_PLAIN_SEPARATOR if messages else "") + _PLAIN_HEADERS["assistant"], False))
    return pieces


def _chat_template_pieces(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[_Piece]:
    """Pieces of a conversation rendered by the tokenizer's chat template.

    The template must render incrementally: the rendering of the first k messages is a prefix of the rendering
    of the first k+1 (true of the usual templates). Message i's header and footer are what the template writes
    around a placeholder content; the real rendering must equal header + content + footer (or the content
    stripped, for templates that trim).
    """
    eos = tokenizer.eos_token
    pieces: list[_Piece] = []
    done = ""  # the rendering of the messages handled so far
    for i, m in enumerate(messages):
        assistant = m["role"] == "assistant"
        full = _render(tokenizer, messages[: i + 1], False)
        if assistant:
            # The generation prompt ("<|assistant|>\n") is the assistant header as serving writes it.
            head = _render(tokenizer, messages[:i], True)
            if head.startswith(done) and full.startswith(head):
                pieces.append(_Piece(head[len(done) :], False))
                done = head
        probe = _render(tokenizer, [*messages[:i], {"role": m["role"], "content": _PLACEHOLDER}], False)
        if not (full.startswith(done) and probe.startswith(done) and probe.count(_PLACEHOLDER) == 1):
            raise _BadRow(
                "template",
                f"the chat template does not render the conversation message by message (at messages[{i}])",
                "use data.template=plain",
            )
        header, footer = probe[len(done) :].split(_PLACEHOLDER)
        segment = full[len(done) :]
        content = next(
            (c for c in (m["content"], m["content"].strip()) if segment == header + c + footer), None
        )
        if content is None:
            raise _BadRow(
                "template",
                f"the chat template changes the text of messages[{i}] ({m['role']})", "use data.template=plain"
            )
        pieces += [_Piece(header, False), _Piece(content, assistant, True)]
        if assistant:
            # Train the end of the turn through EOS (the model must learn to stop); what follows EOS is not trained.
            # A template that writes no EOS gets its end-of-turn text trained instead (preview shows "EOS trained: no").
            at = footer.find(eos)
            end = at + len(eos) if at >= 0 else len(footer.rstrip())
            pieces += [_Piece(footer[:end], True), _Piece(footer[end:], False)]
        else:
            pieces.append(_Piece(footer, False))
        done = full
    if add_generation_prompt:
        prompt = _render(tokenizer, messages, True)
        if not prompt.startswith(done):
            raise _BadRow(
                "template", "the chat template's generation prompt does not extend the conversation", "use data.template=plain"
            )
        pieces.append(_Piece(prompt[len(done) :], False))
    return pieces


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not messages and not add_generation_prompt:
        return ""
    import jinja2

    try:
        if not messages:  # transformers refuses an empty conversation; a generation prompt alone is its suffix
            one = [{"role": "user", "content": _PLACEHOLDER}]
            with_prompt = tokenizer.apply_chat_template(one, tokenize=False, add_generation_prompt=True)
            return with_prompt[len(tokenizer.apply_chat_template(one, tokenize=False)) :]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except (jinja2.TemplateError, ValueError) as exc:
        raise _BadRow(
            "template", f"the chat template refused the conversation: {exc}", "use data.template=plain"
        ) from None


# --- tokenizing --------------------------------------------------------------------------------------------------


class _Encoder:
    """Rendered pieces → (input_ids, labels) with one fast tokenizer; what every row needs is computed once."""

    def __init__(self, tokenizer: Any) -> None:
        _check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        special = {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self.special_ids = frozenset(special)
        # Longest first, so that a special token wins over a shorter one it contains.
        strings = sorted(set(special.values()), key=len, reverse=True)
        self.special_re = re.compile("|".join(map(re.escape, strings)) or "(?!)")
        bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
        self.bos: tuple[str, int] | None = (bos, bos_id) if bos is not None and bos_id is not None else None

    def encode(self, pieces: list[_Piece]) -> tuple[list[int], list[int]]:
        """(input_ids, labels): the rendered text tokenized once, BOS prepended when the tokenizer has one and the
        template did not write it; a token is trained when its character span overlaps a trained piece.
        InvalidInput when the ids do not decode back to the text."""
        text = "".join(p.text for p in pieces)
        trained: list[tuple[int, int]] = []
        literal: list[tuple[int, int]] = []
        at = 0
        for piece in pieces:
            end = at + len(piece.text)
            if piece.trained and end > at:
                trained.append((at, end))
            if piece.literal and end > at:
                literal.append((at, end))
            at = end
        ids, offsets = self._tokenize(text, literal)
        labels = [t if _overlaps(span, trained) else IGNORE for t, span in zip(ids, offsets)]
        if self.bos is not None and ids[:1] != [self.bos[1]]:  # a BOS written by the template, not typed text
            ids, labels, text = [self.bos[1], *ids], [IGNORE, *labels], self.bos[0] + text
        decoded = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        where = _first_difference(text, decoded, self.special_re)
        if where is not None:
            i, j = where
            raise InvalidInput(
                f"the tokenizer of model.base does not reproduce the training text: {text[max(0, i - 20) : i + 20]!r} "
                f"decodes as {decoded[max(0, j - 20) : j + 20]!r}; training needs a lossless tokenizer such as "
                "byte-level BPE or SentencePiece with byte fallback",
                field="model.base",
            )
        return ids, labels

    def _tokenize(self, text: str, literal: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, character spans) of ``text``, where special-token text inside the ``literal`` spans (record
        contents) is plain text. Usually one pass; the stretches between such typed special tokens are tokenized
        apart only when a record contains one."""
        ids, offsets = self._call(text, as_text=False)
        typed = [span for t, span in zip(ids, offsets) if t in self.special_ids and _overlaps(span, literal)]
        if not typed:
            return ids, offsets
        parts: list[tuple[int, int, bool]] = []  # (start, end, as_text): typed tokens and the stretches around them
        at = 0
        for start, end in typed:
            parts += [(at, start, False), (start, end, True)]
            at = end
        parts.append((at, len(text), False))
        ids, offsets = [], []
        for start, end, as_text in parts:
            part_ids, part_offsets = self._part(text, start, end, as_text)
            if as_text and self.special_ids.intersection(part_ids):
                # A tokenizer whose model has the control token as an ordinary piece (Unigram vocabularies do)
                # produces it from plain text too: the typed text cannot be kept apart from the control token.
                raise _BadRow(
                    "control_text",
                    f"the text contains {text[start:end]!r}, which the tokenizer of model.base can only encode as a "
                    "control token",
                    "remove it from the record, or use a base model whose tokenizer encodes it as text",
                )
            ids += part_ids
            offsets += part_offsets
        return ids, offsets

    def _part(self, text: str, start: int, end: int, as_text: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, spans in ``text``) of ``text[start:end]`` tokenized as the continuation of what precedes it."""
        if start == end:
            return [], []
        if start == 0:
            return self._call(text[:end], as_text=as_text)
        # A part after the start is tokenized behind a newline whose tokens are then dropped, so a tokenizer that
        # marks the start of a text (SentencePiece's prefix "▁") does not mark this part as one; transformers'
        # apply_chat_template(sanitize_control_tokens=True) does the same. Without a clean cut after the newline,
        # the part is tokenized on its own.
        ids, offsets = self._call("\n" + text[start:end], as_text=as_text)
        if all(e <= 1 or s >= 1 for s, e in offsets):
            return (
                [t for t, (s, _) in zip(ids, offsets) if s >= 1],
                [(s + start - 1, e + start - 1) for s, e in offsets if s >= 1],
            )
        ids, offsets = self._call(text[start:end], as_text=as_text)
        return ids, [(s + start, e + start) for s, e in offsets]

    def _call(self, text: str, *, as_text: bool) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(
            text,
            add_special_tokens=False,
            split_special_tokens=as_text,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        return enc["input_ids"], enc["offset_mapping"]


def _overlaps(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    """Whether the token span ``[s, e)`` overlaps one of the sorted, disjoint ``spans``. A zero-width token counts
    as the character it stands before."""
    s, e = span
    e = max(e, s + 1)
    k = bisect.bisect_right(spans, (s, math.inf))  # spans starting at or before s come first
    return (k > 0 and spans[k - 1][1] > s) or (k < len(spans) and spans[k][0] < e)


_SPACES = re.compile(" *")


def _first_difference(text: str, decoded: str, special_re: re.Pattern[str]) -> tuple[int, int] | None:
    """None when ``decoded`` reads as ``text``; else the positions (in text, in decoded) where they part.

    Tolerated: one space more or less at the start and right after a special token. SentencePiece tokenizers mark
    a word start with "▁": they add one at the start of a text (prepend_scheme "first") or of every stretch between
    special tokens ("always", legacy Llama), and their decoder turns it into a space, dropping the very first.
    """
    if text == decoded:
        return None
    cuts = [0, *(m.end() for m in special_re.finditer(decoded)), len(decoded)]
    i = 0
    for a, b in itertools.pairwise(cuts):
        text_spaces = _SPACES.match(text, i).end() - i
        decoded_spaces = _SPACES.match(decoded, a, b).end() - a
        if abs(text_spaces - decoded_spaces) > 1:
            return i, a
        i += text_spaces
        chunk = decoded[a + decoded_spaces : b]
        if not text.startswith(chunk, i):
            same = len(os.path.commonprefix([text[i : i + len(chunk)], chunk]))
            return i + same, a + decoded_spaces + same
        i += len(chunk)
    return None if i == len(text) else (i, len(decoded))


# --- split and report --------------------------------------------------------------------------------------------


def _held_out(seed: int, contribution_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(f"royalty.eval:{seed}:{contribution_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _bad_rows_message(skipped: list[dict[str, Any]]) -> str:
    """One line per bad row, the first ``_LISTED_BAD_ROWS`` of them; the rest are counted by reason (a tokenizer
    whose chat template cannot be used makes every row bad: thousands of identical lines would hide that)."""
    lines = [
        (
            f"{len(skipped)} bad row{'s' if len(skipped) != 1 else ''} in the training data; nothing was trained. "
            "Fix them, or set data.on_bad_rows=skip to leave them out:"
        )
    ]
    for bad in skipped[:_LISTED_BAD_ROWS]:
        lines.append(
            f"  {bad['datanet']}@{bad['version']} position {bad['position']}, contribution {bad['contribution_id']}: "
            f"{bad['reason']}; {bad['fix']}"
        )
    rest = Counter((bad["code"], bad["fix"]) for bad in skipped[_LISTED_BAD_ROWS:])
    if rest:
        more = sum(rest.values())
        lines.append(f"  ... and {more} more (royalty train --preview with data.on_bad_rows=skip lists them):")
        lines += [f"  {count} x {code}: {fix}" for (code, fix), count in rest.most_common()]
    return "\n".join(lines)


def _wrap(tokens: list[str], width: int) -> list[str]:
    lines, line = [], ""
    for token in tokens:
        if line and len(line) + len(token) > width:
            lines.append(line)
            line = ""
        line += token
    return [*lines, line] if line else lines
