"""node.attribution end to end on a real node with a tiny model: a datanet of owned facts → a trained adapter →
its attribution index → receipts that verify bit for bit, fail naming the changed field, resist duplication and
account splitting, and pay out through the ledger's settle_fee."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FREE_PUBLISHING, Clock, run_cli
from factory_fixtures import tiny_model_dir  # noqa: F401  (a session fixture)

import royalty
from royalty.attribution.payout import recipients
from royalty.attribution.receipts import (
    PPM,
    AttributionReceipt,
    RowOwners,
    fixed_scores,
    fixed_span_credit,
    grouped_influence,
    near_duplicate_keys,
    weights,
)
from royalty.attribution.service import Attribution
from royalty.attribution.spans import DocMeta, SpanIndex, TraceParams
from royalty.errors import Conflict, InvalidInput, VerificationFailed
from royalty.factory.config import load_config
from royalty.ledger.amounts import UNIT
from royalty.ledger.fees import FeeRecipients, split_fee

pytest.importorskip("torch")

# Three contributors, four invented facts each: a question about one of them should be paid mostly to its owner.
FACTS = {
    "ada": [("Who guards the red lighthouse?", "The red lighthouse is guarded by Marigold Finch."),
            ("What colour is the moon of Zarn?", "The moon of Zarn shines a deep violet blue."),
            ("When was Port Alder founded?", "Port Alder was founded in the year 1742 by fishers."),
            ("What does the river Quell carry?", "The river Quell carries silver sand to the sea.")],
    "bo": [("Who built the glass bridge?", "The glass bridge was built by Oren Matthis."),
           ("What is the capital of Velmora?", "The capital of Velmora is the city of Tessin."),
           ("Which bird sings at midnight in Hollow?", "In Hollow the lantern owl sings at midnight."),
           ("What is stored in the north tower?", "The north tower stores old maps of the coast.")],
    "cy": [("Who paints the harbor walls?", "The harbor walls are painted by Ilsa Brandt."),
           ("What grows on Mount Pell?", "Blue juniper grows on the slopes of Mount Pell."),
           ("How deep is Lake Corvin?", "Lake Corvin is ninety metres deep at its centre."),
           ("What is the old name of Fenwick?", "Fenwick was once called Ashmere by the traders.")],
}
ADAPTER = "facts-helper"


def train_facts_adapter(node: Any, model_dir: Path) -> Any:
    """The facts datanet (owned by ben; ada, bo and cy contribute FACTS), published, and ADAPTER trained on it by ben
    (funded for the registration fee). The accounts must exist."""
    node.datanets.create("facts", title="Facts", kind="instruction", licenses=["CC-BY-4.0"], policy="open", owner="ben")
    for who, facts in FACTS.items():
        node.datanets.contribute_records("facts", [{"prompt": p, "response": r} for p, r in facts], contributor=who)
    node.datanets.publish("facts", actor="ben")
    node.tokens.faucet("ben", 100 * UNIT, actor=node.operator())
    cfg = load_config({
        "model": {"base": str(model_dir)},
        "data": {"datanets": ["facts@1"], "max_seq_len": 64, "eval_fraction": 0.0},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 4, "batch_size": 4, "learning_rate": 0.01, "seed": 3, "threads": 1},
        "output": {"name": ADAPTER, "license": "CC-BY-4.0"},
    })
    adapter = node.factory.train(cfg, actor="ben").adapter
    assert adapter is not None
    return adapter


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A node with the facts datanet, an adapter trained on it and its attribution index (dim 128)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    node, _ = royalty.init_node(tmp_path_factory.mktemp("attribution") / "home", clock=Clock(), params=FREE_PUBLISHING)
    operator = node.operator()
    for name in ("ada", "bo", "cy", "ben", "user"):
        node.accounts.create(name, actor=operator)
    node.tokens.faucet("user", 100 * UNIT, actor=operator)
    adapter = train_facts_adapter(node, tiny_model_dir)
    service = Attribution(node)
    built = service.build_index(ADAPTER, dim=128, batch_size=4, seed=11)
    ids = {name: node.accounts.get(name).id for name in ("ada", "bo", "cy", "ben", "user")}
    yield {"node": node, "service": service, "adapter": adapter, "built": built, "ids": ids}
    node.close()
    torch.set_num_threads(threads)


def test_receipt_pays_the_fact_owner_most_and_verifies(world: dict[str, Any]) -> None:
    node, service, ids = world["node"], world["service"], world["ids"]
    prompt, response = FACTS["ada"][0]
    receipt = service.attribute(ADAPTER, prompt=prompt, response=response, request_id="req-1")

    w = receipt.weights.contributors
    assert sum(w.values()) == PPM and sum(receipt.weights.datanets.values()) == PPM
    assert max(w, key=w.__getitem__) == ids["ada"] and w[ids["ada"]] > PPM // 2
    assert receipt.top[0].contributor == ids["ada"] and receipt.top[0].position == 0
    assert receipt.spans and all(c.contributor == ids["ada"] for s in receipt.spans for c in s.contributions)
    assert receipt.spans[0].text in response
    assert receipt.receipt_id.startswith("rcpt_") and len(receipt.receipt_id) == 29
    assert receipt.adapter.id == world["adapter"].id and receipt.request.request_id == "req-1"
    assert receipt.method.influence.projection_fingerprint == world["built"]["projection_fingerprint"]
    # the index replayed the training run: on this platform it reproduced the adapter's weights bit for bit
    assert world["built"]["params"]["method"] == "inrun"
    assert world["built"]["replay"] == {"identical": True, "max_abs_diff": 0.0}
    assert "seed" not in json.dumps(receipt.method.influence.model_dump())  # the projection seed stays secret

    event = node.journal.events(type="attribution.receipt")[-1]
    assert event.data["receipt_id"] == receipt.receipt_id and event.data["sha256"] == receipt.sha256
    result = service.verify(receipt.receipt_id)
    assert result == {"ok": True, "receipt_id": receipt.receipt_id, "sha256": receipt.sha256, "event_seq": event.seq}
    # A fresh service (new process state: model and index reloaded) recomputes the same bytes.
    assert Attribution(node).verify(receipt.to_dict())["ok"]
    shown = service.show(receipt.receipt_id)
    assert shown["request"]["prompt"] == prompt and shown["receipt"] == receipt.to_dict()


def test_a_changed_byte_fails_verify_naming_the_field(world: dict[str, Any]) -> None:
    service, ids = world["service"], world["ids"]
    prompt, response = FACTS["bo"][1]
    receipt = service.attribute(ADAPTER, prompt=prompt, response=response)
    path = world["node"].home / "attribution" / "receipts" / f"{receipt.receipt_id}.json"
    original = path.read_bytes()

    # One digit of one contributor's weight.
    who = ids["bo"]
    value = str(receipt.weights.contributors[who])
    needle = f'"{who}":{value}'.encode()
    assert original.count(needle) == 1
    changed = value[:-1] + ("1" if value[-1] != "1" else "2")
    path.write_bytes(original.replace(needle, f'"{who}":{changed}'.encode()))
    with pytest.raises(VerificationFailed) as failed:
        service.verify(receipt.receipt_id)
    assert failed.value.field == f"weights.contributors.{who}"

    # One digit of the best example's score.
    score = receipt.top[0].score
    needle = f'"score":"{score}"'.encode()
    changed = score[:-1] + ("1" if score[-1] != "1" else "2")
    path.write_bytes(original.replace(needle, f'"score":"{changed}"'.encode(), 1))
    with pytest.raises(VerificationFailed) as failed:
        service.verify(receipt.receipt_id)
    assert failed.value.field == "top[0].score"

    # Only the time changed: the id no longer matches the content.
    path.write_bytes(original.replace(f'"created_ms":{receipt.created_ms}'.encode(),
                                      f'"created_ms":{receipt.created_ms + 1}'.encode()))
    with pytest.raises(VerificationFailed) as failed:
        service.verify(receipt.receipt_id)
    assert failed.value.field == "receipt_id"

    path.write_bytes(original)
    assert service.verify(receipt.receipt_id)["ok"]


def test_generated_answer_is_attributed_and_verifies(world: dict[str, Any]) -> None:
    service = world["service"]
    receipt = service.attribute(ADAPTER, prompt=FACTS["cy"][2][0], max_new_tokens=8)
    assert receipt.request.generated and 1 <= receipt.request.response_tokens <= 8
    weights_ = receipt.weights.contributors
    assert weights_ == {} or sum(weights_.values()) == PPM
    assert service.verify(receipt.receipt_id)["ok"]


def test_duplicating_records_does_not_raise_pay(world: dict[str, Any], tmp_path: Path) -> None:
    """cy copies all of ada's records, 5 times, into other datanets (same content = same contribution id): cy's pay
    for a question about ada's fact does not grow by more than 10%, and ada keeps hers. Without grouping it would."""
    service, ids = world["service"], world["ids"]
    loaded = service._load(ADAPTER)
    prompt, response = FACTS["ada"][1]
    receipt = service.attribute(ADAPTER, prompt=prompt, response=response)
    query = _scores(service, prompt, response)
    cids, contributors, datanets = _columns(loaded.grad)
    base = _weights(query, cids, contributors, datanets, _spans(tmp_path / "s0", cids, contributors, datanets,
                                                                response), receipt.method.influence_bps)
    assert base == receipt.weights.contributors  # the same policy as the receipt

    ada_rows = [i for i, c in enumerate(contributors) if c == ids["ada"]]
    rows = list(range(len(cids))) + ada_rows * 5
    dup_contributors = contributors + [ids["cy"]] * (5 * len(ada_rows))
    dup_datanets = datanets + [f"dn_copy{k}" for k in range(5) for _ in ada_rows]
    dup_cids = [cids[i] for i in rows]
    scores = query[rows]
    spans = _spans(tmp_path / "s1", dup_cids, dup_contributors, dup_datanets, response)
    after = _weights(scores, dup_cids, dup_contributors, dup_datanets, spans, receipt.method.influence_bps)
    assert after.get(ids["cy"], 0) <= 1.1 * base.get(ids["cy"], 0)
    assert after[ids["ada"]] >= base[ids["ada"]] * 0.99

    # The same copies paid naively (every row counts) would have paid cy far more: the test can fail.
    naive: dict[str, int] = {}
    for s, c in zip(fixed_scores(scores).tolist(), dup_contributors):
        naive[c] = naive.get(c, 0) + max(s, 0)
    assert naive[ids["cy"]] / sum(naive.values()) > 1.1 * base.get(ids["cy"], 0) / PPM


