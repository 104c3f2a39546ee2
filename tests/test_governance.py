"""Governance (``node.governance``): OpenZeppelin Governor v5's Governor.test.js matrix on the node clock (states
at every boundary, threshold, quorum, counting, cancel/queue/execute rules, timelock and grace period), the
actions (set_params incl. governance's own rules and a checkpointed quorum, treasury transfer, mint within the
cap, burn), all-or-nothing execution, flash-stake resistance, the journal, the audit (I10) with tampering, the
CLI and HTTP.

Most of the matrix runs on SQLite only (``snode``); one full propose → execute runs on both backends.

World (``world``): total gOPEN 100,000, so the quorum (5%) is 5,000 gOPEN = erin + frank exactly.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_server import LiveServer
from conftest import Clock, RawDB, run_cli as run

import royalty
from royalty import Node
from royalty.api import create_app
from royalty.errors import Conflict, InsufficientFunds, InvalidInput, NotFound, PermissionDenied
from royalty.ledger.amounts import UNIT
from royalty.ledger.chart import AccountCode
from royalty.ledger.governance import proposal_id

DAY = 86_400_000  # ms
STAKES = {  # gOPEN base units
    "alice": 10_000 * UNIT,  # exactly the default proposal threshold
    "bob": 80_000 * UNIT,
    "dave": 5_000 * UNIT,
    "erin": 5_000 * UNIT - 1,
    "frank": 1,
}
QUORUM = 5_000 * UNIT
GRANT = [{"type": "treasury_transfer", "to": "bob", "amount": 1 * UNIT}]


# --------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------------------


def add_voter(node: Node, name: str, amount: int, *, delegate: bool = True) -> str:
    """A person with ``amount`` gOPEN staked and (by default) self-delegated; returns the account id."""
    account, _ = node.accounts.create(name, with_key=False)
    if amount:
        node.tokens.faucet(name, amount, actor="operator")
        node.staking.stake(name, amount, actor=name)
    if delegate:
        node.staking.delegate(name, name, actor=name)
    return account.id


def make_world(node: Node) -> dict[str, str]:
    return {name: add_voter(node, name, amount) for name, amount in STAKES.items()}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, dict[str, str]]:
    """One SQLite node with the world, built once per module: (home, its clock's next ms, account ids)."""
    home = tmp_path_factory.mktemp("governance") / "home"
    clock = Clock()
    node, _ = royalty.init_node(home, clock=clock)
    with node:
        ids = make_world(node)
    return home, clock.now, ids


@pytest.fixture
def snode(template: tuple[Path, int, dict[str, str]], tmp_path: Path, clock: Clock) -> Iterator[Node]:
    """A private copy of the template node (SQLite; the matrix), on the test clock continuing its time."""
    source, now, _ = template
    home = tmp_path / "home"
    shutil.copytree(source, home)  # the template node is closed: its files are a consistent snapshot
    clock.now = now
    node = royalty.open_node(home, clock=clock)
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def world(template: tuple[Path, int, dict[str, str]], snode: Node) -> dict[str, str]:
    return template[2]


def propose(node: Node, actions: list[dict[str, Any]] | None = None, description: str = "grant 1 OPEN to bob",
            by: str = "alice") -> Any:
    return node.governance.propose(actions or GRANT, description, actor=by)


def to_active(clock: Clock, p: Any) -> None:
    clock.now = p.snapshot_ms + 1


def to_after_deadline(clock: Clock, p: Any) -> None:
    clock.now = p.deadline_ms + 1


def passed(node: Node, clock: Clock, actions: list[dict[str, Any]] | None = None, description: str = "grant") -> Any:
    """A proposal voted For by bob, past its deadline (Succeeded)."""
    p = propose(node, actions, description)
    to_active(clock, p)
    node.governance.vote(p.id, "for", actor="bob")
    to_after_deadline(clock, p)
    assert node.governance.state(p.id) == "succeeded"
    return p


def queued(node: Node, clock: Clock, actions: list[dict[str, Any]] | None = None, description: str = "grant") -> Any:
    p = passed(node, clock, actions, description)
    return node.governance.queue(p.id, actor="bob")


def available(node: Node, name: str) -> int:
    return node.tokens.balance(name).available


# --------------------------------------------------------------------------------------------------------------
# propose: threshold, id, validation
# --------------------------------------------------------------------------------------------------------------


def test_propose_sets_snapshot_and_deadline_from_params_and_journals(snode: Node, world: dict[str, str], clock: Clock) -> None:
    before = snode.journal.size()
    clock.now += 5
    at = clock.now
    p = propose(snode)
    assert p.state == "pending" and p.quorum is None and p.proposer == world["alice"]
    assert p.snapshot_ms == p.created_ms + DAY and p.deadline_ms == p.snapshot_ms + 7 * DAY
    assert p.created_ms >= at and p.threshold == 10_000 * UNIT
    assert p.actions == ({"type": "treasury_transfer", "to": world["bob"], "amount": UNIT},)
    assert p.id == proposal_id(p.actions, "grant 1 OPEN to bob", world["alice"])
    events = snode.journal.events(after=before - 1)
    assert [e.type for e in events] == ["gov.propose"]
    assert events[0].data["proposal"] == p.id and events[0].data["actions"] == list(p.actions)
    assert events[0].actor == world["alice"] and events[0].data["proposer_votes"] == STAKES["alice"]


def test_proposal_threshold_below_and_at(snode: Node, world: dict[str, str]) -> None:
    add_voter(snode, "ted", 10_000 * UNIT - 1)
    with pytest.raises(PermissionDenied, match="below the proposal threshold"):
        propose(snode, by="ted")
    assert propose(snode, by="alice").state == "pending"  # exactly the threshold
    # Undelegated stake carries no votes (ERC20Votes): not enough either.
    add_voter(snode, "una", 50_000 * UNIT, delegate=False)
    with pytest.raises(PermissionDenied):
        propose(snode, by="una")
    assert snode.governance.list() and len(snode.governance.list()) == 1


def test_threshold_counts_votes_before_now_only(snode: Node, world: dict[str, str], clock: Clock) -> None:
    # getVotes(proposer, clock() - 1): stake delegated in this very millisecond does not count yet. The test
    # clock advances 1 ms per call, so freeze it for the stake and the proposal.
    add_voter(snode, "vic", 0, delegate=True)
    snode.tokens.faucet("vic", 10_000 * UNIT, actor="operator")
    clock.step = 0
    snode.staking.stake("vic", 10_000 * UNIT, actor="vic")
    with pytest.raises(PermissionDenied):
        propose(snode, by="vic")
    clock.step = 1
    clock.now += 1
    assert propose(snode, by="vic").proposer == snode.accounts.get("vic").id


def test_same_proposal_twice_is_a_conflict(snode: Node, world: dict[str, str]) -> None:
    p = propose(snode)
    with pytest.raises(Conflict, match="already exists"):
        propose(snode)
    # By name or by id: the same normalised action, the same id.
    with pytest.raises(Conflict):
        propose(snode, [{"type": "treasury_transfer", "to": world["bob"], "amount": UNIT}])
    other = propose(snode, description="grant 1 OPEN to bob, again")
    assert other.id != p.id
    assert propose(snode, by="bob").id != p.id  # another proposer


def test_invalid_actions_are_all_reported_at_once(snode: Node, world: dict[str, str]) -> None:
    before = snode.journal.size()
    bad = [
        {"type": "launch_rockets"},
        {"type": "set_params", "changes": {"fee_owner_bps": 9000}},  # split no longer sums to 10,000
        {"type": "set_params", "changes": {"no_such_param": 1}},
        {"type": "treasury_transfer", "to": "nobody", "amount": UNIT},
        {"type": "treasury_transfer", "to": "fees", "amount": UNIT},
        {"type": "mint", "to": "bob", "amount": 0},
        {"type": "burn", "from": "bob", "amount": UNIT},
        {"type": "mint", "to": "bob", "amount": UNIT, "memo": "x"},
        {"type": "set_params", "changes": {"gov_quorum_percent": True}},
    ]
    with pytest.raises(InvalidInput) as exc:
        propose(snode, bad)
    message = exc.value.message
    for i in range(len(bad)):
        assert f"actions[{i}]" in message, (i, message)
    assert "\n" not in message and exc.value.field == "actions[0].type"
    with pytest.raises(InvalidInput, match="non-empty list"):
        snode.governance.propose([], "nothing", actor="alice")
    with pytest.raises(InvalidInput, match="description"):
        snode.governance.propose(GRANT, "  ", actor="alice")
    assert snode.journal.size() == before and snode.governance.list() == []


def test_mint_respects_the_supply_cap_at_propose_time(snode: Node, world: dict[str, str]) -> None:
    supply = snode.tokens.supply()["supply"]["units"]
    cap = snode.params.current().supply_cap
    with pytest.raises(InvalidInput, match="supply cap"):
        propose(snode, [{"type": "mint", "to": "bob", "amount": cap - supply + 1}])
    # Two mints that fit alone but not together; a burn first makes room.
    half = (cap - supply) // 2 + 1
    with pytest.raises(InvalidInput, match=r"actions\[1\].*supply cap"):
        propose(snode, [{"type": "mint", "to": "bob", "amount": half}, {"type": "mint", "to": "treasury", "amount": half}])
    propose(snode, [{"type": "burn", "from": "treasury", "amount": 2}, {"type": "mint", "to": "bob", "amount": half},
                    {"type": "mint", "to": "treasury", "amount": half}], "burn then mint")
    # A cap below the supply is refused, and a cap raised earlier in the same proposal applies to a later mint.
    with pytest.raises(InvalidInput, match="below the supply"):
        propose(snode, [{"type": "set_params", "changes": {"supply_cap": supply - 1}}])
    propose(snode, [{"type": "set_params", "changes": {"supply_cap": cap + 10}},
                    {"type": "mint", "to": "bob", "amount": cap - supply + 10}], "raise the cap and mint")


# --------------------------------------------------------------------------------------------------------------
# states at every boundary; voting
# --------------------------------------------------------------------------------------------------------------


def test_states_at_every_boundary(snode: Node, world: dict[str, str], clock: Clock) -> None:
    g = snode.governance
    p = propose(snode)
    clock.now = p.snapshot_ms
    assert g.state(p.id) == "pending"
    clock.now = p.snapshot_ms
    with pytest.raises(Conflict, match="pending"):
        g.vote(p.id, "for", actor="bob")
    clock.now = p.snapshot_ms + 1
    assert g.state(p.id) == "active"
    g.vote(p.id, "for", actor="bob")
    clock.now = p.deadline_ms
    assert g.state(p.id) == "active"
    clock.now = p.deadline_ms
    g.vote(p.id, "against", actor="dave")  # the last millisecond still counts
    clock.now = p.deadline_ms + 1
    assert g.state(p.id) == "succeeded"
    clock.now = p.deadline_ms + 1
    with pytest.raises(Conflict, match="succeeded"):
        g.vote(p.id, "for", actor="erin")
    q = g.queue(p.id, actor="bob")
    assert q.state == "queued" and q.eta_ms == q.queued_ms + DAY and q.expires_ms == q.eta_ms + 14 * DAY
    clock.now = q.eta_ms - 1
    assert g.state(p.id) == "queued"
    clock.now = q.eta_ms - 1
    with pytest.raises(Conflict, match="timelock"):
        g.execute(p.id, actor="bob")
    clock.now = q.eta_ms
    done = g.execute(p.id, actor="frank")  # anyone may execute
    assert done.state == "executed" and done.executed_ms == q.eta_ms
    clock.now = q.eta_ms + 100 * DAY
    assert g.state(p.id) == "executed"  # executed is final: it never expires


def test_execute_after_the_grace_period_is_refused(snode: Node, world: dict[str, str], clock: Clock) -> None:
    q = queued(snode, clock)
    clock.now = q.eta_ms + 14 * DAY - 1
    assert snode.governance.state(q.id) == "queued"
    clock.now = q.eta_ms + 14 * DAY
    assert snode.governance.state(q.id) == "expired" and q.expires_ms == q.eta_ms + 14 * DAY
    clock.now = q.expires_ms
    with pytest.raises(Conflict, match="expired"):
        snode.governance.execute(q.id, actor="bob")
    assert available(snode, "bob") == 0


def test_vote_weight_is_the_snapshot_weight_and_tally(snode: Node, world: dict[str, str], clock: Clock) -> None:
    g = snode.governance
    p = propose(snode)
    to_active(clock, p)
    v = g.vote(p.id, "FOR", actor="bob", reason="good use of funds")
    assert (v.support, v.weight, v.reason, v.voter) == (1, STAKES["bob"], "good use of funds", world["bob"])
    g.vote(p.id, 0, actor="dave")
    g.vote(p.id, "2", actor="erin")
    got = g.get(p.id)
    assert (got.tally.for_, got.tally.against, got.tally.abstain) == (STAKES["bob"], STAKES["dave"], STAKES["erin"])
    assert got.voters == 3 and got.quorum == QUORUM
    assert [x.voter for x in g.votes(p.id)] == [world["bob"], world["dave"], world["erin"]]
    with pytest.raises(InvalidInput, match="support"):
        g.vote(p.id, "maybe", actor="frank")
    with pytest.raises(InvalidInput, match="support"):
        g.vote(p.id, 3, actor="frank")


def test_double_vote_is_refused(snode: Node, world: dict[str, str], clock: Clock) -> None:
    p = propose(snode)
    to_active(clock, p)
    snode.governance.vote(p.id, "for", actor="bob")
    before = snode.journal.size()
    with pytest.raises(Conflict, match="already voted"):
        snode.governance.vote(p.id, "against", actor="bob")
    with pytest.raises(Conflict, match="already voted"):
        snode.governance.vote(p.id, "for", actor=world["bob"])
    assert snode.journal.size() == before
    assert snode.governance.get(p.id).tally.for_ == STAKES["bob"]


def test_zero_weight_vote_is_recorded_and_counts_nothing(snode: Node, world: dict[str, str], clock: Clock) -> None:
    snode.accounts.create("zoe", with_key=False)
    p = propose(snode)
    to_active(clock, p)
    v = snode.governance.vote(p.id, "for", actor="zoe")
    assert v.weight == 0
    got = snode.governance.get(p.id)
    assert got.voters == 1 and got.tally.for_ == 0
    to_after_deadline(clock, p)
    assert snode.governance.state(p.id) == "defeated"


def test_vote_on_missing_proposal_and_by_a_system_account(snode: Node, world: dict[str, str], clock: Clock) -> None:
    with pytest.raises(NotFound):
        snode.governance.vote("prop_0000000000000000", "for", actor="bob")
    p = propose(snode)
    to_active(clock, p)
    with pytest.raises(PermissionDenied, match="system account"):
        snode.governance.vote(p.id, "for", actor="treasury")


# --------------------------------------------------------------------------------------------------------------
# counting and quorum
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("votes", "outcome"), [
    ({}, "defeated"),  # no votes: For > Against fails
    ({"erin": "for"}, "defeated"),  # below quorum by one base unit
    ({"erin": "for", "frank": "for"}, "succeeded"),  # exactly the quorum
    ({"erin": "for", "frank": "abstain"}, "succeeded"),  # abstain counts towards quorum
    ({"erin": "for", "frank": "against"}, "defeated"),  # against does not
    ({"dave": "for"}, "succeeded"),
    ({"dave": "abstain"}, "defeated"),  # quorum but no For majority
    ({"dave": "against", "erin": "for", "frank": "for"}, "defeated"),  # For == Against
    ({"bob": "against", "alice": "for", "dave": "for"}, "defeated"),
    ({"bob": "for", "alice": "against", "dave": "against"}, "succeeded"),
])
def test_quorum_and_counting(snode: Node, world: dict[str, str], clock: Clock, votes: dict[str, str], outcome: str) -> None:
    p = propose(snode)
    to_active(clock, p)
    for who, support in votes.items():
        snode.governance.vote(p.id, support, actor=who)
    to_after_deadline(clock, p)
    got = snode.governance.get(p.id)
    assert got.state == outcome and got.quorum == QUORUM


