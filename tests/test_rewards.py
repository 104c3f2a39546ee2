"""Reward epochs (``node.rewards``): create → fund → freeze (weights_root journaled) → distribute, with exact
amounts and I11 (Σ paid + dust = funded), idempotent retries, refusals that leave nothing behind, weight proofs,
earnings that explain themselves, the audit; the CLI (``royalty rewards …``) and the HTTP routes. Both backends."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from api_server import LiveServer
from conftest import RawDB, run_cli as run
from hypothesis import given, settings
from hypothesis import strategies as st

from royalty import Node
from royalty.api import create_app
from royalty.errors import Conflict, InsufficientFunds, InvalidInput, NotFound, PermissionDenied
from royalty.journal.merkle import MemoryTree
from royalty.ledger import Asset, TransferSpec
from royalty.ledger.amounts import UNIT
from royalty.ledger.chart import AccountCode, TransferCode, account_id, system_account_id, transfer_id
from royalty.ledger.fees import FeeRecipients
from royalty.ledger.rewards import shares, verify_weight_proof, weight_leaf, weights_root

U = UNIT


def system(node: Node, code: AccountCode) -> int:
    return node.ledger.balance(system_account_id(code)).posted


def fill_reward_pool(node: Node, amount: int) -> None:
    """What a governance grant would do: treasury → REWARD_POOL."""
    results = node.ledger.create_transfers([TransferSpec(
        transfer_id("test", "reward-pool", str(amount)), system_account_id(AccountCode.TREASURY),
        system_account_id(AccountCode.REWARD_POOL), amount, ledger=int(Asset.OPEN), code=int(TransferCode.TREASURY_GRANT))])
    assert results[0].succeeded, results


@pytest.fixture
def world(node: Node) -> tuple[Node, str, dict[str, str]]:
    op = node.operator()
    ids = {n: node.accounts.create(n, actor=op)[0].id for n in ("ada", "ben", "cy", "payer", "stranger")}
    return node, op, ids


# --------------------------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------------------------


def test_an_epoch_end_to_end(world: tuple[Node, str, dict[str, str]]) -> None:
    node, op, ids = world
    fill_reward_pool(node, 100 * U)
    e = node.rewards.create_epoch("June contributors", actor=op)
    assert (e.state, e.funded, e.title) == ("open", 0, "June contributors")
    assert e.id.startswith("ep_") and e.pool_account == account_id(AccountCode.EPOCH_POOL, e.id)
    assert node.journal.event(e.created_seq).type == "rewards.epoch_created"

    node.rewards.fund(e.id, 7 * U, actor=op)
    funded = node.rewards.fund(e.id, 3 * U + 1, source="treasury", actor=op)
    assert funded["epoch"]["funded"]["units"] == 10 * U + 1 and funded["source"] == "treasury"
    assert system(node, AccountCode.REWARD_POOL) == 93 * U

    frozen = node.rewards.freeze(e.id, {"ada": 1, "ben": 1, ids["cy"]: 1}, actor=op)
    expected_root = MemoryTree(weight_leaf(a, 1) for a in sorted(ids[n] for n in ("ada", "ben", "cy"))).root()
    assert (frozen.state, frozen.funded, frozen.total_weight, frozen.weights_root) == ("frozen", 10 * U + 1, 3, expected_root)
    event = node.journal.event(frozen.frozen_seq)
    assert event.type == "rewards.epoch_frozen" and event.data["weights_root"] == expected_root.hex()
    assert event.data["weights"] == [[a, 1] for a in sorted(ids[n] for n in ("ada", "ben", "cy"))]

    dust0 = system(node, AccountCode.DUST)
    done = node.rewards.distribute(e.id, actor=op)
    # floor(10.000001 / 3) = 3.333333 each; 0.000002 of dust.
    assert (done.state, done.paid, done.dust) == ("distributed", 9_999_999, 2)
    assert done.paid + done.dust == done.funded  # I11
    assert [node.tokens.balance(n).available for n in ("ada", "ben", "cy")] == [3_333_333] * 3
    assert system(node, AccountCode.DUST) - dust0 == 2
    assert node.ledger.balance(e.pool_account).posted == 0
    dist = node.journal.event(done.distributed_seq)
    assert dist.type == "rewards.epoch_distributed" and [t["result"] for t in dist.data["transfers"]] == ["ok"] * 4
    assert (dist.data["funded"], dist.data["paid"], dist.data["dust"]) == (10 * U + 1, 9_999_999, 2)
    detail = node.rewards.detail(e.id)
    assert [f["source"] for f in detail.fundings] == ["reward_pool", "treasury"]
    assert {r["name"]: r["paid"]["units"] for r in detail.recipients} == {"ada": 3_333_333, "ben": 3_333_333, "cy": 3_333_333}
    assert [x.id for x in node.rewards.epochs()] == [e.id]
    assert node.rewards.audit() == []


def test_fee_dust_is_recycled_into_an_epoch(world: tuple[Node, str, dict[str, str]]) -> None:
    node, op, _ = world
    node.tokens.faucet("payer", 10 * U, actor=op)
    for i in range(3):  # each fee of 100 units leaves 1 unit of contributor dust (40 split 3 ways)
        node.fees.reserve_fee(f"r{i}", "payer", 100, actor=op)
        node.fees.settle_fee(f"r{i}", 100, FeeRecipients("ben", {"ada": 1, "cy": 1, "stranger": 1}), actor=op)
    assert system(node, AccountCode.DUST) == 3
    e = node.rewards.create_epoch(actor=op)
    assert node.rewards.fund(e.id, None, source="dust", actor=op)["units"] == 3
    assert system(node, AccountCode.DUST) == 0
    node.rewards.freeze(e.id, {"ada": 2, "cy": 1}, actor=op)
    done = node.rewards.distribute(e.id, actor=op)
    assert (done.paid, done.dust) == (3, 0)  # 2 + 1
    with pytest.raises(Conflict, match="holds no OPEN"):
        node.rewards.fund(node.rewards.create_epoch(actor=op).id, None, source="dust", actor=op)


def test_every_epoch_call_is_idempotent(world: tuple[Node, str, dict[str, str]]) -> None:
    node, op, _ = world
    fill_reward_pool(node, 50 * U)
    e = node.rewards.create_epoch(actor=op)
    key = "0190a4b2-0000-7000-8000-000000000001"
    first = node.rewards.fund(e.id, 5 * U, actor=op, id=key)
    assert node.rewards.fund(e.id, 5 * U, actor=op, id=key) == first
    with pytest.raises(Conflict, match="other arguments"):
        node.rewards.fund(e.id, 6 * U, actor=op, id=key)
    assert system(node, AccountCode.REWARD_POOL) == 45 * U

    frozen = node.rewards.freeze(e.id, {"ada": 2, "ben": 1}, actor=op)
    assert node.rewards.freeze(e.id, {"ben": 1, "ada": 2}, actor=op) == frozen
    with pytest.raises(Conflict, match="already frozen with other weights"):
        node.rewards.freeze(e.id, {"ada": 1, "ben": 1}, actor=op)
    done = node.rewards.distribute(e.id, actor=op)
    size = node.journal.size()
    assert node.rewards.distribute(e.id, actor=op) == done and node.journal.size() == size
    assert node.tokens.balance("ada").available == 3_333_333 and node.tokens.balance("ben").available == 1_666_666
    assert node.rewards.audit() == []


def test_refusals_leave_nothing_behind(world: tuple[Node, str, dict[str, str]], raw_db: RawDB) -> None:
    node, op, _ = world
    e = node.rewards.create_epoch(actor=op)
    size = node.journal.size()
    with pytest.raises(InsufficientFunds, match="funding epoch"):
        node.rewards.fund(e.id, 1 * U, actor=op)  # the reward pool is empty
    with pytest.raises(PermissionDenied, match="only an admin"):
        node.rewards.fund(e.id, 1 * U, source="treasury", actor="ada")
    with pytest.raises(InvalidInput, match="source"):
        node.rewards.fund(e.id, 1 * U, source="faucet", actor=op)
    with pytest.raises(Conflict, match="has no funds"):
        node.rewards.freeze(e.id, {"ada": 1}, actor=op)
    with pytest.raises(Conflict, match="freeze its weights first"):
        node.rewards.distribute(e.id, actor=op)
    with pytest.raises(PermissionDenied):
        node.rewards.create_epoch(actor="ada")
    with pytest.raises(NotFound, match="no reward epoch"):
        node.rewards.fund("ep_missing", 1, source="treasury", actor=op)
    assert node.journal.size() == size
    assert raw_db.one("SELECT COUNT(*) FROM ledger_failures") == 0

    node.rewards.fund(e.id, 1 * U, source="treasury", actor=op)
    size = node.journal.size()
    for weights, says in (({"ada": 0}, "every weight is 0"), ({"ada": -1}, "non-negative"), ({}, "at least one"),
                          ({"treasury": 1}, "system account"), ({"ghost": 1}, "ghost"),
                          ({"ada": 1, node.accounts.get("ada").id: 1}, "listed twice")):
        with pytest.raises((InvalidInput, NotFound), match=says):
            node.rewards.freeze(e.id, weights, actor=op)
    assert node.journal.size() == size and node.rewards.epoch(e.id).state == "open"
    node.rewards.freeze(e.id, {"ada": 1}, actor=op)
    with pytest.raises(Conflict, match="only an open epoch"):
        node.rewards.fund(e.id, 1 * U, source="treasury", actor=op)


# --------------------------------------------------------------------------------------------------------------
# proofs, earnings, audit
# --------------------------------------------------------------------------------------------------------------


def test_weight_proofs_verify_against_the_journaled_root(world: tuple[Node, str, dict[str, str]]) -> None:
    node, op, ids = world
    e = node.rewards.create_epoch(actor=op)
    node.rewards.fund(e.id, 1 * U, source="treasury", actor=op)
    with pytest.raises(Conflict, match="not frozen"):
        node.rewards.weight_proof(e.id, "ada")
    node.rewards.freeze(e.id, {"ada": 5, "ben": 3, "cy": 0}, actor=op)
    root = node.journal.event(node.rewards.epoch(e.id).frozen_seq).data["weights_root"]
    for name, weight in (("ada", 5), ("ben", 3), ("cy", 0)):
        bundle = json.loads(json.dumps(node.rewards.weight_proof(e.id, name)))
        assert bundle["weight"] == weight and bundle["weights_root"] == root and bundle["size"] == 3
        assert verify_weight_proof(bundle)
        assert not verify_weight_proof({**bundle, "weight": weight + 1})
        assert not verify_weight_proof({**bundle, "index": (bundle["index"] + 1) % 3})
    assert not verify_weight_proof({"nonsense": True})
    with pytest.raises(NotFound, match="has no weight"):
        node.rewards.weight_proof(e.id, "stranger")


def test_earnings_explain_themselves(world: tuple[Node, str, dict[str, str]]) -> None:
    node, op, ids = world
    node.tokens.faucet("payer", 50 * U, actor=op)
    node.fees.reserve_fee("q1", "payer", 10 * U, actor=op)
    node.fees.settle_fee("q1", 10 * U, FeeRecipients("ben", {"ada": 3, "cy": 1}, receipt_id="rcpt_a", adapter_id="adp_x"),
                         actor=op)
    node.fees.reserve_fee("q2", "payer", 10 * U, actor=op)
    node.fees.settle_fee("q2", 5 * U, FeeRecipients("ada", {"ada": 1}, receipt_id="rcpt_b"), actor=op)
    e = node.rewards.create_epoch("bonus", actor=op)
    node.rewards.fund(e.id, 4 * U, source="treasury", actor=op)
    node.rewards.freeze(e.id, {"ada": 1, "ben": 1}, actor=op)
    node.rewards.distribute(e.id, actor=op)

    ada = node.rewards.earnings("ada")
    assert (ada.account, ada.name) == (ids["ada"], "ada")
    got = [(f["request_id"], f["receipt_id"], f["role"], f["amount"]["units"]) for f in ada.fees]
    # q1: contributors' pool 4 OPEN, ada weight 3 of 4 → 3 OPEN. q2: ada owns the adapter (2 OPEN) and is the only
    # contributor (2 OPEN).
    assert got == [("q1", "rcpt_a", "contributor", 3 * U), ("q2", "rcpt_b", "contributor", 2 * U),
                   ("q2", "rcpt_b", "owner", 2 * U)]
    q1 = ada.fees[0]
    assert (q1["weight"], q1["total_weight"], q1["contributors_pool"]["units"], q1["adapter_id"]) == (3, 4, 4 * U, "adp_x")
    assert q1["fee"]["units"] == 10 * U and q1["payer"] == ids["payer"]
    assert [(p["epoch"], p["weight"], p["total_weight"], p["amount"]["units"]) for p in ada.epochs] == [(e.id, 1, 2, 2 * U)]
    assert ada.total_fees + ada.total_epochs == node.tokens.balance("ada").available == 9 * U
    ben = node.rewards.earnings("ben").to_dict()
    assert ben["totals"]["all"]["units"] == node.tokens.balance("ben").available == 6 * U
    assert node.rewards.earnings("stranger").to_dict()["totals"]["all"]["units"] == 0


@pytest.mark.parametrize("table", ["reward_epoch_fundings", "reward_epoch_weights", "reward_epoch_payouts"])
def test_epoch_rows_are_append_only_and_the_audit_sees_tampering(world: tuple[Node, str, dict[str, str]],
                                                                 raw_db: RawDB, table: str) -> None:
    node, op, _ = world
    e = node.rewards.create_epoch(actor=op)
    node.rewards.fund(e.id, 3 * U, source="treasury", actor=op)
    node.rewards.freeze(e.id, {"ada": 1, "ben": 2}, actor=op)
    node.rewards.distribute(e.id, actor=op)
    for statement in (f"UPDATE {table} SET epoch_id = epoch_id", f"DELETE FROM {table}"):
        with pytest.raises(Exception, match="append-only"):
            raw_db.execute(statement)
    with pytest.raises(Exception, match="append-only"):
        raw_db.execute("UPDATE reward_epochs SET paid = 0")  # a distributed epoch is final
    assert node.rewards.audit() == []
    raw_db.drop_trigger(table, "UPDATE")
    column = {"reward_epoch_fundings": "amount", "reward_epoch_weights": "weight", "reward_epoch_payouts": "amount"}[table]
    raw_db.execute(f"UPDATE {table} SET {column} = {column} + 1")
    assert node.rewards.audit(), "tampering went unnoticed"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**63 - 1), st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 2**40), min_size=1,
                                                 max_size=20).filter(lambda w: sum(w.values()) > 0))
def test_shares_are_floors_and_the_dust_closes_the_sum(funded: int, weights: dict[str, int]) -> None:
    paid, dust = shares(funded, weights)
    total = sum(weights.values())
    assert all(paid[a] == funded * w // total for a, w in weights.items())  # a for-loop reference
    assert sum(paid.values()) + dust == funded and 0 <= dust < len(weights)
    assert list(paid) == sorted(weights)
    assert weights_root(weights) == weights_root(dict(reversed(list(weights.items()))))  # order-independent


# --------------------------------------------------------------------------------------------------------------
# CLI and HTTP
# --------------------------------------------------------------------------------------------------------------



def test_cli_epoch_lifecycle_and_earnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "node")
    assert run(capsys, "init", "--home", home)[0] == 0
    for name in ("ada", "ben"):
        assert run(capsys, "account", "create", name, "--home", home)[0] == 0
    code, out, err = run(capsys, "rewards", "epoch", "create", "--title", "first", "--home", home, "--json")
    assert code == 0, err
    epoch = json.loads(out)["id"]
    code, out, err = run(capsys, "rewards", "epoch", "fund", epoch, "2.5", "--from", "treasury", "--home", home)
    assert code == 0 and "funded epoch" in out and "2.5 OPEN" in out, err
    code, _, err = run(capsys, "rewards", "epoch", "fund", epoch, "1", "--home", home)
    assert code == 1 and err.startswith("royalty: error: ") and err.count("\n") == 1 and "funding epoch" in err
    code, _, err = run(capsys, "rewards", "epoch", "fund", epoch, "0.0000001", "--from", "treasury", "--home", home)
    assert code == 1 and "at most 6 decimals" in err
    code, _, err = run(capsys, "rewards", "epoch", "freeze", epoch, "--weight", "ada", "--home", home)
    assert code == 1 and "ACCOUNT=WEIGHT" in err
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"ben": 1}))
    code, out, err = run(capsys, "rewards", "epoch", "freeze", epoch, "--weights", str(weights), "--weight", "ada=2",
                         "--home", home, "--json")
    assert code == 0, err
    assert json.loads(out)["total_weight"] == 3 and json.loads(out)["state"] == "frozen"
    code, out, err = run(capsys, "rewards", "epoch", "proof", epoch, "ada", "--home", home, "--json")
    assert code == 0 and verify_weight_proof(json.loads(out)), err
    code, out, err = run(capsys, "rewards", "epoch", "distribute", epoch, "--home", home)
    assert code == 0 and "paid 2.499999 OPEN to 2 accounts, dust 0.000001" in out, err
    code, out, _ = run(capsys, "rewards", "epoch", "show", epoch, "--home", home)
    assert "distributed" in out and "ada" in out and "1.666666" in out
    code, out, _ = run(capsys, "rewards", "epoch", "list", "--home", home, "--json")
    assert [e["id"] for e in json.loads(out)["epochs"]] == [epoch]
    code, out, _ = run(capsys, "rewards", "earnings", "ada", "--home", home)
    assert code == 0 and "1.666666" in out and epoch in out and "weight 2 of 3" in out
    code, out, _ = run(capsys, "rewards", "earnings", "ada", "--home", home, "--json")
    assert json.loads(out)["totals"]["epochs"] == {"amount": "1.666666", "units": 1_666_666}
    code, _, err = run(capsys, "rewards", "epoch", "show", "ep_nope", "--home", home)
    assert code == 1 and "no reward epoch" in err


def test_http_earnings_and_epochs(world: tuple[Node, str, dict[str, str]]) -> None:
    node, op, ids = world
    _, key = node.accounts.create_key("ada")
    e = node.rewards.create_epoch("web", actor=op)
    node.rewards.fund(e.id, 2 * U, source="treasury", actor=op)
    node.rewards.freeze(e.id, {"ada": 1, "ben": 1}, actor=op)
    node.rewards.distribute(e.id, actor=op)
    with LiveServer(create_app(node)) as server, server.client(key) as me, server.client() as anon:
        mine = me.get("/v1/rewards/earnings")
        assert mine.status_code == 200, mine.text
        assert mine.json()["account"] == ids["ada"] and mine.json()["totals"]["epochs"]["units"] == 1 * U
        denied = anon.get("/v1/rewards/earnings")
        assert denied.status_code == 401 and set(denied.json()) == {"error"}
        listed = anon.get("/v1/rewards/epochs").json()["data"]
        assert [x["id"] for x in listed] == [e.id]
        one = anon.get(f"/v1/rewards/epochs/{e.id}").json()
        assert one["state"] == "distributed" and len(one["recipients"]) == 2
        proof = anon.get(f"/v1/rewards/epochs/{e.id}/proof/ada").json()
        assert verify_weight_proof(proof)
        missing = anon.get("/v1/rewards/epochs/ep_nope")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


def test_cli_help_lists_every_rewards_command() -> None:
    from typer.main import get_command

    from royalty.cli import app

    group = get_command(app).commands["rewards"]  # type: ignore[attr-defined]
    assert set(group.commands) == {"epoch", "earnings"}
    assert set(group.commands["epoch"].commands) == {"create", "fund", "freeze", "distribute", "show", "list", "proof"}
    assert sys.modules["royalty.cli.rewards"].__doc__
