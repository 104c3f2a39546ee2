"""ModelFactory data (``royalty.factory.data``): datanet versions → tokenized examples with label masks.

Label masks are checked against hand-computed ids. The tokenizer built here is byte-level BPE with no merges, so
a text's ids are its UTF-8 bytes (``list(b"Hi") == [72, 105]``) and the special tokens follow at 256..261; the
expected ids and labels of an example can then be written out by hand. Its chat template follows the convention
of ``royalty model init-tiny`` (``<|role|>\\n{content}</s>\\n``, generation prompt ``<|assistant|>\\n``). One test
runs the real tiny model's tokenizer through the same code. SentencePiece-style tokenizers (BPE and Unigram over
"▁"-marked words with byte fallback, as Llama-2, Mistral and Gemma use), trained here with ``tokenizers``, check
that masks stay exact for tokenizers that tokenize a text differently in pieces than whole. Data comes from a real
node: datanets created, contributed, published (and purged) through ``node.datanets``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import FREE_PUBLISHING
from factory_fixtures import tiny_model_dir  # noqa: F401
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import ByT5Tokenizer, PreTrainedTokenizerFast

from royalty import Node
from royalty.errors import InvalidInput, NotFound
from royalty.factory.config import TrainConfig, load_config
from royalty.factory.data import IGNORE, DataSplit, build_data, encode_chat, epoch_order, preview

BOS, EOS, PAD, SYSTEM, USER, ASSISTANT = range(256, 262)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture
def genesis_params() -> dict[str, Any]:
    return FREE_PUBLISHING


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte → printable character map, which the ByteLevel pre-tokenizer and decoder use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer(
    *, chat_template: str | None = CHAT_TEMPLATE, merges: Sequence[tuple[str, str]] = ()
) -> PreTrainedTokenizerFast:
    """Token id of byte b is b; <s> </s> <pad> <|system|> <|user|> <|assistant|> are 256..261 (shifted up by one per
    merge when ``merges`` are given, in GPT-2's byte characters: ("Ċ", "Y") joins "\\n" and "Y")."""
    vocab = {c: b for b, c in _byte_chars().items()}
    vocab.update({left + right: 256 + i for i, (left, right) in enumerate(merges)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def b(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@pytest.fixture
def tok() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


def person(node: Node, name: str) -> str:
    return node.accounts.create(name, with_key=False)[0].id


def publish(node: Node, slug: str, kind: str, records: list[dict[str, Any]], *, owner: str | None = None) -> int:
    """Create datanet ``slug`` (open policy, near-duplicate check off), contribute ``records``, publish; returns
    the version number."""
    owner = owner or person(node, f"{slug}-owner")
    node.datanets.create(
        slug, title=slug, kind=kind, licenses=["CC-BY-4.0"], policy="open", owner=owner,
        limits={"near_duplicate_threshold": 0.0},
    )
    report = node.datanets.contribute_records(slug, records, contributor=owner)
    assert len(report.accepted) == len(records), report.to_dict()
    return node.datanets.publish(slug, actor=owner).number


def config(*refs: str | dict[str, Any], **data: Any) -> TrainConfig:
    train = data.pop("train", {})
    return load_config(
        {"model": {"base": "unused"}, "data": {"datanets": list(refs), "eval_fraction": 0.0, **data},
         "output": {"name": "t"}, "train": train}
    )


def only(split: DataSplit) -> Any:
    assert len(split.train) == 1 and not split.eval
    return split.train[0]


def trained_text(tokenizer: Any, example: Any) -> str:
    ids = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    return tokenizer.decode(ids, skip_special_tokens=False)


# --------------------------------------------------------------------------------------------------------------
# label masks, by hand
# --------------------------------------------------------------------------------------------------------------


def test_instruction_plain_template_hand_computed(node: Node, tok: Any) -> None:
    publish(node, "qa", "instruction", [{"system": "Be brief.", "prompt": "Q?", "response": "A."}])
    ex = only(build_data(node, config("qa@1", template="plain"), tok))

    prompt = b("### System:\nBe brief.\n\n### Instruction:\nQ?\n\n### Response:\n")
    assert ex.input_ids == [BOS, *prompt, *b("A."), EOS]
    assert ex.labels == [IGNORE] * (1 + len(prompt)) + [*b("A."), EOS]
    assert ex.trained_tokens == 3


def test_chat_template_multi_turn_hand_computed(node: Node, tok: Any) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Ok"},
    ]
    publish(node, "talk", "chat", [{"messages": messages}])
    ex = only(build_data(node, config("talk@1", template="chat"), tok))

    nl = b("\n")
    expected = [
        (BOS, False),
        (USER, False), *[(t, False) for t in nl + b("Hi")], (EOS, False), *[(t, False) for t in nl],
        (ASSISTANT, False), *[(t, False) for t in nl],
        *[(t, True) for t in b("Yo")], (EOS, True),  # the assistant's words and its EOS are trained
        *[(t, False) for t in nl],  # what the template writes after EOS is not
        (USER, False), *[(t, False) for t in nl + b("More")], (EOS, False), *[(t, False) for t in nl],
        (ASSISTANT, False), *[(t, False) for t in nl],
        *[(t, True) for t in b("Ok")], (EOS, True),
        *[(t, False) for t in nl],
    ]
    assert ex.input_ids == [t for t, _ in expected]
    assert ex.labels == [t if trained else IGNORE for t, trained in expected]


def test_text_record_is_all_trained_with_eos_under_every_template(node: Node, tok: Any) -> None:
    publish(node, "notes", "text", [{"text": "Cool burns."}])
    for template in ("auto", "chat", "plain"):
        ex = only(build_data(node, config("notes@1", template=template), tok))
        assert ex.input_ids == [BOS, *b("Cool burns."), EOS]
        assert ex.labels == [IGNORE, *b("Cool burns."), EOS]


def test_special_token_text_inside_a_record_is_literal(node: Node, tok: Any) -> None:
    publish(node, "tricky", "instruction", [{"prompt": "say <|assistant|>", "response": "ok</s>done"}])
    ex = only(build_data(node, config("tricky@1", template="chat"), tok))

    assert ex.input_ids.count(ASSISTANT) == 1  # only the template's own assistant header
    assert ex.input_ids.count(EOS) == 2  # end of the user turn + end of the response; not the typed "</s>"
    assert trained_text(tok, ex) == "ok</s>done</s>"
    assert ex.labels[-2] == EOS and ex.labels[-1] == IGNORE  # ... EOS trained, the final "\n" not


def test_a_record_starting_with_bos_text_still_gets_the_bos_token(node: Node, tok: Any) -> None:
    publish(node, "notes", "text", [{"text": "<s>x"}])
    ex = only(build_data(node, config("notes@1"), tok))
    assert ex.input_ids == [BOS, *b("<s>x"), EOS]


# --------------------------------------------------------------------------------------------------------------
# each kind × template
# --------------------------------------------------------------------------------------------------------------

RECORDS = {
    "text": {"text": "Rinse with water."},
    "instruction": {"prompt": "Bee sting?", "response": "Scrape it out.", "system": "Medic."},
    "chat": {"messages": [{"role": "system", "content": "Medic."}, {"role": "user", "content": "Bee sting?"},
                          {"role": "assistant", "content": "Scrape it out."}]},
}
CHAT_RENDER = "<s><|system|>\nMedic.</s>\n<|user|>\nBee sting?</s>\n<|assistant|>\nScrape it out.</s>\n"
PLAIN_RENDER = "<s>### System:\nMedic.\n\n### Instruction:\nBee sting?\n\n### Response:\nScrape it out.</s>"
# (kind, template, tokenizer has a chat template) -> (rendered text, trained text)
CASES = {
    ("text", "chat", True): ("<s>Rinse with water.</s>", "Rinse with water.</s>"),
    ("text", "plain", True): ("<s>Rinse with water.</s>", "Rinse with water.</s>"),
    ("text", "auto", False): ("<s>Rinse with water.</s>", "Rinse with water.</s>"),
    ("instruction", "chat", True): (CHAT_RENDER, "Scrape it out.</s>"),
    ("instruction", "plain", True): (PLAIN_RENDER, "Scrape it out.</s>"),
    ("instruction", "auto", True): (CHAT_RENDER, "Scrape it out.</s>"),
    ("instruction", "auto", False): (PLAIN_RENDER, "Scrape it out.</s>"),
    ("chat", "chat", True): (CHAT_RENDER, "Scrape it out.</s>"),
    ("chat", "plain", True): (PLAIN_RENDER, "Scrape it out.</s>"),
    ("chat", "auto", False): (PLAIN_RENDER, "Scrape it out.</s>"),
}


@pytest.mark.parametrize(("kind", "template", "has_chat_template"), list(CASES))
def test_kind_by_template(node: Node, kind: str, template: str, has_chat_template: bool) -> None:
    tokenizer = byte_tokenizer(chat_template=CHAT_TEMPLATE if has_chat_template else None)
    publish(node, "dn", kind, [RECORDS[kind]])
    split = build_data(node, config("dn@1", template=template), tokenizer)
    ex = only(split)
    rendered, trained = CASES[(kind, template, has_chat_template)]

    assert tokenizer.decode(ex.input_ids, skip_special_tokens=False) == rendered
    assert trained_text(tokenizer, ex) == trained
    assert ex.labels[ex.input_ids.index(EOS, len(ex.input_ids) - 2)] == EOS  # the final EOS is trained
    assert split.report.template == (template if template != "auto" else ("chat" if has_chat_template else "plain"))


def test_chat_template_needed_for_template_chat(node: Node) -> None:
    publish(node, "dn", "instruction", [RECORDS["instruction"]])
    with pytest.raises(InvalidInput, match="no chat template") as err:
        build_data(node, config("dn@1", template="chat"), byte_tokenizer(chat_template=None))
    assert err.value.field == "data.template"


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_encode_chat_is_the_training_prompt(node: Node, tok: Any, template: str) -> None:
    """What serving sends the model (encode_chat with a generation prompt) is, token for token, the untrained
    prefix of the training example."""
    publish(node, "dn", "chat", [RECORDS["chat"]])
    ex = only(build_data(node, config("dn@1", template=template), tok))
    first_trained = next(i for i, label in enumerate(ex.labels) if label != IGNORE)

    prompt = encode_chat(tok, template, RECORDS["chat"]["messages"][:2])
    assert prompt == ex.input_ids[:first_trained]
    whole = encode_chat(tok, template, RECORDS["chat"]["messages"], add_generation_prompt=False)
    assert whole == ex.input_ids


def test_encode_chat_refuses_bad_messages(tok: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        encode_chat(tok, "plain", [{"role": "robot", "content": "x"}])
    assert err.value.field == "messages[0]"


def test_lossy_tokenizer_is_refused(node: Node) -> None:
    """A word-level tokenizer decodes with spaces between words: what it trains on would not be the text."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "###", "Instruction", ":", "Q", "A", "Response"])}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    lossy = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    publish(node, "dn", "instruction", [{"prompt": "Q", "response": "A"}])
    with pytest.raises(InvalidInput, match="lossless tokenizer") as err:
        build_data(node, config("dn@1", template="plain"), lossy)
    assert err.value.field == "model.base"


def test_real_tiny_model_tokenizer(node: Node, tiny_model_dir: Path) -> None:  # noqa: F811
    """The tokenizer `royalty model init-tiny` builds goes through the chat template path losslessly."""
    from royalty.factory.basemodel import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    publish(node, "dn", "chat", [RECORDS["chat"]])
    ex = only(build_data(node, config("dn@1"), tokenizer))

    assert tokenizer.decode(ex.input_ids, skip_special_tokens=False).endswith("Scrape it out.</s>\n")
    assert trained_text(tokenizer, ex) == "Scrape it out.</s>"
    assert encode_chat(tokenizer, "auto", RECORDS["chat"]["messages"][:2]) == ex.input_ids[: ex.labels.index(next(
        label for label in ex.labels if label != IGNORE))]


def test_a_token_straddling_a_boundary_is_trained(node: Node) -> None:
    """A token that covers both untrained and trained characters is trained: no character of a response is left
    out of the loss. Here the tokenizer merges the assistant header's final newline with the response's "Y"."""
    tokenizer = byte_tokenizer(merges=[("Ċ", "Y")])
    straddling = tokenizer.convert_tokens_to_ids("ĊY")
    publish(node, "dn", "instruction", [{"prompt": "Hi", "response": "Yo"}])
    ex = only(build_data(node, config("dn@1", template="chat"), tokenizer))

    assert tokenizer.decode(ex.input_ids, skip_special_tokens=False) == "<s><|user|>\nHi</s>\n<|assistant|>\nYo</s>\n"
    at = ex.input_ids.index(straddling)
    assert ex.labels[at] == straddling and ex.labels[at - 1] == IGNORE  # trained; <|assistant|> before it is not
    assert trained_text(tokenizer, ex) == "\nYo</s>"


# --------------------------------------------------------------------------------------------------------------
# SentencePiece-style tokenizers (Llama-2, Mistral, Gemma): "▁" marks a word start, so a text tokenized in pieces
# differs from the same text tokenized whole
# --------------------------------------------------------------------------------------------------------------

SP_CORPUS = ["### System: Medic. Instruction: Bee sting? Then? Response: Scrape it out. Rinse with water. say ok done"]


def sentencepiece_tokenizer(
    model: str, scheme: str, *, chat_template: str | None = CHAT_TEMPLATE, byte_fallback: bool = True
) -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer trained here: ``model`` "bpe" or "unigram" over "▁"-marked words, with byte
    fallback ("\\n" is <0x0A>) unless turned off, decoded with "▁" → " ". ``scheme``: "first" / "always" are the
    Metaspace pre-tokenizer's prepend_scheme ("▁" added at the start of the text / of every stretch between special
    tokens, as Llama-2 and Mistral converted with legacy=False / legacy=True); "legacy" is the original Llama-2
    tokenizer.json (normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, a Strip decoder)."""
    special = ["<s>", "</s>", "<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>") if model == "bpe" else models.Unigram())
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    if model == "bpe":
        trainer: Any = trainers.BpeTrainer(vocab_size=100, special_tokens=special, show_progress=False)
    else:
        trainer = trainers.UnigramTrainer(
            vocab_size=100, special_tokens=special, unk_token="<unk>", show_progress=False
        )
    raw.train_from_iterator(SP_CORPUS, trainer)
    spec = json.loads(raw.to_str())
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    if model == "bpe":
        spec["model"]["vocab"].update({t: len(spec["model"]["vocab"]) + i for i, t in enumerate(byte_tokens)})
    else:
        spec["model"]["vocab"] += [[t, -20.0] for t in byte_tokens]
    spec["model"]["byte_fallback"] = byte_fallback
    raw = Tokenizer.from_str(json.dumps(spec))
    if scheme == "legacy":
        raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        raw.pre_tokenizer = None
        raw.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    else:
        raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme)
        raw.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme=scheme)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


SP_KINDS = [("bpe", "first"), ("unigram", "first"), ("bpe", "always"), ("unigram", "always"), ("bpe", "legacy")]
SP_MESSAGES = [
    {"role": "system", "content": "Medic."},
    {"role": "user", "content": "Bee sting?"},
    {"role": "assistant", "content": "Scrape it out."},
    {"role": "user", "content": "Then?"},
    {"role": "assistant", "content": "Rinse with water."},
]
SP_RENDER = {
    "chat": (
        "<s><|system|>\nMedic.</s>\n<|user|>\nBee sting?</s>\n<|assistant|>\nScrape it out.</s>\n"
        "<|user|>\nThen?</s>\n<|assistant|>\nRinse with water.</s>\n"
    ),
    "plain": (
        "<s>### System:\nMedic.\n\n### Instruction:\nBee sting?\n\n### Response:\nScrape it out.</s>\n\n"
        "### Instruction:\nThen?\n\n### Response:\nRinse with water.</s>"
    ),
}


def sp_reading(rendered: str, scheme: str) -> str:
    """How a SentencePiece tokenizer decodes ``rendered``: its documented normalisation is the "▁" it adds before
    the text ("first": after the BOS, unless a special token follows) or before every stretch of text that follows
    a special token ("always", "legacy"), decoded as a space."""
    if scheme == "first":
        return re.sub(r"^<s>(?!<)", "<s> ", rendered)
    return re.sub(r"(<s>|</s>|<\|\w+\|>)(?=[^< ])", r"\1 ", rendered)


def trained_runs(tokenizer: Any, example: Any) -> list[str]:
    """The decoded text of each run of consecutive trained tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE:
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = label != IGNORE
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


@pytest.mark.parametrize("template", ["chat", "plain"])
@pytest.mark.parametrize(("model", "scheme"), SP_KINDS)
def test_sentencepiece_tokenizer_masks_exactly(node: Node, model: str, scheme: str, template: str) -> None:
    tokenizer = sentencepiece_tokenizer(model, scheme, chat_template=CHAT_TEMPLATE if template == "chat" else None)
    eos = tokenizer.eos_token_id
    publish(node, "dn", "chat", [{"messages": SP_MESSAGES}])
    ex = only(build_data(node, config("dn@1"), tokenizer))  # auto: chat when the tokenizer has a chat template

    assert tokenizer.decode(ex.input_ids, skip_special_tokens=False) == sp_reading(SP_RENDER[template], scheme)
    # exactly the two assistant turns are trained, each through its EOS; no other EOS is
    assert trained_runs(tokenizer, ex) == ["Scrape it out.</s>", "Rinse with water.</s>"]
    eos_trained = [label != IGNORE for token, label in zip(ex.input_ids, ex.labels) if token == eos]
    assert eos_trained == ([False, False, True, False, True] if template == "chat" else [True, True])
    assert all(label in (IGNORE, token) for token, label in zip(ex.input_ids, ex.labels))
    # the text is tokenized as the tokenizer itself tokenizes it whole (behind the BOS that data adds)
    rendered = SP_RENDER[template].removeprefix("<s>")
    whole = (
        tokenizer.apply_chat_template(SP_MESSAGES, tokenize=True, return_dict=False)
        if template == "chat"
        else tokenizer(rendered, add_special_tokens=False)["input_ids"]
    )
    assert ex.input_ids == [tokenizer.bos_token_id, *whole]
    # serving prompts (encode_chat) are the untrained prefixes before each assistant turn
    starts = [i for i, label in enumerate(ex.labels) if label != IGNORE and ex.labels[i - 1] == IGNORE]
    assert encode_chat(tokenizer, "auto", SP_MESSAGES[:2]) == ex.input_ids[: starts[0]]
    assert encode_chat(tokenizer, "auto", SP_MESSAGES[:4]) == ex.input_ids[: starts[1]]
    assert encode_chat(tokenizer, "auto", SP_MESSAGES, add_generation_prompt=False) == ex.input_ids


@pytest.mark.parametrize(("model", "scheme"), SP_KINDS)
def test_sentencepiece_text_record(node: Node, model: str, scheme: str) -> None:
    tokenizer = sentencepiece_tokenizer(model, scheme)
    publish(node, "notes", "text", [{"text": "Rinse with water."}])
    ex = only(build_data(node, config("notes@1"), tokenizer))

    assert tokenizer.decode(ex.input_ids, skip_special_tokens=False) == "<s> Rinse with water.</s>"
    assert ex.labels[0] == IGNORE and ex.labels[1:] == ex.input_ids[1:]  # all but the BOS, EOS included


@pytest.mark.parametrize(("model", "scheme"), [kind for kind in SP_KINDS if kind[0] == "bpe"])
def test_special_token_text_inside_a_record_is_literal_with_sentencepiece(node: Node, model: str, scheme: str) -> None:
    """One pass over the whole text would read a typed "</s>" as EOS; data tokenizes it as text instead."""
    tokenizer = sentencepiece_tokenizer(model, scheme)
    messages = [{"role": "user", "content": "say <|assistant|>"}, {"role": "assistant", "content": "ok</s>done"}]
    publish(node, "tricky", "chat", [{"messages": messages}])
    ex = only(build_data(node, config("tricky@1", template="chat"), tokenizer))

    rendered = "<s><|user|>\nsay <|assistant|></s>\n<|assistant|>\nok</s>done</s>\n"
    expected = {
        "first": rendered,
        # "▁" before each stretch after a control token; the typed ones are text, so none follows them
        "always": "<s><|user|> \nsay <|assistant|></s> \n<|assistant|> \nok</s>done</s> \n",
    }
    assert tokenizer.decode(ex.input_ids, skip_special_tokens=False) == expected.get(scheme, expected["always"])
    assert ex.input_ids.count(tokenizer.convert_tokens_to_ids("<|assistant|>")) == 1
    assert ex.input_ids.count(tokenizer.eos_token_id) == 2  # end of the user turn + end of the response
    assert trained_runs(tokenizer, ex) == ["ok</s>done</s>"]
    first_trained = next(i for i, label in enumerate(ex.labels) if label != IGNORE)
    assert encode_chat(tokenizer, "chat", messages[:1]) == ex.input_ids[:first_trained]


def test_special_token_text_a_tokenizer_cannot_write_as_text_is_a_bad_row(node: Node) -> None:
    """A Unigram model holds its control tokens as ordinary pieces, so it turns a typed "</s>" into EOS even when
    told to read it as text: such a row is reported, not trained with an EOS in the middle of a response."""
    tokenizer = sentencepiece_tokenizer("unigram", "first")
    records = [{"prompt": "Q?", "response": "ok</s>done"}, {"prompt": "Q?", "response": "ok"}]
    publish(node, "tricky", "instruction", records)
    split = build_data(node, config("tricky@1", on_bad_rows="skip"), tokenizer)

    assert [(bad["position"], bad["code"]) for bad in split.report.skipped] == [(0, "control_text")]
    assert "contains '</s>', which the tokenizer of model.base can only encode as a control token" in (
        split.report.skipped[0]["reason"]
    )
    assert trained_runs(tokenizer, only(split)) == ["ok</s>"]
    with pytest.raises(InvalidInput, match="can only encode as a control token") as err:
        encode_chat(tokenizer, "chat", [{"role": "user", "content": "a</s>b"}])
    assert err.value.field == "messages"


def test_sentencepiece_without_byte_fallback_is_refused(node: Node) -> None:
    """Without byte fallback a newline becomes <unk>: training would not see the text the template renders."""
    tokenizer = sentencepiece_tokenizer("unigram", "first", byte_fallback=False)
    publish(node, "dn", "chat", [{"messages": SP_MESSAGES}])
    with pytest.raises(InvalidInput, match="lossless tokenizer") as err:
        build_data(node, config("dn@1"), tokenizer)
    assert err.value.field == "model.base"
    assert "decodes as '<s><|system|><unk>Medic." in err.value.message


def test_slow_tokenizer_is_refused(node: Node) -> None:
    """A slow (Python) tokenizer has no character offsets, so the label mask could not be computed."""
    slow = ByT5Tokenizer()
    publish(node, "dn", "text", [{"text": "Rinse."}])
    with pytest.raises(InvalidInput, match="slow .*ByT5Tokenizer.*fast tokenizer") as err:
        build_data(node, config("dn@1"), slow)
    assert err.value.field == "model.base"
    with pytest.raises(InvalidInput, match="fast tokenizer"):
        encode_chat(slow, "plain", [{"role": "user", "content": "Hi"}])


# --------------------------------------------------------------------------------------------------------------
# truncation and bad rows
# --------------------------------------------------------------------------------------------------------------


def test_truncation_keeps_the_left_and_reports_lost_eos(node: Node, tok: Any) -> None:
    publish(node, "dn", "instruction", [{"prompt": "Q?", "response": "A long answer."}])
    prompt_len = 1 + len(b("### Instruction:\nQ?\n\n### Response:\n"))
    split = build_data(node, config("dn@1", template="plain", max_seq_len=prompt_len + 4), tok)
    ex = only(split)

    assert len(ex.input_ids) == prompt_len + 4 and ex.truncated
    assert ex.input_ids[prompt_len:] == b("A lo") and ex.labels[prompt_len:] == b("A lo")
    assert split.report.truncated == 1
    text = preview(split, tok, 1)
    assert "EOS trained: no (cut off by data.max_seq_len)" in text


def _bad_rows_datanet(node: Node) -> tuple[list[str], str, str]:
    """Datanet 'mixed' v1: 5 instruction rows; position 1 purged after publishing, position 3 has a prompt too
    long for max_seq_len=64. Returns (all contribution ids in order, the purged id, the long id)."""
    owner = person(node, "owner")
    records = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(5)]
    records[3]["prompt"] = "Why? " * 40
    publish(node, "mixed", "instruction", records, owner=owner)
    ids = node.datanets.members("mixed", 1)
    node.datanets.withdraw("mixed", ids[1], actor=owner)
    node.datanets.purge("mixed", ids[1], actor=owner)
    return ids, ids[1], ids[3]


def test_bad_rows_are_reported_all_at_once(node: Node, tok: Any) -> None:
    _, purged, long = _bad_rows_datanet(node)
    with pytest.raises(InvalidInput) as err:
        build_data(node, config("mixed@1", template="plain", max_seq_len=64), tok)

    message = err.value.message
    assert message.startswith("2 bad rows in the training data; nothing was trained")
    assert f"mixed@1 position 1, contribution {purged}: purged after this version was published" in message
    assert f"mixed@1 position 3, contribution {long}: the example has" in message
    assert "data.max_seq_len=64" in message and "data.on_bad_rows=skip" in message
    assert err.value.field == "data.on_bad_rows"


def test_skip_mode_records_skipped_rows(node: Node, tok: Any) -> None:
    ids, purged, long = _bad_rows_datanet(node)
    split = build_data(node, config("mixed@1", template="plain", max_seq_len=64, on_bad_rows="skip"), tok)

    assert [(s["position"], s["contribution_id"]) for s in split.report.skipped] == [(1, purged), (3, long)]
    assert all(s["datanet"] == "mixed" and s["version"] == 1 and s["reason"] for s in split.report.skipped)
    assert [ex.contribution_id for ex in split.train] == [ids[0], ids[2], ids[4]]
    assert [ex.position for ex in split.train] == [0, 2, 4]
    assert split.report.rows == 5 and split.report.examples == 3
    assert f"skipped: mixed@1 position 1, contribution {purged}" in preview(split, tok, 0)


def test_unknown_datanets_and_versions_are_reported_together(node: Node, tok: Any) -> None:
    publish(node, "real", "text", [{"text": "x"}])
    with pytest.raises(NotFound) as err:
        build_data(node, config("real@2", "ghost@1"), tok)
    assert "data.datanets[0] real@2: real has no version 2" in err.value.message
    assert "data.datanets[1] ghost@1: no datanet 'ghost'" in err.value.message


def test_all_held_out_is_refused(node: Node, tok: Any) -> None:
    publish(node, "dn", "text", [{"text": "only one"}])
    with pytest.raises(InvalidInput, match="no training examples"):
        build_data(node, config("dn@1", eval_fraction=0.999999), tok)


# --------------------------------------------------------------------------------------------------------------
# lineage, split, order
# --------------------------------------------------------------------------------------------------------------


def test_examples_keep_their_lineage_and_sources(node: Node, tok: Any) -> None:
    owner = person(node, "ann")
    publish(node, "aa", "text", [{"text": f"alpha {i}"} for i in range(3)], owner=owner)
    publish(node, "bb", "text", [{"text": f"beta {i}"} for i in range(2)], owner=owner)
    split = build_data(node, config("aa@1", {"ref": "bb@1", "weight": 2}), tok)

    assert [(ex.index, ex.datanet, ex.position) for ex in split.train] == [
        (0, "aa", 0), (1, "aa", 1), (2, "aa", 2), (3, "bb", 0), (4, "bb", 1)]
    aa = node.datanets.get("aa")
    assert split.train[0].datanet_id == aa.id and split.train[0].contributor == owner
    assert [ex.contribution_id for ex in split.train[:3]] == node.datanets.members("aa", 1)
    assert split.train[0].version == 1
    version = node.datanets.version("aa", 1)
    assert split.sources[0] == {
        "slug": "aa", "datanet_id": aa.id, "version": 1, "root": version.root.hex(), "size": 3, "weight": 1.0,
        "examples_train": 3, "examples_eval": 0,
    }
    assert split.sources[1]["weight"] == 2.0 and split.sources[1]["examples_train"] == 2


def test_eval_split_is_per_contribution_and_independent_of_row_order(node: Node, tok: Any) -> None:
    records = [{"text": f"fact number {i}"} for i in range(40)]
    owner = person(node, "ann")
    publish(node, "fwd", "text", records, owner=owner)
    publish(node, "rev", "text", records[::-1], owner=owner)

    def held(slug: str, seed: int) -> set[str]:
        split = build_data(node, config(f"{slug}@1", eval_fraction=0.3, train={"seed": seed}), tok)
        assert len(split.train) + len(split.eval) == 40
        assert [ex.index for ex in split.train + split.eval] == list(range(40))
        assert split.sources[0]["examples_eval"] == len(split.eval)
        return {ex.contribution_id for ex in split.eval}

    assert held("fwd", 1) == held("rev", 1)  # same ids held out whatever the order
    assert 4 <= len(held("fwd", 1)) <= 20
    assert held("fwd", 1) != held("fwd", 2)  # the seed chooses the split


def test_epoch_order_applies_weights_deterministically(node: Node, tok: Any) -> None:
    owner = person(node, "ann")
    publish(node, "aa", "text", [{"text": f"alpha {i}"} for i in range(4)], owner=owner)
    publish(node, "bb", "text", [{"text": f"beta {i}"} for i in range(6)], owner=owner)
    cfg = config({"ref": "aa@1", "weight": 2}, {"ref": "bb@1", "weight": 0.5})
    split = build_data(node, cfg, tok)
    aa = [ex.index for ex in split.train if ex.datanet == "aa"]
    bb = [ex.index for ex in split.train if ex.datanet == "bb"]

    orders = [epoch_order(split, cfg, epoch) for epoch in range(4)]
    for order in orders:
        assert len(order) == 4 * 2 + 3  # floor(2) x 4 + round(0.5 x 6)
        assert all(order.count(i) == 2 for i in aa)
        assert sorted(i for i in order if i in bb) == sorted({i for i in order if i in bb})  # once each
        assert len([i for i in order if i in bb]) == 3
    assert orders[0] == epoch_order(split, cfg, 0)  # deterministic
    assert orders[0] != orders[1]  # reshuffled every epoch
    assert len({tuple(sorted(i for i in o if i in bb)) for o in orders}) > 1  # a different half of bb
    other_seed = config({"ref": "aa@1", "weight": 2}, {"ref": "bb@1", "weight": 0.5}, train={"seed": 7})
    assert epoch_order(split, other_seed, 0) != orders[0]


def test_weights_that_select_nothing_are_refused(node: Node, tok: Any) -> None:
    publish(node, "dn", "text", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(InvalidInput, match="mixing weights select no example"):
        build_data(node, config({"ref": "dn@1", "weight": 0.1}), tok)


def test_preview_marks_trained_tokens(node: Node, tok: Any) -> None:
    publish(node, "dn", "instruction", [{"prompt": "Hi", "response": "Yo"}])
    split = build_data(node, config("dn@1", template="chat"), tok)
    text = preview(split, tok, 3)

    assert text.startswith("template: chat · 1 train / 0 eval examples from 1 rows · 0 skipped · 0 truncated")
    assert "[<s>][<|user|>][\\n][H][i][</s>][\\n][<|assistant|>][\\n]«Y»«o»«</s>»[\\n]" in text
    assert f"example 0 (train) · dn@1 position 0 · contribution {split.train[0].contribution_id}" in text
    assert "tokens: 13 · trained: 3 · EOS trained: yes" in text


def test_many_bad_rows_are_listed_then_counted(node: Node) -> None:
    """A chat template that refuses system messages makes every row with one bad: the first 50 are listed, the
    rest counted, so the cause is not buried under thousands of identical lines."""
    refusing = CHAT_TEMPLATE.replace(
        "{% for m in messages %}",
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}",
    )
    publish(node, "dn", "instruction", [{"system": "S", "prompt": f"Q{i}", "response": "A"} for i in range(60)])
    with pytest.raises(InvalidInput) as err:
        build_data(node, config("dn@1", template="chat"), byte_tokenizer(chat_template=refusing))

    lines = err.value.message.splitlines()
    assert lines[0].startswith("60 bad rows")
    assert lines[1].startswith("  dn@1 position 0, contribution ")
    assert lines[1].endswith("the chat template refused the conversation: System role not supported; use data.template=plain")
    assert lines[50].startswith("  dn@1 position 49, ")
    assert lines[51:] == [
        "  ... and 10 more (royalty train --preview with data.on_bad_rows=skip lists them):",
        "  10 x template: use data.template=plain",
    ]


def test_a_template_that_trims_content_still_masks_exactly(node: Node) -> None:
    trimming = CHAT_TEMPLATE.replace("{{ m.content }}", "{{ m.content | trim }}")
    tokenizer = byte_tokenizer(chat_template=trimming)
    publish(node, "dn", "chat", [{"messages": [{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Yo \n"}]}])
    ex = only(build_data(node, config("dn@1", template="chat"), tokenizer))

    assert tokenizer.decode(ex.input_ids, skip_special_tokens=False) == "<s><|user|>\nHi</s>\n<|assistant|>\nYo</s>\n"
    assert trained_text(tokenizer, ex) == "Yo</s>"