def test_flash_stake_after_the_snapshot_adds_nothing(snode: Node, world: dict[str, str], clock: Clock) -> None:
    p = propose(snode)
    to_active(clock, p)
    # Mallory borrows a fortune right after the snapshot, stakes and delegates it, then votes: weight 0.
    add_voter(snode, "mallory", 500_000 * UNIT)
    assert snode.staking.get_votes("mallory") == 500_000 * UNIT
    v = snode.governance.vote(p.id, "against", actor="mallory")
    assert v.weight == 0
    # Erin tops up her stake after the snapshot: she still votes with the snapshot weight.
    snode.tokens.faucet("erin", 1_000 * UNIT, actor="operator")
    snode.staking.stake("erin", 1_000 * UNIT, actor="erin")
    assert snode.governance.vote(p.id, "for", actor="erin").weight == STAKES["erin"]
    snode.governance.vote(p.id, "for", actor="frank")
    to_after_deadline(clock, p)
    got = snode.governance.get(p.id)
    assert got.state == "succeeded" and got.tally.against == 0 and got.quorum == QUORUM  # total at the snapshot
    assert snode.governance.audit() == []


# --------------------------------------------------------------------------------------------------------------
# cancel, queue, execute rules
# --------------------------------------------------------------------------------------------------------------


