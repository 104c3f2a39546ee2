"""Base models: load any Hugging Face causal LM, identify it by its weights, and build tiny local ones.

A base model is a folder in standard Hugging Face format (``config.json``, ``*.safetensors``, tokenizer files),
loaded through ``transformers``' own ``from_pretrained`` so a user's model and the tests' tiny model take exactly
the same path. A reference that is not an existing path is tried as a Hub id (the Hub's cache or network).

``init_tiny`` builds a small Llama-architecture model with a byte-level BPE tokenizer trained locally on a corpus;
``pretrain`` gives it some language by full-parameter training for a wall-clock budget. Both write into a
temporary folder beside the target and rename it into place, so a crash leaves the old state or nothing.

Tokenizer conventions (``factory.data`` relies on them): ``<s>`` bos, ``</s>`` eos, ``<pad>`` pad, role markers
``<|system|>``, ``<|user|>``, ``<|assistant|>``; encoding adds no special tokens by itself; the chat template
renders each message as ``<|role|>\\n{content}</s>\\n`` and ``add_generation_prompt`` appends
``<|assistant|>\\n``. Byte-level, so every string round-trips through encode/decode.

torch/transformers are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Conflict, InvalidInput
from . import corpus

if TYPE_CHECKING:
    from ..node import Node

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)  # ids 0..5 in a tokenizer made by init_tiny
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
PRETRAIN_FILE = "pretrain.json"
_DTYPES = ("float32", "bfloat16", "float16")
# A Hub id: "name" or "owner/name" (letters, digits, "-", "_", "."); anything else can only be a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_DATANET_REF = re.compile(r"([a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)@([0-9]+)")
_FIELD = "model.base"


@dataclass(frozen=True)
class BaseModelIdentity:
    """What a manifest records about a base model."""

    name: str  # the ref the user gave (path as given, or Hub id)
    architecture: str  # e.g. "LlamaForCausalLM"
    weights_sha256: str  # SHA-256 over the weight files, see weights_sha256()
    num_parameters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TinySpec:
    """The shape of an ``init_tiny`` model. The defaults give ~1.1-1.3M parameters and a vocabulary of at most 4096
    tokens (BPE stops earlier when the corpus has fewer distinct merges, ~2.7k on the built-in corpus; the model
    uses the real size)."""

    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 344
    max_position_embeddings: int = 512

    def check(self) -> None:
        """Raise InvalidInput naming the first impossible field."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1 (got {getattr(self, name)})", field=name)
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise InvalidInput(
                f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)}: the 256 byte tokens and "
                f"{len(SPECIAL_TOKENS)} special tokens (got {self.vocab_size})", field="vocab_size")
        if self.hidden_size % (2 * self.num_heads):
            raise InvalidInput(
                f"hidden_size must be a multiple of 2 x num_heads = {2 * self.num_heads}, so each attention head "
                f"has an even width for rotary embeddings (got {self.hidden_size})", field="hidden_size")


# --------------------------------------------------------------------------------------------------------------
# building a tiny model
# --------------------------------------------------------------------------------------------------------------


