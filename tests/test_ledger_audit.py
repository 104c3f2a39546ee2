"""The ledger audit (``royalty ledger verify``, ``node.ledger_audit()``) on SQLite and PostgreSQL: a busy node
and a random workload replay to exactly the database's state, and each kind of tampering is caught and named —
a balance changed in place (I2, I1), a transfer row rewritten (I2) after its trigger was dropped (I7), a burnt id
deleted (I5), a pending transfer's state forged (I6), an edited journal event (I8), and transfers that create
OPEN outside genesis and mint (I4).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from conftest import Clock, RawDB, run_cli as run

import royalty
from royalty import Node
from royalty.ledger import AccountFlags, AccountSpec, Asset, Result, TransferFlags, TransferSpec, hex_id
from royalty.ledger.amounts import UNIT
from royalty.ledger.audit import MAX_PROBLEMS, audit_ledger
from royalty.ledger.chart import AccountCode, TransferCode, account_id, system_account_id, transfer_id

LINKED, PENDING = int(TransferFlags.LINKED), int(TransferFlags.PENDING)
POST, VOID = int(TransferFlags.POST_PENDING_TRANSFER), int(TransferFlags.VOID_PENDING_TRANSFER)
OPEN = int(Asset.OPEN)
XFER = int(TransferCode.TRANSFER)



def available_id(node: Node, name: str) -> int:
    return account_id(AccountCode.AVAILABLE, node.accounts.get(name).id)


def busy(node: Node, clock: Clock) -> dict[str, int]:
    """Every kind of ledger activity: faucet, transfers, a failure that burns its id and its retry, pending
    transfers posted (partly), voided, expired lazily inside a batch and by the sweep, linked chains that
    succeed and fail, a fee, a mint and a burn in services' own event types."""
    op = node.operator()
    for name in ("alice", "bob", "carol"):
        node.accounts.create(name, actor=op)
    node.tokens.faucet("alice", 100 * UNIT, actor=op)
    node.tokens.faucet("bob", 50 * UNIT, actor=op)
    alice, _ = node.accounts.get("alice").id, None
    node.tokens.transfer("alice", "bob", 7 * UNIT, actor=alice, id=1, memo="one")
    node.tokens.transfer("alice", "bob", 7 * UNIT, actor=alice, id=1, memo="one")  # exists
    with pytest.raises(royalty.errors.InsufficientFunds):
        node.tokens.transfer("alice", "carol", 10_000 * UNIT, actor=alice, id=2)
    with pytest.raises(royalty.errors.TransferRejected):
        node.tokens.transfer("alice", "carol", UNIT, actor=alice, id=2)  # id_already_failed
    a, b, c = available_id(node, "alice"), available_id(node, "bob"), available_id(node, "carol")
    results = node.ledger.create_transfers([
        TransferSpec(10, a, b, 5 * UNIT, ledger=OPEN, code=XFER, flags=PENDING, timeout=60),
        TransferSpec(11, a, c, 3 * UNIT, ledger=OPEN, code=XFER, flags=PENDING, timeout=5),
        TransferSpec(12, b, c, 2 * UNIT, ledger=OPEN, code=XFER, flags=PENDING),
        TransferSpec(13, b, c, 1 * UNIT, ledger=OPEN, code=XFER, flags=PENDING, timeout=1),
        TransferSpec(14, b, a, UNIT, ledger=OPEN, code=XFER, flags=LINKED),
        TransferSpec(15, c, a, UNIT, ledger=OPEN, code=XFER),  # carol has nothing yet: the chain fails
        TransferSpec(16, b, a, UNIT, ledger=OPEN, code=XFER, flags=LINKED),
        TransferSpec(17, a, c, UNIT, ledger=OPEN, code=XFER),  # a chain that succeeds
    ])
    assert results[:4] == [Result.ok] * 4 and results[4:6] == [Result.linked_event_failed, Result.exceeds_credits]
    assert results[6:] == [Result.ok, Result.ok]
    assert node.ledger.create_transfers([
        TransferSpec(20, pending_id=10, amount=4 * UNIT, flags=POST),  # post part of it
        TransferSpec(21, pending_id=12, flags=VOID),
        TransferSpec(20, pending_id=10, amount=4 * UNIT, flags=POST),  # exists
        TransferSpec(22, pending_id=12, flags=POST),  # already voided
    ]) == [Result.ok, Result.ok, Result.exists, Result.pending_transfer_already_voided]
    clock.now += 2_000  # 13 is overdue; the next batch on carol releases it lazily
    assert node.ledger.create_transfers([TransferSpec(23, c, b, UNIT // 2, ledger=OPEN, code=XFER)]) == [Result.ok]
    clock.now += 10_000  # 11 is overdue: the sweep releases it
    assert node.ledger.expire_pending() == [11]
    assert node.ledger.create_transfers([TransferSpec(24, pending_id=11, flags=POST)]) == [Result.pending_transfer_expired]
    bob = node.accounts.get("bob").id
    node.ledger.transaction(lambda conn: node.tokens.pay_in(
        conn, bob, 2 * UNIT, code=TransferCode.PUBLISH_FEE, id=transfer_id("test-fee", "1"), actor=bob,
        what="a test fee", extra={"why": "audit test"}))
    node.ledger.transaction(lambda conn: node.tokens.mint_in(conn, "carol", 3 * UNIT, id=transfer_id("mint", "t"), actor=None))
    node.ledger.transaction(lambda conn: node.tokens.burn_in(conn, "treasury", UNIT, id=transfer_id("burn", "t"), actor=None))
    return {"alice": a, "bob": b, "carol": c}


def test_busy_node_audits_clean(node: Node, clock: Clock, raw_db: RawDB, capsys: pytest.CaptureFixture[str]) -> None:
    busy(node, clock)
    report = node.ledger_audit()
    assert report.ok, report.problems
    assert report.problems == [] and report.problem_count == 0
    assert report.created == raw_db.one("SELECT count(*) FROM ledger_transfers")
    assert report.accounts == raw_db.one("SELECT count(*) FROM ledger_accounts")
    assert report.expired == 2 and report.pending == 0  # 13 lazily, 11 by the sweep; 10 posted, 12 voided
    assert report.failed >= 6
    assert report.supply == node.tokens.supply()["supply"]["units"] == 10**9 * UNIT + 2 * UNIT
    assert report.events == node.journal.size() and report.journal["ok"] is True
    assert set(report.services) == {"staking", "governance", "fees", "rewards"}
    d = report.to_dict()
    assert d["ok"] is True and d["supply"]["amount"] == "1000000002" and json.dumps(d)

    code, out, err = run(capsys, "ledger", "verify", "--home", str(node.home))
    assert code == 0, err
    assert out.startswith(f"ledger ok: {report.events} journal events replayed, {report.accounts} ledger accounts")
    code, out, _ = run(capsys, "ledger", "verify", "--home", str(node.home), "--json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_random_workload_replays_to_the_same_state(node: Node, clock: Clock) -> None:
    """A seeded random workload over a handful of accounts with every flag combination, reused ids, missing
    accounts, zero and huge amounts and expiries: the audit's own reimplementation of the rules must reach
    every result the core journaled and the database's exact state."""
    rng = random.Random(20_240_601)
    limited = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    capped = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
    accounts = [AccountSpec(100 + i, OPEN, 50, flags) for i, flags in enumerate((0, limited, limited, limited, capped, 0))]
    accounts.append(AccountSpec(200, int(Asset.GOPEN), 50, 0))  # another ledger
    accounts += [AccountSpec(0, OPEN, 50), AccountSpec(300, OPEN, 0), AccountSpec(100, OPEN, 51)]  # failures
    node.ledger.create_accounts(accounts)
    assert node.ledger.create_transfers([TransferSpec(i, 100, 100 + i, 1_000, ledger=OPEN, code=XFER) for i in (1, 2, 3)]) == [Result.ok] * 3
    # First every rule once, on purpose (each batch after the previous one).
    T = TransferSpec
    targeted = [
        [T(50, 101, 105, 900, ledger=OPEN, code=XFER, flags=PENDING), T(51, 101, 105, 200, ledger=OPEN, code=XFER)],
        [T(52, pending_id=50, amount=901, flags=POST), T(53, pending_id=50, amount=899, flags=VOID)],
        [T(54, pending_id=50, amount=900, flags=POST), T(55, pending_id=50, flags=VOID)],
        [T(56, 100, 105, 10, ledger=OPEN, code=XFER, user_data="a"), T(57, 105, 104, 5, ledger=OPEN, code=XFER),
         T(58, 100, 105, 2**63 - 1, ledger=OPEN, code=XFER), T(60, 102, 105, 10, ledger=OPEN, code=XFER, flags=PENDING)],
        [T(56, 100, 105, 10, ledger=OPEN, code=XFER, user_data="b"), T(56, 100, 105, 10, ledger=OPEN, code=XFER, timeout=1),
         T(56, 100, 104, 10, ledger=OPEN, code=XFER, user_data="a"), T(56, 100, 105, 10, ledger=OPEN, code=3, user_data="a"),
         T(56, 100, 105, 10, ledger=2, code=XFER, user_data="a"), T(56, 100, 105, 10, ledger=OPEN, code=XFER, pending_id=50),
         T(56, 101, 105, 10, ledger=OPEN, code=XFER, user_data="a"), T(56, 100, 105, 11, ledger=OPEN, code=XFER, user_data="a"),
         T(61, 101, 105, pending_id=60, flags=POST), T(62, 0, 104, pending_id=60, flags=POST),
         T(63, pending_id=60, ledger=2, flags=POST), T(64, pending_id=60, code=9, flags=POST),
         T(65, pending_id=60, timeout=1, flags=POST), T(66, pending_id=0, flags=POST), T(67, pending_id=2**128 - 1, flags=VOID),
         T(68, pending_id=68, flags=VOID), T(69, 101, 105, 10, ledger=OPEN, code=XFER, pending_id=60),
         T(70, 101, 105, 10, ledger=OPEN, code=XFER, flags=PENDING | POST), T(71, 101, 105, 1, ledger=OPEN, code=XFER, flags=64),
         T(0, 101, 105, 1, ledger=OPEN, code=XFER), T(2**128 - 1, 101, 105, 1, ledger=OPEN, code=XFER),
         T(72, 0, 105, 1, ledger=OPEN, code=XFER), T(73, 2**128 - 1, 105, 1, ledger=OPEN, code=XFER),
         T(74, 101, 0, 1, ledger=OPEN, code=XFER), T(75, 101, 2**128 - 1, 1, ledger=OPEN, code=XFER),
         T(76, 101, 105, -5, ledger=OPEN, code=XFER), T(77, 101, 105, 1, ledger=0, code=XFER),
         T(78, pending_id=56, flags=POST), T(79, pending_id=60, amount=0, flags=POST),
         T(80, 101, 105, 1, ledger=OPEN, code=XFER, flags=PENDING | POST | VOID)],
        [T(81, 105, 101, 2**62, ledger=OPEN, code=XFER, flags=PENDING),
         T(82, 100, 105, 2**62, ledger=OPEN, code=XFER, flags=PENDING), T(83, 101, 105, 2**62, ledger=OPEN, code=XFER, flags=PENDING),
         T(84, 100, 102, 2**62, ledger=OPEN, code=XFER, flags=PENDING)],
    ]
    seen: set[Result] = set()
    for batch in targeted:
        seen.update(node.ledger.create_transfers(batch))
    expected = {
        "exceeds_credits", "exceeds_pending_transfer_amount", "pending_transfer_has_different_amount",
        "pending_transfer_already_posted", "exists_with_different_user_data", "exists_with_different_timeout",
        "exists_with_different_credit_account_id", "exists_with_different_code", "exists_with_different_ledger",
        "exists_with_different_pending_id", "exists_with_different_debit_account_id", "exists_with_different_amount",
        "exceeds_debits", "overflows_debits_posted", "pending_transfer_has_different_debit_account_id",
        "pending_transfer_has_different_credit_account_id", "pending_transfer_has_different_ledger",
        "pending_transfer_has_different_code", "timeout_reserved_for_pending_transfer", "pending_id_must_not_be_zero",
        "pending_id_must_not_be_int_max", "pending_id_must_be_different", "pending_id_must_be_zero",
        "flags_are_mutually_exclusive", "reserved_flag", "id_must_not_be_zero", "id_must_not_be_int_max",
        "debit_account_id_must_not_be_zero", "debit_account_id_must_not_be_int_max", "credit_account_id_must_not_be_zero",
        "credit_account_id_must_not_be_int_max", "amount_out_of_range", "ledger_must_not_be_zero",
        "pending_transfer_not_pending", "amount_must_not_be_zero", "overflows_debits_pending", "overflows_credits_pending",
    }
    assert expected <= {r.value for r in seen}, expected - {r.value for r in seen}

    # Then a random workload on top.
    accounts_ = [100, 101, 101, 102, 102, 103, 104, 105, 200, 999]  # 999 does not exist; 200: another ledger
    history: list[TransferSpec] = []
    pendings: list[int] = []
    next_id = 1_000
    for _ in range(80):
        batch = []
        for _ in range(rng.randint(1, 7)):
            kind = rng.random()
            flags = LINKED if rng.random() < 0.2 else 0
            next_id += 1
            if kind < 0.1 and history:  # a retry: exists, id_already_failed, or the same failure again
                batch.append(rng.choice(history))
            elif kind < 0.15 and history:  # an id reused for something else
                old = rng.choice(history)
                batch.append(dataclasses.replace(old, amount=rng.choice([None, 7, 70]), flags=old.flags ^ rng.choice([0, LINKED])))
            elif kind < 0.6:
                pending = rng.random() < 0.4
                batch.append(TransferSpec(
                    next_id, rng.choice(accounts_), rng.choice(accounts_), rng.choice([0, 1, 50, 300, 400, 600, 2_000, 2**63 - 1, None]),
                    ledger=rng.choice([OPEN, OPEN, OPEN, 2]), code=rng.choice([XFER, XFER, 0]),
                    flags=flags | (PENDING if pending else 0),
                    timeout=rng.choice([0, 0, 1, 3]) if pending else rng.choice([0, 0, 0, 1])))
            else:
                target = rng.choice(pendings) if pendings and rng.random() < 0.85 else rng.randint(1_000, next_id)
                batch.append(TransferSpec(next_id, pending_id=target, amount=rng.choice([None, None, 10, 100, 10_000]),
                                          flags=flags | (POST if rng.random() < 0.6 else VOID)))
        results = node.ledger.create_transfers(batch)
        seen.update(results)
        history += batch
        pendings += [t.id for t, r in zip(batch, results) if r is Result.ok and t.flags & PENDING]
        clock.now += rng.choice([0, 0, 500, 1_500])
        if rng.random() < 0.1:
            node.ledger.expire_pending()
    assert len(seen) >= 40, " ".join(sorted(s.value for s in seen))  # the workload reaches many rules
    report = audit_ledger(node)
    assert report.ok, report.problems
    assert report.transfers > 100


def test_tampered_balance_is_named(node: Node, clock: Clock, raw_db: RawDB, capsys: pytest.CaptureFixture[str]) -> None:
    ids = busy(node, clock)
    alice = hex_id(ids["alice"])
    raw_db.execute("UPDATE ledger_accounts SET credits_posted = credits_posted + 1000000 WHERE id = ?", (alice,))
    report = node.ledger_audit()
    assert not report.ok
    first = report.problems[0]
    assert first.startswith(f"I2: ledger account {alice} (alice, available) balance differs"), report.problems
    assert "credits_posted" in first
    assert any(p.startswith("I1: ledger 1") for p in report.problems), report.problems

    code, out, err = run(capsys, "ledger", "verify", "--home", str(node.home))
    assert code == 1 and "LEDGER AUDIT FAILED" in out
    assert err.startswith(f"royalty: error: ledger audit failed: I2: ledger account {alice} (alice, available)")
    assert err.count("\n") == 1
    code, out, err = run(capsys, "ledger", "verify", "--home", str(node.home), "--json")
    doc = json.loads(out)  # one document: the report
    assert code == 1 and doc["ok"] is False and doc["problems"][0] == first and doc["problem_count"] == report.problem_count


def test_rewritten_transfer_row_and_dropped_trigger(node: Node, clock: Clock, raw_db: RawDB) -> None:
    busy(node, clock)
    raw_db.drop_trigger("ledger_transfers", "update")
    tid = hex_id(1)
    raw_db.execute("UPDATE ledger_transfers SET amount = amount + 1 WHERE id = ?", (tid,))
    problems = node.ledger_audit().problems
    assert any(p.startswith(f"I2: transfer {tid}") and "amount 7000001 (journal: 7000000)" in p for p in problems), problems
    assert "I7: the append-only trigger ledger_transfers_no_update is missing: its table can be rewritten" in problems
    bob = hex_id(available_id(node, "bob"))
    raw_db.execute("UPDATE ledger_accounts SET version = version + 1 WHERE id = ?", (bob,))
    problems = node.ledger_audit().problems
    assert any(p.startswith(f"I2: ledger account {bob} (bob, available)") and "version" in p for p in problems), problems


def test_deleted_burnt_id_and_forged_pending_state(node: Node, clock: Clock, raw_db: RawDB) -> None:
    busy(node, clock)
    a, b = available_id(node, "alice"), available_id(node, "bob")
    assert node.ledger.create_transfers([TransferSpec(99, a, b, UNIT, ledger=OPEN, code=XFER, flags=PENDING)]) == [Result.ok]
    raw_db.drop_trigger("ledger_failures", "delete")
    raw_db.execute("DELETE FROM ledger_failures WHERE id = ?", (hex_id(2),))
    # A pending row may change once, from 'pending': the database allows it, the journal says otherwise.
    raw_db.execute("UPDATE ledger_pending SET state = 'voided' WHERE id = ?", (hex_id(99),))
    problems = node.ledger_audit().problems
    assert any(p.startswith(f"I5: burnt id {hex_id(2)}: the journal says exceeds_credits") for p in problems), problems
    assert any(p.startswith(f"I6: pending transfer {hex_id(99)} is voided in the database, pending in the replay")
               for p in problems), problems
    assert "I7: the append-only trigger ledger_failures_no_delete is missing: its table can be rewritten" in problems


def test_edited_journal_event_is_caught(node: Node, clock: Clock, raw_db: RawDB, capsys: pytest.CaptureFixture[str]) -> None:
    busy(node, clock)
    event = next(e for e in node.journal.events(limit=1000) if e.type == "ledger.transfers"
                 and any(t["id"] == hex_id(1) for t in e.data["transfers"]))  # the first, that created it
    body = bytes(raw_db.one("SELECT body FROM journal_events WHERE seq = ?", (event.seq,)))
    forged = body.replace(b'"amount":7000000', b'"amount":7000001')
    assert forged != body
    raw_db.drop_trigger("journal_events", "update")
    raw_db.execute("UPDATE journal_events SET body = ? WHERE seq = ?", (forged, event.seq))
    report = node.ledger_audit()
    assert f"I8: journal event {event.seq} was altered: its bytes no longer match its leaf hash" in report.problems
    assert report.journal["ok"] is False
    # The replay of the forged event disagrees with the database too.
    assert any(p.startswith(f"I2: transfer {hex_id(1)}") for p in report.problems), report.problems
    code, _, err = run(capsys, "ledger", "verify", "--home", str(node.home))
    assert code == 1 and err.startswith("royalty: error: ledger audit failed: ")


def test_issuance_only_by_genesis_and_mint_and_within_the_cap(node: Node, clock: Clock) -> None:
    busy(node, clock)
    issuance, treasury = system_account_id(AccountCode.ISSUANCE), system_account_id(AccountCode.TREASURY)
    cap = node.params.current().supply_cap
    assert node.ledger.create_transfers([
        TransferSpec(500, issuance, treasury, UNIT, ledger=OPEN, code=XFER),  # creates OPEN without a mint
        TransferSpec(501, issuance, treasury, cap, ledger=OPEN, code=int(TransferCode.MINT)),  # past the cap
    ]) == [Result.ok, Result.ok]
    problems = node.ledger_audit().problems
    assert any(p.startswith("I4: seq") and f"transfer {hex_id(500)} debits {hex_id(issuance)}" in p for p in problems), problems
    assert any(p.startswith("I4: supply") and "exceeds the cap" in p for p in problems), problems


def test_problems_are_capped_but_counted(node: Node, clock: Clock, raw_db: RawDB) -> None:
    busy(node, clock)
    for name in ("dave", "erin"):
        node.accounts.create(name)
        node.tokens.faucet(name, UNIT, actor=node.operator())
    count = raw_db.one("SELECT count(*) FROM ledger_accounts")
    assert count > MAX_PROBLEMS
    raw_db.execute("UPDATE ledger_accounts SET user_data = 'forged'")
    report = node.ledger_audit()
    assert len(report.problems) == MAX_PROBLEMS and report.problem_count == count
    assert report.to_dict()["problem_count"] == count and report.to_dict()["ok"] is False


def test_verify_on_a_node_made_by_the_cli(tmp_path: Path, database_url: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    h = ("--home", str(tmp_path / "node"))
    assert run(capsys, "init", *h, *(("--database-url", database_url) if database_url else ()), "--supply", "1000")[0] == 0
    code, out, err = run(capsys, "ledger", "verify", *h, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and doc["supply"] == {"amount": "1000", "units": 1000 * UNIT} and doc["created"] == 1
