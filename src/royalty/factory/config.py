"""TrainConfig: one YAML file that says everything a training run does, checked before any work starts.

The schema is sectioned (``model``, ``data``, ``lora``, ``train``, ``output``, ``price``); every field carries
help text, which ``config_reference()`` turns into ``royalty train --explain`` (and later the web form).
``load_config`` reads YAML text, a file or a dict, applies ``section.field=value`` overrides and reports every
problem at once in one :class:`~royalty.errors.ConfigInvalid`: YAML syntax errors name the line, unknown keys
suggest the nearest valid name, bad values name the field and the rule ("lora.r: must be >= 1 (got 0)").

``config_hash()`` identifies what a run computes: the resolved config minus ``output.dir`` (where a run is
written is not what it is). A run directory refuses a config with a different hash.

Only pydantic and PyYAML are imported here: the CLI validates a config without loading torch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..datanet.records import check_license_list
from ..errors import ConfigInvalid, InvalidInput, NotFound
from ..ledger.amounts import format_amount, parse_amount

# The datanet slug rule (royalty.datanet.registry): adapters are named like datanets.
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
_REF = re.compile(r"(?P<slug>[^@\s]+)@(?P<version>[^@\s]+)")
_SLUG_RULE = "1-64 lowercase letters, digits and '-', not starting or ending with '-'"


class _Section(BaseModel):
    # Frozen: a validated config is what a run's hash says it is; change one with load_config(..., overrides).
    # Floats must be finite: YAML's .nan / .inf would slip past the bounds or poison a run.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSection(_Section):
    base: str = Field(
        min_length=1,
        description="The base model: a local directory in Hugging Face format (e.g. one built by "
        "`royalty model init-tiny`) or a hub id. Its weights hash is recorded in the adapter's manifest.",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Precision the base model is loaded and trained in. float32 is exact on CPU."
    )

    @field_validator("base")
    @classmethod
    def _absolute_local_path(cls, value: str) -> str:
        # A local directory is recorded by its absolute path, so the config (and its hash, its run directory)
        # means the same model whichever directory a command, a job worker or a resume runs from.
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else value


class DatanetRef(_Section):
    """One datanet version to train on. YAML: ``"slug@3"`` or ``{ref: "slug@3", weight: 2.0}``."""

    ref: str = Field(description="The datanet and its published version, as slug@N (e.g. first-aid@1).")
    weight: float = Field(
        1.0,
        gt=0,
        description="Mixing weight: each epoch shows every example of this datanet floor(weight) times, plus "
        "a seeded sample of the fractional part (0.5 = half of the examples each epoch).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"ref": value}
        if not isinstance(value, dict):
            # pydantic reports a ValueError (not a TypeError) as a validation problem of this field
            raise ValueError(  # noqa: TRY004
                f"a datanet is 'slug@N' or {{ref: 'slug@N', weight: 2}}, got {_show(value)}"
            )
        return value

    @field_validator("ref")
    @classmethod
    def _check_ref(cls, value: str) -> str:
        value = value.strip()
        m = _REF.fullmatch(value)
        if m is None:
            raise ValueError(
                f"{value!r} names no version: write slug@N with a published version number, e.g. "
                f"{value.split('@')[0]}@1 (royalty datanet versions SLUG lists them)"
            )
        if not _SLUG.fullmatch(m["slug"]):
            raise ValueError(f"{m['slug']!r} is not a datanet slug ({_SLUG_RULE})")
        if not re.fullmatch(r"[1-9][0-9]{0,8}", m["version"]):
            raise ValueError(
                f"version {m['version']!r} in {value!r} must be a positive whole number (a published version; "
                "training pins one so the run can be reproduced)"
            )
        return value

    @property
    def slug(self) -> str:
        return self.ref.split("@")[0]

    @property
    def version(self) -> int:
        return int(self.ref.split("@")[1])


class DataSection(_Section):
    datanets: list[DatanetRef] = Field(
        min_length=1,
        description="Datanet versions to train on, each 'slug@N' or {ref: 'slug@N', weight: W}. A datanet may "
        "appear once; use weight to show it more often.",
    )
    template: Literal["auto", "chat", "plain"] = Field(
        "auto",
        description="How records become text: 'chat' uses the tokenizer's chat template, 'plain' uses "
        "'### Instruction:' / '### Response:' headers; 'auto' picks chat when the tokenizer has a template. "
        "Text records are always trained as plain text.",
    )
    max_seq_len: int = Field(
        512,
        ge=8,
        le=1_048_576,
        description="Longest example in tokens; longer ones are cut from the right. An example whose trained "
        "tokens are all cut off is a bad row.",
    )
    eval_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of examples held out for evaluation, chosen per contribution id (so the split does not "
        "depend on row order). 0 = no held-out set.",
    )
    on_bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="What to do with rows that cannot be trained on (purged, nothing trainable after truncation, "
        "...): 'error' lists them all and stops; 'skip' leaves them out and records them in the run (run.json's data_report).",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_datanet(cls, value: Any) -> Any:
        # `data.datanets=first-aid@1` on the command line is a single ref, not a list.
        if isinstance(value, dict) and isinstance(value.get("datanets"), (str, dict)):
            return {**value, "datanets": [value["datanets"]]}
        return value

    @field_validator("datanets")
    @classmethod
    def _each_once(cls, refs: list[DatanetRef]) -> list[DatanetRef]:
        seen: dict[str, list[str]] = {}
        for ref in refs:
            seen.setdefault(ref.slug, []).append(ref.ref)
        twice = {slug: given for slug, given in seen.items() if len(given) > 1}
        if twice:
            slug, given = next(iter(twice.items()))
            raise ValueError(
                f"{slug} appears {len(given)} times ({', '.join(given)}): list each datanet once (examples would "
                "repeat); raise its weight to show it more often"
            )
        return refs


class LoraSection(_Section):
    r: int = Field(8, ge=1, le=4096, description="LoRA rank: the size of the low-rank update. 4-64 is usual.")
    alpha: int = Field(16, ge=1, description="LoRA alpha: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input during training (0 = none).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="Names of the linear layers that get a LoRA update (Llama: q_proj k_proj v_proj o_proj "
        "gate_proj up_proj down_proj).",
    )
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by alpha/sqrt(r) instead of alpha/r.")
    use_dora: bool = Field(False, description="DoRA: learn a magnitude vector besides the LoRA direction (slower).")

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, names: list[str]) -> list[str]:
        names = [n.strip() for n in names]
        if any(not n for n in names):
            raise ValueError("module names must not be empty")
        if len(set(names)) != len(names):
            raise ValueError(f"{min(n for n in names if names.count(n) > 1)!r} is listed twice")
        return names


class TrainSection(_Section):
    epochs: int = Field(3, ge=1, le=100_000, description="Passes over the training examples.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate of AdamW.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate schedule after warmup: linear decay, cosine decay, or constant."
    )
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of the steps spent warming the learning rate up from 0."
    )
    batch_size: int = Field(8, ge=1, le=65_536, description="Examples per forward/backward pass.")
    grad_accum: int = Field(
        1,
        ge=1,
        le=65_536,
        description="Passes whose gradients are summed before one optimizer step (effective batch = batch_size x "
        "grad_accum).",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradients are clipped to this total norm before each step.")
    seed: int = Field(
        42, ge=0, lt=2**32, description="Seeds the LoRA initialisation, dropout, the eval split and the example order."
    )
    threads: int | None = Field(
        None, ge=1, le=1024, description="CPU threads torch may use; empty = torch's default (all cores)."
    )
    save_every: int = Field(
        0, ge=0, description="Save a resumable checkpoint every N optimizer steps; 0 = only at the end (and on Ctrl-C)."
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many optimizer steps (the schedule is planned for it); empty = run all epochs.",
    )


class OutputSection(_Section):
    name: str = Field(
        description=f"The adapter's name ({_SLUG_RULE}); registering the same name again makes its next version."
    )
    dir: Path | None = Field(
        None, description="The run directory; empty = <home>/runs/<name>/<key>, the key hashing this config (and the parent adapter of a --continue-from run), so --resume finds it again. Not part of the config hash."
    )
    license: str = Field(
        "other",
        description="License of the adapter, an SPDX id (e.g. CC-BY-4.0, Apache-2.0) or 'other'; it goes into the "
        "model card.",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG.fullmatch(value):
            raise ValueError(f"{value!r} is not allowed: use {_SLUG_RULE}")
        return value

    @field_validator("license")
    @classmethod
    def _spdx(cls, value: str) -> str:
        problems = check_license_list([value.strip()])
        if problems:
            raise ValueError(problems[0])
        return value.strip()


class PriceSection(_Section):
    input_per_1k: str = Field(
        "0", description="What a caller pays (OPEN) per 1,000 input tokens when the adapter is served, e.g. \"0.01\"."
    )
    output_per_1k: str = Field(
        "0", description="What a caller pays (OPEN) per 1,000 output tokens when the adapter is served, e.g. \"0.02\"."
    )

    @field_validator("input_per_1k", "output_per_1k", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> str:
        # YAML reads `0.01` as a float; its repr is the shortest text that reads back as the same number, which is
        # what the user wrote for any price with at most 6 decimals. The stored form is normalised ("0.010" ->
        # "0.01"), so equal prices hash equally.
        if isinstance(value, float):
            value = repr(value)
        try:
            return format_amount(parse_amount(value, "price", allow_zero=True))
        except InvalidInput:
            raise ValueError(
                f"{_show(value)} is not an OPEN amount: use a decimal string with at most 6 decimals, e.g. \"0.01\""
            ) from None


class TrainConfig(BaseModel):
    """Everything a training run does. Build it with :func:`load_config`; ``to_yaml`` writes it back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSection = Field(description="The base model.")
    data: DataSection = Field(description="Which datanet versions, and how their records become examples.")
    lora: LoraSection = Field(default_factory=LoraSection, description="The LoRA adapter.")
    train: TrainSection = Field(default_factory=TrainSection, description="The optimisation loop.")
    output: OutputSection = Field(description="Where the run goes and what the adapter is called.")
    price: PriceSection = Field(default_factory=PriceSection, description="What using the adapter costs, in OPEN.")

    def config_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the resolved config, ``output.dir`` excluded."""
        data = self.model_dump(mode="json", exclude={"output": {"dir"}})
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_yaml(self) -> str:
        """The resolved config as YAML (every field, defaults included); ``load_config`` reads it back."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def load_config(source: Path | str | Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """Read and validate a TrainConfig.

    ``source`` is a YAML file (a ``Path``), YAML text (a ``str``) or an already parsed mapping. ``overrides`` are
    ``section.field=value`` strings whose values are parsed as YAML (``lora.r=16``, ``data.datanets=[a@1, b@2]``,
    ``train.threads=`` for empty). Raises ConfigInvalid listing every problem: YAML syntax (with the line), unknown
    sections, keys and override paths (with the nearest valid name), and every invalid value; NotFound when the
    file does not exist.
    """
    problems: list[tuple[str, str]] = []
    data = _read(source, problems)
    for override in overrides:
        _apply_override(data, override, problems)
    if data is None:  # the YAML could not be read: report that (and bad overrides) alone
        raise ConfigInvalid(problems)
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems += [(_loc(e["loc"]), _message(e)) for e in exc.errors()]
        raise ConfigInvalid(problems) from None
    if problems:
        raise ConfigInvalid(problems)
    return cfg


def config_reference() -> list[dict[str, Any]]:
    """Every config field in schema order: ``{field, type, default, required, choices, help}``.

    ``field`` is the dotted path (``lora.r``); ``default`` is JSON-ready (None when required or empty);
    ``choices`` lists the allowed values of a fixed-choice field, else None.
    """
    out = []
    for section, section_field in TrainConfig.model_fields.items():
        model: type[BaseModel] = section_field.annotation  # type: ignore[assignment]
        for name, info in model.model_fields.items():
            required = info.is_required()
            default = None if required else info.get_default(call_default_factory=True)
            out.append(
                {
                    "field": f"{section}.{name}",
                    "type": _type_name(info.annotation),
                    "default": default if not isinstance(default, Path) else str(default),
                    "required": required,
                    "choices": _choices(info.annotation),
                    "help": info.description,
                }
            )
    return out


# --- reading ---------------------------------------------------------------------------------------------------


def _read(source: Path | str | Mapping[str, Any], problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The config as a dict, or None (with a problem recorded) when it cannot be read as a mapping."""
    where = ""
    if isinstance(source, Mapping):
        return _plain(source)
    if isinstance(source, Path):
        where = str(source)
        if not source.is_file():
            raise NotFound(f"config file {source} does not exist (start from: royalty train --example)", field="config")
        try:
            text = source.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            problems.append(("config", f"{source} is not UTF-8 text"))
            return None
    else:
        text = source
    where = f"{where}: " if where else ""
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        what = getattr(exc, "problem", None) or str(exc)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problems.append(("config", f"{where}{at}YAML syntax error: {what}"))
        return None
    except _DuplicateKey as exc:
        problems.append(("config", f"{where}line {exc.line}: {exc.key!r} appears twice in the same mapping; keep one"))
        return None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        hint = " (to read a file, pass a Path, not its name as text)" if isinstance(data, str) else ""
        what = f"{where}the config must be a mapping of sections (model:, data:, ...), got {_show(data)}{hint}"
        problems.append(("config", what))
        return None
    return data


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        self.key, self.line = key, line


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML would silently keep the last one, so a
    second ``lora:`` section would quietly replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of nested mappings, so overrides never change the caller's dict."""
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}