def quiet_libraries() -> None:
    """Silence what transformers and the hub print on their own (per-file progress bars, peft's use of a
    deprecated property): royalty reports progress itself, and stray bars garble the CLI's output."""
    import warnings

    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def init_tiny(
    out_dir: Path, texts: Iterable[str] | None = None, *, spec: TinySpec = TinySpec(), seed: int = 0
) -> BaseModelIdentity:
    """Build a randomly initialised ``LlamaForCausalLM`` and a byte-level BPE tokenizer trained on ``texts`` (the
    built-in corpus when None) and save both in standard Hugging Face format into ``out_dir``.

    Deterministic: the same texts, spec and seed give the same files (and weights hash). ``out_dir`` must not exist
    or be empty (Conflict otherwise); nothing is left behind when this fails.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    quiet_libraries()
    spec.check()
    out_dir = Path(out_dir)
    # Work on the absolute path: when out_dir is the working directory ("."), the final rename replaces it.
    target = out_dir.resolve()
    _require_empty(target)
    corpus_ = corpus.builtin_texts() if texts is None else [t for t in texts if t.strip()]
    if not corpus_:
        raise InvalidInput("the corpus has no text to train the tokenizer on", field="corpus")
    tokenizer = _train_tokenizer(corpus_, spec)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5,
        # Tied input/output embeddings: in a tiny model the two vocab x hidden matrices would be most of the
        # parameters; tying halves them and trains the embedding from both ends.
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed right before the weights exist: initialisation draws from torch's global generator.
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        _save_tokenizer(tokenizer, tmp)

    _atomic_write(target, write)
    return replace(identity(str(target)), name=str(out_dir))


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    # The chat template inside tokenizer_config.json (not transformers 5's separate chat_template.jinja): the
    # place every version of transformers and other tools (llama.cpp, vLLM) read it from.
    tokenizer.save_pretrained(folder, save_jinja_files=False)


def _train_tokenizer(texts: Sequence[str], spec: TinySpec) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    # ByteLevel: text is split into bytes mapped to 256 printable symbols, so nothing is ever unknown.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_position_embeddings,
    )


# --------------------------------------------------------------------------------------------------------------
# loading and identifying
# --------------------------------------------------------------------------------------------------------------


def load_tokenizer(ref: str) -> Any:
    """The tokenizer of base model ``ref`` (``AutoTokenizer``): a local folder, else a Hub id."""
    from transformers import AutoTokenizer

    quiet_libraries()
    local = _resolve(ref)
    try:
        return AutoTokenizer.from_pretrained(str(local) if local else ref, local_files_only=local is not None)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(ref, local, "tokenizer", exc) from None


def load_base(ref: str, *, dtype: str = "float32") -> tuple[Any, Any]:
    """``(model, tokenizer)`` of base model ``ref`` via ``AutoModelForCausalLM.from_pretrained``, in eval mode.

    ``ref`` is an existing local folder (loaded with ``local_files_only``) or a Hub id (cache or network). Every way
    this can fail is an InvalidInput on field ``model.base`` that names the ref and the fix.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise InvalidInput(f"dtype must be one of {', '.join(_DTYPES)} (got {dtype!r})", field="model.dtype")
    local = _resolve(ref)
    tokenizer = load_tokenizer(ref)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if local else ref, dtype=getattr(torch, dtype), local_files_only=local is not None
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(ref, local, "model", exc) from None
    model.eval()
    return model, tokenizer


def identity(ref: str) -> BaseModelIdentity:
    """Identify base model ``ref`` without building it: architecture and parameter count from the weight files'
    headers, plus the weights hash."""
    from safetensors import safe_open

    folder = _resolve(ref) or _hub_snapshot(ref)
    config = _read_config(ref, folder)
    files = _weight_files(ref, folder)
    count = 0
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:  # reads the header only
                names = f.keys()  # safe_open is not iterable
                count += sum(math.prod(f.get_slice(k).get_shape()) for k in names)
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
            count += sum(t.numel() for t in state.values())
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    return BaseModelIdentity(name=ref, architecture=str(architectures[0]), weights_sha256=weights_sha256(files),
                             num_parameters=count)


def describe(ref: str) -> dict[str, Any]:
    """What ``royalty model info`` shows: ``{"identity", "config", "tokenizer", "pretrain"}`` (config: the shape
    fields of config.json; pretrain: the runs recorded in pretrain.json, oldest first)."""
    ident = identity(ref)
    folder = _resolve(ref) or _hub_snapshot(ref)
    config = _read_config(ref, folder)
    shape_keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings")
    tokenizer = load_tokenizer(ref)
    runs = _pretrain_runs(ref, folder)
    return {
        "identity": ident.to_dict(),
        "config": {k: config.get(k) for k in shape_keys},
        "tokenizer": {
            "vocab_size": len(tokenizer),
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token,
            "chat_template": bool(tokenizer.chat_template),
        },
        "pretrain": runs,
    }