def test_cancel_only_by_the_proposer_and_only_while_pending(snode: Node, world: dict[str, str], clock: Clock) -> None:
    g = snode.governance
    p = propose(snode)
    with pytest.raises(PermissionDenied, match="only the proposer"):
        g.cancel(p.id, actor="bob")
    with pytest.raises(PermissionDenied):
        g.cancel(p.id, actor="operator")  # not even an admin
    clock.now = p.snapshot_ms
    c = g.cancel(p.id, actor="alice")  # the last pending millisecond
    assert c.state == "canceled" and c.canceled_ms == p.snapshot_ms
    to_active(clock, p)
    with pytest.raises(Conflict, match="canceled"):
        g.vote(p.id, "for", actor="bob")
    with pytest.raises(Conflict, match="canceled"):
        g.cancel(p.id, actor="alice")
    to_after_deadline(clock, p)
    assert g.state(p.id) == "canceled"
    with pytest.raises(Conflict):
        g.queue(p.id, actor="alice")
    # Once active, even the proposer cannot cancel.
    p2 = propose(snode, description="second")
    to_active(clock, p2)
    with pytest.raises(Conflict, match="active"):
        g.cancel(p2.id, actor="alice")


def test_queue_only_succeeded_and_only_once(snode: Node, world: dict[str, str], clock: Clock) -> None:
    g = snode.governance
    p = propose(snode)
    with pytest.raises(Conflict, match="pending"):
        g.queue(p.id, actor="bob")
    to_active(clock, p)
    with pytest.raises(Conflict, match="active"):
        g.queue(p.id, actor="bob")
    g.vote(p.id, "against", actor="bob")
    to_after_deadline(clock, p)
    with pytest.raises(Conflict, match="defeated"):
        g.queue(p.id, actor="bob")
    q = passed(snode, clock, description="passes")
    g.queue(q.id, actor="bob")
    with pytest.raises(Conflict, match="queued"):
        g.queue(q.id, actor="bob")