def _apply_override(data: dict[str, Any] | None, override: str, problems: list[tuple[str, str]]) -> None:
    key, eq, raw = override.partition("=")
    key = key.strip()
    if not eq or not key:
        problems.append((key or "overrides", f"override {override!r} must be section.field=value, e.g. lora.r=16"))
        return
    section, _, name = key.partition(".")
    sections = TrainConfig.model_fields
    model = sections[section].annotation if section in sections else None
    if model is None or name not in model.model_fields:  # type: ignore[union-attr]
        problems.append((key, f"unknown setting in override {override!r}{_suggest(key)}"))
        return
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. an unbalanced quote): the text itself; the schema judges it
    if data is None:
        return
    target = data.setdefault(section, {})
    if target is None:
        target = data[section] = {}
    if isinstance(target, dict):  # a section that is not a mapping is reported by the schema
        target[name] = value


# --- messages --------------------------------------------------------------------------------------------------


def _all_paths() -> list[str]:
    return [f["field"] for f in config_reference()]


# Names other fine-tuning tools (HF TrainingArguments, axolotl, LLaMA-Factory) use for our fields: spelling is
# too far apart for difflib, and people bring their old configs.
_ALIASES = {
    "lr": "train.learning_rate",
    "num_epochs": "train.epochs",
    "num_train_epochs": "train.epochs",
    "micro_batch_size": "train.batch_size",
    "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "lr_scheduler_type": "train.scheduler",
    "lr_scheduler": "train.scheduler",
    "rank": "lora.r",
    "lora_r": "lora.r",
    "lora_rank": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules",
    "lora_target": "lora.target_modules",
    "sequence_len": "data.max_seq_len",
    "cutoff_len": "data.max_seq_len",
    "max_length": "data.max_seq_len",
    "val_set_size": "data.eval_fraction",
    "base_model": "model.base",
    "model_name_or_path": "model.base",
    "output_dir": "output.dir",
}