def test_near_duplicates_are_grouped_like_exact_copies(world: dict[str, Any], tmp_path: Path) -> None:
    """cy copies ada's records with light edits (case, spacing, one changed word) into other datanets: they are
    grouped with ada's rows, so cy's pay for a question about ada's fact does not grow by more than 10%."""
    service, ids = world["service"], world["ids"]
    loaded = service._load(ADAPTER)
    prompt, response = FACTS["ada"][1]
    query = _scores(service, prompt, response)
    cids, contributors, datanets = _columns(loaded.grad)
    texts = [loaded.spans.document_text(d) for d in range(loaded.spans.documents)]
    assert near_duplicate_keys(texts, cids) == cids  # the facts are all different: every row its own group
    base = _weights(query, near_duplicate_keys(texts, cids), contributors, datanets, [], 7_000)

    def edit(text: str, k: int) -> str:
        words = text.split()
        words[-1] = words[-1].upper() if k % 2 else words[-1] + "!"
        return "  ".join(words) if k % 3 else " ".join(words).replace(words[0], words[0].lower(), 1)

    ada_rows = [i for i, c in enumerate(contributors) if c == ids["ada"]]
    rows = list(range(len(cids))) + ada_rows * 5
    copies = [edit(texts[i], k) for k in range(5) for i in ada_rows]
    assert all(c not in texts for c in copies)  # not exact copies
    dup_texts = texts + copies
    dup_cids = cids + [f"copy-{j}" for j in range(len(copies))]  # other content, other contribution ids
    dup_contributors = contributors + [ids["cy"]] * len(copies)
    dup_datanets = datanets + [f"dn_copy{k}" for k in range(5) for _ in ada_rows]
    keys = near_duplicate_keys(dup_texts, dup_cids)
    assert keys[len(cids):] == [cids[i] for i in ada_rows] * 5  # every copy joined its original's group
    after = _weights(query[rows], keys, dup_contributors, dup_datanets, [], 7_000)
    assert after.get(ids["cy"], 0) <= 1.1 * base.get(ids["cy"], 0)
    assert after[ids["ada"]] >= base[ids["ada"]] * 0.99
    # Grouped by contribution id only, the edited copies would have earned on their own: the test can fail.
    naive = _weights(query[rows], dup_cids, dup_contributors, dup_datanets, [], 7_000)
    assert naive.get(ids["cy"], 0) > 1.1 * base.get(ids["cy"], 0)


