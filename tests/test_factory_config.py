"""TrainConfig (``royalty.factory.config``): every field's bad value names that field, all problems are reported
at once, YAML errors name the line, unknown names suggest the right one, overrides parse as YAML, the hash is
stable and ignores output.dir, and the example config and ``--explain`` reference cover every field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from royalty.errors import ConfigInvalid, NotFound
from royalty.factory.config import EXAMPLE_CONFIG, TrainConfig, config_reference, load_config

MINIMAL = """\
model:
  base: ./models/tiny
data:
  datanets: [first-aid@1]
output:
  name: helper
"""


def problems(source: Any, *overrides: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigInvalid) as err:
        load_config(source, overrides)
    return err.value.problems


# (override, the field the problem must name, a piece of the message)
BAD_VALUES = [
    ("model.base=", "model.base", "must be text"),
    ("model.base=''", "model.base", "must not be empty"),
    ("model.dtype=float16", "model.dtype", "must be one of 'float32' or 'bfloat16'"),
    ("data.datanets=[]", "data.datanets", "must not be empty"),
    ("data.datanets=first-aid", "data.datanets[0].ref", "names no version"),
    ("data.datanets=first-aid@0", "data.datanets[0].ref", "positive whole number"),
    ("data.datanets=first-aid@latest", "data.datanets[0].ref", "positive whole number"),
    ("data.datanets=Bad_Slug@1", "data.datanets[0].ref", "not a datanet slug"),
    ("data.datanets={ref: a@1, weight: 0}", "data.datanets[0].weight", "must be > 0"),
    ("data.datanets={ref: a@1, weight: -2}", "data.datanets[0].weight", "must be > 0"),
    ("data.datanets=[a@1, a@2]", "data.datanets", "a appears 2 times (a@1, a@2)"),
    ("data.datanets=[3]", "data.datanets[0]", "a datanet is 'slug@N'"),
    ("data.template=alpaca", "data.template", "must be one of 'auto', 'chat' or 'plain'"),
    ("data.max_seq_len=4", "data.max_seq_len", "must be >= 8 (got 4)"),
    ("data.max_seq_len=12.5", "data.max_seq_len", "must be a whole number"),
    ("data.eval_fraction=1", "data.eval_fraction", "must be < 1"),
    ("data.eval_fraction=-0.1", "data.eval_fraction", "must be >= 0"),
    ("data.eval_fraction=.nan", "data.eval_fraction", "finite number"),
    ("data.on_bad_rows=ignore", "data.on_bad_rows", "must be one of 'error' or 'skip'"),
    ("lora.r=0", "lora.r", "must be >= 1 (got 0)"),
    ("lora.r=eight", "lora.r", "must be a whole number (got 'eight')"),
    ("lora.alpha=0", "lora.alpha", "must be >= 1"),
    ("lora.dropout=1", "lora.dropout", "must be < 1"),
    ("lora.dropout=-0.5", "lora.dropout", "must be >= 0"),
    ("lora.target_modules=[]", "lora.target_modules", "must not be empty"),
    ("lora.target_modules=[q_proj, q_proj]", "lora.target_modules", "listed twice"),
    ("lora.target_modules=['']", "lora.target_modules", "must not be empty"),
    ("lora.use_rslora=maybe", "lora.use_rslora", "must be true or false"),
    ("lora.use_dora=2", "lora.use_dora", "must be true or false"),
    ("train.epochs=0", "train.epochs", "must be >= 1"),
    ("train.learning_rate=0", "train.learning_rate", "must be > 0"),
    ("train.learning_rate=-1e-4", "train.learning_rate", "must be > 0"),
    ("train.learning_rate=.inf", "train.learning_rate", "finite number"),
    ("train.scheduler=step", "train.scheduler", "must be one of 'linear', 'cosine' or 'constant'"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio", "must be < 1"),
    ("train.batch_size=0", "train.batch_size", "must be >= 1"),
    ("train.grad_accum=0", "train.grad_accum", "must be >= 1"),
    ("train.max_grad_norm=0", "train.max_grad_norm", "must be > 0"),
    ("train.seed=-1", "train.seed", "must be >= 0"),
    ("train.seed=4294967296", "train.seed", "must be < 4294967296"),
    ("train.threads=0", "train.threads", "must be >= 1"),
    ("train.save_every=-1", "train.save_every", "must be >= 0"),
    ("train.max_steps=0", "train.max_steps", "must be >= 1"),
    ("output.name=My Adapter", "output.name", "'My Adapter' is not allowed"),
    ("output.name=-x", "output.name", "is not allowed"),
    ("output.dir=[1]", "output.dir", "must be a path"),
    ("output.license=not a license", "output.license", "not an SPDX identifier"),
    ("price.input_per_1k=-1", "price.input_per_1k", "is not an OPEN amount"),
    ("price.input_per_1k=0.0000001", "price.input_per_1k", "is not an OPEN amount"),
    ("price.output_per_1k=lots", "price.output_per_1k", "is not an OPEN amount"),
]


@pytest.mark.parametrize(("override", "field", "message"), BAD_VALUES, ids=[o for o, _, _ in BAD_VALUES])
def test_every_bad_value_names_its_field(override: str, field: str, message: str) -> None:
    found = problems(MINIMAL, override)
    assert len(found) == 1, found
    assert found[0][0] == field
    assert message in found[0][1]


def test_the_table_covers_every_field() -> None:
    covered = {o.split("=")[0] for o, _, _ in BAD_VALUES}
    assert covered == {f["field"] for f in config_reference()}


def test_required_sections_and_fields() -> None:
    assert problems("{}") == [
        ("model", "section is required, with model.base"),
        ("data", "section is required, with data.datanets"),
        ("output", "section is required, with output.name"),
    ]
    found = dict(problems("model: {dtype: float32}\ndata: {}\noutput: {license: MIT}\n"))
    assert set(found) == {"model.base", "data.datanets", "output.name"}
    assert found["output.name"].startswith("is required: The adapter's name")


def test_all_problems_are_reported_together() -> None:
    text = MINIMAL + "lora:\n  r: 0\n  dropout: 2\ntrain:\n  epochs: 0\n"
    with pytest.raises(ConfigInvalid) as err:
        load_config(text, ["train.batch_size=0", "lora.rank=4"])
    assert [f for f, _ in err.value.problems] == ["lora.rank", "lora.r", "lora.dropout", "train.epochs", "train.batch_size"]
    # one line per problem, and the first problem's field as the error's field
    assert err.value.message.splitlines()[1] == "lora.r: must be >= 1 (got 0)"
    assert err.value.field == "lora.rank"
    body = err.value.to_dict()["error"]
    assert body["type"] == "config_invalid"
    assert body["problems"][1] == {"field": "lora.r", "message": "must be >= 1 (got 0)"}


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  base: x\ndata:\n  datanets: [a@1\noutput:\n  name: y\n")
    [(field, message)] = problems(path)
    assert field == "config"
    assert message.startswith(f"{path}: line 5, column 7: YAML syntax error")


def test_duplicate_key_names_the_line() -> None:
    [(field, message)] = problems(MINIMAL + "lora:\n  r: 4\nlora:\n  r: 8\n")
    assert (field, message) == ("config", "line 9: 'lora' appears twice in the same mapping; keep one")


def test_bad_overrides_are_reported_with_yaml_errors() -> None:
    found = problems("model: [", "oops", "lora.r=1")
    assert [f for f, _ in found] == ["config", "oops"]


@pytest.mark.parametrize(
    ("where", "text", "field", "suggestion"),
    [
        ("yaml", "lora:\n  rank: 4\n", "lora.rank", "did you mean lora.r?"),
        ("yaml", "lora:\n  dropuot: 0.1\n", "lora.dropuot", "did you mean lora.dropout?"),
        ("yaml", "trian:\n  epochs: 2\n", "trian", "did you mean train?"),
        ("yaml", "train:\n  r: 4\n", "train.r", "did you mean lora.r?"),
        ("yaml", "train:\n  lr: 0.1\n", "train.lr", "did you mean train.learning_rate?"),
        ("yaml", "data:\n  datanets: [{ref: a@1, wieght: 2}]\n", "data.datanets[0].wieght", "did you mean weight?"),
        ("override", "train.learnig_rate=0.1", "train.learnig_rate", "did you mean train.learning_rate?"),
        ("override", "train.gradient_accumulation_steps=4", "train.gradient_accumulation_steps", "did you mean train.grad_accum?"),
        ("override", "epochs=4", "epochs", "did you mean train.epochs?"),
    ],
)
def test_unknown_names_suggest_the_nearest(where: str, text: str, field: str, suggestion: str) -> None:
    if where == "yaml":
        base = yaml.safe_load(MINIMAL)
        for section, values in yaml.safe_load(text).items():
            base[section] = {**base.get(section, {}), **values}
        found = problems(base)
    else:
        found = problems(MINIMAL, text)
    assert [f for f, _ in found] == [field]
    assert found[0][1].endswith(suggestion)


def test_overrides_parse_values_as_yaml() -> None:
    cfg = load_config(
        MINIMAL,
        [
            "lora.r=16",
            "lora.use_dora=true",
            "lora.target_modules=[q_proj, k_proj, v_proj]",
            "train.learning_rate=2e-4",  # PyYAML reads this as text; the schema reads it as a number
            "train.threads=",
            "data.datanets=[a@1, {ref: b@2, weight: 0.5}]",
            "data.eval_fraction=0",
            "price.input_per_1k=0.010",
            "output.dir=/tmp/run",
        ],
    )
    assert cfg.lora.r == 16 and cfg.lora.use_dora is True
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj"]
    assert cfg.train.learning_rate == 2e-4 and cfg.train.threads is None
    assert [(d.slug, d.version, d.weight) for d in cfg.data.datanets] == [("a", 1, 1.0), ("b", 2, 0.5)]
    assert cfg.data.eval_fraction == 0.0
    assert cfg.price.input_per_1k == "0.01"  # normalised
    assert cfg.output.dir == Path("/tmp/run")


def test_overrides_do_not_change_the_callers_dict() -> None:
    data = yaml.safe_load(MINIMAL)
    load_config(data, ["lora.r=4", "model.base=elsewhere"])
    assert data == yaml.safe_load(MINIMAL)


def test_defaults() -> None:
    cfg = load_config(MINIMAL)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (8, 16, 0.05, ["q_proj", "v_proj"])
    assert (cfg.train.epochs, cfg.train.learning_rate, cfg.train.seed, cfg.train.max_steps) == (3, 2e-4, 42, None)
    assert (cfg.data.template, cfg.data.max_seq_len, cfg.data.eval_fraction, cfg.data.on_bad_rows) == ("auto", 512, 0.1, "error")
    assert (cfg.output.dir, cfg.output.license, cfg.price.input_per_1k) == (None, "other", "0")


def test_prices_accept_yaml_numbers() -> None:
    cfg = load_config(MINIMAL + "price:\n  input_per_1k: 0.01\n  output_per_1k: 2\n")
    assert (cfg.price.input_per_1k, cfg.price.output_per_1k) == ("0.01", "2")


def test_hash_is_stable_and_ignores_output_dir() -> None:
    cfg = load_config(MINIMAL)
    assert cfg.config_hash() == load_config(MINIMAL).config_hash()
    assert len(cfg.config_hash()) == 64
    assert load_config(MINIMAL, ["output.dir=/elsewhere"]).config_hash() == cfg.config_hash()
    # the same values written differently are the same config
    assert load_config(MINIMAL, ["lora.r=8", "price.input_per_1k=0.000"]).config_hash() == cfg.config_hash()
    for change in ("lora.r=9", "train.seed=1", "data.datanets=first-aid@2", "output.name=other", "model.base=x"):
        assert load_config(MINIMAL, [change]).config_hash() != cfg.config_hash(), change


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(MINIMAL, ["data.datanets=[a@1, {ref: b@2, weight: 2.5}]", "output.dir=/tmp/x"])
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.config_hash() == cfg.config_hash()


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as err:
        load_config(tmp_path / "nope.yaml")
    assert err.value.field == "config"


def test_text_that_is_a_file_name_explains_itself() -> None:
    [(field, message)] = problems("run.yaml")
    assert field == "config" and "pass a Path" in message


def test_example_config_loads_and_shows_every_field() -> None:
    cfg = load_config(EXAMPLE_CONFIG)
    assert isinstance(cfg, TrainConfig)
    written = yaml.safe_load(EXAMPLE_CONFIG)
    shown = {f"{section}.{name}" for section, values in written.items() for name in values}
    assert shown == {f["field"] for f in config_reference()}


def test_reference_lists_every_field_with_help() -> None:
    ref = {f["field"]: f for f in config_reference()}
    assert len(ref) == 29
    assert all(f["help"] and f["type"] for f in ref.values())
    assert ref["lora.r"] == {
        "field": "lora.r", "type": "int", "default": 8, "required": False, "choices": None,
        "help": ref["lora.r"]["help"],
    }
    assert ref["train.scheduler"]["choices"] == ["linear", "cosine", "constant"]
    assert ref["train.threads"]["type"] == "int | null"
    assert ref["output.name"]["required"] is True and ref["output.name"]["default"] is None
    assert ref["lora.target_modules"]["default"] == ["q_proj", "v_proj"]
    assert ref["data.datanets"]["type"] == "list of 'slug@N' | {ref, weight}"


def test_json_dump_round_trips() -> None:
    """The jobs worker receives the config as JSON (model_dump) and loads it back."""
    cfg = load_config(MINIMAL, ["data.datanets=[a@1, {ref: b@2, weight: 2.5}]", "train.threads=2"])
    assert load_config(cfg.model_dump(mode="json")) == cfg


def test_a_loaded_config_is_frozen() -> None:
    cfg = load_config(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        cfg.lora.r = 4  # type: ignore[misc]
