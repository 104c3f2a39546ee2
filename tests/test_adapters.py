"""The adapter registry: the artifact (model card + royalty.json), registration (versions, idempotence, the fee,
all-or-nothing), verification (tampered files by name, datanet roots against the journal), publish/deprecate
permissions and the journal events, on both backends; and ``royalty adapter …``.

No trained model is needed: registration only hashes files, so the artifacts here are small but well-formed
peft directories (adapter_config.json + a safetensors file). The real peft round trip is the e2e test's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import FREE_PUBLISHING, RawDB, run_cli
from safetensors.numpy import save_file

from royalty import Node
from royalty.errors import (
    Conflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from royalty.factory.adapters import MANIFEST, Adapters, write_artifact
from royalty.ledger.amounts import UNIT

FEE = 10 * UNIT  # Params.adapter_registration_fee at genesis


@pytest.fixture
def genesis_params() -> dict[str, Any]:
    return dict(FREE_PUBLISHING)


@pytest.fixture
def world(node: Node) -> dict[str, Any]:
    """alice owns a published datanet; ben trains adapters on it and has OPEN for two registrations; mallory
    is someone else."""
    ids = {name: node.accounts.create(name, with_key=False)[0].id for name in ("alice", "ben", "mallory")}
    node.datanets.create("first-aid", title="First aid", kind="text", licenses=["CC-BY-4.0"], policy="open",
                         owner=ids["alice"], limits={"near_duplicate_threshold": 0.0})
    node.datanets.contribute_records("first-aid", [{"text": f"tip {i}: cool a burn under running water"} for i in range(4)],
                                     contributor=ids["alice"])
    node.datanets.publish("first-aid", actor=ids["alice"])
    node.tokens.faucet("ben", 2 * FEE + 5 * UNIT, actor=node.operator())
    return ids


@pytest.fixture
def adapters(node: Node) -> Adapters:
    return node.adapters


def make_artifact(directory: Path, node: Node, owner_id: str, *, name: str = "first-aid-helper", seed: int = 0,
                  **changes: Any) -> Path:
    """A small, well-formed adapter directory completed by write_artifact."""
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "/models/tiny-llama",
    }))
    rng = np.random.default_rng(seed)
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.standard_normal((4, 32)).astype(np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((32, 4), np.float32)},
              str(directory / "adapter_model.safetensors"))
    version = node.datanets.version("first-aid", 1)
    manifest: dict[str, Any] = {
        "name": name, "owner": owner_id,
        "base_model": {"name": "/models/tiny-llama", "architecture": "LlamaForCausalLM", "weights_sha256": "ab" * 32,
                       "num_parameters": 40_000},
        "datanets": [{"slug": "first-aid", "datanet_id": version.datanet_id, "version": 1, "root": version.root.hex(),
                      "size": version.size, "weight": 1.0, "examples_train": 3, "examples_eval": 1}],
        "config": {"lora": {"r": 4, "alpha": 8}, "train": {"epochs": 1, "seed": seed}, "output": {"name": name, "license": "cc-by-4.0"}},
        "config_sha256": "cd" * 32,
        "metrics": {"steps": 3, "tokens": 120, "seconds": 0.5, "train_loss": 2.5 + seed,
                    "eval": {"base_loss": 3.0, "adapter_loss": 2.6, "best": [{"position": 0}]}},
        "price": {"input_per_1k": "0.01", "output_per_1k": "0.02"},
        "lineage": {"run_dir": str(directory.parent), "parent": None, "order_sha256": "ef" * 32, "examples_sha256": "01" * 32},
        "versions": {"royalty": "0.1.0", "python": "3.11"},
        "created_ms": 1,
    }
    manifest.update(changes)
    write_artifact(directory, manifest)
    return directory


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def journal_types(node: Node, after: int) -> list[str]:
    return [e.type for e in node.journal.events(after=after, limit=1000)]


# --------------------------------------------------------------------------------------------------------------
# the artifact
# --------------------------------------------------------------------------------------------------------------


def test_write_artifact_adds_model_card_and_hashes_every_file(node: Node, world: dict[str, Any], tmp_path: Path) -> None:
    art = make_artifact(tmp_path / "run" / "adapter", node, world["ben"])
    manifest = json.loads((art / MANIFEST).read_text())
    assert manifest["format"] == "royalty.adapter/1"
    assert manifest["files"] == {name: sha(art / name)
                                 for name in ("README.md", "adapter_config.json", "adapter_model.safetensors")}
    card = (art / "README.md").read_text()
    assert card.startswith("---\n")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header == {"base_model": "/models/tiny-llama", "library_name": "peft", "datasets": ["first-aid@1"],
                      "license": "cc-by-4.0", "tags": ["royalty", "lora"]}
    root = node.datanets.version("first-aid", 1).root.hex()
    for needle in (root, "PeftModel.from_pretrained", "0.01 OPEN per 1,000 input tokens", "held-out adapter_loss: 2.6",
                   "weights SHA-256: `" + "ab" * 32):
        assert needle in card
    # A diverged run cannot produce a manifest JSON readers choke on.
    with pytest.raises(InvalidInput, match="NaN"):
        write_artifact(art, {**manifest, "metrics": {"train_loss": float("nan")}})


# --------------------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------------------


def test_register_versions_idempotence_and_the_fee(node: Node, world: dict[str, Any], adapters: Adapters,
                                                   tmp_path: Path) -> None:
    ben = world["ben"]
    before = node.tokens.balance("ben").available
    size = node.journal.size()
    art = make_artifact(tmp_path / "a1", node, ben)
    a1 = adapters.register(art, owner=ben, actor=ben)
    assert (a1.name, a1.version, a1.owner, a1.status) == ("first-aid-helper", 1, ben, "registered")
    assert a1.path == node.home / "adapters" / "first-aid-helper" / "v1"
    assert sorted(p.name for p in a1.path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                         MANIFEST]
    assert a1.manifest_sha256 == sha(art / MANIFEST) == sha(a1.path / MANIFEST)
    assert (a1.price_in_per_1k, a1.price_out_per_1k) == (10_000, 20_000)
    assert node.tokens.balance("ben").available == before - FEE
    event = node.journal.event(a1.event_seq)
    assert event.type == "adapter.registered" and event.actor == ben
    assert event.data["manifest_sha256"] == a1.manifest_sha256 and event.data["version"] == 1
    assert event.data["datanets"][0]["root"] == node.datanets.version("first-aid", 1).root.hex()
    assert event.data["base_weights_sha256"] == "ab" * 32
    assert journal_types(node, size - 1) == ["adapter.registered", "ledger.fee"]

    # The identical manifest again: the same adapter, nothing copied, journaled or charged.
    size = node.journal.size()
    assert adapters.register(art, owner=ben, actor=ben) == a1
    assert node.journal.size() == size and node.tokens.balance("ben").available == before - FEE

    # A new run of the same name is the next version, charged again.
    a2 = adapters.register(make_artifact(tmp_path / "a2", node, ben, seed=1), owner=ben, actor=ben)
    assert a2.version == 2 and a2.id != a1.id and a2.path.name == "v2"
    assert node.tokens.balance("ben").available == before - 2 * FEE
    assert adapters.get("first-aid-helper") == a2
    assert adapters.get("first-aid-helper@1") == adapters.get(a1.id) == a1
    assert [a.ref for a in adapters.list()] == ["first-aid-helper@1", "first-aid-helper@2"]
    assert adapters.list(owner="mallory") == [] and len(adapters.list(owner="ben", status="registered")) == 2
    with pytest.raises(NotFound, match="first-aid-helper@3"):
        adapters.get("first-aid-helper@3")
    with pytest.raises(InvalidInput, match="number >= 1"):
        adapters.get("first-aid-helper@x")
    # No staging directory is left behind.
    assert sorted(p.name for p in (node.home / "adapters" / "first-aid-helper").iterdir()) == ["v1", "v2"]


def test_insufficient_funds_leaves_nothing(node: Node, world: dict[str, Any], adapters: Adapters, tmp_path: Path) -> None:
    mallory = world["mallory"]
    art = make_artifact(tmp_path / "a", node, mallory, name="broke")
    size = node.journal.size()
    with pytest.raises(InsufficientFunds) as info:
        adapters.register(art, owner=mallory, actor=mallory)
    assert info.value.status == 402
    assert adapters.list() == []
    assert node.journal.size() == size
    assert not (node.home / "adapters" / "broke").exists()


def test_register_reports_every_problem_and_stores_nothing(node: Node, world: dict[str, Any], adapters: Adapters,
                                                           tmp_path: Path) -> None:
    ben = world["ben"]
    version = node.datanets.version("first-aid", 1)
    bad = make_artifact(tmp_path / "bad", node, ben, name="Bad Name", owner=world["alice"],
                        price={"input_per_1k": "-1", "output_per_1k": "0.02"},
                        datanets=[{"slug": "first-aid", "datanet_id": version.datanet_id, "version": 1, "root": "00" * 32},
                                  {"slug": "first-aid", "datanet_id": version.datanet_id, "version": 7, "root": "00" * 32}])
    with pytest.raises(InvalidInput) as info:
        adapters.register(bad, owner=ben, actor=ben)
    message = info.value.message
    assert "\n" not in message
    for needle in ("name: 'Bad Name' is not a slug", "owner: the manifest names", "price.input_per_1k '-1'",
                   "first-aid@1 has root", "first-aid@7 is not a published version"):
        assert needle in message, message

    # Files: a changed one and an unlisted one are named; so is a missing one.
    art = make_artifact(tmp_path / "files", node, ben)
    (art / "adapter_model.safetensors").write_bytes(b"not the trained weights")
    (art / "notes.txt").write_text("extra")
    (art / "adapter_config.json").unlink()
    with pytest.raises(InvalidInput) as info:
        adapters.register(art, owner=ben, actor=ben)
    for needle in ("adapter_model.safetensors: SHA-256", "notes.txt: not listed", "adapter_config.json: listed in royalty.json but missing"):
        assert needle in info.value.message, info.value.message

    with pytest.raises(InvalidInput, match="no royalty.json"):
        adapters.register(tmp_path, owner=ben, actor=ben)
    with pytest.raises(InvalidInput, match="no such adapter directory"):
        adapters.register(tmp_path / "nowhere", owner=ben, actor=ben)
    assert adapters.list() == [] and not (node.home / "adapters" / "first-aid-helper").exists()


def test_names_belong_to_their_owner(node: Node, world: dict[str, Any], adapters: Adapters, tmp_path: Path) -> None:
    ben, mallory = world["ben"], world["mallory"]
    adapters.register(make_artifact(tmp_path / "a", node, ben), owner=ben, actor=ben)
    node.tokens.faucet("mallory", FEE, actor=node.operator())
    with pytest.raises(PermissionDenied, match="belongs to another account"):
        adapters.register(make_artifact(tmp_path / "m", node, mallory, seed=5), owner=mallory, actor=mallory)
    with pytest.raises(PermissionDenied, match="may not register adapters for ben"):
        adapters.register(make_artifact(tmp_path / "m2", node, ben, seed=6), owner=ben, actor=mallory)
    # An admin may register on the owner's behalf; the owner pays.
    a2 = adapters.register(make_artifact(tmp_path / "op", node, ben, seed=7), owner=ben, actor=node.operator())
    assert a2.version == 2 and a2.owner == ben
    assert len(adapters.list()) == 2


def test_lineage_parent(node: Node, world: dict[str, Any], adapters: Adapters, tmp_path: Path) -> None:
    ben = world["ben"]
    a1 = adapters.register(make_artifact(tmp_path / "a1", node, ben), owner=ben, actor=ben)
    parent = {"adapter": a1.ref, "id": a1.id, "manifest_sha256": a1.manifest_sha256}
    lineage = {"run_dir": "r", "parent": parent, "order_sha256": "0" * 64, "examples_sha256": "0" * 64}
    a2 = adapters.register(make_artifact(tmp_path / "a2", node, ben, seed=1, lineage=lineage), owner=ben, actor=ben)
    assert a2.parent_id == a1.id and node.journal.event(a2.event_seq).data["parent_id"] == a1.id
    wrong = {**lineage, "parent": {**parent, "manifest_sha256": "1" * 64}}
    with pytest.raises(InvalidInput, match="lineage.parent"):
        adapters.register(make_artifact(tmp_path / "a3", node, ben, seed=2, lineage=wrong), owner=ben, actor=ben)


# --------------------------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------------------------


def test_verify_names_tampered_missing_and_extra_files(node: Node, world: dict[str, Any], adapters: Adapters,
                                                       tmp_path: Path) -> None:
    ben = world["ben"]
    a = adapters.register(make_artifact(tmp_path / "a", node, ben), owner=ben, actor=ben)
    report = adapters.verify(a.ref)
    assert report["ok"] and report["problems"] == [] and report["files"] == 3
    assert report["datanets"][0]["event_seq"] == node.datanets.version("first-aid", 1).created_seq

    weights = a.path / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    (a.path / "README.md").unlink()
    (a.path / "backdoor.py").write_text("print('hi')")
    report = adapters.verify(a.ref)
    assert not report["ok"]
    assert len(report["problems"]) == 3, report["problems"]
    assert report["problems"][0].startswith("README.md: missing")
    assert report["problems"][1].startswith("adapter_model.safetensors: SHA-256")
    assert report["problems"][2] == "backdoor.py: not part of the registered adapter"


def test_verify_checks_manifest_and_datanet_roots_against_the_journal(node: Node, world: dict[str, Any],
                                                                      adapters: Adapters, raw_db: RawDB,
                                                                      tmp_path: Path) -> None:
    ben = world["ben"]
    a = adapters.register(make_artifact(tmp_path / "a", node, ben), owner=ben, actor=ben)
    real_root = a.manifest["datanets"][0]["root"]
    forged_root = "ff" * 32

    # The manifest on disk is edited to claim other data: caught by its hash.
    on_disk = a.path / MANIFEST
    original = on_disk.read_bytes()
    on_disk.write_bytes(original.replace(real_root.encode(), forged_root.encode()))
    report = adapters.verify(a.ref)
    assert report["problems"] == ["royalty.json: changed since registration (SHA-256 differs from the journaled one)"]
    on_disk.write_bytes(original)

    # The database row is edited too (someone with SQL access): the row no longer matches the journaled hash, and
    # the root it claims is not the one the journal holds for that version.
    forged = original.decode("utf-8").replace(real_root, forged_root)
    raw_db.execute("UPDATE adapters SET manifest = ? WHERE id = ?", (forged, a.id))
    report = adapters.verify(a.ref)
    assert not report["ok"]
    assert report["problems"][0].startswith("the registered manifest no longer matches its hash")
    root_problem = [p for p in report["problems"] if p.startswith("datanet first-aid@1: root ffffffffffffffff")]
    assert root_problem and "journaled at seq" in root_problem[0]
    assert report["datanets"][0]["problem"] == root_problem[0]


# --------------------------------------------------------------------------------------------------------------
# publish and deprecate
# --------------------------------------------------------------------------------------------------------------


def test_publish_and_deprecate_permissions_and_events(node: Node, world: dict[str, Any], adapters: Adapters,
                                                      raw_db: RawDB, tmp_path: Path) -> None:
    ben, mallory = world["ben"], world["mallory"]
    a = adapters.register(make_artifact(tmp_path / "a", node, ben), owner=ben, actor=ben)
    with pytest.raises(PermissionDenied, match="only the owner"):
        adapters.publish(a.ref, actor=mallory)
    size = node.journal.size()
    published = adapters.publish(a.ref, actor=ben)
    assert published.status == "published"
    event = node.journal.events(after=size - 1)[0]
    assert (event.type, event.actor, event.data) == ("adapter.published", ben,
                                                     {"id": a.id, "name": a.name, "version": 1})
    with pytest.raises(Conflict, match="is published"):
        adapters.publish(a.ref, actor=ben)
    with pytest.raises(PermissionDenied):
        adapters.deprecate(a.ref, actor=mallory, reason="mine now")
    with pytest.raises(InvalidInput, match="reason"):
        adapters.deprecate(a.ref, actor=ben, reason="  ")
    deprecated = adapters.deprecate(a.ref, actor=node.operator(), reason="superseded by v2")  # an admin may
    assert deprecated.status == "deprecated"
    assert node.journal.events(after=node.journal.size() - 2)[-1].data["reason"] == "superseded by v2"
    with pytest.raises(Conflict, match="is deprecated"):
        adapters.publish(a.ref, actor=ben)
    assert [x.ref for x in adapters.list(status="deprecated")] == [a.ref]
    # The database itself refuses to revive a deprecated adapter or to forget one.
    for sql in ("UPDATE adapters SET status = 'published' WHERE id = ?", "DELETE FROM adapters WHERE id = ?"):
        with pytest.raises(Exception, match="append-only"):
            raw_db.execute(sql, (a.id,))


# --------------------------------------------------------------------------------------------------------------
# royalty adapter …
# --------------------------------------------------------------------------------------------------------------


def test_cli_adapter(node: Node, world: dict[str, Any], adapters: Adapters, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    ben = world["ben"]
    a = adapters.register(make_artifact(tmp_path / "a", node, ben), owner=ben, actor=ben)
    home = str(node.home)
    code, out, _ = run_cli(capsys, "adapter", "list", "--home", home)
    assert code == 0 and "first-aid-helper@1" in out and "ben" in out and "first-aid@1" in out
    code, out, _ = run_cli(capsys, "adapter", "show", "first-aid-helper", "--home", home, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["id"] == a.id and shown["manifest"]["files"] == a.manifest["files"]
    code, out, _ = run_cli(capsys, "adapter", "verify", "first-aid-helper@1", "--home", home)
    assert code == 0 and "ok" in out and "matches journal seq" in out
    code, out, _ = run_cli(capsys, "adapter", "publish", a.ref, "--as", "ben", "--home", home)
    assert code == 0 and adapters.get(a.ref).status == "published"
    code, _, err = run_cli(capsys, "adapter", "deprecate", a.ref, "--as", "mallory", "--reason", "x", "--home", home)
    assert code == 1 and "only the owner" in err
    shutil.copy(a.path / "README.md", a.path / "README.copy.md")
    code, out, err = run_cli(capsys, "adapter", "verify", a.ref, "--home", home)
    assert code == 1 and "README.copy.md: not part of the registered adapter" in out + err
    code, _, err = run_cli(capsys, "adapter", "show", "nope", "--home", home)
    assert code == 1 and "no adapter 'nope'" in err