def _suggest(path: str) -> str:
    """'; did you mean X?' for the nearest valid name of a dotted path (or of a section), else where to look."""
    parts = path.split(".")
    leaf = parts[-1]
    paths = _all_paths()
    leaves = {p.split(".")[-1]: p for p in paths}
    sections = list(TrainConfig.model_fields)
    if leaf in _ALIASES:
        return f"; did you mean {_ALIASES[leaf]}?"
    if leaf in leaves:  # a right name in the wrong place ("train.r", "epochs") points to where it lives
        return f"; did you mean {leaves[leaf]}?"
    if len(parts) > 1:
        best = difflib.get_close_matches(path, paths, n=1, cutoff=0.6)
    else:
        best = difflib.get_close_matches(leaf, sections, n=1, cutoff=0.6)
    if not best:  # a typo in the field name alone: compare leaves
        near = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        best = [leaves[near[0]]] if near else []
    if best:
        return f"; did you mean {best[0]}?"
    return f"; sections are {', '.join(sections)} (royalty train --explain lists every field)"


def _loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_EMPTY_HINTS = {
    "data.datanets": ": list at least one datanet version, e.g. [first-aid@1]",
    "lora.target_modules": ": name at least one layer, e.g. [q_proj, v_proj]",
}


def _message(error: Any) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = f" (got {_show(value)})"
    if kind == "extra_forbidden":
        path = _loc(error["loc"])
        if re.search(r"\[\d+\]", path):  # inside a datanet entry: only ref and weight exist
            return f"unknown key{_near(str(error['loc'][-1]), list(DatanetRef.model_fields))}"
        return f"unknown {'section' if len(error['loc']) == 1 else 'key'}{_suggest(path)}"
    if kind == "missing":
        if len(error["loc"]) == 1:  # a whole section: say which of its fields must be given
            section = f"{error['loc'][0]}."
            needed = [f["field"] for f in config_reference() if f["required"] and f["field"].startswith(section)]
            return f"section is required, with {' and '.join(needed)}"
        return f"is required: {_help(error['loc'])}"
    simple = {
        "greater_than_equal": lambda: f"must be >= {ctx.get('ge')}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "less_than": lambda: f"must be < {ctx.get('lt')}",
        "less_than_equal": lambda: f"must be <= {ctx.get('le')}",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "int_parsing": lambda: "must be a whole number",
        "int_from_float": lambda: "must be a whole number",
        "int_type": lambda: "must be a whole number",
        "float_parsing": lambda: "must be a number",
        "float_type": lambda: "must be a number",
        "finite_number": lambda: "must be a finite number",
        "bool_parsing": lambda: "must be true or false",
        "bool_type": lambda: "must be true or false",
        "string_type": lambda: "must be text",
        "list_type": lambda: "must be a list",
        "model_type": lambda: "must be a mapping of settings (key: value)",
        "model_attributes_type": lambda: "must be a mapping of settings (key: value)",
        "path_type": lambda: "must be a path",
    }
    if kind in simple:
        return simple[kind]() + got
    if kind == "too_short":
        return "must not be empty" + _EMPTY_HINTS.get(_loc(error["loc"]), "")
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']}{got}"