def test_execute_once_and_never_skipping_the_timelock(snode: Node, world: dict[str, str], clock: Clock) -> None:
    g = snode.governance
    p = passed(snode, clock)
    with pytest.raises(Conflict, match="succeeded"):
        g.execute(p.id, actor="bob")  # not queued: no path skips the timelock
    q = g.queue(p.id, actor="bob")
    clock.now = q.eta_ms
    g.execute(p.id, actor="bob")
    assert available(snode, "bob") == UNIT
    with pytest.raises(Conflict, match="executed"):
        g.execute(p.id, actor="bob")
    assert available(snode, "bob") == UNIT


def test_failed_action_rolls_back_the_whole_execute(snode: Node, world: dict[str, str], clock: Clock) -> None:
    treasury = snode.tokens.system_balance(AccountCode.TREASURY)
    actions = [
        {"type": "set_params", "changes": {"fee_owner_bps": 3_000, "fee_contributors_bps": 5_000}},
        {"type": "treasury_transfer", "to": "bob", "amount": UNIT},
        {"type": "treasury_transfer", "to": "dave", "amount": treasury + 1},  # more than the treasury holds
    ]
    q = queued(snode, clock, actions, "too generous")
    clock.now = q.eta_ms
    before = snode.journal.size()
    with pytest.raises(InsufficientFunds, match=r"action 2 \(treasury_transfer\)"):
        snode.governance.execute(q.id, actor="bob")
    assert snode.journal.size() == before
    assert snode.params.current().fee_owner_bps == 4_000 and available(snode, "bob") == 0
    assert snode.governance.state(q.id) == "queued"  # still executable once the treasury can pay


