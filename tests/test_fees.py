"""Inference fees (``node.fees``): reserve → settle (one linked chain, split by governed basis points) / void /
expiry, with exact hand-computed amounts, idempotent retries, authorization, Params changes, the audit; and the
protocol fees (datanet publishing, adapter registration). Both backends; a Hypothesis property for the split."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Clock, RawDB
from royalty import Node
from royalty.errors import Conflict, InsufficientFunds, InvalidInput, NotFound, PermissionDenied, TransferRejected
from royalty.ledger.amounts import UNIT
from royalty.ledger.chart import AccountCode, TransferCode, system_account_id, transfer_id
from royalty.ledger.fees import FeeRecipients, split_fee
from royalty.ledger.params import Params

U = UNIT


def people(node: Node, *names: str) -> dict[str, str]:
    """Create participants; name → account id."""
    return {n: node.accounts.create(n, actor=node.operator())[0].id for n in names}


def avail(node: Node, name: str) -> int:
    return node.tokens.balance(name).available


def system(node: Node, code: AccountCode) -> int:
    return node.ledger.balance(system_account_id(code)).posted


def snapshot(node: Node, *names: str) -> dict[str, Any]:
    """Everything a refused call must leave as it was."""
    return {
        "journal": node.journal.size(),
        "people": {n: node.tokens.balance(n) for n in names},
        "system": {c: node.ledger.balance(system_account_id(c)) for c in
                   (AccountCode.TREASURY, AccountCode.FEE_ESCROW, AccountCode.STAKER_POOL, AccountCode.DUST)},
    }


@pytest.fixture
def world(node: Node) -> tuple[Node, str]:
    """payer (100 OPEN), owner, c1..c3; returns (node, operator id)."""
    op = node.operator()
    people(node, "payer", "owner", "c1", "c2", "c3", "stranger")
    node.tokens.faucet("payer", 100 * U, actor=op)
    return node, op


# --------------------------------------------------------------------------------------------------------------
# reserve, settle: exact amounts
# --------------------------------------------------------------------------------------------------------------


def test_reserve_then_settle_splits_exactly(world: tuple[Node, str]) -> None:
    node, op = world
    treasury0, dust0 = system(node, AccountCode.TREASURY), system(node, AccountCode.DUST)
    r = node.fees.reserve_fee("req-1", "payer", 10 * U, actor=op)
    assert (r.state, r.amount, r.timeout_s) == ("pending", 10 * U, Params().fee_timeout_s)
    assert r.expires_ms == r.created_ms + 600_000
    assert node.tokens.balance("payer").available == 90 * U and node.tokens.balance("payer").reserved == 10 * U
    assert node.journal.event(r.event_seq).type == "fees.reserve"

    # 7.000003 OPEN at 10/40/10/40 %: treasury 0.7, owner 2.800001, stakers 0.7, contributors 2.800001; the floors
    # leave 1 unit → treasury. Nothing is staked, so the stakers' 0.7 goes to the treasury too. Contributors 2:1:
    # 1.866667 + 0.933333, the 1 unit left over goes to DUST.
    s = node.fees.settle_fee("req-1", 7_000_003, FeeRecipients("owner", {"c1": 2, "c2": 1}, receipt_id="rcpt_1",
                                                               adapter_id="adp_1"), actor=op)
    assert (s.amount, s.reserved, s.refunded) == (7_000_003, 10 * U, 2_999_997)
    assert (s.treasury, s.owner_amount, s.stakers, s.contributors, s.dust) == (1_400_001, 2_800_001, 0, 2_800_000, 1)
    ids = {n: node.accounts.get(n).id for n in ("owner", "c1", "c2")}
    assert [(leg.role, leg.account, leg.weight, leg.amount) for leg in s.legs] == [
        ("owner", ids["owner"], 0, 2_800_001),
        *sorted([("contributor", ids["c1"], 2, 1_866_667), ("contributor", ids["c2"], 1, 933_333)], key=lambda x: x[1]),
    ]
    assert avail(node, "payer") == 100 * U - 7_000_003 and node.tokens.balance("payer").reserved == 0
    assert (avail(node, "owner"), avail(node, "c1"), avail(node, "c2")) == (2_800_001, 1_866_667, 933_333)
    assert system(node, AccountCode.TREASURY) - treasury0 == 1_400_001
    assert system(node, AccountCode.DUST) - dust0 == 1
    assert system(node, AccountCode.FEE_ESCROW) == 0 and system(node, AccountCode.STAKER_POOL) == 0
    event = node.journal.event(s.event_seq)
    assert event.type == "fees.settle" and event.data["request_id"] == "req-1" and event.data["receipt_id"] == "rcpt_1"
    assert [t["result"] for t in event.data["transfers"]] == ["ok"] * 6  # post, treasury, owner, 2 contributors, dust
    assert event.data["transfers"][0]["id"] == format(transfer_id("fee", "req-1", "post"), "032x")
    assert node.fees.settlement("req-1") == s
    assert node.fees.reservation("req-1").state == "posted"
    assert node.fees.audit() == []


def test_stakers_share_goes_to_the_staker_pool_when_something_is_staked(world: tuple[Node, str]) -> None:
    node, op = world
    people(node, "staker")
    node.tokens.faucet("staker", 1_000 * U, actor=op)
    node.staking.stake("staker", 1_000 * U, actor="staker")
    node.fees.reserve_fee("req-s", "payer", 10 * U, actor=op)
    s = node.fees.settle_fee("req-s", 7_000_003, FeeRecipients("owner", {"c1": 1}), actor=op)
    assert (s.treasury, s.owner_amount, s.stakers, s.contributors, s.dust) == (700_001, 2_800_001, 700_000, 2_800_001, 0)
    assert system(node, AccountCode.STAKER_POOL) == 700_000
    assert node.staking.claimable("staker") == 700_000
    assert node.fees.audit() == []


def test_a_one_unit_fee_goes_to_the_treasury(world: tuple[Node, str]) -> None:
    node, op = world
    treasury0 = system(node, AccountCode.TREASURY)
    node.fees.reserve_fee("tiny", "payer", 5, actor=op)
    s = node.fees.settle_fee("tiny", 1, FeeRecipients("owner", {"c1": 1, "c2": 1}), actor=op)
    assert (s.treasury, s.owner_amount, s.stakers, s.contributors, s.dust) == (1, 0, 0, 0, 0)
    assert [leg.amount for leg in s.legs] == [0, 0, 0] and all(leg.transfer_id is None for leg in s.legs)
    assert [t["result"] for t in node.journal.event(s.event_seq).data["transfers"]] == ["ok", "ok"]  # post, treasury
    assert system(node, AccountCode.TREASURY) - treasury0 == 1 and avail(node, "payer") == 100 * U - 1
    assert node.fees.audit() == []


def test_rounding_dust_with_three_equal_contributors(world: tuple[Node, str]) -> None:
    node, op = world
    node.fees.reserve_fee("r100", "payer", 100, actor=op)
    # 100 units: treasury 10, owner 40, stakers 10 (→ treasury), pool 40 → 13 each, 1 unit of dust.
    s = node.fees.settle_fee("r100", 100, FeeRecipients("owner", {"c1": 7, "c2": 7, "c3": 7}), actor=op)
    assert (s.treasury, s.owner_amount, s.contributors, s.dust) == (20, 40, 39, 1)
    assert [avail(node, c) for c in ("c1", "c2", "c3")] == [13, 13, 13]


def test_owner_who_is_also_a_contributor_gets_both_legs(world: tuple[Node, str]) -> None:
    node, op = world
    node.fees.reserve_fee("both", "payer", 10 * U, actor=op)
    s = node.fees.settle_fee("both", 10 * U, FeeRecipients("owner", {"owner": 1, "c1": 1}), actor=op)
    assert (s.treasury, s.owner_amount, s.contributors, s.dust) == (2 * U, 4 * U, 4 * U, 0)
    assert avail(node, "owner") == 6 * U and avail(node, "c1") == 2 * U
    roles = sorted((leg.role, leg.amount) for leg in s.legs if leg.account == node.accounts.get("owner").id)
    assert roles == [("contributor", 2 * U), ("owner", 4 * U)]
    assert node.fees.audit() == []


def test_a_contributor_with_weight_zero_gets_nothing_and_no_weights_send_the_pool_to_the_treasury(
    world: tuple[Node, str],
) -> None:
    node, op = world
    node.fees.reserve_fee("w0", "payer", 10 * U, actor=op)
    s = node.fees.settle_fee("w0", 10 * U, FeeRecipients("owner", {"c1": 0, "c2": 5}), actor=op)
    assert s.contributors == 4 * U and avail(node, "c2") == 4 * U and avail(node, "c1") == 0
    assert [leg.role for leg in s.legs] == ["owner", "contributor"]  # c1 has no row: it was not paid
    assert node.rewards.earnings("c1").fees == []

    treasury0 = system(node, AccountCode.TREASURY)
    node.fees.reserve_fee("nobody", "payer", 10 * U, actor=op)
    s2 = node.fees.settle_fee("nobody", 10 * U, FeeRecipients("owner", {"c1": 0}), actor=op)
    assert (s2.treasury, s2.owner_amount, s2.contributors, s2.dust) == (6 * U, 4 * U, 0, 0)
    assert system(node, AccountCode.TREASURY) - treasury0 == 6 * U
    node.fees.reserve_fee("empty", "payer", 10 * U, actor=op)
    assert node.fees.settle_fee("empty", 10 * U, FeeRecipients("owner"), actor=op).treasury == 6 * U


# --------------------------------------------------------------------------------------------------------------
# idempotency
# --------------------------------------------------------------------------------------------------------------


def test_every_call_is_idempotent(world: tuple[Node, str]) -> None:
    node, op = world
    r1 = node.fees.reserve_fee("idem", "payer", 10 * U, actor=op)
    size = node.journal.size()
    assert node.fees.reserve_fee("idem", "payer", 10 * U, actor=op) == r1
    # The core answers `exists` to the retry; its event records that and nothing moves.
    assert node.journal.event(size).data["transfers"][0]["result"] == "exists"
    assert node.tokens.balance("payer").reserved == 10 * U
    with pytest.raises(TransferRejected) as info:
        node.fees.reserve_fee("idem", "payer", 11 * U, actor=op)
    assert info.value.result == "exists_with_different_amount"

    recipients = FeeRecipients("owner", {"c1": 3, "c2": 1}, receipt_id="rcpt_9")
    s1 = node.fees.settle_fee("idem", 5 * U, recipients, actor=op)
    before = snapshot(node, "payer", "owner", "c1", "c2")
    assert node.fees.settle_fee("idem", 5 * U, recipients, actor=op) == s1
    assert node.fees.settle_fee("idem", 5 * U, FeeRecipients("owner", {"c2": 1, "c1": 3}, receipt_id="rcpt_9"),
                                actor=op) == s1  # the order of the weights does not matter
    assert snapshot(node, "payer", "owner", "c1", "c2") == before
    for other in (FeeRecipients("owner", {"c1": 1}, receipt_id="rcpt_9"), recipients):
        amount = 5 * U if other is not recipients else 4 * U
        with pytest.raises(Conflict, match="already settled with other arguments"):
            node.fees.settle_fee("idem", amount, other, actor=op)
    assert snapshot(node, "payer", "owner", "c1", "c2") == before
    # A retry after governance changed the default timeout is still the same reservation.
    node.ledger.transaction(lambda conn: node.params.set_in(conn, {"fee_timeout_s": 60}, reason="test: governance"))
    assert node.fees.reserve_fee("idem", "payer", 10 * U, actor=op).transfer_id == r1.transfer_id
    # A reservation that was settled answers with its new state.
    assert node.fees.reserve_fee("idem", "payer", 10 * U, actor=op).state == "posted"

    node.fees.reserve_fee("idem-void", "payer", 3 * U, actor=op)
    v1 = node.fees.void_fee("idem-void", actor=op)
    assert v1.state == "voided" and node.fees.void_fee("idem-void", actor=op) == v1
    assert node.tokens.balance("payer").reserved == 0


def test_concurrent_settles_of_one_request_settle_it_once(world: tuple[Node, str]) -> None:
    import threading

    node, op = world
    people(node, "staker")
    node.tokens.faucet("staker", 100 * U, actor=op)
    node.staking.stake("staker", 100 * U, actor="staker")
    recipients = FeeRecipients("owner", {"c1": 1, "c2": 2})
    for i in range(3):
        node.fees.reserve_fee(f"race-{i}", "payer", 10 * U, actor=op)
        barrier, out, errors = threading.Barrier(3), [], []

        def settle(i: int = i) -> None:
            barrier.wait()
            try:
                out.append(node.fees.settle_fee(f"race-{i}", 9 * U, recipients, actor=op))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=settle) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(out) == 3 and out[0] == out[1] == out[2]
    assert avail(node, "payer") == 100 * U - 27 * U
    assert system(node, AccountCode.STAKER_POOL) == 3 * 900_000 == node.staking.claimable("staker")
    assert node.fees.audit() == [] and node.staking.audit() == []


def test_concurrent_fee_traffic_with_new_recipients_and_stakes(world: tuple[Node, str]) -> None:
    """Reserves, settles to recipients who have no ledger accounts yet, voids and stakes at once: no deadlock on
    PostgreSQL (opening accounts happens in its own transaction, before the settlement locks any) and every
    audit holds."""
    import threading

    node, op = world
    fresh = [f"new{k}-{i}" for k in range(3) for i in range(12)]
    people(node, "staker", *fresh)
    node.tokens.faucet("staker", 100 * U, actor=op)
    errors: list[BaseException] = []

    def fees(k: int) -> None:
        try:
            for i in range(12):
                rid = f"mix-{k}-{i}"
                node.fees.reserve_fee(rid, "payer", 1 * U, actor=op)
                if i % 4 == 3:
                    node.fees.void_fee(rid, actor=op)
                else:
                    node.fees.settle_fee(rid, 700_001, FeeRecipients(f"new{k}-{i}", {"c1": 1, f"new{(k + 1) % 3}-{i}": 2}),
                                         actor=op)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def stakes() -> None:
        try:
            for _ in range(10):
                node.staking.stake("staker", 1 * U, actor="staker")
                node.staking.claim("staker", actor="staker")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fees, args=(k,)) for k in range(3)] + [threading.Thread(target=stakes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert node.fees.audit() == [] and node.staking.audit() == []


def test_settle_after_void_or_settle_and_void_after_settle_are_refused(world: tuple[Node, str]) -> None:
    node, op = world
    node.fees.reserve_fee("v", "payer", 10 * U, actor=op)
    node.fees.void_fee("v", actor=op)
    assert avail(node, "payer") == 100 * U
    before = snapshot(node, "payer", "owner")
    with pytest.raises(Conflict, match="was voided"):
        node.fees.settle_fee("v", 1 * U, FeeRecipients("owner"), actor=op)
    assert snapshot(node, "payer", "owner") == before

    node.fees.reserve_fee("s", "payer", 10 * U, actor=op)
    node.fees.settle_fee("s", 1 * U, FeeRecipients("owner"), actor=op)
    with pytest.raises(Conflict, match="already settled"):
        node.fees.void_fee("s", actor=op)
    with pytest.raises(NotFound, match="no fee is reserved"):
        node.fees.settle_fee("never", 1, FeeRecipients("owner"), actor=op)
    with pytest.raises(NotFound):
        node.fees.void_fee("never", actor=op)


def test_expiry_on_the_ledger_clock(world: tuple[Node, str], clock: Clock) -> None:
    node, op = world
    r = node.fees.reserve_fee("late", "payer", 10 * U, timeout_s=5, actor=op)
    assert r.expires_ms == r.created_ms + 5_000
    clock.now += 4_000
    assert node.fees.reservation("late").state == "pending"
    clock.now += 2_000
    assert node.fees.reservation("late").state == "expired"
    before = snapshot(node, "payer", "owner")
    with pytest.raises(Conflict, match="expired"):
        node.fees.settle_fee("late", 1 * U, FeeRecipients("owner"), actor=op)
    with pytest.raises(Conflict, match="expired"):
        node.fees.void_fee("late", actor=op)
    assert snapshot(node, "payer", "owner") == before
    assert node.ledger.expire_pending(actor=op) == [r.transfer_id]
    assert node.tokens.balance("payer").reserved == 0 and avail(node, "payer") == 100 * U
    assert node.fees.reservation("late").state == "expired"


def test_actual_above_the_reservation_changes_nothing(world: tuple[Node, str]) -> None:
    node, op = world
    node.fees.reserve_fee("big", "payer", 10 * U, actor=op)
    before = snapshot(node, "payer", "owner", "c1")
    with pytest.raises(Conflict, match="exceeds the 10 OPEN reserved"):
        node.fees.settle_fee("big", 10 * U + 1, FeeRecipients("owner", {"c1": 1}), actor=op)
    assert snapshot(node, "payer", "owner", "c1") == before
    assert node.fees.reservation("big").state == "pending"


def test_insufficient_funds_leave_nothing_behind(world: tuple[Node, str], raw_db: RawDB) -> None:
    node, op = world
    before = snapshot(node, "payer")
    with pytest.raises(InsufficientFunds) as info:
        node.fees.reserve_fee("poor", "payer", 100 * U + 1, actor=op)
    assert info.value.status == 402 and "reserving 100.000001 OPEN" in info.value.message
    assert snapshot(node, "payer") == before
    assert raw_db.one("SELECT COUNT(*) FROM ledger_pending") == 0
    assert raw_db.one("SELECT COUNT(*) FROM ledger_failures") == 0
    # Nothing was burnt: the same request id works once the payer can afford it.
    node.tokens.faucet("payer", 1, actor=op)
    assert node.fees.reserve_fee("poor", "payer", 100 * U + 1, actor=op).state == "pending"


# --------------------------------------------------------------------------------------------------------------
# authorization and input
# --------------------------------------------------------------------------------------------------------------


def test_only_an_admin_or_the_payer_moves_a_fee(world: tuple[Node, str]) -> None:
    node, op = world
    with pytest.raises(PermissionDenied):
        node.fees.reserve_fee("a1", "payer", 1 * U, actor="stranger")
    mine = node.fees.reserve_fee("a1", "payer", 1 * U, actor="payer")
    assert mine.payer == node.accounts.get("payer").id
    before = snapshot(node, "payer", "owner")
    with pytest.raises(PermissionDenied):
        node.fees.settle_fee("a1", 1 * U, FeeRecipients("stranger"), actor="stranger")
    with pytest.raises(PermissionDenied):
        node.fees.void_fee("a1", actor="owner")
    assert snapshot(node, "payer", "owner") == before
    assert node.fees.void_fee("a1", actor="payer").state == "voided"
    node.fees.reserve_fee("a2", "payer", 1 * U, actor=op)
    assert node.fees.settle_fee("a2", 1 * U, FeeRecipients("owner"), actor="payer").amount == 1 * U


@pytest.mark.parametrize("call, error, says", [
    (lambda f, op: f.reserve_fee("", "payer", 1, actor=op), InvalidInput, "request_id"),
    (lambda f, op: f.reserve_fee("has space", "payer", 1, actor=op), InvalidInput, "request_id"),
    (lambda f, op: f.reserve_fee("x" * 129, "payer", 1, actor=op), InvalidInput, "request_id"),
    (lambda f, op: f.reserve_fee("r", "payer", 0, actor=op), InvalidInput, "max_amount"),
    (lambda f, op: f.reserve_fee("r", "payer", 1.5, actor=op), InvalidInput, "max_amount"),
    (lambda f, op: f.reserve_fee("r", "payer", 1, timeout_s=0, actor=op), InvalidInput, "timeout_s"),
    (lambda f, op: f.reserve_fee("r", "treasury", 1, actor=op), InvalidInput, "system account"),
    (lambda f, op: f.reserve_fee("r", "nobody", 1, actor=op), NotFound, "not an account"),
    (lambda f, op: f.settle_fee("held", 0, FeeRecipients("owner"), actor=op), InvalidInput, "actual_amount"),
    (lambda f, op: f.settle_fee("held", 1, FeeRecipients("owner", {"c1": -1}), actor=op), InvalidInput, "weight"),
    (lambda f, op: f.settle_fee("held", 1, FeeRecipients("owner", {"c1": True}), actor=op), InvalidInput, "weight"),
    (lambda f, op: f.settle_fee("held", 1, FeeRecipients("owner", {"ghost": 1}), actor=op), NotFound, "ghost"),
    (lambda f, op: f.settle_fee("held", 1, FeeRecipients("rewards"), actor=op), InvalidInput, "system account"),
    (lambda f, op: f.settle_fee("held", 1, FeeRecipients("owner", receipt_id="bad id"), actor=op), InvalidInput,
     "receipt_id"),
    (lambda f, op: f.settle_fee("held", 1, FeeRecipients("owner", {"c1": 1, f.accounts.get("c1").id: 1}), actor=op),
     InvalidInput, "listed twice"),
    (lambda f, op: f.settle_fee("held", 1, {"owner": "owner"}, actor=op), InvalidInput, "FeeRecipients"),
])
def test_bad_input_is_refused_with_one_clear_line(world: tuple[Node, str], call: Any, error: type, says: str) -> None:
    node, op = world
    node.fees.reserve_fee("held", "payer", 5 * U, actor=op)
    before = snapshot(node, "payer", "owner", "c1")
    with pytest.raises(error) as info:
        call(node.fees, op)
    assert says in info.value.message and "\n" not in info.value.message
    assert snapshot(node, "payer", "owner", "c1") == before


# --------------------------------------------------------------------------------------------------------------
# governed Params
# --------------------------------------------------------------------------------------------------------------


def test_a_params_change_applies_to_the_next_settlement_only(world: tuple[Node, str]) -> None:
    node, op = world
    node.fees.reserve_fee("p1", "payer", 10 * U, actor=op)
    node.fees.reserve_fee("p2", "payer", 10 * U, actor=op)
    first = node.fees.settle_fee("p1", 10 * U, FeeRecipients("owner", {"c1": 1}), actor=op)
    assert (first.owner_amount, first.contributors) == (4 * U, 4 * U)
    # What governance's execute does: Params.set_in inside a transaction.
    node.ledger.transaction(lambda conn: node.params.set_in(
        conn, {"fee_owner_bps": 5_000, "fee_contributors_bps": 3_000}, reason="test: governance"))
    second = node.fees.settle_fee("p2", 10 * U, FeeRecipients("owner", {"c1": 1}), actor=op)
    assert (second.treasury, second.owner_amount, second.contributors) == (2 * U, 5 * U, 3 * U)
    assert second.params_seq > first.params_seq
    assert node.fees.settlement("p1") == first  # settled is settled
    assert node.fees.settle_fee("p1", 10 * U, FeeRecipients("owner", {"c1": 1}), actor=op) == first


# --------------------------------------------------------------------------------------------------------------
# protocol fees
# --------------------------------------------------------------------------------------------------------------


def _datanet_with(node: Node, owner: str, n: int, slug: str = "corpus") -> None:
    node.datanets.create(slug, title="Corpus", kind="text", licenses=["CC-BY-4.0"], policy="open", owner=owner)
    node.datanets.contribute_records(slug, [{"text": f"record {i}"} for i in range(n)], contributor=owner)


def test_publishing_charges_the_default_fee_once(world: tuple[Node, str]) -> None:
    node, op = world
    people(node, "curator")
    node.tokens.faucet("curator", 5 * U, actor=op)
    _datanet_with(node, "curator", 3)
    treasury0 = system(node, AccountCode.TREASURY)
    v1 = node.datanets.publish("corpus", actor="curator")
    fee = Params().publish_fee(3)
    assert fee == 1_100_000  # 1 OPEN + 0.1 OPEN per started 1,000 contributions
    assert avail(node, "curator") == 5 * U - fee and system(node, AccountCode.TREASURY) - treasury0 == fee
    charged = node.journal.event(v1.created_seq - 1)
    assert charged.type == "ledger.fee" and charged.data["datanet"] == v1.datanet_id and charged.data["version"] == 1
    assert charged.data["transfers"][0]["code"] == int(TransferCode.PUBLISH_FEE)
    # Publishing the same content again is refused, and not charged.
    with pytest.raises(Conflict, match="nothing changed"):
        node.datanets.publish("corpus", actor="curator")
    assert avail(node, "curator") == 5 * U - fee
    # The charge itself is idempotent per (datanet, version).
    curator = node.accounts.get("curator").id
    again = node.ledger.transaction(lambda conn: node.fees.charge_publish_fee_in(
        conn, curator, v1.datanet_id, 1, 3, actor=curator))
    assert again == fee and avail(node, "curator") == 5 * U - fee
    # Version 2 (1,001 contributions) costs 1 + 2 × 0.1.
    node.datanets.contribute_records("corpus", [{"text": f"more {i}"} for i in range(998)], contributor="curator")
    node.tokens.faucet("curator", 2 * U, actor=op)
    node.datanets.publish("corpus", actor="curator")
    assert avail(node, "curator") == 7 * U - fee - 1_200_000


def test_publishing_without_funds_is_a_402_and_publishes_nothing(world: tuple[Node, str], raw_db: RawDB) -> None:
    node, _op = world
    people(node, "broke")
    _datanet_with(node, "broke", 2)
    size = node.journal.size()
    with pytest.raises(InsufficientFunds) as info:
        node.datanets.publish("corpus", actor="broke")
    assert info.value.status == 402 and "publishing version 1" in info.value.message
    assert "\n" not in info.value.message
    assert node.datanets.versions("corpus") == [] and node.journal.size() == size
    assert raw_db.one("SELECT COUNT(*) FROM datanet_version_members") == 0


def test_publishing_without_funds_over_http_and_the_cli(world: tuple[Node, str], tmp_path: Any,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from api_server import LiveServer

    from royalty.api import create_app
    from royalty.cli import main

    node, op = world
    _, key = node.accounts.create("web-broke", actor=op)
    _datanet_with(node, "web-broke", 2)
    with LiveServer(create_app(node)) as server, server.client(key) as client:
        response = client.post("/v1/datanets/corpus/versions")
        assert response.status_code == 402, response.text
        error = response.json()["error"]
        assert error["type"] == "insufficient_funds" and error["result"] == "exceeds_credits"
        assert "publishing version 1" in error["message"] and "faucet" in error["message"]
    assert node.datanets.versions("corpus") == []

    home = tmp_path / "cli"
    for args in (["init", "--home", str(home)], ["account", "create", "cli-broke", "--home", str(home)],
                 ["datanet", "create", "c", "--title", "C", "--kind", "text", "--license", "CC-BY-4.0", "--policy",
                  "open", "--as", "cli-broke", "--home", str(home)]):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert not done.value.code, capsys.readouterr()
    import royalty

    with royalty.open_node(home) as cli_node:
        cli_node.datanets.contribute_records("c", [{"text": "one"}], contributor="cli-broke")
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["datanet", "publish", "c", "--as", "cli-broke", "--home", str(home)])
    err = capsys.readouterr().err
    assert done.value.code == 1 and err.startswith("royalty: error: publishing version 1") and err.count("\n") == 1


def test_free_publishing_through_genesis_params(tmp_path: Any, database_url: str | None) -> None:
    import royalty

    node, _ = royalty.init_node(tmp_path / "free", database_url=database_url,
                                params={"publish_fee_base": 0, "publish_fee_per_1k": 0})
    with node:
        people(node, "broke")
        _datanet_with(node, "broke", 2)
        size = node.journal.size()
        node.datanets.publish("corpus", actor="broke")
        assert node.journal.size() == size + 1  # no ledger.fee event, only datanet.published


def test_adapter_registration_fee(world: tuple[Node, str]) -> None:
    node, op = world
    owner = node.accounts.get("owner").id
    node.tokens.faucet("owner", 15 * U, actor=op)
    treasury0 = system(node, AccountCode.TREASURY)
    for _ in range(2):  # charged once per adapter id
        fee = node.ledger.transaction(lambda conn: node.fees.charge_adapter_registration_in(
            conn, owner, "adp_one", actor=owner))
        assert fee == 10 * U
    assert avail(node, "owner") == 5 * U and system(node, AccountCode.TREASURY) - treasury0 == 10 * U
    before = snapshot(node, "owner")
    with pytest.raises(InsufficientFunds, match="registering adapter adp_two"):
        node.ledger.transaction(lambda conn: node.fees.charge_adapter_registration_in(
            conn, owner, "adp_two", actor=owner))
    assert snapshot(node, "owner") == before


# --------------------------------------------------------------------------------------------------------------
# storage and audit
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["fee_settlements", "fee_settlement_legs"])
def test_settlement_rows_are_append_only(world: tuple[Node, str], raw_db: RawDB, table: str) -> None:
    node, op = world
    node.fees.reserve_fee("ao", "payer", 10 * U, actor=op)
    node.fees.settle_fee("ao", 10 * U, FeeRecipients("owner", {"c1": 1}), actor=op)
    for statement in (f"UPDATE {table} SET request_id = 'forged'", f"DELETE FROM {table}"):
        with pytest.raises(Exception, match="append-only"):
            raw_db.execute(statement)


def test_audit_finds_a_settlement_row_that_disagrees_with_the_ledger(world: tuple[Node, str], raw_db: RawDB) -> None:
    node, op = world
    node.fees.reserve_fee("t", "payer", 10 * U, actor=op)
    node.fees.settle_fee("t", 10 * U, FeeRecipients("owner", {"c1": 1, "c2": 1}), actor=op)
    assert node.fees.audit() == []
    raw_db.drop_trigger("fee_settlement_legs", "UPDATE")
    raw_db.execute("UPDATE fee_settlement_legs SET amount = amount + 1 WHERE role = 'contributor' AND account_id = ?",
                   (node.accounts.get("c1").id,))
    problems = node.fees.audit()
    assert any("contributor rows sum" in p for p in problems), problems
    assert any("does not match the settlement row" in p for p in problems), problems


# --------------------------------------------------------------------------------------------------------------
# the split, as a property
# --------------------------------------------------------------------------------------------------------------


@st.composite
def splits(draw: st.DrawFn) -> tuple[int, Params, dict[str, int], int]:
    cuts = sorted(draw(st.lists(st.integers(0, 10_000), min_size=3, max_size=3)))
    bps = [cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], 10_000 - cuts[2]]
    params = Params(fee_treasury_bps=bps[0], fee_owner_bps=bps[1], fee_stakers_bps=bps[2], fee_contributors_bps=bps[3])
    amount = draw(st.one_of(st.integers(1, 1_000), st.integers(1, 2**63 - 1)))
    weights = draw(st.dictionaries(st.sampled_from([f"acct_{i}" for i in range(12)]),
                                   st.one_of(st.just(0), st.integers(0, 10**6), st.integers(0, 2**40)), max_size=12))
    allocated_fraction = draw(st.integers(0, 100))
    return amount, params, weights, allocated_fraction


@settings(max_examples=400, deadline=None)
@given(splits())
def test_legs_always_sum_exactly_and_are_never_negative(case: tuple[int, Params, dict[str, int], int]) -> None:
    amount, params, weights, fraction = case
    split = split_fee(amount, params, weights)
    split = split.with_stakers(split.stakers * fraction // 100)
    legs = [split.treasury, split.owner, split.stakers, *split.contributors.values(), split.dust]
    assert sum(legs) == amount == split.total
    assert all(leg >= 0 for leg in legs)
    assert split.owner == amount * params.fee_owner_bps // 10_000
    positive = {a for a, w in weights.items() if w > 0}
    assert set(split.contributors) == positive
    if positive:
        pool = amount * params.fee_contributors_bps // 10_000
        assert sum(split.contributors.values()) + split.dust == pool
        assert split.dust < len(positive)  # each floor loses less than one unit
    else:
        assert split.dust == 0