def _help(loc: Sequence[Any]) -> str:
    """The help text of the field at ``loc`` (what a missing field is for)."""
    model: Any = TrainConfig
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if isinstance(part, int) or part not in fields:
            model = DatanetRef if isinstance(part, int) else model
            continue
        info = fields[part]
        model = info.annotation
    return info.description if info is not None and info.description else "give a value"


def _near(name: str, candidates: list[str]) -> str:
    best = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {best[0]}?" if best else f"; valid keys: {', '.join(candidates)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- reference -------------------------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return "list of 'slug@N' | {ref, weight}" if item is DatanetRef else f"list of {_type_name(item)}"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _choices(annotation: Any) -> list[Any] | None:
    return list(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else None


EXAMPLE_CONFIG = """\
# A ModelFactory training config: royalty train THIS.yaml [section.field=value ...]
# Every field and its meaning: royalty train --explain. Only model.base, data.datanets and output.name
# are required; the values below are the defaults unless marked.

model:
  base: ./models/tiny-llama      # required: a local HF model directory (royalty model init-tiny) or a hub id
  dtype: float32                 # float32 | bfloat16

data:
  datanets:                      # required: published datanet versions, slug@N
    - first-aid@1
    # - {ref: first-aid-extra@2, weight: 0.5}   # mixing weight: half of its examples each epoch
  template: auto                 # auto | chat (tokenizer's chat template) | plain (### Instruction / ### Response)
  max_seq_len: 512               # tokens; longer examples are cut from the right
  eval_fraction: 0.1             # held out per contribution id, independent of row order
  on_bad_rows: error             # error: list every bad row and stop | skip: leave them out, recorded in the run

lora:
  r: 8
  alpha: 16
  dropout: 0.05
  target_modules: [q_proj, v_proj]
  use_rslora: false
  use_dora: false

train:
  epochs: 3
  learning_rate: 0.0002
  scheduler: linear              # linear | cosine | constant
  warmup_ratio: 0.0
  batch_size: 8
  grad_accum: 1
  max_grad_norm: 1.0
  seed: 42
  threads: null                  # null = torch's default
  save_every: 0                  # checkpoint every N steps; 0 = at the end (and on Ctrl-C)
  max_steps: null                # null = all epochs

output:
  name: first-aid-helper         # required: the adapter's name
  dir: null                      # null = <home>/runs/<name>/<config key>
  license: other                 # SPDX id of the adapter, e.g. CC-BY-4.0

price:                           # OPEN per 1,000 tokens when the adapter is served
  input_per_1k: "0"
  output_per_1k: "0"
"""