# --------------------------------------------------------------------------------------------------------------
# actions
# --------------------------------------------------------------------------------------------------------------


def test_set_params_changes_the_fee_split_and_journals(snode: Node, world: dict[str, str], clock: Clock) -> None:
    q = queued(snode, clock, [{"type": "set_params", "changes": {"fee_owner_bps": 3_000, "fee_contributors_bps": 5_000}}],
               "more for contributors")
    clock.now = q.eta_ms
    before = snode.journal.size()
    snode.governance.execute(q.id, actor="alice")
    params = snode.params.current()
    assert (params.fee_owner_bps, params.fee_contributors_bps) == (3_000, 5_000)
    last = snode.params.history()[-1]
    assert last["effective_ms"] >= q.eta_ms and q.id in last["reason"]
    events = snode.journal.events(after=before - 1)
    assert [e.type for e in events] == ["gov.execute", "params.set"]
    assert events[0].data["proposal"] == q.id and events[1].data["changes"] == {"fee_contributors_bps": 5_000, "fee_owner_bps": 3_000}


def test_quorum_change_after_the_snapshot_does_not_touch_a_running_proposal(snode: Node, world: dict[str, str], clock: Clock) -> None:
    g = snode.governance
    raise_quorum = propose(snode, [{"type": "set_params", "changes": {"gov_quorum_percent": 50}}], "quorum 50%")
    to_active(clock, raise_quorum)
    g.vote(raise_quorum.id, "for", actor="bob")
    clock.now += 2 * DAY
    running = propose(snode, description="running")  # its snapshot comes before the quorum change
    to_active(clock, running)
    g.vote(running.id, "for", actor="erin")
    g.vote(running.id, "abstain", actor="frank")
    to_after_deadline(clock, raise_quorum)
    q = g.queue(raise_quorum.id, actor="bob")
    clock.now = q.eta_ms
    g.execute(q.id, actor="bob")
    assert snode.params.current().gov_quorum_percent == 50
    assert running.snapshot_ms < q.eta_ms < running.deadline_ms
    to_after_deadline(clock, running)
    got = g.get(running.id)
    assert got.state == "succeeded" and got.quorum == QUORUM  # 5% of the supply at its snapshot
    later = propose(snode, description="after the change")
    to_active(clock, later)
    g.vote(later.id, "for", actor="dave")
    to_after_deadline(clock, later)
    got = g.get(later.id)
    assert got.quorum == 50_000 * UNIT and got.state == "defeated"


