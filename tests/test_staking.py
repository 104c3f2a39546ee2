"""Staking and gOPEN (``node.staking``) on both backends: stake / cooldown / redeem / delegate / claim and every
refusal, ERC20Votes checkpoints against a brute-force reference (Hypothesis), flash-stake resistance, the
Synthetix rewards accumulator with its rounding, claim idempotency, the audit, the HTTP routes with their
Idempotency-Key semantics and the CLI's --json output.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import royalty
from conftest import Clock, RawDB, run_cli as cli
from royalty import Node
from royalty.api import create_app
from royalty.errors import Conflict, InsufficientFunds, InvalidInput, NotFound, PermissionDenied, TransferRejected
from royalty.ledger import Asset, Result, TransferSpec
from royalty.ledger.amounts import UNIT
from royalty.ledger.chart import AccountCode, TransferCode, account_id, system_account_id
from royalty.ledger.staking import RPT_SCALE
from royalty.ledger.tokens import new_transfer_id

DAY_MS = 86_400_000
COOLDOWN_MS = 10 * DAY_MS  # the default Params: 10 day cooldown, 2 day unstake window
WINDOW_MS = 2 * DAY_MS


def people(node: Node, *names: str, fund: int = 100 * UNIT) -> dict[str, str]:
    """Create participants and give each ``fund`` base units of OPEN from the faucet; name -> account id."""
    ids = {}
    for name in names:
        acct, _ = node.accounts.create(name, with_key=False)
        ids[name] = acct.id
        if fund:
            node.tokens.faucet(name, fund, actor=node.operator())
    return ids


def distribute(node: Node, amount: int) -> int:
    """What the fees service does: allocate through the accumulator, then move that much into STAKER_POOL in
    the same transaction (here from the treasury)."""

    def body(conn: Any) -> int:
        allocated = node.staking.distribute_in(conn, amount)
        if allocated:
            res = node.ledger.create_transfers_in(conn, [TransferSpec(
                new_transfer_id(), system_account_id(AccountCode.TREASURY), system_account_id(AccountCode.STAKER_POOL),
                allocated, ledger=int(Asset.OPEN), code=int(TransferCode.FEE_STAKERS))])
            assert res == [Result.ok], res
        return allocated

    return node.ledger.transaction(body)


def pool_balance(node: Node) -> int:
    return node.tokens.system_balance(AccountCode.STAKER_POOL)


@pytest.fixture
def quick(home: Path, database_url: str | None, clock: Clock) -> Iterator[Node]:
    """A node whose cooldown is 0 s: redeem right after cooldown (the window is still 2 days)."""
    node, _ = royalty.init_node(home, database_url=database_url, clock=clock, params={"stake_cooldown_s": 0})
    try:
        yield node
    finally:
        node.close()


# --------------------------------------------------------------------------------------------------------------
# stake
# --------------------------------------------------------------------------------------------------------------


def test_stake_moves_open_and_mints_gopen_in_one_event(node: Node) -> None:
    ids = people(node, "alice")
    before = node.journal.size()
    r = node.staking.stake("alice", 30 * UNIT, actor="alice")
    assert (r.operation, r.result, r.amount, r.replayed) == ("stake", "ok", 30 * UNIT, False)
    bal = node.tokens.balance("alice")
    assert (bal.available, bal.staked, bal.gopen) == (70 * UNIT, 30 * UNIT, 30 * UNIT)
    assert r.state.staked == r.state.gopen == 30 * UNIT
    assert node.staking.total_staked() == 30 * UNIT
    assert node.journal.size() == before + 1  # one event: both legs and the staking state
    event = node.journal.event(before)
    assert event.type == "staking.stake" and event.actor == ids["alice"]
    legs = [(t["code"], t["ledger"], t["result"]) for t in event.data["transfers"]]
    assert legs == [(TransferCode.STAKE, Asset.OPEN, "ok"), (TransferCode.GOPEN_MINT, Asset.GOPEN, "ok")]
    assert event.data["staked"] == event.data["total_staked"] == 30 * UNIT
    assert node.staking.audit() == []


def test_stake_refusals_change_nothing(node: Node) -> None:
    people(node, "alice", "bob", fund=10 * UNIT)
    people(node, "nobody", fund=0)
    before = node.journal.size()
    for bad in (0, -1, 1.5, "5", True, 2**63):
        with pytest.raises(InvalidInput) as exc:
            node.staking.stake("alice", bad, actor="alice")  # type: ignore[arg-type]
        assert exc.value.field == "amount"
    with pytest.raises(PermissionDenied):
        node.staking.stake("alice", UNIT, actor="bob")
    with pytest.raises(NotFound):
        node.staking.stake("mallory", UNIT, actor="mallory")
    with pytest.raises(InvalidInput):
        node.staking.stake("treasury", UNIT, actor="treasury")
    with pytest.raises(InsufficientFunds):
        node.staking.stake("nobody", UNIT, actor="nobody")  # no OPEN wallet at all: nothing journaled
    assert node.journal.size() == before
    # More than available: the ledger refuses the chain; the attempt is journaled and nothing moves.
    with pytest.raises(InsufficientFunds) as exc2:
        node.staking.stake("alice", 10 * UNIT + 1, actor="alice")
    assert exc2.value.result == "exceeds_credits"
    bal = node.tokens.balance("alice")
    assert (bal.available, bal.staked, bal.gopen) == (10 * UNIT, 0, 0)
    assert node.staking.total_staked() == 0
    assert node.staking.audit() == []


def test_stake_with_an_id_is_idempotent(node: Node) -> None:
    people(node, "alice", fund=10 * UNIT)
    tid = new_transfer_id()
    first = node.staking.stake("alice", 4 * UNIT, actor="alice", id=tid)
    size = node.journal.size()
    again = node.staking.stake("alice", 4 * UNIT, actor="alice", id=tid)
    assert (again.result, again.replayed, again.amount, again.transfer_id) == ("exists", True, 4 * UNIT, first.transfer_id)
    assert node.journal.size() == size  # a replay writes nothing
    assert node.tokens.balance("alice").staked == 4 * UNIT
    with pytest.raises(TransferRejected) as exc:
        node.staking.stake("alice", 5 * UNIT, actor="alice", id=tid)
    assert exc.value.result == "exists_with_different_amount"
    with pytest.raises(TransferRejected) as exc:
        node.staking.redeem("alice", 4 * UNIT, actor="alice", id=tid)  # the same id for another operation
    assert exc.value.result.startswith("exists_with_different_")
    # An id whose first attempt failed stays failed (TigerBeetle >= 0.16.4), even once funds would suffice.
    failed = new_transfer_id()
    with pytest.raises(InsufficientFunds):
        node.staking.stake("alice", 7 * UNIT, actor="alice", id=failed)
    with pytest.raises(TransferRejected) as exc:
        node.staking.stake("alice", UNIT, actor="alice", id=failed)
    assert exc.value.result == "id_already_failed"
    assert node.tokens.balance("alice").staked == 4 * UNIT
    assert node.staking.audit() == []


def test_gopen_cannot_be_moved_by_plain_transfers(node: Node) -> None:
    ids = people(node, "alice", "bob")
    node.staking.stake("alice", 5 * UNIT, actor="alice")
    # Even straight at the core, the GOPEN account is a user account: a transfer out of it is the only way to
    # move gOPEN, and the audit flags any that is not a redeem burn.
    res = node.ledger.create_transfers([TransferSpec(
        new_transfer_id(), account_id(AccountCode.GOPEN, ids["alice"]), account_id(AccountCode.GOPEN, ids["bob"]),
        UNIT, ledger=int(Asset.GOPEN), code=int(TransferCode.TRANSFER))])
    assert res == [Result.ok]
    problems = node.staking.audit()
    assert any("non-transferable" in p for p in problems), problems
    assert any(ids["alice"] in p and "differ" in p for p in problems), problems


# --------------------------------------------------------------------------------------------------------------
# delegation and checkpoints
# --------------------------------------------------------------------------------------------------------------


def test_votes_count_only_when_delegated_and_follow_the_delegation(node: Node, clock: Clock) -> None:
    ids = people(node, "alice", "bob")
    node.staking.stake("alice", 10 * UNIT, actor="alice")
    assert node.staking.get_votes("alice") == 0  # staked but not delegated: counts nowhere
    t0 = clock.now
    r = node.staking.delegate("alice", "alice", actor="alice")
    assert (r.result, r.amount, r.state.delegatee, r.state.votes) == ("ok", 10 * UNIT, ids["alice"], 10 * UNIT)
    assert node.staking.delegate("alice", "alice", actor="alice").result == "noop"
    clock.now += 100
    t1 = clock.now
    node.staking.stake("alice", 5 * UNIT, actor="alice")  # later stake follows the delegation
    assert node.staking.get_votes("alice") == 15 * UNIT
    clock.now += 100
    t2 = clock.now
    size = node.journal.size()
    node.staking.delegate("alice", "bob", actor="alice")  # all current units move
    event = node.journal.event(size)
    assert event.type == "staking.delegate"
    assert (event.data["from"], event.data["to"], event.data["units"]) == (ids["alice"], ids["bob"], 15 * UNIT)
    assert (node.staking.get_votes("alice"), node.staking.get_votes("bob")) == (0, 15 * UNIT)
    clock.now += 100
    assert node.staking.get_past_votes("alice", t0 - 1) == 0
    assert node.staking.get_past_votes("alice", t0 + 50) == 10 * UNIT
    assert node.staking.get_past_votes("alice", t1 + 50) == 15 * UNIT
    assert node.staking.get_past_votes("alice", t2 + 50) == 0
    assert node.staking.get_past_votes("bob", t2 - 1) == 0
    assert node.staking.get_past_votes(ids["bob"], t2 + 50) == 15 * UNIT
    # Total supply counts all gOPEN, delegated or not (quorum uses it).
    assert node.staking.get_past_total_supply(t0 - 1) == 10 * UNIT
    assert node.staking.get_past_total_supply(t1 + 50) == 15 * UNIT
    # Delegating to an account that never staked is fine; to a system account or nobody is not.
    with pytest.raises(InvalidInput):
        node.staking.delegate("alice", "treasury", actor="alice")
    with pytest.raises(NotFound):
        node.staking.delegate("alice", "mallory", actor="alice")
    with pytest.raises(PermissionDenied):
        node.staking.delegate("alice", "alice", actor="bob")
    assert node.staking.audit() == []


def test_past_lookups_refuse_the_present_and_future(node: Node, clock: Clock) -> None:
    people(node, "alice")
    for ahead in (0, 10**9):  # the clock reads clock.now, then moves on: "now" itself is refused
        with pytest.raises(InvalidInput) as exc:
            node.staking.get_past_votes("alice", clock.now + ahead)
        assert exc.value.field == "timepoint" and "ERC5805FutureLookup" in exc.value.message
        with pytest.raises(InvalidInput):
            node.staking.get_past_total_supply(clock.now + ahead)
    with pytest.raises(InvalidInput):
        node.staking.get_past_votes("alice", -1)
    assert node.staking.get_past_votes("alice", clock.now - 1) == 0


def test_flash_stake_after_a_snapshot_adds_nothing(node: Node, clock: Clock) -> None:
    people(node, "alice", "whale", fund=1_000 * UNIT)
    node.staking.stake("alice", 10 * UNIT, actor="alice")
    node.staking.delegate("alice", "alice", actor="alice")
    node.staking.delegate("whale", "whale", actor="whale")
    snapshot = clock.now
    clock.now += 1
    # Borrow, stake, delegate to a friend, all after the snapshot.
    node.staking.stake("whale", 900 * UNIT, actor="whale")
    node.staking.delegate("whale", "alice", actor="whale")
    assert node.staking.get_votes("alice") == 910 * UNIT
    clock.now += 1
    assert node.staking.get_past_votes("alice", snapshot) == 10 * UNIT
    assert node.staking.get_past_votes("whale", snapshot) == 0
    assert node.staking.get_past_total_supply(snapshot) == 10 * UNIT


def test_several_changes_in_one_ms_keep_the_last(node: Node, clock: Clock) -> None:
    people(node, "alice")
    node.staking.delegate("alice", "alice", actor="alice")
    clock.step = 0  # time stands still: every change lands in the same ms
    t = clock.now
    for _ in range(3):
        node.staking.stake("alice", UNIT, actor="alice")
    clock.now += 1
    clock.step = 1
    assert node.staking.get_past_votes("alice", t) == 3 * UNIT
    assert node.staking.get_past_votes("alice", t - 1) == 0
    assert node.staking.get_past_total_supply(t) == 3 * UNIT


def test_checkpoints_are_append_only(node: Node, raw_db: RawDB) -> None:
    people(node, "alice")
    node.staking.delegate("alice", "alice", actor="alice")
    node.staking.stake("alice", UNIT, actor="alice")
    for table in ("staking_vote_checkpoints", "staking_supply_checkpoints"):
        assert raw_db.one(f"SELECT COUNT(*) FROM {table}") >= 1
        for sql in (f"UPDATE {table} SET event_seq = event_seq + 1000", f"DELETE FROM {table}"):
            with pytest.raises(Exception, match="append-only"):
                raw_db.execute(sql)
    with pytest.raises(Exception, match="append-only"):
        raw_db.execute("DELETE FROM staking_stakers")


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("stake"), st.integers(0, 2), st.integers(1, 40)),
        st.tuples(st.just("redeem"), st.integers(0, 2), st.integers(1, 40)),
        st.tuples(st.just("delegate"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("tick"), st.integers(0, 3), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_checkpoint_lookups_match_a_brute_force_reference(quick: Node, clock: Clock, ops: list[tuple[str, int, int]]) -> None:
    """Random stakes, redeems, delegations and clock ticks (several changes per ms included); every
    get_past_votes / get_past_total_supply over the whole span equals the last reference value at or before it."""
    node = quick
    run = new_transfer_id() & 0xFFFFFF  # fresh participants per example; the node is shared
    names = [f"p{run:x}-{i}" for i in range(3)]
    ids = list(people(node, *names, fund=1_000).values())
    clock.step = 0
    start = clock.now
    base_supply = node.staking.total_staked()
    staked = [0, 0, 0]
    delegatee: list[int | None] = [None, None, None]
    history: dict[int, list[tuple[int, int]]] = {i: [] for i in range(3)}
    supply: list[tuple[int, int]] = [(start, base_supply)]

    def votes(d: int) -> int:
        return sum(staked[p] for p in range(3) if delegatee[p] == d)

    for op, who, arg in ops:
        if op == "tick":
            clock.now += arg
            continue
        changed: set[int] = set()
        if op == "stake":
            node.staking.stake(names[who], arg, actor=names[who])
            staked[who] += arg
        elif op == "redeem":
            if staked[who] == 0:
                continue
            amount = min(arg, staked[who])
            node.staking.cooldown(names[who], actor=names[who])
            node.staking.redeem(names[who], amount, actor=names[who])
            staked[who] -= amount
        else:
            old = delegatee[who]
            if old == arg:
                continue
            node.staking.delegate(names[who], names[arg], actor=names[who])
            delegatee[who] = arg
            if staked[who]:
                changed.add(arg)
                if old is not None:
                    changed.add(old)
        if op in ("stake", "redeem"):
            supply.append((clock.now, base_supply + sum(staked)))
            if delegatee[who] is not None:
                changed.add(delegatee[who])  # type: ignore[arg-type]
        for d in changed:
            history[d].append((clock.now, votes(d)))
    end = clock.now
    clock.now += 1
    clock.step = 1

    def reference(points: list[tuple[int, int]], t: int, default: int) -> int:
        value = default
        for when, v in points:
            if when <= t:
                value = v
        return value

    for t in range(start - 1, end + 1):
        for d in range(3):
            assert node.staking.get_past_votes(ids[d], t) == reference(history[d], t, 0), (d, t)
        assert node.staking.get_past_total_supply(t) == reference(supply, t, base_supply), t
    assert [node.staking.get_votes(i) for i in ids] == [votes(d) for d in range(3)]
    assert node.staking.audit() == []


def test_past_votes_lookup_is_fast(node: Node, clock: Clock) -> None:
    """The lookup itself (``get_past_votes_in``) on a history of checkpoints: target <= 50 µs on SQLite."""
    ids = people(node, "alice")
    node.staking.delegate("alice", "alice", actor="alice")
    start = clock.now
    for _ in range(60):
        node.staking.stake("alice", 1, actor="alice")
    span = clock.now - start
    clock.now += 10
    samples = []
    with node.store.read() as conn:
        for i in range(1000):
            t = start + (i * 7919) % span
            begin = time.perf_counter_ns()
            node.staking.get_past_votes_in(conn, ids["alice"], t)
            samples.append(time.perf_counter_ns() - begin)
    median_us = statistics.median(samples) / 1000
    print(f"get_past_votes_in median {median_us:.1f} µs ({node.store.backend})")
    # Generous bound for a shared CI machine (measured ~28 µs SQLite, ~95 µs PostgreSQL over loopback).
    assert median_us < (200 if node.store.backend == "sqlite" else 1000)


# --------------------------------------------------------------------------------------------------------------
# cooldown and redeem
# --------------------------------------------------------------------------------------------------------------


def test_cooldown_then_redeem_within_the_window(node: Node, clock: Clock) -> None:
    ids = people(node, "alice", "bob")
    node.staking.stake("alice", 10 * UNIT, actor="alice")
    node.staking.delegate("alice", "alice", actor="alice")
    with pytest.raises(Conflict, match="no cooldown"):
        node.staking.redeem("alice", UNIT, actor="alice")
    size = node.journal.size()
    c = node.staking.cooldown("alice", actor="alice")
    start = c.state.cooldown_start_ms
    assert start is not None
    assert (c.amount, c.state.cooldown_budget, c.state.cooldown_status) == (10 * UNIT, 10 * UNIT, "cooling")
    assert c.state.redeem_opens_ms == start + COOLDOWN_MS and c.state.redeem_closes_ms == start + COOLDOWN_MS + WINDOW_MS
    assert node.journal.event(size).type == "staking.cooldown"
    # Too early: the error says when the window opens and closes.
    clock.now = start + COOLDOWN_MS - 1000
    with pytest.raises(Conflict, match="opens at .* closes at"):
        node.staking.redeem("alice", UNIT, actor="alice")
    # A later stake does not raise the budget (Aave v1.5).
    node.staking.stake("alice", 5 * UNIT, actor="alice")
    assert node.staking.state("alice").cooldown_budget == 10 * UNIT
    clock.now = start + COOLDOWN_MS
    with pytest.raises(Conflict, match="budget") as over:
        node.staking.redeem("alice", 10 * UNIT + 1, actor="alice")
    assert over.value.field == "amount"
    with pytest.raises(PermissionDenied):
        node.staking.redeem("alice", UNIT, actor="bob")
    size = node.journal.size()
    r = node.staking.redeem("alice", 4 * UNIT, actor="alice")
    assert (r.result, r.amount) == ("ok", 4 * UNIT)
    bal = node.tokens.balance("alice")
    assert (bal.available, bal.staked, bal.gopen) == (89 * UNIT, 11 * UNIT, 11 * UNIT)
    event = node.journal.event(size)
    assert event.type == "staking.redeem"
    assert [t["code"] for t in event.data["transfers"]] == [TransferCode.REDEEM, TransferCode.GOPEN_BURN]
    # Votes dropped in the same transaction; the budget went down by the amount.
    assert node.staking.get_votes("alice") == 11 * UNIT
    assert node.staking.state("alice").cooldown_budget == 6 * UNIT
    # Still inside the window (inclusive end): redeem the rest of the budget, which ends the cooldown.
    clock.now = start + COOLDOWN_MS + WINDOW_MS - 1
    node.staking.redeem("alice", 6 * UNIT, actor="alice")
    s = node.staking.state("alice")
    assert (s.staked, s.cooldown_budget, s.cooldown_start_ms, s.cooldown_status) == (5 * UNIT, 0, None, "none")
    with pytest.raises(Conflict, match="no cooldown"):
        node.staking.redeem("alice", UNIT, actor="alice")
    assert node.staking.audit() == []
    assert ids


def test_redeem_after_the_window_is_refused(node: Node, clock: Clock) -> None:
    people(node, "alice")
    node.staking.stake("alice", 10 * UNIT, actor="alice")
    start = node.staking.cooldown("alice", actor="alice").state.cooldown_start_ms
    assert start is not None
    clock.now = start + COOLDOWN_MS + WINDOW_MS + 1
    assert node.staking.state("alice").cooldown_status == "expired"
    with pytest.raises(Conflict, match="closed at .*cooldown"):
        node.staking.redeem("alice", UNIT, actor="alice")
    # A new cooldown restarts the clock with the stake now.
    again = node.staking.cooldown("alice", actor="alice")
    assert again.state.cooldown_start_ms is not None and again.state.cooldown_start_ms > start
    assert node.tokens.balance("alice").staked == 10 * UNIT


def test_cooldown_needs_a_stake(node: Node) -> None:
    people(node, "alice", "bob")
    with pytest.raises(Conflict, match="nothing staked"):
        node.staking.cooldown("alice", actor="alice")
    node.staking.stake("alice", UNIT, actor="alice")
    with pytest.raises(PermissionDenied):
        node.staking.cooldown("alice", actor="bob")
    with pytest.raises(NotFound):
        node.staking.cooldown("mallory", actor="mallory")


def test_redeem_with_an_id_is_idempotent(quick: Node) -> None:
    node = quick
    people(node, "alice")
    node.staking.stake("alice", 10 * UNIT, actor="alice")
    node.staking.cooldown("alice", actor="alice")
    tid = new_transfer_id()
    node.staking.redeem("alice", 3 * UNIT, actor="alice", id=tid)
    again = node.staking.redeem("alice", 3 * UNIT, actor="alice", id=tid)
    assert again.replayed and again.amount == 3 * UNIT
    s = node.staking.state("alice")
    assert (s.staked, s.cooldown_budget) == (7 * UNIT, 7 * UNIT)
    with pytest.raises(TransferRejected) as exc:
        node.staking.redeem("alice", 2 * UNIT, actor="alice", id=tid)
    assert exc.value.result == "exists_with_different_amount"


# --------------------------------------------------------------------------------------------------------------
# rewards
# --------------------------------------------------------------------------------------------------------------


def test_rewards_are_pro_rata_and_round_down_in_favour_of_the_pool(node: Node) -> None:
    people(node, "alice", "bob", "carol")
    assert distribute(node, 1_000) == 0  # nothing staked: nothing allocated, the caller keeps it
    node.staking.stake("alice", 1, actor="alice")
    node.staking.stake("bob", 2, actor="bob")
    assert distribute(node, 10) == 10
    # rpt = 10e18 // 3; alice 1 unit -> 3, bob 2 units -> 6; 1 base unit of dust stays in the pool.
    assert (node.staking.claimable("alice"), node.staking.claimable("bob")) == (3, 6)
    assert node.staking.claimable("alice") + node.staking.claimable("bob") <= pool_balance(node) == 10
    # A stake after a distribution earns nothing from it (settled before the stake changes).
    node.staking.stake("carol", 3, actor="carol")
    assert node.staking.claimable("carol") == 0
    assert distribute(node, 12) == 12  # 6 units staked: 2 per unit
    assert [node.staking.claimable(n) for n in ("alice", "bob", "carol")] == [5, 10, 6]
    assert node.staking.audit() == []
    before = node.tokens.balance("bob").available
    r = node.staking.claim("bob", actor="bob")
    assert (r.result, r.amount) == ("ok", 10)
    assert node.tokens.balance("bob").available == before + 10
    assert node.staking.claim("bob", actor="bob").result == "noop"  # a second claim pays nothing
    assert pool_balance(node) == 22 - 10
    assert node.staking.audit() == []


def test_large_amounts_keep_sum_claimable_within_the_pool(node: Node) -> None:
    people(node, "a", "b", "c", fund=1_000_000 * UNIT)
    for name, amount in (("a", 333_333_333_333), ("b", 7), ("c", 123_456_789)):
        node.staking.stake(name, amount, actor=name)
    for amount in (1, 999_999, 10**12 + 1, 3):
        distribute(node, amount)
        total = sum(node.staking.claimable(n) for n in ("a", "b", "c"))
        assert total <= pool_balance(node)
    assert node.staking.audit() == []


def test_claim_ids_are_derived_and_retries_do_not_pay_twice(node: Node) -> None:
    ids = people(node, "alice", "bob")
    node.staking.stake("alice", 5 * UNIT, actor="alice")
    distribute(node, 100)
    first = node.staking.claim("alice", actor="alice")
    assert first.amount == 100 and first.transfer_id is not None
    distribute(node, 50)
    second = node.staking.claim("alice", actor="alice")
    assert second.amount == 50 and second.transfer_id != first.transfer_id
    assert node.staking.state("alice").claims == 2
    # With a caller-chosen id (HTTP Idempotency-Key): a retry answers the first outcome and pays nothing.
    distribute(node, 40)
    tid = new_transfer_id()
    paid = node.staking.claim("alice", actor="alice", id=tid)
    assert (paid.result, paid.amount) == ("ok", 40)
    distribute(node, 7)
    again = node.staking.claim("alice", actor="alice", id=tid)
    assert (again.result, again.replayed, again.amount) == ("exists", True, 40)
    assert node.staking.claimable("alice") == 7
    with pytest.raises(TransferRejected) as exc:
        node.staking.claim("bob", actor="bob", id=tid)  # someone else's claim id
    assert exc.value.result == "exists_with_different_credit_account_id"
    with pytest.raises(PermissionDenied):
        node.staking.claim("alice", actor="bob")
    assert node.staking.audit() == []
    assert ids


def test_distribute_in_validates_and_is_transactional(node: Node) -> None:
    people(node, "alice")
    node.staking.stake("alice", UNIT, actor="alice")
    with node.store.write() as conn:
        with pytest.raises(InvalidInput):
            node.staking.distribute_in(conn, -1)
    with pytest.raises(RuntimeError):
        with node.store.write() as conn:
            node.staking.distribute_in(conn, 1_000)
            raise RuntimeError("the caller's transfer failed")  # rolls the accumulator back too
    assert node.staking.claimable("alice") == 0


def test_audit_reports_tampered_rows(node: Node, raw_db: RawDB) -> None:
    ids = people(node, "alice")
    node.staking.stake("alice", 5 * UNIT, actor="alice")
    node.staking.delegate("alice", "alice", actor="alice")
    node.staking.cooldown("alice", actor="alice")
    distribute(node, 100)
    assert node.staking.audit() == []
    raw_db.execute("UPDATE staking_stakers SET staked = staked + 1, cooldown_budget = staked + 5")
    raw_db.execute("UPDATE staking_state SET reward_per_token = ?", (str(10**6 * RPT_SCALE),))
    problems = node.staking.audit()
    text = "\n".join(problems)
    assert ids["alice"] in text
    for fragment in ("STAKED", "total gOPEN", "budget", "votes", "claimable"):
        assert fragment in text, problems


def test_concurrent_stakes_delegations_distributions_and_claims(quick: Node) -> None:
    """Threads staking, redeeming, delegating to one hot delegatee, distributing and claiming at once: no lost
    update, no deadlock (PostgreSQL: the documented lock order), every invariant holds afterwards."""
    node = quick
    names = [f"t{i}" for i in range(4)]
    people(node, *names, "hub")
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            node.staking.delegate(name, "hub", actor=name)
            for _ in range(4):
                node.staking.stake(name, 3 * UNIT, actor=name)
                distribute(node, 1_000)
                node.staking.claim(name, actor=name)
            node.staking.cooldown(name, actor=name)
            node.staking.redeem(name, 2 * UNIT, actor=name)
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert node.staking.get_votes("hub") == 4 * 10 * UNIT == node.staking.total_staked()
    assert node.staking.audit() == []


# --------------------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def http(node: Node) -> Iterator[tuple[TestClient, dict[str, str]]]:
    keys = {}
    for name in ("alice", "bob"):
        acct, key = node.accounts.create(name)
        assert key is not None
        keys[name] = key
        node.tokens.faucet(name, 100 * UNIT, actor=node.operator())
    with TestClient(create_app(node)) as client:
        yield client, keys


def _auth(key: str, idem: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return headers


def _error(resp: Any, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_, body
    assert "\n" not in body["error"]["message"] and "Traceback" not in resp.text
    return body["error"]


def test_http_stake_with_idempotency_key(node: Node, http: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = http
    alice = _auth(keys["alice"], "k-1")
    r = client.post("/v1/staking/stake", json={"amount": "12.5"}, headers=alice)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["result"], body["replayed"], body["amount"]) == ("ok", False, {"amount": "12.5", "units": 12_500_000})
    assert body["state"]["staked"]["amount"] == "12.5"
    replay = client.post("/v1/staking/stake", json={"amount": "12.5"}, headers=alice)
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["transfer_id"] == body["transfer_id"]
    assert node.tokens.balance("alice").staked == 12_500_000
    reused = client.post("/v1/staking/stake", json={"amount": "13"}, headers=alice)
    err = _error(reused, 422, "idempotency_key_reused")
    assert err["field"] == "Idempotency-Key"
    # The same key from another caller is another request (the id includes the caller).
    bob = client.post("/v1/staking/stake", json={"amount": "1"}, headers=_auth(keys["bob"], "k-1"))
    assert bob.status_code == 200 and bob.json()["replayed"] is False
    missing = client.post("/v1/staking/stake", json={"amount": "1"}, headers=_auth(keys["alice"]))
    assert _error(missing, 400, "idempotency_key_missing")["field"] == "Idempotency-Key"
    for path in ("/v1/staking/redeem", "/v1/staking/claim"):
        _error(client.post(path, json={"amount": "1"} if "redeem" in path else None, headers=_auth(keys["alice"])),
               400, "idempotency_key_missing")
    _error(client.post("/v1/staking/stake", json={"amount": "1"}, headers={"Idempotency-Key": "x"}), 401,
           "authentication_error")
    assert node.tokens.balance("alice").staked == 12_500_000


def test_http_bad_amounts_are_422(node: Node, http: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = http
    size = node.journal.size()
    for i, amount in enumerate(["0", "-1", "1.1234567", "1e3", 1.5, "", True, None]):
        for path in ("/v1/staking/stake", "/v1/staking/redeem"):
            r = client.post(path, json={"amount": amount}, headers=_auth(keys["alice"], f"bad-{i}"))
            err = _error(r, 422, "invalid_input")
            assert err["field"] == "amount", (amount, err)
    _error(client.post("/v1/staking/stake", json={}, headers=_auth(keys["alice"], "none")), 422, "invalid_input")
    _error(client.post("/v1/staking/stake", json={"amount": "1", "extra": 1}, headers=_auth(keys["alice"], "x")),
           422, "invalid_input")
    assert node.journal.size() == size


def test_http_insufficient_funds_cooldown_redeem_delegate_claim(node: Node, clock: Clock,
                                                                 http: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = http
    a = keys["alice"]
    _error(client.post("/v1/staking/stake", json={"amount": "1000"}, headers=_auth(a, "big")), 402, "insufficient_funds")
    assert client.post("/v1/staking/stake", json={"amount": "10"}, headers=_auth(a, "s1")).status_code == 200
    d = client.post("/v1/staking/delegate", json={"delegatee": "alice"}, headers=_auth(a))
    assert d.status_code == 200 and d.json()["state"]["votes"]["amount"] == "10"
    _error(client.post("/v1/staking/delegate", json={"delegatee": "mallory"}, headers=_auth(a)), 404, "not_found")
    _error(client.post("/v1/staking/redeem", json={"amount": "1"}, headers=_auth(a, "r0")), 409, "conflict")
    c = client.post("/v1/staking/cooldown", headers=_auth(a))
    assert c.status_code == 200 and c.json()["state"]["cooldown"]["status"] == "cooling"
    early = _error(client.post("/v1/staking/redeem", json={"amount": "1"}, headers=_auth(a, "r1")), 409, "conflict")
    assert "opens at" in early["message"]
    clock.now += COOLDOWN_MS
    r = client.post("/v1/staking/redeem", json={"amount": "4"}, headers=_auth(a, "r2"))
    assert r.status_code == 200 and r.json()["state"]["staked"]["amount"] == "6"
    distribute(node, 60)
    cl = client.post("/v1/staking/claim", headers=_auth(a, "c1"))
    assert cl.status_code == 200 and cl.json()["amount"]["units"] == 60
    distribute(node, 6)
    again = client.post("/v1/staking/claim", headers=_auth(a, "c1"))
    assert again.status_code == 200 and again.json()["replayed"] is True and again.json()["amount"]["units"] == 60
    state = client.get("/v1/staking/alice")
    assert state.status_code == 200
    assert (state.json()["claimable"]["units"], state.json()["claims"]) == (6, 1)
    _error(client.get("/v1/staking/mallory"), 404, "not_found")
    t = clock.now
    clock.now += 5
    v = client.get("/v1/staking/alice/votes", params={"at": t})
    assert v.status_code == 200 and v.json()["votes"]["amount"] == "6" and v.json()["total_supply"]["amount"] == "6"
    assert client.get("/v1/staking/alice/votes").json()["votes"]["amount"] == "6"
    _error(client.get("/v1/staking/alice/votes", params={"at": clock.now + 10**6}), 422, "invalid_input")


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------



def test_cli_staking_commands_with_json(quick: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node = quick
    ids = people(node, "alice", "bob")
    home = str(node.home)
    code, out, err = cli(capsys, "stake", "alice", "12.5", "--home", home, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["operation"], doc["result"], doc["amount"]["amount"]) == ("stake", "ok", "12.5")
    assert doc["state"]["gopen"]["units"] == 12_500_000
    code, out, _ = cli(capsys, "delegate", "alice", "bob", "--home", home, "--json")
    assert code == 0 and json.loads(out)["state"]["delegatee"] == ids["bob"]
    code, out, _ = cli(capsys, "votes", "bob", "--home", home, "--json")
    votes = json.loads(out)
    assert code == 0 and votes["votes"]["amount"] == "12.5" and votes["account"] == ids["bob"]
    code, out, _ = cli(capsys, "votes", "bob", "--at", "1", "--home", home, "--json")
    assert code == 0 and json.loads(out)["votes"]["units"] == 0 and json.loads(out)["at_ms"] == 1
    code, out, _ = cli(capsys, "cooldown", "alice", "--home", home, "--json")
    assert code == 0 and json.loads(out)["state"]["cooldown"]["budget"]["amount"] == "12.5"
    code, out, _ = cli(capsys, "redeem", "alice", "2.5", "--home", home, "--json")
    assert code == 0 and json.loads(out)["state"]["staked"]["amount"] == "10"
    code, out, err = cli(capsys, "votes", "bob", "--at", "99999999999999", "--home", home, "--json")
    assert code == 1 and "not in the past" in err and json.loads(out)["error"]["field"] == "timepoint"
    code, out, _ = cli(capsys, "claim", "alice", "--home", home, "--json")
    assert code == 0 and json.loads(out)["result"] == "noop"
    code, out, _ = cli(capsys, "stake", "alice", "1", "--home", home)
    assert code == 0 and out.startswith("staked 1 OPEN") and "gOPEN" in out


REFUSALS = [
    (("stake", "alice", "0"), "more than zero"),
    (("stake", "alice", "-1"), "not an amount"),
    (("stake", "alice", "1.1234567"), "at most 6 decimals"),
    (("stake", "alice", "1000"), "not enough"),
    (("stake", "mallory", "1"), "no account 'mallory'"),
    (("redeem", "alice", "1"), "no cooldown"),
    (("cooldown", "bob"), "nothing staked"),
    (("delegate", "alice", "treasury"), "system account"),
]


def test_cli_refusals_are_one_line(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    people(node, "alice", "bob")
    node.staking.stake("alice", UNIT, actor="alice")
    for args, fragment in REFUSALS:
        # Options first and "--" before the arguments, so "-1" is an argument, not an option.
        code, out, err = cli(capsys, args[0], "--home", str(node.home), "--json", "--", *args[1:])
        assert code == 1, (args, out, err)
        assert err.startswith("royalty: error: ") and err.count("\n") == 1 and fragment in err, (args, err)
        assert "error" in json.loads(out)
    assert node.tokens.balance("alice").staked == UNIT
