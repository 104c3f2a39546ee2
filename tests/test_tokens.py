"""OPEN in the library (``node.tokens``) and at the CLI: ``royalty init --supply/--param``, ``royalty ledger
balance|transfer|history|faucet|supply``, and every bad input (one line on stderr, exit 1; usage errors exit 2),
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from conftest import run_cli as run

import royalty
from royalty import Node
from royalty.errors import InvalidInput, PermissionDenied, TransferRejected
from royalty.ledger import Result
from royalty.ledger.amounts import UNIT
from royalty.ledger.tokens import DEFAULT_GENESIS_SUPPLY



def ok_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def h(tmp_path: Path, database_url: str | None, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """A node made by the CLI with participants alice and bob; alice holds 100 OPEN from the faucet."""
    home = ("--home", str(tmp_path / "node"))
    code, _, err = run(capsys, "init", *home, *(("--database-url", database_url) if database_url else ()))
    assert code == 0, err
    for name in ("alice", "bob"):
        assert run(capsys, "account", "create", name, *home)[0] == 0
    assert run(capsys, "ledger", "faucet", "alice", "100", *home)[0] == 0
    return home


def available(capsys: pytest.CaptureFixture[str], h: tuple[str, str], who: str) -> str:
    return ok_json(capsys, "ledger", "balance", who, *h)["available"]["amount"]


# --------------------------------------------------------------------------------------------------------------
# genesis options
# --------------------------------------------------------------------------------------------------------------


def test_init_with_supply_and_params(tmp_path: Path, database_url: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "node"
    db = ("--database-url", database_url) if database_url else ()
    code, out, err = run(capsys, "init", "--home", str(home), *db, "--supply", "2500.5",
                         "--param", "fee_owner_bps=3000", "--param", "fee_treasury_bps=2000", "--json")
    assert code == 0, err
    assert json.loads(out)["created"] is True
    s = ok_json(capsys, "ledger", "supply", "--home", str(home))
    assert s["supply"] == {"amount": "2500.5", "units": 2_500_500_000} == s["issued"]
    assert s["burnt"]["units"] == 0
    with royalty.open_node(home) as node:
        params = node.params.current()
        assert (params.fee_owner_bps, params.fee_treasury_bps) == (3000, 2000)
        (event,) = node.journal.events(type="params.set")
        assert event.data["params"]["fee_owner_bps"] == 3000
        assert node.tokens.balance  # the node works
        treasury = node.tokens.system_balance(royalty.ledger.chart.AccountCode.TREASURY)
        assert treasury == 2_500_500_000
    # Run again with other options: an existing node is left as it is.
    code, out, _ = run(capsys, "init", "--home", str(home), "--supply", "7")
    assert code == 0 and "nothing changed" in out
    assert ok_json(capsys, "ledger", "supply", "--home", str(home))["supply"]["amount"] == "2500.5"


def test_init_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ("--home", str(tmp_path / "node"))
    assert run(capsys, "init", *home)[0] == 0
    assert ok_json(capsys, "ledger", "supply", *home)["supply"]["units"] == DEFAULT_GENESIS_SUPPLY == 10**9 * UNIT
    assert run(capsys, "init", "--home", str(tmp_path / "empty"), "--supply", "0")[0] == 0
    assert ok_json(capsys, "ledger", "supply", "--home", str(tmp_path / "empty"))["supply"]["units"] == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--supply", "20000000000"), "exceeds the supply cap"),
        (("--supply", "-5"), "supply '-5' is not an amount"),
        (("--supply", "1.1234567"), "supply '1.1234567' is not an amount"),
        (("--supply", "abc"), "supply 'abc'"),
        (("--param", "supply_cap=1"), "exceeds the supply cap"),
        (("--param", "fee_owner_bps=1"), "fee split must sum to 10000"),
        (("--param", "nope=1"), "'nope' is not a parameter"),
        (("--param", "fee_owner_bps"), "use KEY=VALUE"),
        (("--param", "fee_owner_bps=abc"), "must be an integer"),
        (("--param", "gov_quorum_percent=101"), "gov_quorum_percent"),
    ],
)
def test_init_rejects_bad_genesis_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                          says: str) -> None:
    home = tmp_path / "node"
    code, out, err = run(capsys, "init", "--home", str(home), *args)
    assert code == 1 and out == ""
    assert err.startswith("royalty: error: ") and err.count("\n") == 1 and says in err, err
    assert not home.exists()  # validated before anything is written


# --------------------------------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------------------------------


def test_cli_balance_transfer_history_supply(h: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    ids = {n: ok_json(capsys, "account", "show", n, *h)["id"] for n in ("alice", "bob", "treasury")}
    granted = ok_json(capsys, "ledger", "faucet", "bob", "0.5", *h)
    assert granted["result"] == "ok"
    assert (granted["transfer"]["amount"], granted["transfer"]["units"]) == ("0.5", 500_000)
    assert (granted["transfer"]["from"], granted["transfer"]["to"]) == (ids["treasury"], ids["bob"])

    sent = ok_json(capsys, "ledger", "transfer", "alice", "bob", "1.25", "--memo", "lunch", *h)
    t = sent["transfer"]
    assert sent["result"] == "ok" and (t["amount"], t["units"], t["user_data"]) == ("1.25", 1_250_000, "lunch")
    assert (t["from"], t["to"]) == (ids["alice"], ids["bob"])
    code, out, _ = run(capsys, "ledger", "transfer", "alice", "bob", "0.000001", *h)
    assert code == 0 and out.startswith("sent 0.000001 OPEN from alice to bob\ntransfer ")

    b = ok_json(capsys, "ledger", "balance", "alice", *h)
    assert b["name"] == "alice" and b["account"] == ids["alice"]
    assert b["available"] == {"amount": "98.749999", "units": 98_749_999}
    assert b["reserved"]["units"] == b["staked"]["units"] == b["gopen"]["units"] == 0
    assert available(capsys, h, "bob") == "1.750001"
    code, out, _ = run(capsys, "ledger", "balance", "bob", *h)
    assert code == 0 and "available  1.750001 OPEN" in out

    hist = ok_json(capsys, "ledger", "history", "alice", *h)
    assert [(i["reason"], i["direction"], i["signed"]["amount"]) for i in hist["data"]] == [
        ("faucet", "in", "100"), ("transfer", "out", "-1.25"), ("transfer", "out", "-0.000001")]
    assert hist["data"][1]["amount"] == "1.25" and hist["data"][1]["units"] == 1_250_000
    assert hist["has_more"] is False and hist["next_after"] is None
    page = ok_json(capsys, "ledger", "history", "alice", "--limit", "2", *h)
    assert len(page["data"]) == 2 and page["has_more"] is True and page["next_after"] == page["data"][1]["id"]
    rest = ok_json(capsys, "ledger", "history", "alice", "--after", page["next_after"], *h)
    assert [i["signed"]["units"] for i in rest["data"]] == [-1] and rest["has_more"] is False
    code, out, _ = run(capsys, "ledger", "history", "alice", "--limit", "1", *h)
    assert code == 0 and "faucet" in out and "more: --after" in out
    code, out, _ = run(capsys, "ledger", "history", "alice", *h)
    assert "lunch" in out

    s = ok_json(capsys, "ledger", "supply", *h)
    assert s["supply"]["units"] == DEFAULT_GENESIS_SUPPLY  # the faucet moves OPEN, it does not mint it
    code, out, _ = run(capsys, "ledger", "supply", *h)
    assert code == 0 and out.startswith("supply  1000000000 OPEN")


def test_cli_ids_make_transfers_idempotent(h: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    tid = str(uuid.uuid4())
    first = ok_json(capsys, "ledger", "transfer", "alice", "bob", "2", "--id", tid, *h)
    assert first["result"] == "ok" and first["transfer"]["id"] == tid.replace("-", "")
    code, out, _ = run(capsys, "ledger", "transfer", "alice", "bob", "2", "--id", tid, *h)
    assert code == 0 and out.startswith("already sent (same id) 2 OPEN from alice to bob")
    again = ok_json(capsys, "ledger", "transfer", "alice", "bob", "2", "--id", tid, *h)
    assert again["result"] == "exists" and again["transfer"] == first["transfer"]
    assert available(capsys, h, "bob") == "2"  # once
    code, _, err = run(capsys, "ledger", "transfer", "alice", "bob", "3", "--id", tid, *h)
    assert code == 1 and "exists_with_different_amount" in err and err.count("\n") == 1

    fid = uuid.uuid4().hex
    assert ok_json(capsys, "ledger", "faucet", "bob", "1", "--id", fid, *h)["result"] == "ok"
    code, out, _ = run(capsys, "ledger", "faucet", "bob", "1", "--id", fid, *h)
    assert code == 0 and out.startswith("already granted (same id) 1 OPEN from the treasury to bob")
    assert available(capsys, h, "bob") == "3"


BAD_INPUTS = [
    # (arguments, exit code, what the one line says, field in the --json error)
    (("transfer", "alice", "bob", "1.2345678"), "amount '1.2345678' is not an amount", "amount"),
    (("transfer", "alice", "bob", "-1"), "amount '-1' is not an amount: use a non-negative decimal", "amount"),
    (("transfer", "alice", "bob", "abc"), "amount 'abc' is not an amount", "amount"),
    (("transfer", "alice", "bob", "1e3"), "amount '1e3' is not an amount", "amount"),
    (("transfer", "alice", "bob", "0"), "amount must be more than zero", "amount"),
    (("transfer", "alice", "bob", "9999999999999"), "out of range", "amount"),
    (("transfer", "alice", "nobody", "1"), "no account 'nobody'", "account"),
    (("transfer", "nobody", "bob", "1"), "no account 'nobody'", "account"),
    (("transfer", "alice", "treasury", "1"), "treasury is a system account", "account"),
    (("transfer", "fees", "bob", "1"), "fees is a system account", "account"),
    (("transfer", "alice", "alice", "1"), "the payer and the payee are the same account", "to"),
    (("transfer", "alice", "bob", "1000"), "not enough available", None),
    (("transfer", "alice", "bob", "1", "--as", "bob"), "only alice may send alice's OPEN", "from"),
    (("transfer", "alice", "bob", "1", "--id", "xyz"), "id 'xyz' is not a 128-bit id", "id"),
    (("transfer", "alice", "bob", "1", "--memo", "x" * 1025), "at most 1024 characters", "user_data"),
    (("faucet", "alice", "1", "--as", "alice"), "only an admin may use the faucet", "actor"),
    (("faucet", "alice", "1", "--as", "nobody"), "no account 'nobody'", "account"),
    (("faucet", "treasury", "1"), "treasury is a system account", "account"),
    (("faucet", "alice", "-5"), "amount '-5' is not an amount", "amount"),
    (("faucet", "alice", "2000000000"), "not enough available", None),  # more than the treasury holds
    (("balance", "nobody"), "no account 'nobody'", "account"),
    (("balance", "rewards"), "rewards is a system account", "account"),
    (("history", "alice", "--after", "0" * 32), "the 'after' transfer does not exist", "after"),
    (("history", "alice", "--after", "zz"), "after 'zz' is not a 128-bit id", "after"),
    (("history", "nobody"), "no account 'nobody'", "account"),
]


def test_cli_bad_inputs_are_one_line_and_change_nothing(h: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    before = (available(capsys, h, "alice"), available(capsys, h, "bob"))
    for args, says, field in BAD_INPUTS:
        code, out, err = run(capsys, "ledger", *args, *h)
        assert code == 1 and out == "", (args, code, out, err)
        assert err.startswith("royalty: error: ") and err.count("\n") == 1 and says in err, (args, err)
        assert "Traceback" not in err
        code, out, _ = run(capsys, "ledger", *args, *h, "--json")
        assert code == 1
        error = json.loads(out)["error"]
        assert error.get("field") == field and says in error["message"], (args, error)
    assert (available(capsys, h, "alice"), available(capsys, h, "bob")) == before
    assert run(capsys, "ledger", "verify", *h)[0] == 0  # refused inputs left the ledger consistent


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    usage = [
        ("transfer", "alice", "bob"),  # missing AMOUNT
        ("faucet", "alice"),
        ("history", "alice", "--limit", "0"),
        ("balance",),
        ("transfer", "alice", "bob", "1", "--frobnicate"),
    ]
    for args in usage:  # refused before any node is opened
        code, out, err = run(capsys, "ledger", *args, "--home", str(tmp_path / "none"))
        assert code == 2 and "Traceback" not in err and "Usage:" in err, (args, err)


# --------------------------------------------------------------------------------------------------------------
# the library
# --------------------------------------------------------------------------------------------------------------


def test_tokens_library(node: Node) -> None:
    op = node.operator()
    alice, _ = node.accounts.create("alice", actor=op)
    bob, _ = node.accounts.create("bob", actor=op)
    # No ledger accounts yet: zeros, and no history.
    assert node.tokens.balance("alice").available == 0 and node.tokens.history("alice") == []

    t, result = node.tokens.faucet("alice", 10 * UNIT, actor=op, memo="welcome")
    assert result is Result.ok and t.user_data == "welcome" and t.amount == 10 * UNIT
    with pytest.raises(PermissionDenied) as denied:
        node.tokens.transfer("alice", "bob", UNIT, actor=bob.id)
    assert denied.value.field == "from"
    with pytest.raises(PermissionDenied):
        node.tokens.transfer("alice", "bob", UNIT, actor=op)  # an admin cannot move someone else's OPEN either
    with pytest.raises(PermissionDenied):
        node.tokens.faucet("bob", UNIT, actor=alice.id)
    with pytest.raises(InvalidInput):
        node.tokens.participant("treasury")
    with pytest.raises(TransferRejected) as rejected:
        node.tokens.transfer("alice", "bob", 0, actor=alice.id)
    assert rejected.value.result == "amount_must_not_be_zero"

    tid = uuid.uuid4()
    first, r1 = node.tokens.transfer("alice", "bob", 3 * UNIT, actor=alice.id, id=tid, memo="rent")
    again, r2 = node.tokens.transfer("alice", "bob", 3 * UNIT, actor=alice.id, id=tid, memo="rent")
    assert (r1, r2) == (Result.ok, Result.exists) and first == again
    with pytest.raises(TransferRejected) as rejected:
        node.tokens.transfer("alice", "bob", 3 * UNIT, actor=alice.id, id=tid, memo="other")
    assert rejected.value.result == "exists_with_different_user_data"

    a, b = node.tokens.balance("alice"), node.tokens.balance(bob.id)
    assert (a.available, b.available) == (7 * UNIT, 3 * UNIT)
    items = node.tokens.history("alice")
    assert [(i.direction, i.to_dict()["reason"], i.to_dict()["signed"]["units"]) for i in items] == [
        ("in", "faucet", 10 * UNIT), ("out", "transfer", -3 * UNIT)]
    assert [i.transfer.id for i in node.tokens.history("bob")] == [first.id]
    assert node.tokens.supply()["supply"]["units"] == DEFAULT_GENESIS_SUPPLY
    assert node.ledger_audit().ok


def test_history_pages_never_split_a_transfer_between_own_accounts(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    op = node.operator()
    alice, _ = node.accounts.create("alice", actor=op)
    node.tokens.faucet("alice", 10 * UNIT, actor=op)
    node.staking.stake("alice", 3 * UNIT, actor=alice.id)  # AVAILABLE -> STAKED: two items of one transfer
    every = [(i.transfer.id, i.direction) for i in node.tokens.history("alice")]
    assert len(every) == len(set(every)) >= 3
    for limit in (1, 2, 3):
        seen, after, more = [], None, True
        while more:
            page, more = node.tokens.history_page("alice", limit=limit, after=after)
            assert page and len(page) <= limit + 1
            seen += [(i.transfer.id, i.direction) for i in page]
            after = page[-1].transfer.id
        assert seen == every, limit
    code, out, _ = run(capsys, "ledger", "history", "alice", "--limit", "2", "--home", str(node.home), "--json")
    doc = json.loads(out)
    assert code == 0 and [i["reason"] for i in doc["data"]] == ["faucet", "stake", "stake"] and doc["has_more"] is True