def test_governance_changes_its_own_rules(snode: Node, world: dict[str, str], clock: Clock) -> None:
    changes = {"gov_voting_delay_s": 0, "gov_voting_period_s": 3_600, "gov_timelock_delay_s": 60,
               "gov_grace_period_s": 120, "gov_proposal_threshold": 80_000 * UNIT}
    q = queued(snode, clock, [{"type": "set_params", "changes": changes}], "faster governance")
    clock.now = q.eta_ms
    snode.governance.execute(q.id, actor="bob")
    with pytest.raises(PermissionDenied):
        propose(snode, description="alice is below the new threshold")
    p = propose(snode, by="bob", description="under the new rules")
    assert p.snapshot_ms == p.created_ms and p.deadline_ms == p.snapshot_ms + 3_600_000
    to_active(clock, p)
    snode.governance.vote(p.id, "for", actor="bob")
    to_after_deadline(clock, p)
    q2 = snode.governance.queue(p.id, actor="bob")
    assert q2.eta_ms == q2.queued_ms + 60_000 and q2.expires_ms == q2.eta_ms + 120_000


def test_treasury_transfer_mint_and_burn_move_funds(snode: Node, world: dict[str, str], clock: Clock) -> None:
    treasury = snode.tokens.system_balance(AccountCode.TREASURY)
    supply = snode.tokens.supply()["supply"]["units"]
    cap = snode.params.current().supply_cap
    actions = [
        {"type": "treasury_transfer", "to": "dave", "amount": 250 * UNIT},
        {"type": "mint", "to": "erin", "amount": 100 * UNIT},
        {"type": "mint", "to": "treasury", "amount": cap - supply - 100 * UNIT},  # up to the cap exactly
        {"type": "burn", "from": "treasury", "amount": 40 * UNIT},
    ]
    q = queued(snode, clock, actions, "move money")
    clock.now = q.eta_ms
    before = snode.journal.size()
    snode.governance.execute(q.id, actor="bob")
    assert available(snode, "dave") == 250 * UNIT and available(snode, "erin") == 100 * UNIT
    assert snode.tokens.system_balance(AccountCode.TREASURY) == treasury - 250 * UNIT + (cap - supply - 100 * UNIT) - 40 * UNIT
    assert snode.tokens.supply()["supply"]["units"] == cap - 40 * UNIT
    events = snode.journal.events(after=before - 1)
    assert [e.type for e in events] == ["gov.execute", "ledger.grant", "ledger.mint", "ledger.mint", "ledger.burn"]
    assert [e.data.get("action") for e in events[1:]] == [0, 1, 2, 3]
    assert all(e.data["proposal"] == q.id for e in events)


def test_mint_over_a_cap_lowered_before_execution_fails_whole(snode: Node, world: dict[str, str], clock: Clock) -> None:
    supply = snode.tokens.supply()["supply"]["units"]
    mint = queued(snode, clock, [{"type": "mint", "to": "bob", "amount": 1_000 * UNIT}], "mint")
    lower = queued(snode, clock, [{"type": "set_params", "changes": {"supply_cap": supply}}], "freeze the supply")
    clock.now = lower.eta_ms
    snode.governance.execute(lower.id, actor="bob")
    with pytest.raises(Exception, match="supply cap") as exc:
        snode.governance.execute(mint.id, actor="bob")
    assert getattr(exc.value, "result", None) == "exceeds_supply_cap"
    assert snode.governance.state(mint.id) == "queued" and available(snode, "bob") == 0


# --------------------------------------------------------------------------------------------------------------
# reads, audit, tampering
# --------------------------------------------------------------------------------------------------------------


def test_list_filters_and_paginates(snode: Node, world: dict[str, str], clock: Clock) -> None:
    g = snode.governance
    ids = [propose(snode, description=f"p{i}").id for i in range(3)]
    g.cancel(ids[1], actor="alice")
    assert [p.id for p in g.list()] == ids
    assert [p.id for p in g.list(state="canceled")] == [ids[1]]
    assert [p.id for p in g.list(limit=1, after=ids[0])] == [ids[1]]
    with pytest.raises(InvalidInput, match="state"):
        g.list(state="won")
    with pytest.raises(NotFound):
        g.list(after="prop_nope")


def test_audit_finds_tampered_votes_and_marks(snode: Node, world: dict[str, str], clock: Clock) -> None:
    q = queued(snode, clock)
    clock.now = q.eta_ms
    snode.governance.execute(q.id, actor="bob")
    assert snode.governance.audit() == []
    raw = RawDB(snode.store.url)
    try:
        for table in ("gov_votes", "gov_transitions", "gov_proposals"):
            with pytest.raises(Exception, match="append-only"):
                raw.execute(f"DELETE FROM {table}")
        raw.drop_trigger("gov_votes", "UPDATE")
        raw.execute("UPDATE gov_votes SET weight = weight * 2")
        raw.drop_trigger("gov_transitions", "UPDATE")
        raw.execute("UPDATE gov_transitions SET at_ms = at_ms - ? WHERE kind = 'executed'", (DAY,))
    finally:
        raw.close()
    problems = snode.governance.audit()
    text = "\n".join(problems)
    assert "weighs" in text and "exceed the total supply" in text and "outside its window" in text, problems
    assert "differs from journal event" in text


# --------------------------------------------------------------------------------------------------------------
# both backends: the whole path
# --------------------------------------------------------------------------------------------------------------


