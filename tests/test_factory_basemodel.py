"""Base models: init_tiny builds a standard HF folder, deterministically; the tokenizer round-trips text and carries
the chat template; pretrain learns and changes the identity; every user mistake is one clear RoyaltyError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FREE_PUBLISHING, Clock
from factory_fixtures import TINY_SPEC, one_torch_thread, tiny_model, tiny_model_dir  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import royalty
from royalty.cli.model import app
from royalty.errors import Conflict, InvalidInput, NotFound, RoyaltyError
from royalty.factory.basemodel import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TinySpec,
    corpus_texts,
    identity,
    init_tiny,
    load_base,
    load_tokenizer,
    pretrain,
)
from royalty.factory.corpus import builtin_texts


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # torch on one thread in every test here


def corpus_loss(model_dir: Path, texts: list[str]) -> float:
    """Mean next-token loss of the model in ``model_dir`` over ``texts`` (each ended with </s>)."""
    model, tokenizer = load_base(str(model_dir))
    losses = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    return sum(losses) / len(losses)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------------------------------
# init_tiny
# --------------------------------------------------------------------------------------------------------------


def test_init_tiny_saves_a_standard_hf_folder(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    names = {p.name for p in tiny_model_dir.iterdir()}
    files = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}
    assert files <= names
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 2)
    assert config.vocab_size == len(tokenizer) <= TINY_SPEC.vocab_size
    assert config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    generation = GenerationConfig.from_pretrained(tiny_model_dir)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == list(SPECIAL_TOKENS)
    assert json.loads((tiny_model_dir / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE

    ident = identity(str(tiny_model_dir))
    assert ident.architecture == "LlamaForCausalLM"
    assert ident.num_parameters == sum(p.numel() for p in model.parameters())
    assert ident.to_dict()["name"] == str(tiny_model_dir)
    assert len(ident.weights_sha256) == 64
    # What load_base gives is the same model.
    loaded, _ = load_base(str(tiny_model_dir))
    ids = torch.tensor([tokenizer("Boil the water first.")["input_ids"]])
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_init_tiny_is_deterministic(tmp_path: Path, tiny_model_dir: Path) -> None:
    again = init_tiny(tmp_path / "again", spec=TINY_SPEC, seed=0)
    assert again.weights_sha256 == identity(str(tiny_model_dir)).weights_sha256
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    other = init_tiny(tmp_path / "other", spec=TINY_SPEC, seed=1)
    assert other.weights_sha256 != again.weights_sha256
    # Building does not disturb the caller's random stream.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    init_tiny(tmp_path / "third", ["a tiny corpus of words", "more words here"], spec=TINY_SPEC)
    assert torch.equal(torch.rand(3), expected)
    assert leftovers(tmp_path) == []


def test_init_tiny_refuses_a_non_empty_folder_and_bad_specs(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(Conflict, match="not empty"):
        init_tiny(taken, spec=TINY_SPEC)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    with pytest.raises(InvalidInput, match="hidden_size must be a multiple of 2 x num_heads = 8") as info:
        init_tiny(tmp_path / "bad", spec=TinySpec(hidden_size=36, num_heads=4))
    assert info.value.field == "hidden_size"
    with pytest.raises(InvalidInput, match="vocab_size must be >= 262"):
        init_tiny(tmp_path / "bad", spec=TinySpec(vocab_size=100))
    with pytest.raises(InvalidInput, match="no text"):
        init_tiny(tmp_path / "new" / "bad", ["", "  \n"], spec=TINY_SPEC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty folder is fine
    assert init_tiny(empty, ["some words to learn"], spec=TINY_SPEC).num_parameters > 0


# --------------------------------------------------------------------------------------------------------------
# tokenizer and chat template
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(str(tiny_model_dir))


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=80))
def test_tokenizer_round_trips_any_text(tokenizer: Any, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("text", ["héllo wörld", "日本語のテキスト", "emoji 🙂🚑 and ZWJ 👩‍⚕️", "tabs\tand\n\nnewlines  ",
                                  "e\u0301 combining", "\x00\x7f controls", "Price: 12.50 € (approx.)"])
def test_tokenizer_round_trips_unicode(tokenizer: Any, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids  # encoding adds nothing
    assert tokenizer.decode(ids) == text


def test_chat_template_renders_the_documented_format(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A burn?"},
                {"role": "assistant", "content": "Cool it with water."}]
    assert tokenizer.chat_template == CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|system|>\nBe brief.</s>\n<|user|>\nA burn?</s>\n<|assistant|>\nCool it with water.</s>\n"
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nA burn?</s>\n<|assistant|>\n")
    # Role markers and </s> are single tokens, and the assistant's turn ends with eos.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens.count("<|assistant|>") == 1 and tokens.count("</s>") == 3
    start = tokens.index("<|assistant|>")
    assert tokenizer.decode(ids[start + 1:]) == "\nCool it with water.</s>\n"
    assert ids[-2] == tokenizer.eos_token_id


# --------------------------------------------------------------------------------------------------------------
# pretrain
# --------------------------------------------------------------------------------------------------------------


def test_pretrain_lowers_the_loss_and_changes_the_identity(tmp_path: Path) -> None:
    model_dir = tiny_model(tmp_path)
    (model_dir / "README.md").write_text("my notes\n")
    texts = builtin_texts()[:60]
    before_id, before_loss = identity(str(model_dir)), corpus_loss(model_dir, texts[:20])
    seen: list[dict[str, Any]] = []
    stats = pretrain(model_dir, texts, minutes=5, max_steps=25, batch_size=8, block_size=64, progress=seen.append)
    after_loss = corpus_loss(model_dir, texts[:20])
    assert after_loss < before_loss - 0.5, (before_loss, after_loss)
    assert stats["steps"] == 25 and [p["step"] for p in seen] == list(range(1, 26))
    assert stats["tokens"] == 25 * 8 * 64
    assert stats["loss"]["final_mean"] < stats["loss"]["first"]
    after_id = identity(str(model_dir))
    assert stats["weights_sha256"] == after_id.weights_sha256 != before_id.weights_sha256
    assert after_id.num_parameters == before_id.num_parameters
    # Saved back in place: still a complete model, other files kept, the run recorded, no temporary folders left.
    assert (model_dir / "README.md").read_text() == "my notes\n"
    assert load_tokenizer(str(model_dir)).chat_template == CHAT_TEMPLATE
    record = json.loads((model_dir / "pretrain.json").read_text())
    assert [r["steps"] for r in record["runs"]] == [25]
    assert record["runs"][0]["corpus"]["texts"] == 60
    assert leftovers(tmp_path) == []
    # A second run appends to the record.
    pretrain(model_dir, texts, minutes=5, max_steps=1, batch_size=2, block_size=16)
    assert [r["steps"] for r in json.loads((model_dir / "pretrain.json").read_text())["runs"]] == [25, 1]


def test_pretrain_rejects_bad_arguments(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="minutes must be > 0"):
        pretrain(tiny_model_dir, ["text"], minutes=0)
    with pytest.raises(InvalidInput, match="max_steps must be >= 1"):
        pretrain(tiny_model_dir, ["text"], minutes=1, max_steps=0)
    with pytest.raises(InvalidInput, match="no text") as info:
        pretrain(tiny_model_dir, ["", " "], minutes=1)
    assert info.value.field == "corpus"
    with pytest.raises(InvalidInput, match="no such folder"):
        pretrain(tmp_path / "missing", ["text"], minutes=1)
    model_dir = tiny_model(tmp_path)
    (model_dir / "pretrain.json").write_text("{not json")
    before = identity(str(model_dir))
    with pytest.raises(InvalidInput, match="pretrain.json is damaged"):
        pretrain(model_dir, ["some text"], minutes=1, max_steps=1)
    assert identity(str(model_dir)) == before


# --------------------------------------------------------------------------------------------------------------
# loading errors
# --------------------------------------------------------------------------------------------------------------


def test_loading_errors_name_the_model_and_the_fix(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidInput, match="no such folder; build one with: royalty model init-tiny") as info:
        load_base(str(tmp_path / "missing"))
    assert info.value.field == "model.base"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="no config.json"):
        load_base(str(tmp_path / "empty"))
    with pytest.raises(InvalidInput, match="no config.json"):
        identity(str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InvalidInput, match="is a file"):
        load_tokenizer(str(tmp_path / "file.txt"))
    # A folder with a config but no weights.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    with pytest.raises(InvalidInput, match="no weight files"):
        identity(str(broken))
    with pytest.raises(InvalidInput, match="base model .*broken: cannot load"):
        load_base(str(broken))
    with pytest.raises(InvalidInput, match="dtype must be one of"):
        load_base(str(tiny_model_dir), dtype="int8")
    with pytest.raises(InvalidInput, match="empty"):
        load_base("")


def test_a_hub_id_that_cannot_be_fetched_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # What HF_HUB_OFFLINE=1 does (read at import time, hence the attribute): no network, only the local cache.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for load in (load_base, identity):
        with pytest.raises(InvalidInput, match="not a local folder, and the Hugging Face Hub could not") as info:
            load("nobody-here/no-such-model")
        assert info.value.field == "model.base"


# --------------------------------------------------------------------------------------------------------------
# corpora
# --------------------------------------------------------------------------------------------------------------


def test_builtin_corpus_is_stable_and_large_enough() -> None:
    texts = corpus_texts(None, None)
    assert texts == builtin_texts() and texts is not builtin_texts()
    size = sum(len(t.encode()) for t in texts)
    assert 30_000 <= size <= 80_000
    assert len(set(texts)) == len(texts)
    assert all(t == " ".join(t.split()) and t for t in texts)


def test_corpus_from_files(tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("First paragraph\nstill first.\n\n\nSecond one.\n  \n")
    assert corpus_texts(None, str(txt)) == ["First paragraph still first.", "Second one."]
    lines = tmp_path / "data.jsonl"
    lines.write_text('{"text": "plain"}\n\n{"prompt": "Q?", "response": "A.", "system": "S"}\n'
                     '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    assert corpus_texts(None, str(lines)) == ["plain", "S\nQ?\nA.", "hi\nyo"]
    lines.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(InvalidInput, match=r"data.jsonl line 2: expected an object with \"text\""):
        corpus_texts(None, str(lines))
    lines.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(InvalidInput, match="line 2: not JSON"):
        corpus_texts(None, str(lines))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(InvalidInput, match="has no text") as info:
        corpus_texts(None, str(empty))
    assert info.value.field == "corpus"
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InvalidInput, match="not UTF-8"):
        corpus_texts(None, str(tmp_path / "latin1.txt"))
    with pytest.raises(InvalidInput, match="is a folder"):
        corpus_texts(None, str(tmp_path))
    with pytest.raises(InvalidInput, match="no such file, and not a datanet version"):
        corpus_texts(None, str(tmp_path / "missing.txt"))


@pytest.fixture
def datanet_home(tmp_path: Path, clock: Clock) -> Path:
    """A node with a published instruction datanet ``aid`` (v1: 3 rows, one later purged) and a text datanet."""
    node, _ = royalty.init_node(tmp_path / "home", clock=clock, params=FREE_PUBLISHING)
    with node:
        alice = node.accounts.create("alice", with_key=False)[0].id
        for slug, kind in (("aid", "instruction"), ("notes", "text")):
            node.datanets.create(slug, title=slug, kind=kind, licenses=["CC-BY-4.0"], policy="open", owner=alice,
                                 limits={"near_duplicate_threshold": 0.0})
        node.datanets.contribute_records("aid", [
            {"prompt": "How do I treat a burn?", "response": "Cool it under running water."},
            {"prompt": "A nosebleed?", "response": "Lean forward and pinch.", "system": "Be brief."},
            {"prompt": "Remove me", "response": "Soon purged."},
        ], contributor=alice)
        node.datanets.publish("aid", actor=alice)
        purged = next(r["contribution_id"] for r in node.datanets.rows("aid", version=1) if r["prompt"] == "Remove me")
        node.datanets.withdraw("aid", purged, actor=alice)
        node.datanets.purge("aid", purged, actor=alice)
    return tmp_path / "home"


def test_corpus_from_a_datanet_version(datanet_home: Path) -> None:
    with royalty.open_node(datanet_home) as node:
        texts = corpus_texts(node, "aid@1")
        assert sorted(texts) == ["Be brief.\nA nosebleed?\nLean forward and pinch.",
                                 "How do I treat a burn?\nCool it under running water."]
        with pytest.raises(NotFound):
            corpus_texts(node, "nope@1")
        with pytest.raises(NotFound):
            corpus_texts(node, "aid@7")
        with pytest.raises(NotFound):
            corpus_texts(node, "notes@1")  # no version published yet
    with pytest.raises(InvalidInput, match="needs a node"):
        corpus_texts(None, "aid@1")


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, (RoyaltyError, SystemExit)):
        raise result.exception
    return result


def test_cli_init_pretrain_info(tmp_path: Path, datanet_home: Path) -> None:
    model_dir = tmp_path / "m"
    result = invoke("init-tiny", model_dir, "--corpus", "aid@1", "--home", datanet_home, "--vocab-size", "300",
                    "--hidden-size", "16", "--layers", "1", "--json")
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["identity"]["architecture"] == "LlamaForCausalLM"
    assert built["identity"]["weights_sha256"] == identity(str(model_dir)).weights_sha256

    result = invoke("info", model_dir, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["identity"] == built["identity"]
    assert info["config"]["hidden_size"] == 16 and info["config"]["intermediate_size"] == 48
    assert info["tokenizer"]["eos_token"] == "</s>" and info["tokenizer"]["chat_template"] and info["pretrain"] == []

    corpus = tmp_path / "c.txt"
    corpus.write_text("Cool a burn under running water.\n\nPinch the nose for ten minutes.\n")
    result = invoke("pretrain", model_dir, "--corpus", corpus, "--minutes", "1", "--max-steps", "3", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["steps"] == 3 and stats["weights_sha256"] != built["identity"]["weights_sha256"]

    result = invoke("info", model_dir)
    assert result.exit_code == 0
    assert "LlamaForCausalLM" in result.stdout and "pretrained    1 run(s), 3 steps" in result.stdout


def test_cli_errors(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    cases = [
        (("init-tiny", taken), Conflict, "not empty"),
        (("init-tiny", tmp_path / "a", "--corpus", tmp_path / "missing.txt"), InvalidInput, "no such file"),
        (("init-tiny", tmp_path / "a", "--hidden-size", "36"), InvalidInput, "multiple of 2 x num_heads = 8"),
        (("pretrain", tmp_path / "nothing", "--minutes", "1"), InvalidInput, "no such folder"),
        (("info", taken), InvalidInput, "no config.json"),
    ]
    for args, error, message in cases:
        result = invoke(*args)
        assert isinstance(result.exception, error) and message in str(result.exception), (args, result.exception)
    assert invoke("pretrain", tmp_path, "--minutes", "0").exit_code == 2  # a usage error from the option's range
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