def weights_sha256(files: Sequence[Path]) -> str:
    """SHA-256 over weight files sorted by name, each framed as ``len(name) name len(bytes) bytes`` (8-byte
    big-endian lengths), so no two different file sets hash alike."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        name = path.name.encode("utf-8")
        digest.update(len(name).to_bytes(8, "big") + name + path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _resolve(ref: str) -> Path | None:
    """The local folder ``ref`` names, None when ``ref`` is a Hub id; InvalidInput for a path that is not there."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInput("the base model is empty: give a model folder or a Hugging Face Hub id", field=_FIELD)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidInput(f"base model {ref}: the folder has no config.json, so it is not a saved model; "
                               "build one with: royalty model init-tiny DIR", field=_FIELD)
        return path
    if path.exists():
        raise InvalidInput(f"base model {ref}: is a file; give the model's folder", field=_FIELD)
    if _HUB_ID.fullmatch(ref) and not ref.startswith("."):
        return None
    raise InvalidInput(f"base model {ref}: no such folder; build one with: royalty model init-tiny DIR", field=_FIELD)


def _load_error(ref: str, local: Path | None, what: str, exc: Exception) -> InvalidInput:
    reason = " ".join(str(exc).split())[:300]
    if local is None:
        return InvalidInput(f"base model {ref}: not a local folder, and the Hugging Face Hub could not provide its "
                            f"{what} (offline? misspelled?): {reason}", field=_FIELD)
    return InvalidInput(f"base model {ref}: cannot load its {what}: {reason}", field=_FIELD)


def _hub_snapshot(ref: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many unrelated types for "not available"
        raise _load_error(ref, None, "files", exc) from None


def _read_config(ref: str, folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"base model {ref}: unreadable config.json ({exc})", field=_FIELD) from None
    if not isinstance(config, dict):
        raise InvalidInput(f"base model {ref}: config.json is not a JSON object", field=_FIELD)
    return config


def _weight_files(ref: str, folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(".safetensors"))
    # Old checkpoints have only pytorch_model*.bin; when safetensors exist, transformers loads those.
    files = files or sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(".bin")
                            and p.name.startswith("pytorch_model"))
    if not files:
        raise InvalidInput(f"base model {ref}: no weight files (*.safetensors) in {folder}", field=_FIELD)
    return files


# --------------------------------------------------------------------------------------------------------------
# pretraining
# --------------------------------------------------------------------------------------------------------------