def test_full_lifecycle_on_both_backends(node: Node, clock: Clock) -> None:
    ids = make_world(node)
    g = node.governance
    start = node.journal.size()
    actions = [{"type": "set_params", "changes": {"fee_treasury_bps": 2_000, "fee_owner_bps": 3_000}},
               {"type": "treasury_transfer", "to": "dave", "amount": 7 * UNIT}]
    p = g.propose(actions, "fees and a grant", actor="alice")
    to_active(clock, p)
    g.vote(p.id, "for", actor="bob")
    g.vote(p.id, "against", actor="dave")
    with pytest.raises(Conflict):
        g.vote(p.id, "for", actor="bob")
    to_after_deadline(clock, p)
    q = g.queue(p.id, actor="erin")
    clock.now = q.eta_ms
    done = g.execute(p.id, actor="frank")
    assert done.state == "executed"
    assert node.params.current().fee_treasury_bps == 2_000 and node.tokens.balance("dave").available == 7 * UNIT
    with pytest.raises(Conflict):
        g.execute(p.id, actor="frank")
    types = [e.type for e in node.journal.events(after=start - 1, limit=1000)]
    assert [t for t in types if t.startswith("gov.")] == ["gov.propose", "gov.vote", "gov.vote", "gov.queue", "gov.execute"]
    assert g.audit() == []
    assert g.get(p.id).to_dict()["votes"]["for"]["units"] == STAKES["bob"] and ids["bob"]