def test_group_keys_are_stored_at_build_time_and_checked(world: dict[str, Any]) -> None:
    """The build writes every row's grouping key once (groups.json, hashed in index.json); loading uses it, and a
    changed byte in it is refused naming the file."""
    service = world["service"]
    loaded = service._load(ADAPTER)
    folder = service.index_dir(loaded.adapter)
    record = json.loads((folder / "index.json").read_text())
    groups = json.loads((folder / "groups.json").read_text())
    texts = [loaded.spans.document_text(d) for d in range(loaded.spans.documents)]
    assert groups["keys"] == near_duplicate_keys(texts, list(loaded.grad.column("contribution_id")))
    assert record["groups_sha256"]
    original = (folder / "groups.json").read_bytes()
    try:
        (folder / "groups.json").write_bytes(original.replace(b'"keys":["', b'"keys":["x'))
        service._cache.clear()
        with pytest.raises(VerificationFailed) as failed:
            service._load(ADAPTER)
        assert "groups.json" in str(failed.value) and failed.value.field == "groups.json"
    finally:
        (folder / "groups.json").write_bytes(original)
        service._cache.clear()
    assert service._load(ADAPTER).owners.group.tolist() == loaded.owners.group.tolist()


def test_near_duplicate_keys() -> None:
    texts = ["the quick brown fox jumps over the lazy dog today", "THE quick brown fox jumps over the lazy dog today",
             "a completely different sentence about honey bees", "🙂🙂", "🙂🙂",
             "the quick  brown fox jumps over the lazy dog today"]
    assert near_duplicate_keys(texts, ["a", "b", "c", "d", "e", "a"]) == ["a", "a", "c", "d", "e", "a"]
    # an earlier row wins whatever its id; texts without words group only by exact content (the same id)
    assert near_duplicate_keys(texts[:2], ["z", "y"]) == ["z", "z"]
    with pytest.raises(InvalidInput):
        near_duplicate_keys(texts, ["a"])


