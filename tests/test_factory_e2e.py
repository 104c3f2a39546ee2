"""ModelFactory end to end on CPU with a tiny local model: datanet → config → train → adapter → reload with plain
peft (identical logits), through the library and the CLI, plus continuing from an adapter and bad data refused
before any work."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import royalty
from conftest import FREE_PUBLISHING, run_cli
from factory_fixtures import tiny_model_dir  # noqa: F401  (a session fixture)
from royalty.factory.basemodel import identity
from royalty.factory.config import load_config
from royalty.ledger.amounts import UNIT

torch = pytest.importorskip("torch")

# Twelve short instructions in one contributor's file; a second contributor adds two more.
FACTS = [(f"What is the code word for box {i}?", f"The code word for box {i} is {w}.")
         for i, w in enumerate("amber basil cedar delta ember fjord gravel harbor iris juniper kelp lumen".split())]


def _node(tmp_path: Path, clock: Any) -> royalty.Node:
    node, _ = royalty.init_node(tmp_path / "home", clock=clock, params=FREE_PUBLISHING)
    operator = node.operator()
    for name in ("ada", "bo", "ben"):
        node.accounts.create(name, actor=operator)
    node.datanets.create("codes", title="Code words", kind="instruction", licenses=["CC-BY-4.0"], policy="open",
                         owner="ben")
    node.datanets.contribute_records("codes", [{"prompt": p, "response": r} for p, r in FACTS[:10]], contributor="ada")
    node.datanets.contribute_records("codes", [{"prompt": p, "response": r} for p, r in FACTS[10:]], contributor="bo")
    node.datanets.publish("codes", actor="ben")
    node.tokens.faucet("ben", 100 * UNIT, actor=operator)
    return node


def _config(base: Path, **train: Any) -> dict[str, Any]:
    return {
        "model": {"base": str(base)},
        "data": {"datanets": ["codes@1"], "max_seq_len": 64, "eval_fraction": 0.2},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 3, "batch_size": 4, "learning_rate": 0.01, "seed": 3, "threads": 1, **train},
        "output": {"name": "codes-helper", "license": "CC-BY-4.0"},
        "price": {"input_per_1k": "0.01", "output_per_1k": "0.02"},
    }


def test_datanet_to_adapter_that_plain_peft_reloads_with_identical_logits(tmp_path: Path, clock: Any,
                                                                           tiny_model_dir: Path) -> None:  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    node = _node(tmp_path, clock)
    with node:
        fee = node.params.current().adapter_registration_fee
        before = node.tokens.balance("ben").available
        cfg = load_config(_config(tiny_model_dir))
        result = node.factory.train(cfg, actor="ben")
        adapter = result.adapter
        assert adapter is not None and not result.interrupted
        assert (adapter.name, adapter.version, adapter.status) == ("codes-helper", 1, "registered")
        assert node.tokens.balance("ben").available == before - fee  # the registration fee, charged once

        # The files: plain PEFT layout, a model card with the standard header, the manifest.
        files = sorted(p.name for p in adapter.path.iterdir())
        assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "royalty.json"]
        card = (adapter.path / "README.md").read_text()
        header = card.split("---")[1]
        for line in ("library_name: peft", "license: cc-by-4.0", "codes@1"):
            assert line in header.lower(), header
        assert str(tiny_model_dir) in header
        manifest = json.loads((adapter.path / "royalty.json").read_text())
        assert manifest["base_model"]["weights_sha256"] == identity(str(tiny_model_dir)).weights_sha256
        version = node.datanets.version("codes", 1)
        assert [(d["slug"], d["version"], d["root"]) for d in manifest["datanets"]] == [("codes", 1, version.root.hex())]
        assert manifest["config_sha256"] == cfg.config_hash()
        assert manifest["owner"] == node.accounts.get("ben").id
        assert manifest["price"] == {"input_per_1k": "0.01", "output_per_1k": "0.02"}
        assert set(manifest["versions"]) >= {"torch", "transformers", "peft", "royalty"}
        assert manifest["metrics"]["steps"] == result.run.steps > 0
        assert node.adapters.verify("codes-helper")["ok"]
        event = node.journal.events(type="adapter.registered")[-1].to_dict()
        assert event["data"]["name"] == "codes-helper"

        # Every trained example keeps its contribution; the order of the run is recorded.
        examples = [json.loads(line) for line in (result.run.out_dir / "examples.jsonl").read_text().splitlines()]
        contributors = {e["contributor"] for e in examples}
        assert contributors == {node.accounts.get("ada").id, node.accounts.get("bo").id}
        assert (result.run.out_dir / "order.jsonl").read_text().count("\n") == result.run.steps

        # Plain peft on a freshly loaded base gives the trained model's logits exactly.
        ids = torch.tensor([result.tokenizer("What is the code word for box 3?")["input_ids"]])
        result.model.eval()
        with torch.no_grad():
            trained = result.model(input_ids=ids).logits
            base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
            base_logits = base(input_ids=ids).logits
            reloaded = PeftModel.from_pretrained(base, str(adapter.path)).eval()
            again = reloaded(input_ids=ids).logits
        assert torch.equal(trained, again)
        assert not torch.equal(base_logits, again)  # the adapter changed something
        assert result.evaluation is not None and result.evaluation["examples"] >= 1
    assert time.monotonic() - started < 60


def test_train_cli_then_continue_from_the_adapter(tmp_path: Path, clock: Any, capsys: pytest.CaptureFixture[str],
                                                  tiny_model_dir: Path) -> None:  # noqa: F811
    node = _node(tmp_path, clock)
    home = str(node.home)
    node.close()
    config = tmp_path / "codes.yaml"
    config.write_text(json.dumps(_config(tiny_model_dir)))  # JSON is YAML

    code, out, err = run_cli(capsys, "train", str(config), "train.epochs=1", "--owner", "ben", "--home", home, "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["adapter"]["name"] == "codes-helper" and first["adapter"]["version"] == 1

    # The same config again: the finished run is not redone.
    code, _, err = run_cli(capsys, "train", str(config), "train.epochs=1", "--owner", "ben", "--home", home)
    assert code == 1 and "finished" in err

    # Continue for more epochs: a new run, version 2, whose lineage points at version 1.
    code, out, err = run_cli(capsys, "train", str(config), "train.epochs=2", "--continue-from", "codes-helper@1",
                             "--owner", "ben", "--home", home, "--json")
    assert code == 0, err
    second = json.loads(out)
    assert second["adapter"]["version"] == 2 and second["run_dir"] != first["run_dir"]
    with royalty.open_node(home) as node:
        v1, v2 = node.adapters.get("codes-helper@1"), node.adapters.get("codes-helper@2")
        assert v2.manifest["lineage"]["parent"]["manifest_sha256"] == v1.manifest_sha256

    code, out, err = run_cli(capsys, "adapter", "list", "--home", home)
    assert code == 0 and out.count("codes-helper") == 2
    code, out, err = run_cli(capsys, "adapter", "verify", "codes-helper@2", "--home", home)
    assert code == 0, err


def test_bad_rows_are_listed_before_any_work(tmp_path: Path, clock: Any, capsys: pytest.CaptureFixture[str],
                                              tiny_model_dir: Path) -> None:  # noqa: F811
    node = _node(tmp_path, clock)
    with node:
        purged = node.datanets.contributions("codes")[4]
        node.datanets.withdraw("codes", purged.id, actor="ada")
        node.datanets.purge("codes", purged.id, actor="ada")  # version 1 keeps the member, its content is gone
        home = str(node.home)
    config = tmp_path / "codes.yaml"
    config.write_text(json.dumps(_config(tiny_model_dir)))

    code, _, err = run_cli(capsys, "train", str(config), "--owner", "ben", "--home", home)
    assert code == 1
    assert purged.id in err and "codes@1" in err and "on_bad_rows" in err
    assert not (Path(home) / "runs").exists()  # nothing written, nothing trained
    with royalty.open_node(home) as node:
        assert node.adapters.list() == []

    # Skipping them is a choice the run records: which rows, and why.
    code, out, err = run_cli(capsys, "train", str(config), "data.on_bad_rows=skip", "train.epochs=1", "--owner", "ben",
                             "--home", home, "--json")
    assert code == 0, err
    run = json.loads((Path(json.loads(out)["run_dir"]) / "run.json").read_text())
    assert [row["contribution_id"] for row in run["data_report"]["skipped"]] == [purged.id]


def test_a_relative_model_path_means_the_same_model_from_any_directory(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = load_config({**_config(Path("models/base")), "output": {"name": "x"}})
    assert cfg.model.base == str(tmp_path / "models" / "base")
    assert load_config({**_config(Path("org/hub-model")), "output": {"name": "x"}}).model.base == "org/hub-model"


def test_ctrl_c_in_royalty_train_saves_a_checkpoint_that_resume_finishes(tmp_path: Path, clock: Any,
                                                                          tiny_model_dir: Path) -> None:  # noqa: F811
    node = _node(tmp_path, clock)
    home = str(node.home)
    node.close()
    config = tmp_path / "codes.yaml"
    config.write_text(json.dumps(_config(tiny_model_dir, epochs=100)))
    train = [sys.executable, "-m", "royalty", "train", str(config), "--owner", "ben", "--home", home]
    proc = subprocess.Popen(train, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until a few steps are done
        metrics = list((Path(home) / "runs" / "codes-helper").glob("*/metrics.jsonl"))
        if metrics and metrics[0].read_text().count("\n") >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"resume with: royalty train {config} --owner ben --resume" in out
    run = json.loads((metrics[0].parent / "run.json").read_text())
    assert run["status"] == "interrupted" and 5 <= run["step"] < run["total_steps"]

    done = subprocess.run([*train, "--resume", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["steps"] == run["total_steps"] and result["adapter"]["version"] == 1