def test_concurrent_votes_executes_and_transfers(node: Node, clock: Clock) -> None:
    """Racing writers (real concurrency on PostgreSQL): one vote per voter, one execute, and an execute that
    touches the treasury never deadlocks with faucet grants from it."""
    make_world(node)
    g = node.governance
    p = g.propose([{"type": "set_params", "changes": {"fee_owner_bps": 3_500, "fee_contributors_bps": 4_500}},
                   {"type": "treasury_transfer", "to": "dave", "amount": 3 * UNIT}], "race", actor="alice")
    to_active(clock, p)

    def race(fn: Any, n: int) -> list[Any]:
        barrier = threading.Barrier(n)
        results: list[Any] = [None] * n

        def run_one(i: int) -> None:
            barrier.wait()
            try:
                results[i] = fn(i)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                results[i] = exc

        threads = [threading.Thread(target=run_one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return results

    votes = race(lambda i: g.vote(p.id, "for", actor="bob"), 4)
    assert sum(not isinstance(v, Exception) for v in votes) == 1
    assert all(isinstance(v, Conflict) for v in votes if isinstance(v, Exception)), votes
    to_after_deadline(clock, p)
    q = g.queue(p.id, actor="bob")
    clock.now = q.eta_ms
    out = race(lambda i: g.execute(p.id, actor="bob") if i < 3 else node.tokens.faucet("dave", UNIT, actor="operator"), 6)
    executed = [r for r in out[:3] if not isinstance(r, Exception)]
    assert len(executed) == 1 and all(isinstance(r, Conflict) for r in out[:3] if isinstance(r, Exception)), out
    assert not any(isinstance(r, Exception) for r in out[3:]), out
    assert node.tokens.balance("dave").available == 3 * UNIT + 3 * UNIT
    assert node.params.current().fee_owner_bps == 3_500 and g.audit() == []


# --------------------------------------------------------------------------------------------------------------
# CLI and HTTP
# --------------------------------------------------------------------------------------------------------------



def test_cli_propose_vote_queue_execute_and_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "node")
    # Real time here: a 1 s voting period and no delays keep the test short.
    node, _ = royalty.init_node(home, params={"gov_voting_delay_s": 0, "gov_voting_period_s": 1,
                                              "gov_timelock_delay_s": 0})
    with node:
        node.tokens.faucet("operator", 20_000 * UNIT, actor="operator")
        node.staking.stake("operator", 20_000 * UNIT, actor="operator")
        node.staking.delegate("operator", "operator", actor="operator")
        node.accounts.create("bob", with_key=False)
    time.sleep(0.01)
    code, out, err = run(capsys, "gov", "propose", "--home", home, "--set", "fee_owner_bps=3000", "--set",
                         "fee_contributors_bps=5000", "--transfer", "bob=12.5", "-d", "more for contributors", "--json")
    assert code == 0, err
    prop = json.loads(out)
    assert prop["state"] in ("pending", "active") and prop["actions"][1]["amount"] == {"amount": "12.5", "units": 12_500_000}
    code, _, err = run(capsys, "gov", "propose", "--home", home, "-d", "nothing")
    assert code == 1 and "nothing to propose" in err
    code, _, err = run(capsys, "gov", "propose", "--home", home, "--mint", "bob=-1", "-d", "bad")
    assert code == 1 and "actions[0].amount" in err
    time.sleep(0.01)
    code, out, err = run(capsys, "gov", "vote", prop["id"], "for", "--home", home, "--reason", "yes")
    assert code == 0 and "voted for" in out, err
    code, _, err = run(capsys, "gov", "vote", prop["id"], "for", "--home", home)
    assert code == 1 and "already voted" in err
    code, out, _ = run(capsys, "gov", "show", prop["id"], "--home", home)
    assert "transfer from the treasury 12.5 OPEN to bob" in out and "operator" in out
    time.sleep(1.05)
    code, out, err = run(capsys, "gov", "queue", prop["id"], "--home", home)
    assert code == 0 and "queued" in out, err
    time.sleep(0.01)
    code, out, err = run(capsys, "gov", "execute", prop["id"], "--home", home, "--json")
    assert code == 0, err
    assert json.loads(out)["state"] == "executed"
    code, out, _ = run(capsys, "gov", "params", "--home", home, "--json")
    params = json.loads(out)["params"]
    assert (params["fee_owner_bps"], params["fee_contributors_bps"]) == (3_000, 5_000)
    code, out, _ = run(capsys, "gov", "params", "--home", home, "--history")
    assert code == 0 and "fee_owner_bps=3000" in out and "governance" in out
    code, out, _ = run(capsys, "gov", "list", "--home", home, "--state", "executed", "--json")
    assert [p["id"] for p in json.loads(out)["proposals"]] == [prop["id"]]
    with royalty.open_node(home) as node:
        assert node.tokens.balance("bob").available == 12_500_000


def test_http_governance_routes(node: Node, clock: Clock) -> None:
    make_world(node)
    keys = {}
    for name in ("alice", "bob"):
        _, keys[name] = node.accounts.create_key(name)
    _, keys["zed"] = node.accounts.create("zed")
    with LiveServer(create_app(node)) as server:
        alice, bob, zed, anon = (server.client(keys["alice"]), server.client(keys["bob"]), server.client(keys["zed"]),
                                 server.client())
        try:
            body = {"description": "grant", "actions": [{"type": "treasury_transfer", "to": "dave", "amount": "2.5"}]}
            r = anon.post("/v1/governance/proposals", json=body)
            assert r.status_code == 401
            r = zed.post("/v1/governance/proposals", json=body)
            assert r.status_code == 403 and r.json()["error"]["type"] == "permission_denied"
            r = alice.post("/v1/governance/proposals", json={**body, "actions": [{"type": "mint", "to": "dave", "amount": "-1"}]})
            assert r.status_code == 422 and r.json()["error"]["field"] == "actions[0].amount"
            r = alice.post("/v1/governance/proposals", json=body)
            assert r.status_code == 201, r.text
            p = r.json()
            assert p["state"] == "pending" and p["actions"][0]["amount"]["units"] == 2_500_000
            assert alice.post("/v1/governance/proposals", json=body).status_code == 409
            r = bob.post(f"/v1/governance/proposals/{p['id']}/votes", json={"support": "for"})
            assert r.status_code == 409 and "pending" in r.json()["error"]["message"]
            clock.now = p["snapshot_ms"] + 1
            r = bob.post(f"/v1/governance/proposals/{p['id']}/votes", json={"support": "for", "reason": "ok"})
            assert r.status_code == 201 and r.json()["weight"]["units"] == STAKES["bob"]
            r = bob.post(f"/v1/governance/proposals/{p['id']}/votes", json={"support": "yes"})
            assert r.status_code == 422 and r.json()["error"]["field"] == "support"
            r = bob.post(f"/v1/governance/proposals/{p['id']}/cancel")
            assert r.status_code == 403
            clock.now = p["deadline_ms"] + 1
            r = anon.get(f"/v1/governance/proposals/{p['id']}")
            assert r.status_code == 200 and r.json()["state"] == "succeeded" and len(r.json()["vote_list"]) == 1
            r = bob.post(f"/v1/governance/proposals/{p['id']}/queue")
            assert r.status_code == 200 and r.json()["state"] == "queued"
            assert bob.post(f"/v1/governance/proposals/{p['id']}/execute").status_code == 409  # timelock
            clock.now = r.json()["eta_ms"]
            r = zed.post(f"/v1/governance/proposals/{p['id']}/execute")
            assert r.status_code == 200 and r.json()["state"] == "executed"
            assert node.tokens.balance("dave").available == 2_500_000
            r = anon.get("/v1/governance/proposals", params={"state": "executed"})
            assert r.status_code == 200 and [x["id"] for x in r.json()["data"]] == [p["id"]]
            assert anon.get("/v1/governance/proposals/prop_0000000000000000").status_code == 404
            r = anon.get("/v1/governance/params")
            assert r.status_code == 200 and r.json()["params"]["gov_quorum_percent"] == 5 and r.json()["history"]
        finally:
            for c in (alice, bob, zed, anon):
                c.close()