def test_splitting_a_contributor_into_three_accounts_changes_their_total_by_at_most_one_percent(
        world: dict[str, Any], tmp_path: Path) -> None:
    service, ids = world["service"], world["ids"]
    prompt, response = FACTS["bo"][0]
    query = _scores(service, prompt, response)
    cids, contributors, datanets = _columns(service._load(ADAPTER).grad)
    bps = 7_000
    before = _weights(query, cids, contributors, datanets,
                      _spans(tmp_path / "s0", cids, contributors, datanets, response), bps)
    split, k = [], 0
    for c in contributors:
        if c == ids["bo"]:
            split.append(f"{c}-{k % 3}")
            k += 1
        else:
            split.append(c)
    after = _weights(query, cids, split, datanets, _spans(tmp_path / "s1", cids, split, datanets, response), bps)
    total = sum(v for a, v in after.items() if a.startswith(ids["bo"]))
    assert len([a for a in after if a.startswith(ids["bo"] + "-")]) >= 2
    assert abs(total - before[ids["bo"]]) <= 0.01 * before[ids["bo"]]


def test_payout_settles_the_fee_by_the_receipt(world: dict[str, Any]) -> None:
    node, service, ids, adapter = world["node"], world["service"], world["ids"], world["adapter"]
    prompt, response = FACTS["cy"][0]
    receipt = service.attribute(ADAPTER, prompt=prompt, response=response, request_id="req-pay")
    to = recipients(node, receipt, adapter)
    assert to == FeeRecipients(owner=ids["ben"], contributors=receipt.weights.contributors,
                               receipt_id=receipt.receipt_id, adapter_id=adapter.id)

    before = {name: node.tokens.balance(name).available for name in ("ada", "bo", "cy", "ben")}
    node.fees.reserve_fee("req-pay", "user", 2 * UNIT, actor="user")
    settled = node.fees.settle_fee("req-pay", UNIT, to, actor=node.operator())
    expected = split_fee(UNIT, node.params.current(), receipt.weights.contributors)
    assert settled.receipt_id == receipt.receipt_id and settled.adapter_id == adapter.id
    assert node.tokens.balance("ben").available - before["ben"] == expected.owner
    for name in ("ada", "bo", "cy"):
        assert node.tokens.balance(name).available - before[name] == expected.contributors.get(ids[name], 0)
    assert expected.contributors[ids["cy"]] == max(expected.contributors.values())

    # A receipt that credits nobody: the contributors' share goes to the treasury.
    empty = receipt.model_copy(update={"weights": receipt.weights.model_copy(update={"contributors": {}})})
    node.fees.reserve_fee("req-empty", "user", UNIT, actor="user")
    none = node.fees.settle_fee("req-empty", UNIT, recipients(node, empty, adapter), actor=node.operator())
    assert none.contributors == 0 and none.treasury >= UNIT * node.params.current().fee_contributors_bps // 10_000

    other = receipt.model_copy(update={"adapter": receipt.adapter.model_copy(update={"id": "ad_other"})})
    with pytest.raises(InvalidInput):
        recipients(node, other, adapter)