def pretrain(
    model_dir: Path,
    texts: Sequence[str],
    *,
    minutes: float,
    seed: int = 0,
    max_steps: int | None = None,
    batch_size: int = 16,
    block_size: int = 128,
    learning_rate: float = 3e-3,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Full-parameter causal-LM training of the model in ``model_dir`` on ``texts``, for ``minutes`` of wall time
    (or ``max_steps`` steps, whichever ends first), saved back into ``model_dir`` atomically.

    Each text is tokenized and ended with ``</s>``; every batch is ``batch_size`` windows of ``block_size`` tokens
    (at most the model's positions) at seeded random offsets of that token stream. AdamW with a short
    warmup and a cosine decay over the budget (the larger of steps done / max_steps and time used / minutes).
    ``progress`` gets ``{"step", "loss", "tokens", "seconds", "fraction"}`` after every step. Threads are the
    caller's (``torch.set_num_threads``). Returns the stats also written to ``model_dir/pretrain.json``.
    """
    import torch

    quiet_libraries()

    model_dir = Path(model_dir)
    if not minutes > 0:
        raise InvalidInput(f"minutes must be > 0 (got {minutes})", field="minutes")
    if max_steps is not None and max_steps < 1:
        raise InvalidInput(f"max_steps must be >= 1 (got {max_steps})", field="max_steps")
    model, tokenizer = load_base(str(model_dir))
    runs = _pretrain_runs(str(model_dir), model_dir)  # a damaged record stops us before, not after, training
    block = min(block_size, model.config.max_position_embeddings)
    texts = [t for t in texts if t.strip()]
    stream = _token_stream(texts, tokenizer)  # [L]
    block = min(block, len(stream))
    started = time.monotonic()
    budget = minutes * 60.0
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout, if a config has any
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = 20 if max_steps is None else max(1, min(20, max_steps // 10))
    model.train()
    losses: list[float] = []
    step = tokens = 0

    def done() -> float:  # the fraction of the budget used: time, or steps when max_steps is given
        return max((time.monotonic() - started) / budget, step / max_steps if max_steps else 0.0)

    fraction = done()
    while fraction < 1.0:
        # Random offsets rather than fixed blocks (as nanoGPT): every token is seen in many contexts.
        starts = torch.randint(len(stream) - block + 1, (batch_size,), generator=generator)
        ids = torch.stack([stream[i:i + block] for i in starts.tolist()])  # [B, T]
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction)))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * scale
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += ids.numel()
        losses.append(loss.item())
        fraction = done()
        if progress is not None:
            progress({"step": step, "loss": losses[-1], "tokens": tokens, "seconds": time.monotonic() - started,
                      "fraction": min(1.0, fraction)})
    seconds = time.monotonic() - started
    stats = {
        "steps": step,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "block_size": block,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "corpus": {"texts": len(texts), "tokens": len(stream), "sha256": corpus_sha256(texts)},
        "loss": _loss_summary(losses),
    }
    model.eval()
    target = model_dir.resolve()  # by absolute path: when model_dir is ".", the swap replaces the working directory
    _save_pretrained(target, model, tokenizer, runs, stats)
    stats["weights_sha256"] = identity(str(target)).weights_sha256
    return stats


def _token_stream(texts: Sequence[str], tokenizer: Any) -> Any:
    """The corpus as one token stream, each text followed by eos: LongTensor [L], L >= 2."""
    import torch

    if not texts:
        raise InvalidInput("the corpus has no text to train on", field="corpus")
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream += [*ids, tokenizer.eos_token_id]
    if len(stream) < 2:
        raise InvalidInput("the corpus is too small to train on (fewer than 2 tokens)", field="corpus")
    return torch.tensor(stream, dtype=torch.long)


def _loss_summary(losses: list[float]) -> dict[str, Any]:
    tail = losses[-max(1, len(losses) // 10):]
    every = max(1, math.ceil(len(losses) / 20))
    return {
        "first": round(losses[0], 4),
        "last": round(losses[-1], 4),
        "min": round(min(losses), 4),
        "final_mean": round(sum(tail) / len(tail), 4),  # mean over the last 10% of steps: less noisy than "last"
        "curve": [[i + 1, round(losses[i], 4)] for i in range(0, len(losses), every)],
    }


def _pretrain_runs(ref: str, folder: Path) -> list[dict[str, Any]]:
    """The runs recorded in ``folder/pretrain.json``, oldest first ([] when there is none)."""
    path = folder / PRETRAIN_FILE
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text("utf-8"))["runs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"base model {ref}: {PRETRAIN_FILE} is damaged ({type(exc).__name__}); "
                           "move it away to start a new record", field=_FIELD) from None
    if not isinstance(runs, list):
        raise InvalidInput(f"base model {ref}: {PRETRAIN_FILE} is damaged (runs is not a list); "
                           "move it away to start a new record", field=_FIELD)
    return runs


def _save_pretrained(
    model_dir: Path, model: Any, tokenizer: Any, runs: list[dict[str, Any]], stats: dict[str, Any]
) -> None:
    """Replace ``model_dir`` (an absolute path) with the trained model: other files (a README, …) are carried over, but no old weight
    file or shard index (they would shadow or mix with the new weights), and ``pretrain.json`` gets this run
    appended. The new folder is complete before it takes the old one's place."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        _save_tokenizer(tokenizer, tmp)
        for item in model_dir.iterdir():
            stale = item.name.endswith((*WEIGHT_SUFFIXES, ".index.json")) or item.name == "chat_template.jinja"
            if item.is_file() and not stale and not (tmp / item.name).exists():
                shutil.copy2(item, tmp / item.name)
        (tmp / PRETRAIN_FILE).write_text(json.dumps({"runs": [*runs, stats]}, indent=2) + "\n", "utf-8")

    tmp = _temp_beside(model_dir)
    old = model_dir.with_name(f".{model_dir.name}.old-{secrets.token_hex(4)}")
    try:
        write(tmp)
        os.replace(model_dir, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, model_dir)
    shutil.rmtree(old, ignore_errors=True)


def corpus_sha256(texts: Sequence[str]) -> str:
    """SHA-256 of the texts, each framed by its UTF-8 length."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# corpora
# --------------------------------------------------------------------------------------------------------------


def corpus_texts(node: Node | None, spec: str | None) -> list[str]:
    """The texts of a corpus spec: None → the built-in corpus; an existing FILE → its texts (``.jsonl``: one JSON
    object per line with ``text``, ``prompt``/``response``(/``system``) or ``messages``; anything else: UTF-8 text,
    paragraphs separated by blank lines); ``slug@version`` → the text of each non-purged row of that datanet
    version (needs ``node``). An empty result is an InvalidInput."""
    if spec is None:
        return corpus.builtin_texts()
    path = Path(spec).expanduser()
    if path.exists():
        texts = _file_texts(path)
    elif match := _DATANET_REF.fullmatch(spec):
        if node is None:
            raise InvalidInput(f"corpus {spec}: a datanet version needs a node (--home)", field="corpus")
        texts = _datanet_texts(node, match.group(1), int(match.group(2)))
    else:
        raise InvalidInput(f"corpus {spec}: no such file, and not a datanet version (slug@N, e.g. first-aid@1)",
                           field="corpus")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InvalidInput(f"corpus {spec}: has no text", field="corpus")
    return texts


def _file_texts(path: Path) -> list[str]:
    if path.is_dir():
        raise InvalidInput(f"corpus {path}: is a folder; give a .txt or .jsonl file", field="corpus")
    try:
        content = path.read_text("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"corpus {path}: not UTF-8 text", field="corpus") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidInput(f"corpus {path}: cannot read ({reason})", field="corpus") from None
    if path.suffix.lower() != ".jsonl":
        return [" ".join(p.split()) for p in re.split(r"\n\s*\n", content)]
    texts = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"corpus {path} line {number}: not JSON ({exc})", field="corpus") from None
        texts.append(_record_text(record, f"corpus {path} line {number}"))
    return texts


def _record_text(record: Any, where: str) -> str:
    """The text of one JSON line: ``text``; ``prompt`` + ``response`` (+ ``system``); or ``messages``."""
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        if isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
            return "\n".join(record[k] for k in ("system", "prompt", "response") if isinstance(record.get(k), str))
        messages = record.get("messages")
        if isinstance(messages, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                              for m in messages):
            return "\n".join(m["content"] for m in messages)
    raise InvalidInput(f"{where}: expected an object with \"text\", \"prompt\" and \"response\", or \"messages\" "
                       "(a list of {role, content})", field="corpus")


def _datanet_texts(node: Node, slug: str, number: int) -> list[str]:
    from ..datanet.records import RECORD_FIELDS, record_text

    kind = node.datanets.get(slug).kind
    node.datanets.version(slug, number)  # NotFound naming the version before any row is read
    texts = []
    for row in node.datanets.rows(slug, version=number):
        if row["purged"]:
            continue
        fields = {k: row[k] for k in RECORD_FIELDS[kind] if row.get(k) is not None}
        texts.append(record_text(kind, fields))
    return texts


# --------------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------------


def _require_empty(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise Conflict(f"{out_dir}: already exists and is not empty; choose a new folder", field="out_dir")


def _temp_beside(target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()
    return tmp


def _atomic_write(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a fresh folder beside ``out_dir`` (an absolute path), then rename it to ``out_dir`` (which is absent or an
    empty folder); on any failure the temporary folder is removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(out_dir)
    try:
        write(tmp)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked by _require_empty); rename cannot replace a directory
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