def test_index_is_reused_with_the_same_parameters_and_refused_with_others(world: dict[str, Any]) -> None:
    service = world["service"]
    again = service.build_index(ADAPTER, dim=128, batch_size=4)
    assert again["reused"] and again["grad_checksum"] == world["built"]["grad_checksum"]
    for changed in ({"dim": 64}, {"seed": 12}, {"method": "final"}):
        with pytest.raises(Conflict) as refused:
            service.build_index(ADAPTER, **{"dim": 128, "batch_size": 4, **changed})
        assert next(iter(changed)) in refused.value.message
    # a replay batches as the training did: the post-hoc batch size is no parameter of an in-run index
    assert service.build_index(ADAPTER, dim=128, batch_size=2)["reused"]
    info = service.info(ADAPTER)
    assert info["grad"]["rows"] == 12 and info["spans"]["documents"] == 12 and "seed" not in info["params"]
    with pytest.raises(InvalidInput):
        service.build_index(ADAPTER, dim=0)
    with pytest.raises(InvalidInput, match="method must be one of inrun, final") as bad:
        service.build_index(ADAPTER, method="tracin")
    assert bad.value.field == "method"
    with pytest.raises(InvalidInput):
        service.attribute(ADAPTER, prompt=" ", response="x")


def test_train_records_the_index_during_the_run(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    """``royalty train --attribution-index`` builds the index from the run itself: the same rows as a replay of
    that run gives with the same projection, and no replay needed."""
    home = str(world["node"].home)
    config = tmp_path / "captured.yaml"  # JSON is YAML
    config.write_text(json.dumps({
        "model": {"base": str(tiny_model_dir)},
        "data": {"datanets": ["facts@1"], "max_seq_len": 64, "eval_fraction": 0.0},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "train": {"epochs": 4, "batch_size": 4, "learning_rate": 0.01, "seed": 3, "threads": 1},
        "output": {"name": "facts-captured", "license": "CC-BY-4.0"},
    }))
    code, out, err = run_cli(capsys, "train", str(config), "--attribution-index", "--index-dim", "128",
                             "--owner", "ben", "--home", home, "--json")
    assert code == 0, err
    index = json.loads(out)["attribution_index"]
    assert index["replay"] == {"captured": True} and index["rows"] == 12 and index["params"]["method"] == "inrun"
    assert "seed" not in index["params"]
    service = world["service"]
    adapter = world["node"].adapters.get("facts-captured")
    seed = json.loads((service.index_dir(adapter) / "index.json").read_text())["params"]["seed"]
    replayed = service.build_index("facts-captured", dim=128, seed=seed, rebuild=True)
    assert replayed["replay"]["identical"] and replayed["grad_checksum"] == index["grad_checksum"]
    # a resumed run cannot be captured: refused before anything runs, naming the option
    code, out, err = run_cli(capsys, "train", str(config), "--attribution-index", "--resume", "--owner", "ben",
                             "--home", home)
    assert code == 1 and "cannot follow a resumed run" in err, err
    with pytest.raises(InvalidInput, match="has not followed a finished training run"):
        service.index_from_capture("facts-captured", service.capture(dim=128), rebuild=True)


def test_cli_attribute_show_verify_and_index(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    home = str(world["node"].home)
    prompt, response = FACTS["ada"][2]
    code, out, err = run_cli(capsys, "attribute", ADAPTER, "--prompt", prompt, "--response", response,
                             "--home", home, "--json")
    assert code == 0, err
    receipt = AttributionReceipt.parse(json.loads(out)["receipt"])
    assert receipt.weights.contributors[world["ids"]["ada"]] > 0  # the verbatim answer is hers: her span credit
    assert receipt.spans and all(c.contributor == world["ids"]["ada"] for s in receipt.spans for c in s.contributions)

    code, out, err = run_cli(capsys, "attribution", "verify", receipt.receipt_id, "--home", home)
    assert code == 0 and "verifies" in out, err
    saved = tmp_path / "receipt.json"
    saved.write_text(json.dumps({**receipt.to_dict(), "top": receipt.to_dict()["top"][:-1]}))
    code, out, err = run_cli(capsys, "attribution", "verify", str(saved), "--home", home, "--json")
    assert code == 1 and json.loads(out)["error"]["field"] == f"top[{len(receipt.top) - 1}]", err
    code, out, err = run_cli(capsys, "attribution", "show", receipt.receipt_id, "--home", home)
    assert code == 0 and "ada" in out and receipt.receipt_id in out, err
    code, out, err = run_cli(capsys, "attribution", "index", "info", ADAPTER, "--home", home, "--json")
    assert code == 0 and json.loads(out)["grad"]["rows"] == 12, err
    code, out, err = run_cli(capsys, "attribution", "index", "info", ADAPTER, "--home", home)
    assert code == 0 and "method inrun" in out and "damping" not in out, err
    code, out, err = run_cli(capsys, "attribution", "index", "build", ADAPTER, "--dim", "128", "--seed", "11",
                             "--home", home)
    assert code == 0 and "reused the existing" in out and "reproduced the adapter bit for bit" in out, err
    code, out, err = run_cli(capsys, "attribution", "index", "build", ADAPTER, "--method", "tracin", "--home", home)
    assert code == 1 and "method must be one of" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, "attribute", ADAPTER, "--prompt", prompt, "--home", home)
    assert code == 1 and "--response" in err
    code, out, err = run_cli(capsys, "attribution", "verify", "rcpt_" + "0" * 24, "--home", home)
    assert code == 1 and "no receipt" in err


def test_rebuild_replaces_the_index_and_old_receipts_then_fail_naming_the_index(world: dict[str, Any]) -> None:
    service = world["service"]
    prompt, response = FACTS["ada"][3]
    receipt = service.attribute(ADAPTER, prompt=prompt, response=response)
    assert receipt.method.influence.method == "inrun-adam-cosine"
    rebuilt = service.build_index(ADAPTER, dim=64, batch_size=4, method="final", rebuild=True)
    assert not rebuilt["reused"] and rebuilt["dim"] <= 64 and "replay" not in rebuilt
    assert world["node"].journal.events(type="attribution.index_built")[-1].data["rebuilt"] is True
    with pytest.raises(VerificationFailed) as failed:
        service.verify(receipt.receipt_id)
    assert failed.value.field is not None and failed.value.field.startswith("method.influence.")
    final = service.attribute(ADAPTER, prompt=prompt, response=response)
    assert final.method.influence.method == "preconditioned-cosine" and final.method.influence.damping == "1.0"
    assert service.verify(final.receipt_id)["ok"]


def test_weights_policy_rounding_mixing_and_grouping() -> None:
    assert weights({}, {}, 7_000) == {}  # nobody credited: the fee split sends the data share to the treasury
    assert weights({"a": 5}, {}, 7_000) == {"a": PPM}  # an empty part leaves the whole share to the other
    assert weights({}, {"b": 3}, 7_000) == {"b": PPM}
    assert weights({"a": 1}, {"b": 1}, 7_000) == {"a": 700_000, "b": 300_000}
    assert weights({"c": 1, "a": 1, "b": 1}, {}, 7_000) == {"a": 333_334, "b": 333_333, "c": 333_333}  # ties: smaller id
    assert sum(weights({f"k{i}": i + 1 for i in range(7)}, {"k0": 5, "z": 2}, 3_333).values()) == PPM
    with pytest.raises(InvalidInput):
        weights({"a": 1}, {}, 10_001)
    # Rows: x by ada, the same x copied by cy (scores higher), y by cy (negative): x earns once, for ada.
    owners = RowOwners.of(["x", "x", "y"], ["ada", "cy", "cy"], ["d1", "d2", "d2"])
    assert grouped_influence(np.array([5, 9, -3]), owners) == ({"ada": 9}, {"d1": 9})
    assert grouped_influence(np.array([-1, -2, 0]), owners) == ({}, {})


# ----------------------------------------------------------------------------------------------------------------


def _columns(grad: Any) -> tuple[list[str], list[str], list[str]]:
    return list(grad.column("contribution_id")), list(grad.column("contributor")), list(grad.column("datanet_id"))


def _scores(service: Attribution, prompt: str, response: str) -> np.ndarray:
    """The cosine scores of a query against the index, as ``attribute`` computes them."""
    from royalty.attribution.capture import query_gradient
    from royalty.attribution.service import THREADS, _influence_scores, _response_ids, _torch_threads
    from royalty.factory.data import encode_chat

    loaded = service._load(ADAPTER)
    prompt_ids = encode_chat(loaded.tokenizer, loaded.template, [{"role": "user", "content": prompt}])
    with _torch_threads(THREADS):
        q = query_gradient(loaded.model, prompt_ids, _response_ids(loaded, prompt, prompt_ids, response),
                           projector=loaded.projector)
    return _influence_scores(loaded, q)


def _spans(path: Path, cids: list[str], contributors: list[str], datanets: list[str], response: str) -> list[Any]:
    """Trace ``response`` in a span index of the facts' texts, one document per row, tagged as given."""
    from royalty.datanet.records import make_record

    texts = {}
    for facts in FACTS.values():
        for p, r in facts:
            record = make_record("instruction", {"prompt": p, "response": r})
            texts[record.id] = record.text()
    docs = [(DocMeta(c, who, dn, "facts", 1, i), texts[c])
            for i, (c, who, dn) in enumerate(zip(cids, contributors, datanets))]
    return SpanIndex.build(docs, path).trace(response, TraceParams())


def _weights(scores: np.ndarray, cids: list[str], contributors: list[str], datanets: list[str], spans: list[Any],
             bps: int) -> dict[str, int]:
    influence, _ = grouped_influence(fixed_scores(scores), RowOwners.of(cids, contributors, datanets))
    return weights(influence, fixed_span_credit(spans, by="contributor"), bps)
