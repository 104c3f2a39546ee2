"""The whole protocol as one Hypothesis state machine against a plain-dict reference model (issue 4, "Tests that
must exist"; ``shared/reference/ledger.md`` §7 B).

Every operation of the token services runs against a real node (SQLite) and against ``Model``, a second
implementation of the protocol's rules in plain dicts that imports none of the services' logic (only the
deterministic account and transfer ids of ``chart``): OPEN (faucet, transfer), inference fees (reserve, settle,
void, expiry on the clock), staking (stake, cooldown, redeem, delegate, claim, the reward-per-token accumulator,
vote checkpoints), reward epochs (create, fund, freeze, distribute, earnings) and governance (propose, vote,
queue, execute with set_params / treasury_transfer / mint / burn, cancel). Rules include the refusals
(insufficient funds, redeem outside the window or above the budget, double votes, execute before the eta,
settling more than reserved, voided/expired fees, mints over the cap, ...) and retries of every money-moving
call with the same ids, plus ids reused across kinds (``exists_with_different_*``, ``id_already_failed``).
Time moves by milliseconds to days, and jumps to the exact boundaries (cooldown window, fee expiry, snapshot,
deadline, eta, grace) that the rules care about.

After every step (``Driver.check_step``): every ledger account's four balances equal the model's (so every
participant's available / reserved / staked / gOPEN and every system account: treasury, issuance, burn, escrow,
staker pool, reward pool, dust, epoch pools), I1 per ledger, I3 on flagged accounts, I4 supply = issued − burnt
= what is held ≤ cap, I5 the number of transfers and of burnt ids equals the model's (a retry adds nothing), I6
every pending transfer's state, I9 gOPEN = staked and budget ≤ staked, votes per delegatee, every staker's
position and claimable rewards, every live proposal's state, and I10 / I11 on the model. Every ``FULL_EVERY``
steps and at teardown (``Driver.check_all``): every read API against the model (balances, staking states,
votes, supply, params, proposals with tallies and quorum, votes ≤ past total supply, epochs, earnings,
reservations and settlements) and every service's ``audit()``; at teardown also ``node.ledger_audit()`` (the
journal replay, I1-I11).

Lifecycles need several steps in order, which uniformly drawn rules rarely produce within 50 steps, so
``drive_proposal`` and ``drive_epoch`` take one proposal or epoch through several natural steps at once (at and
next to each boundary), and every example starts with one active and one pending proposal.

Speed: the node (genesis with small params, three people funded, staked and two of them self-delegated, one
cooling down, the two proposals) is built once per module; each example copies its closed SQLite home into a
fresh directory (on /dev/shm when there is one: fsync is free there) and opens it on a test clock that moves only
when a rule moves it. ``make test`` runs ``PROFILE_CI`` (300 examples x 50 steps, about 1.5-2.5 minutes on two
busy cores); ``ROYALTY_NIGHTLY=1`` runs 20,000 x 200. Hypothesis prints the failing steps and a reproduction blob;
``pytest -s`` prints how often each outcome occurred.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import royalty
from royalty import Node
from royalty.errors import (
    Conflict,
    InsufficientFunds,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RoyaltyError,
    TransferRejected,
)
from royalty.ledger.chart import AccountCode, TransferCode, account_id, system_account_id, transfer_id
from royalty.ledger.codes import Asset, TransferFlags
from royalty.ledger.fees import FeeRecipients
from royalty.ledger.params import Params

# --------------------------------------------------------------------------------------------------------------
# the world
# --------------------------------------------------------------------------------------------------------------

NIGHTLY = os.environ.get("ROYALTY_NIGHTLY") == "1"
PROFILE_CI = {"max_examples": 300, "stateful_step_count": 50}
PROFILE_NIGHTLY = {"max_examples": 20_000, "stateful_step_count": 200}
FULL_EVERY = 10  # steps between the full API comparison and the service audits
COVERAGE: Counter[str] = Counter()  # outcomes seen, printed by the test (pytest -s) to show what was exercised

SUPPLY = 10_000_000  # base units at genesis, all in the treasury
GENESIS = {
    "supply_cap": SUPPLY + 100_000,
    "gov_voting_delay_s": 10,
    "gov_voting_period_s": 60,
    "gov_timelock_delay_s": 10,
    "gov_grace_period_s": 60,
    "gov_proposal_threshold": 100,
    "gov_quorum_percent": 20,
    "stake_cooldown_s": 20,
    "stake_unstake_window_s": 20,
    "fee_timeout_s": 30,
}
PEOPLE = ("alice", "bob", "carol")
ACTORS = (*PEOPLE, "operator")  # the operator is the admin; it holds no OPEN
FUND = {"alice": 5_000, "bob": 3_000, "carol": 2_000}
STAKE = {"alice": 600, "bob": 300, "carol": 100}
SELF_DELEGATED = ("alice", "bob")  # carol's units count nowhere until she delegates

OPEN = int(Asset.OPEN)
LINKED, PENDING = int(TransferFlags.LINKED), int(TransferFlags.PENDING)
RPT = 10**18  # the accumulator's scale (Synthetix's 1e18)
BPS = 10_000
TREASURY = system_account_id(AccountCode.TREASURY)
ISSUANCE = system_account_id(AccountCode.ISSUANCE)
BURN = system_account_id(AccountCode.BURN)
ESCROW = system_account_id(AccountCode.FEE_ESCROW)
STAKER_POOL = system_account_id(AccountCode.STAKER_POOL)
REWARD_POOL = system_account_id(AccountCode.REWARD_POOL)
DUST = system_account_id(AccountCode.DUST)
GOPEN_ISSUANCE = system_account_id(AccountCode.GOPEN_ISSUANCE)
SOURCES = {"reward_pool": REWARD_POOL, "dust": DUST, "treasury": TREASURY}
SYSTEM = (TREASURY, ISSUANCE, BURN, ESCROW, STAKER_POOL, REWARD_POOL, DUST, GOPEN_ISSUANCE)
UNFLAGGED = {ISSUANCE, BURN, GOPEN_ISSUANCE}  # debit-normal sources and the burn sink: no balance limit

# A transfer as the core compares a resubmission with it, in the core's order of comparison.
FIELDS = ("flags", "pending_id", "timeout", "debit_account_id", "credit_account_id", "amount", "user_data", "ledger",
          "code")
Rec = tuple[int, int, int, int, int, int, str | None, int, int]


def rec(dr: int, cr: int, amount: int, code: TransferCode, *, flags: int = 0, timeout: int = 0,
        user_data: str | None = None, ledger: int = OPEN) -> Rec:
    return (flags, 0, timeout, dr, cr, amount, user_data, ledger, int(code))


def exists_result(new: Rec, old: Rec) -> str:
    """The core's answer to a transfer whose id is taken: ``exists`` only if every field matches."""
    for name, a, b in zip(FIELDS, new, old, strict=True):
        if a != b:
            return f"exists_with_different_{name}"
    return "exists"


@dataclass(frozen=True)
class Refused:
    """What the model expects instead of success: the exact error class and, for TransferRejected, the result."""

    error: type[RoyaltyError]
    result: str | None = None


# --------------------------------------------------------------------------------------------------------------
# the reference model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Staker:
    staked: int = 0
    delegatee: str | None = None
    start: int | None = None  # cooldown start, ms
    budget: int = 0
    paid: int = 0  # reward per token already accounted for
    stored: int = 0  # rewards earned and not claimed
    claims: int = 0

    def earned(self, rpt: int) -> int:
        return self.staked * (rpt - self.paid) // RPT + self.stored

    def settle(self, rpt: int) -> None:
        self.stored = self.earned(rpt)
        self.paid = max(self.paid, rpt)


@dataclass
class Reservation:
    payer: str
    amount: int
    timeout: int
    expires: int
    state: str = "pending"  # pending | posted | voided | expired


@dataclass
class Settled:
    fingerprint: tuple[Any, ...]
    reserved: int
    amount: int
    treasury: int
    owner: int
    stakers: int
    contributors: int
    dust: int


@dataclass
class Epoch:
    pool: int
    state: str = "open"
    funded: int = 0
    weights: dict[str, int] = field(default_factory=dict)  # name -> weight, once frozen
    paid: int | None = None
    dust: int | None = None


@dataclass
class Prop:
    proposer: str
    actions: list[dict[str, Any]]  # library form, with names
    snapshot: int
    deadline: int
    votes: dict[str, tuple[int, int]] = field(default_factory=dict)  # voter -> (support, weight)
    queued: tuple[int, int] | None = None  # (eta, expires)
    executed: bool = False
    canceled: bool = False

    def tally(self) -> tuple[int, int, int]:
        sums = [0, 0, 0]
        for support, weight in self.votes.values():
            sums[support] += weight
        return sums[0], sums[1], sums[2]


class Model:
    """The protocol's rules over plain dicts. Each operation returns ``Refused`` or what the node must return,
    and changes the model only as the node must (a refused operation changes nothing, except that a transfer the
    ledger refused for lack of funds burns its id when the service commits that refusal)."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.params: dict[str, Any] = Params(**GENESIS).model_dump()
        self.params_history: list[tuple[int, dict[str, Any]]] = [(now, dict(self.params))]
        self.ids: dict[str, str] = {}  # name -> node account id
        self.bal: dict[int, list[int]] = {a: [0, 0, 0, 0] for a in SYSTEM}  # dp, dpo, cp, cpo
        self.bal[TREASURY][3] = self.bal[ISSUANCE][1] = SUPPLY
        self.created = 1  # transfers: genesis
        self.failures = 0  # burnt ids
        self.transfers: dict[int, Rec] = {}  # transfers made under ids the test chose
        self.failed: dict[int, str] = {}
        self.stakers: dict[str, Staker] = {}
        self.total_staked = 0
        self.rpt = 0
        self.votes: dict[str, int] = {}
        self.vote_cps: dict[str, list[tuple[int, int]]] = {}
        self.supply_cps: list[tuple[int, int]] = []
        self.reservations: dict[str, Reservation] = {}
        self.settlements: dict[str, Settled] = {}
        self.epochs: dict[str, Epoch] = {}
        self.fundings: dict[int, tuple[str, str, int]] = {}  # transfer id -> (epoch, source, amount)
        self.earned: dict[str, list[int]] = {}  # name -> [fee items, fee total, epoch items, epoch total]
        self.proposals: dict[str, Prop] = {}
        self.proposal_keys: set[tuple[str, str, str]] = set()

    # --- accounts and transfers ----------------------------------------------------------------------------
    def add_person(self, name: str, acct: str) -> None:
        self.ids[name] = acct
        if name == "operator":
            return
        for code in (AccountCode.AVAILABLE, AccountCode.STAKED, AccountCode.GOPEN):
            self.bal[account_id(code, acct)] = [0, 0, 0, 0]
        self.stakers[name] = Staker()
        self.earned[name] = [0, 0, 0, 0]

    def av(self, name: str) -> int:
        return account_id(AccountCode.AVAILABLE, self.ids[name])

    def st(self, name: str) -> int:
        return account_id(AccountCode.STAKED, self.ids[name])

    def go(self, name: str) -> int:
        return account_id(AccountCode.GOPEN, self.ids[name])

    def available(self, acct: int) -> int:
        dp, dpo, _, cpo = self.bal[acct]
        return cpo - dpo - dp

    def post(self, dr: int, cr: int, amount: int) -> None:
        self.bal[dr][1] += amount
        self.bal[cr][3] += amount
        self.created += 1

    def burn_id(self, tid: int, result: str) -> Refused:
        self.failed[tid] = result
        self.failures += 1
        return Refused(InsufficientFunds, result)

    def id_taken(self, tid: int, new: Rec) -> str | None:
        """The core's answer when ``tid`` was used before (exists / exists_with_different_* / id_already_failed)."""
        old = self.transfers.get(tid)
        if old is not None:
            return exists_result(new, old)
        if tid in self.failed:
            return "id_already_failed"
        return None

    def prior(self, tid: int, new: Rec, *, any_amount: bool = False) -> Refused | int | None:
        """Staking's check of a client id (``_prior_in``): the first amount for a retry, Refused for an id used
        otherwise, None for a fresh id. It compares debit, credit, code/ledger and amount, not flags."""
        old = self.transfers.get(tid)
        if old is not None:
            for i, result in ((3, "exists_with_different_debit_account_id"),
                              (4, "exists_with_different_credit_account_id")):
                if new[i] != old[i]:
                    return Refused(TransferRejected, result)
            if new[8] != old[8] or new[7] != old[7]:
                return Refused(TransferRejected, "exists_with_different_code")
            if not any_amount and new[5] != old[5]:
                return Refused(TransferRejected, "exists_with_different_amount")
            return old[5]
        if tid in self.failed:
            return Refused(TransferRejected, "id_already_failed")
        return None

    def supply(self) -> int:
        issued = self.bal[ISSUANCE][1] - self.bal[ISSUANCE][3]
        burnt = self.bal[BURN][3] - self.bal[BURN][1]
        return issued - burnt

    def release(self) -> None:
        """Expire every reservation whose timeout has passed (the node does it lazily; see ``db_view``)."""
        for r in self.reservations.values():
            if r.state == "pending" and r.expires <= self.now:
                r.state = "expired"
                self.bal[self.av(r.payer)][0] -= r.amount
                self.bal[ESCROW][2] -= r.amount

    def params_at(self, ms: int) -> dict[str, Any]:
        found = self.params_history[0][1]
        for effective, values in self.params_history:
            if effective <= ms:
                found = values
        return found

    def past_votes(self, name: str, t: int) -> int:
        value = 0
        for tp, v in self.vote_cps.get(name, []):
            if tp <= t:
                value = v
        return value

    def past_total(self, t: int) -> int:
        value = 0
        for tp, v in self.supply_cps:
            if tp <= t:
                value = v
        return value

    # --- tokens ----------------------------------------------------------------------------------------------
    def faucet(self, name: str, amount: int, tid: int, actor: str) -> Refused | str:
        if actor != "operator":
            return Refused(PermissionDenied)
        new = rec(TREASURY, self.av(name), amount, TransferCode.FAUCET)
        taken = self.id_taken(tid, new)
        if taken == "exists":
            return "exists"
        if taken:
            return Refused(TransferRejected, taken)
        if self.available(TREASURY) < amount:
            return self.burn_id(tid, "exceeds_credits")
        self.post(TREASURY, self.av(name), amount)
        self.transfers[tid] = new
        return "ok"

    def transfer(self, src: str, dst: str, amount: int, tid: int, actor: str) -> Refused | str:
        if actor != src:
            return Refused(PermissionDenied)
        if src == dst:
            return Refused(InvalidInput)
        new = rec(self.av(src), self.av(dst), amount, TransferCode.TRANSFER)
        taken = self.id_taken(tid, new)
        if taken == "exists":
            return "exists"
        if taken:
            return Refused(TransferRejected, taken)
        if self.available(self.av(src)) < amount:
            return self.burn_id(tid, "exceeds_credits")
        self.post(self.av(src), self.av(dst), amount)
        self.transfers[tid] = new
        return "ok"

    # --- staking -------------------------------------------------------------------------------------------
    def _move_votes(self, changes: dict[str, int]) -> None:
        for d, delta in sorted(changes.items()):
            self.votes[d] = self.votes.get(d, 0) + delta
            self.vote_cps.setdefault(d, []).append((self.now, self.votes[d]))

    def stake(self, name: str, amount: int, tid: int, actor: str) -> Refused | tuple[str, int]:
        if actor != name:
            return Refused(PermissionDenied)
        new = rec(self.av(name), self.st(name), amount, TransferCode.STAKE, flags=LINKED)
        prior = self.prior(tid, new)
        if isinstance(prior, Refused):
            return prior
        if prior is not None:
            return "exists", prior
        if self.available(self.av(name)) < amount:
            return self.burn_id(tid, "exceeds_credits")
        s = self.stakers[name]
        s.settle(self.rpt)
        s.staked += amount
        self.total_staked += amount
        self.post(self.av(name), self.st(name), amount)
        self.post(GOPEN_ISSUANCE, self.go(name), amount)
        self.transfers[tid] = new
        self.supply_cps.append((self.now, self.total_staked))
        if s.delegatee is not None:
            self._move_votes({s.delegatee: amount})
        return "ok", amount

    def cooldown(self, name: str, actor: str) -> Refused | int:
        if actor != name:
            return Refused(PermissionDenied)
        s = self.stakers[name]
        if s.staked == 0:
            return Refused(Conflict)
        s.start, s.budget = self.now, s.staked
        return s.budget

    def window(self, s: Staker) -> tuple[int, int]:
        assert s.start is not None
        opens = s.start + self.params["stake_cooldown_s"] * 1000
        return opens, opens + self.params["stake_unstake_window_s"] * 1000

    def redeem(self, name: str, amount: int, tid: int, actor: str) -> Refused | tuple[str, int]:
        if actor != name:
            return Refused(PermissionDenied)
        new = rec(self.st(name), self.av(name), amount, TransferCode.REDEEM, flags=LINKED)
        prior = self.prior(tid, new)
        if isinstance(prior, Refused):
            return prior
        if prior is not None:
            return "exists", prior
        s = self.stakers[name]
        if s.staked == 0 or s.start is None:
            return Refused(Conflict)
        opens, closes = self.window(s)
        if not opens <= self.now <= closes or amount > s.budget:
            return Refused(Conflict)
        s.settle(self.rpt)
        s.staked -= amount
        budget = min(s.budget - amount, s.staked)
        s.start = s.start if budget > 0 else None
        s.budget = max(budget, 0)
        self.total_staked -= amount
        self.post(self.st(name), self.av(name), amount)
        self.post(self.go(name), GOPEN_ISSUANCE, amount)
        self.transfers[tid] = new
        self.supply_cps.append((self.now, self.total_staked))
        if s.delegatee is not None:
            self._move_votes({s.delegatee: -amount})
        return "ok", amount

    def delegate(self, name: str, to: str, actor: str) -> Refused | str:
        if actor != name:
            return Refused(PermissionDenied)
        s = self.stakers[name]
        if s.delegatee == to:
            return "noop"
        changes = {to: s.staked}
        if s.delegatee is not None:
            changes[s.delegatee] = -s.staked
        if s.staked:
            self._move_votes(changes)
        else:
            for d in changes:
                self.votes.setdefault(d, 0)
        s.delegatee = to
        return "ok"

    def claim(self, name: str, tid: int | None, actor: str) -> Refused | tuple[str, int]:
        if actor != name:
            return Refused(PermissionDenied)
        dst = self.av(name)
        if tid is not None:
            prior = self.prior(tid, rec(STAKER_POOL, dst, 0, TransferCode.STAKER_CLAIM), any_amount=True)
            if isinstance(prior, Refused):
                return prior
            if prior is not None:
                return "exists", prior
        s = self.stakers[name]
        if s.earned(self.rpt) == 0:
            return "noop", 0  # nothing is written: paid stays where it was
        s.settle(self.rpt)
        amount = s.stored
        if tid is None:
            tid = transfer_id("staking.claim", self.ids[name], str(s.claims + 1))
        s.stored = 0
        s.claims += 1
        self.post(STAKER_POOL, dst, amount)
        self.transfers[tid] = rec(STAKER_POOL, dst, amount, TransferCode.STAKER_CLAIM)
        return "ok", amount

    # --- fees ------------------------------------------------------------------------------------------------
    def reserve(self, req: str, payer: str, amount: int, timeout_s: int | None, actor: str) -> Refused | Reservation:
        if actor not in (payer, "operator"):
            return Refused(PermissionDenied)
        timeout = timeout_s if timeout_s is not None else self.params["fee_timeout_s"]
        tid = transfer_id("fee", req, "reserve")
        new = rec(self.av(payer), ESCROW, amount, TransferCode.FEE_RESERVE, flags=PENDING, timeout=timeout,
                  user_data=req)
        taken = self.id_taken(tid, new)
        if taken is not None:
            r = self.reservations[req]
            if taken == "exists" or (taken == "exists_with_different_timeout" and timeout_s is None
                                     and (r.payer, r.amount) == (payer, amount)):
                return r
            return Refused(TransferRejected, taken)
        if self.available(self.av(payer)) < amount:
            return Refused(InsufficientFunds, "exceeds_credits")  # raised inside: nothing recorded, no id burnt
        self.bal[self.av(payer)][0] += amount
        self.bal[ESCROW][2] += amount
        self.created += 1
        self.transfers[tid] = new
        r = self.reservations[req] = Reservation(payer, amount, timeout, self.now + timeout * 1000)
        return r

    def settle(self, req: str, amount: int, owner: str, weights: dict[str, int], actor: str) -> Refused | Settled:
        r = self.reservations.get(req)
        if r is None:
            return Refused(NotFound)
        if actor not in (r.payer, "operator"):
            return Refused(PermissionDenied)
        paid_weights = {n: w for n, w in weights.items() if w > 0}
        fingerprint = (amount, owner, tuple(sorted((self.ids[n], w) for n, w in paid_weights.items())))
        done = self.settlements.get(req)
        if done is not None:
            return done if done.fingerprint == fingerprint else Refused(Conflict)
        if r.state != "pending" or amount > r.amount:
            return Refused(Conflict)
        p = self.params
        treasury = amount * p["fee_treasury_bps"] // BPS
        owner_leg = amount * p["fee_owner_bps"] // BPS
        stakers = amount * p["fee_stakers_bps"] // BPS
        pool = amount * p["fee_contributors_bps"] // BPS
        treasury += amount - (treasury + owner_leg + stakers + pool)
        total_weight = sum(paid_weights.values())
        shares: dict[str, int] = {}
        dust = 0
        if total_weight == 0:
            treasury += pool
        else:
            # floor(pool * w / sum w) per contributor in ascending account id order (the order the legs go in)
            for n in sorted(paid_weights, key=lambda n: self.ids[n]):
                shares[n] = pool * paid_weights[n] // total_weight
            dust = pool - sum(shares.values())
        allocated = 0
        if stakers and self.total_staked:
            increment = stakers * RPT // self.total_staked
            if increment:
                self.rpt += increment
                allocated = stakers
        treasury += stakers - allocated
        stakers = allocated
        # the post: the reservation's whole amount leaves pending, the actual amount is posted
        self.bal[self.av(r.payer)][0] -= r.amount
        self.bal[ESCROW][2] -= r.amount
        self.post(self.av(r.payer), ESCROW, amount)
        r.state = "posted"
        legs = [(TREASURY, treasury), (self.av(owner), owner_leg), (STAKER_POOL, stakers)]
        legs += [(self.av(n), v) for n, v in shares.items()]
        legs.append((DUST, dust))
        for credit, value in legs:
            if value:
                self.post(ESCROW, credit, value)
        self.earned[owner][0] += 1
        self.earned[owner][1] += owner_leg
        for n in paid_weights:
            self.earned[n][0] += 1
            self.earned[n][1] += shares[n]
        s = self.settlements[req] = Settled(fingerprint, r.amount, amount, treasury, owner_leg, stakers,
                                            sum(shares.values()), dust)
        return s

    def void(self, req: str, actor: str) -> Refused | str:
        r = self.reservations.get(req)
        if r is None:
            return Refused(NotFound)
        if actor not in (r.payer, "operator"):
            return Refused(PermissionDenied)
        if r.state == "voided":
            return "voided"
        if r.state != "pending":
            return Refused(Conflict)
        self.bal[self.av(r.payer)][0] -= r.amount
        self.bal[ESCROW][2] -= r.amount
        self.created += 1
        r.state = "voided"
        return "voided"

    # --- reward epochs ---------------------------------------------------------------------------------------
    def create_epoch(self, eid: str) -> None:
        pool = account_id(AccountCode.EPOCH_POOL, eid)
        self.bal[pool] = [0, 0, 0, 0]
        self.epochs[eid] = Epoch(pool)

    def fund(self, eid: str, amount: int | None, source: str, tid: int, actor: str) -> Refused | int:
        if actor != "operator":
            return Refused(PermissionDenied)
        e = self.epochs[eid]
        done = self.fundings.get(tid)
        if done is not None:
            if done[0] != eid or done[1] != source or (amount is not None and done[2] != amount):
                return Refused(Conflict)
            return done[2]
        if e.state != "open":
            return Refused(Conflict)
        src = SOURCES[source]
        units = amount if amount is not None else self.available(src)
        if units <= 0:
            return Refused(Conflict)
        taken = self.id_taken(tid, rec(src, e.pool, units, TransferCode.EPOCH_FUND))
        if taken is not None:
            return Refused(TransferRejected, taken)  # raised inside the transaction: nothing is burnt
        if self.available(src) < units:
            return Refused(InsufficientFunds, "exceeds_credits")
        self.post(src, e.pool, units)
        self.transfers[tid] = rec(src, e.pool, units, TransferCode.EPOCH_FUND)
        self.fundings[tid] = (eid, source, units)
        return units

    def freeze(self, eid: str, weights: dict[str, int], actor: str) -> Refused | Epoch:
        if sum(weights.values()) == 0:
            return Refused(InvalidInput)
        if actor != "operator":
            return Refused(PermissionDenied)
        e = self.epochs[eid]
        if e.state != "open":
            return e if e.weights == weights else Refused(Conflict)
        funded = self.available(e.pool)
        if funded <= 0:
            return Refused(Conflict)
        e.state, e.funded, e.weights = "frozen", funded, dict(weights)
        return e

    def distribute(self, eid: str, actor: str) -> Refused | Epoch:
        if actor != "operator":
            return Refused(PermissionDenied)
        e = self.epochs[eid]
        if e.state == "distributed":
            return e
        if e.state != "frozen":
            return Refused(Conflict)
        total = sum(e.weights.values())
        paid = {n: e.funded * w // total for n, w in e.weights.items()}
        dust = e.funded - sum(paid.values())
        for n, v in paid.items():
            if v:
                self.post(e.pool, self.av(n), v)
            self.earned[n][2] += 1
            self.earned[n][3] += v
        if dust:
            self.post(e.pool, DUST, dust)
        e.state, e.paid, e.dust = "distributed", sum(paid.values()), dust
        return e

    # --- governance ------------------------------------------------------------------------------------------
    def state_of(self, p: Prop) -> str:
        if p.executed:
            return "executed"
        if p.canceled:
            return "canceled"
        if self.now <= p.snapshot:
            return "pending"
        if self.now <= p.deadline:
            return "active"
        if p.queued is not None:
            return "expired" if self.now >= p.queued[1] else "queued"
        against, for_, abstain = p.tally()
        return "succeeded" if for_ + abstain >= self.quorum(p) and for_ > against else "defeated"

    def quorum(self, p: Prop) -> int:
        return self.past_total(p.snapshot) * self.params_at(p.snapshot)["gov_quorum_percent"] // 100

    @staticmethod
    def split_ok(params: dict[str, Any]) -> bool:
        return (params["fee_treasury_bps"] + params["fee_owner_bps"] + params["fee_stakers_bps"]
                + params["fee_contributors_bps"]) == BPS

    def actions_valid(self, actions: list[dict[str, Any]]) -> bool:
        """Propose-time validation: the actions simulated in order on the supply and the params."""
        supply, params, ok = self.supply(), dict(self.params), True
        for a in actions:
            if a["type"] == "set_params":
                changed = {**params, **a["changes"]}
                if not self.split_ok(changed):
                    ok = False
                    continue
                params = changed  # kept even when the cap check below fails (as the service does)
                if params["supply_cap"] < supply:
                    ok = False
            elif a["type"] == "burn":
                supply -= a["amount"]
            elif a["type"] == "mint":
                if supply + a["amount"] > params["supply_cap"]:
                    ok = False
                    continue
                supply += a["amount"]
        return ok

    def propose(self, actions: list[dict[str, Any]], description: str, actor: str) -> Refused | tuple[int, int]:
        if not self.actions_valid(actions):
            return Refused(InvalidInput)
        if self.past_votes(actor, self.now - 1) < self.params["gov_proposal_threshold"]:
            return Refused(PermissionDenied)
        key = (actor, description, repr(actions))
        if key in self.proposal_keys:
            return Refused(Conflict)
        snapshot = self.now + self.params["gov_voting_delay_s"] * 1000
        return snapshot, snapshot + self.params["gov_voting_period_s"] * 1000

    def add_proposal(self, pid: str, actions: list[dict[str, Any]], description: str, actor: str,
                     times: tuple[int, int]) -> None:
        assert pid not in self.proposals, pid
        self.proposals[pid] = Prop(actor, actions, *times)
        self.proposal_keys.add((actor, description, repr(actions)))

    def vote(self, pid: str, support: int, actor: str) -> Refused | int:
        p = self.proposals[pid]
        if self.state_of(p) != "active" or actor in p.votes:
            return Refused(Conflict)
        weight = self.past_votes(actor, p.snapshot)
        p.votes[actor] = (support, weight)
        return weight

    def queue(self, pid: str) -> Refused | tuple[int, int]:
        p = self.proposals[pid]
        if self.state_of(p) != "succeeded":
            return Refused(Conflict)
        eta = self.now + self.params["gov_timelock_delay_s"] * 1000
        p.queued = (eta, eta + self.params["gov_grace_period_s"] * 1000)
        return p.queued

    def execute(self, pid: str) -> Refused | str:
        p = self.proposals[pid]
        if self.state_of(p) != "queued":
            return Refused(Conflict)
        assert p.queued is not None
        if self.now < p.queued[0]:
            return Refused(Conflict)
        # All or nothing: run the actions on copies, keep them only if every action succeeds.
        saved = (self.bal, self.params, self.params_history, self.created)
        self.bal = copy.deepcopy(self.bal)
        self.params, self.params_history = dict(self.params), list(self.params_history)
        failure: Refused | None = None
        for a in p.actions:
            kind, amount = a["type"], a.get("amount", 0)
            if kind == "set_params":
                changed = {**self.params, **a["changes"]}
                if not self.split_ok(changed) or changed["supply_cap"] < self.supply():
                    failure = Refused(Conflict)  # InvalidInput from set_in, reported as the action's Conflict
                    break
                self.params = changed
                self.params_history.append((self.now, dict(changed)))
            elif kind == "treasury_transfer":
                if self.available(TREASURY) < amount:
                    failure = Refused(InsufficientFunds, "exceeds_credits")
                    break
                self.post(TREASURY, self.av(a["to"]), amount)
            elif kind == "mint":
                if self.supply() + amount > self.params["supply_cap"]:
                    failure = Refused(TransferRejected, "exceeds_supply_cap")
                    break
                self.post(ISSUANCE, TREASURY if a["to"] == "treasury" else self.av(a["to"]), amount)
            elif kind == "burn":
                if self.available(TREASURY) < amount:
                    failure = Refused(InsufficientFunds, "exceeds_credits")
                    break
                self.post(TREASURY, BURN, amount)
        if failure is not None:
            self.bal, self.params, self.params_history, self.created = saved
            return failure
        p.executed = True
        return "executed"

    def cancel(self, pid: str, actor: str) -> Refused | str:
        p = self.proposals[pid]
        if actor != p.proposer:
            return Refused(PermissionDenied)
        if self.state_of(p) != "pending":
            return Refused(Conflict)
        p.canceled = True
        return "canceled"


# --------------------------------------------------------------------------------------------------------------
# the driver: one operation on the node and on the model, compared
# --------------------------------------------------------------------------------------------------------------


class Driver:
    """Runs each operation on the node and on the model and compares outcomes and return values."""

    def __init__(self, node: Node, clock: Clock, model: Model, *, stats: bool = True) -> None:
        self.node = node
        self.clock = clock
        self.model = model
        self.stats = stats
        self.next_id = 1
        self.used_ids: list[int] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []  # money-moving calls, for the retry rule

    def fresh_id(self) -> int:
        tid = 1 << 120 | self.next_id
        self.next_id += 1
        return tid

    def note(self, text: str) -> None:
        if self.stats:
            event(text)
            COVERAGE[text] += 1

    def attempt(self, label: str, want: Any, call: Callable[[], Any]) -> Any:
        """Run ``call`` on the node; it must refuse exactly as ``want`` says (a Refused) or succeed."""
        try:
            got = call()
        except RoyaltyError as exc:
            if not isinstance(want, Refused):
                raise AssertionError(f"{label}: the node refused ({type(exc).__name__}: {exc.message}), the model "
                                     f"expected {want!r}") from exc
            assert type(exc) is want.error, (f"{label}: the node raised {type(exc).__name__} ({exc.message}), the "
                                             f"model expected {want.error.__name__} {want.result or ''}")
            if want.result is not None:
                assert getattr(exc, "result", None) == want.result, (label, exc.message, want)
            self.note(f"{label}: refused ({want.error.__name__}{' ' + want.result if want.result else ''})")
            return None
        assert not isinstance(want, Refused), (f"{label}: the node accepted it, the model expected "
                                               f"{want.error.__name__} {want.result or ''}")
        return got

    def advance(self, ms: int) -> None:
        self.clock.now += ms
        self.model.now = self.clock.now
        self.model.release()

    # --- operations --------------------------------------------------------------------------------------------
    def faucet(self, name: str, amount: int, tid: int, actor: str = "operator") -> None:
        self.calls.append(("faucet", {"name": name, "amount": amount, "tid": tid, "actor": actor}))
        self.used_ids.append(tid)
        want = self.model.faucet(name, amount, tid, actor)
        got = self.attempt("faucet", want, lambda: self.node.tokens.faucet(name, amount, actor=actor, id=tid))
        if got is not None:
            assert got[1].value == want and got[0].amount == amount, (got, want)
            self.note(f"faucet: {want}")

    def transfer(self, src: str, dst: str, amount: int, tid: int, actor: str) -> None:
        self.calls.append(("transfer", {"src": src, "dst": dst, "amount": amount, "tid": tid, "actor": actor}))
        self.used_ids.append(tid)
        want = self.model.transfer(src, dst, amount, tid, actor)
        got = self.attempt("transfer", want,
                           lambda: self.node.tokens.transfer(src, dst, amount, actor=actor, id=tid))
        if got is not None:
            assert got[1].value == want, (got, want)
            self.note(f"transfer: {want}")

    def stake(self, name: str, amount: int, tid: int, actor: str) -> None:
        self.calls.append(("stake", {"name": name, "amount": amount, "tid": tid, "actor": actor}))
        self.used_ids.append(tid)
        want = self.model.stake(name, amount, tid, actor)
        got = self.attempt("stake", want, lambda: self.node.staking.stake(name, amount, actor=actor, id=tid))
        if got is not None:
            assert (got.result, got.amount) == want, (got, want)
            self.note(f"stake: {want[0]}")

    def cooldown(self, name: str, actor: str) -> None:
        want = self.model.cooldown(name, actor)
        got = self.attempt("cooldown", want, lambda: self.node.staking.cooldown(name, actor=actor))
        if got is not None:
            assert got.amount == want and got.state.cooldown_start_ms == self.clock.now, (got, want)
            self.note("cooldown: ok")

    def redeem(self, name: str, amount: int, tid: int, actor: str) -> None:
        self.calls.append(("redeem", {"name": name, "amount": amount, "tid": tid, "actor": actor}))
        self.used_ids.append(tid)
        want = self.model.redeem(name, amount, tid, actor)
        got = self.attempt("redeem", want, lambda: self.node.staking.redeem(name, amount, actor=actor, id=tid))
        if got is not None:
            assert (got.result, got.amount) == want, (got, want)
            self.note(f"redeem: {want[0]}")

    def delegate(self, name: str, to: str, actor: str) -> None:
        want = self.model.delegate(name, to, actor)
        got = self.attempt("delegate", want, lambda: self.node.staking.delegate(name, to, actor=actor))
        if got is not None:
            assert got.result == want, (got, want)
            self.note(f"delegate: {want}")

    def claim(self, name: str, tid: int | None, actor: str) -> None:
        self.calls.append(("claim", {"name": name, "tid": tid, "actor": actor}))
        if tid is not None:
            self.used_ids.append(tid)
        want = self.model.claim(name, tid, actor)
        got = self.attempt("claim", want, lambda: self.node.staking.claim(name, actor=actor, id=tid))
        if got is not None:
            assert (got.result, got.amount) == want, (got, want)
            self.note(f"claim: {want[0]}")

    def reserve(self, req: str, payer: str, amount: int, timeout_s: int | None, actor: str) -> None:
        self.calls.append(("reserve", {"req": req, "payer": payer, "amount": amount, "timeout_s": timeout_s,
                                       "actor": actor}))
        want = self.model.reserve(req, payer, amount, timeout_s, actor)
        got = self.attempt("reserve", want, lambda: self.node.fees.reserve_fee(req, payer, amount, timeout_s=timeout_s,
                                                                               actor=actor))
        if got is not None:
            assert isinstance(want, Reservation)
            assert (got.payer, got.amount, got.timeout_s, got.expires_ms) == (
                self.model.ids[want.payer], want.amount, want.timeout, want.expires), (got, want)
            assert got.state == want.state, (got, want)  # the call's own batch released it if it was overdue
            self.note("reserve: ok")

    def settle(self, req: str, amount: int, owner: str, weights: dict[str, int], actor: str) -> None:
        self.calls.append(("settle", {"req": req, "amount": amount, "owner": owner, "weights": weights,
                                      "actor": actor}))
        want = self.model.settle(req, amount, owner, weights, actor)
        recipients = FeeRecipients(owner=owner, contributors=weights)
        got = self.attempt("settle", want, lambda: self.node.fees.settle_fee(req, amount, recipients, actor=actor))
        if got is not None:
            assert isinstance(want, Settled)
            assert (got.reserved, got.amount, got.treasury, got.owner_amount, got.stakers, got.contributors,
                    got.dust) == (want.reserved, want.amount, want.treasury, want.owner, want.stakers,
                                  want.contributors, want.dust), (got, want)
            self.note("settle: ok")

    def void(self, req: str, actor: str) -> None:
        self.calls.append(("void", {"req": req, "actor": actor}))
        want = self.model.void(req, actor)
        got = self.attempt("void", want, lambda: self.node.fees.void_fee(req, actor=actor))
        if got is not None:
            assert got.state == want, (got, want)
            self.note("void: ok")

    def create_epoch(self, actor: str) -> None:
        if actor != "operator":
            self.attempt("create_epoch", Refused(PermissionDenied), lambda: self.node.rewards.create_epoch(actor=actor))
            return
        e = self.node.rewards.create_epoch("model", actor=actor)
        assert (e.state, e.funded) == ("open", 0), e
        self.model.create_epoch(e.id)
        self.note("create_epoch: ok")

    def fund(self, eid: str, amount: int | None, source: str, tid: int, actor: str) -> None:
        self.calls.append(("fund", {"eid": eid, "amount": amount, "source": source, "tid": tid, "actor": actor}))
        self.used_ids.append(tid)
        want = self.model.fund(eid, amount, source, tid, actor)
        got = self.attempt("fund", want,
                           lambda: self.node.rewards.fund(eid, amount, source=source, actor=actor, id=tid))
        if got is not None:
            assert got["units"] == want, (got, want)
            self.note(f"fund: ok from {source}")

    def freeze(self, eid: str, weights: dict[str, int], actor: str) -> None:
        want = self.model.freeze(eid, weights, actor)
        got = self.attempt("freeze", want, lambda: self.node.rewards.freeze(eid, weights, actor=actor))
        if got is not None:
            assert isinstance(want, Epoch)
            assert (got.state, got.funded, got.total_weight) == (want.state, want.funded,
                                                                  sum(want.weights.values())), (got, want)
            self.note("freeze: ok")

    def distribute(self, eid: str, actor: str) -> None:
        self.calls.append(("distribute", {"eid": eid, "actor": actor}))
        want = self.model.distribute(eid, actor)
        got = self.attempt("distribute", want, lambda: self.node.rewards.distribute(eid, actor=actor))
        if got is not None:
            assert isinstance(want, Epoch)
            assert (got.state, got.funded, got.paid, got.dust) == ("distributed", want.funded, want.paid,
                                                                    want.dust), (got, want)
            self.note("distribute: ok")

    def propose(self, actions: list[dict[str, Any]], description: str, actor: str) -> None:
        want = self.model.propose(actions, description, actor)
        got = self.attempt("propose", want, lambda: self.node.governance.propose(actions, description, actor=actor))
        if got is not None:
            assert isinstance(want, tuple)
            assert (got.state, got.snapshot_ms, got.deadline_ms) == ("pending", *want), (got, want)
            self.model.add_proposal(got.id, actions, description, actor, want)
            self.note("propose: ok")

    def vote(self, pid: str, support: int, actor: str) -> None:
        want = self.model.vote(pid, support, actor)
        got = self.attempt("vote", want, lambda: self.node.governance.vote(pid, support, actor=actor))
        if got is not None:
            assert (got.support, got.weight) == (support, want), (got, want)
            self.note("vote: ok")

    def queue(self, pid: str, actor: str) -> None:
        want = self.model.queue(pid)
        got = self.attempt("queue", want, lambda: self.node.governance.queue(pid, actor=actor))
        if got is not None:
            assert (got.state, got.eta_ms, got.expires_ms) == ("queued", *want), (got, want)
            self.note("queue: ok")

    def execute(self, pid: str, actor: str) -> None:
        want = self.model.execute(pid)
        got = self.attempt("execute", want, lambda: self.node.governance.execute(pid, actor=actor))
        if got is not None:
            assert got.state == "executed", got
            self.note("execute: ok " + "+".join(a["type"] for a in self.model.proposals[pid].actions))

    def cancel(self, pid: str, actor: str) -> None:
        want = self.model.cancel(pid, actor)
        got = self.attempt("cancel", want, lambda: self.node.governance.cancel(pid, actor=actor))
        if got is not None:
            assert got.state == "canceled", got
            self.note("cancel: ok")

    def retry(self, index: int) -> None:
        """Replay an earlier money-moving call verbatim: same ids, same arguments."""
        kind, kwargs = self.calls[index]
        getattr(self, kind)(**kwargs)

    # --- checks ----------------------------------------------------------------------------------------------
    def db_view(self, pending_rows: dict[str, tuple[str, int | None]]) -> dict[int, list[int]]:
        """The model's balances as the database must show them: a reservation the model expired that the node has
        not released yet (nothing touched its accounts since, and no sweep ran) still counts as pending there."""
        m = self.model
        view = {a: list(b) for a, b in m.bal.items()}
        for req, r in m.reservations.items():
            state, expires = pending_rows[format(transfer_id("fee", req, "reserve"), "032x")]
            if r.state == "expired":
                assert state in ("pending", "expired"), (req, state)
                if state == "pending":
                    assert expires is not None and expires <= m.now, (req, expires, m.now)
                    view[m.av(r.payer)][0] += r.amount
                    view[ESCROW][2] += r.amount
            else:
                assert state == r.state, (req, state, r)
        return view

    def check_step(self, step: int) -> dict[int, list[int]]:
        """After every step: every ledger account, I1, I3, I4, I5 counts, I6, votes, stakers, live proposals."""
        m, node = self.model, self.node
        with node.store.read() as conn:
            sums = conn.exec_driver_sql(
                "SELECT ledger, SUM(debits_pending), SUM(debits_posted), SUM(credits_pending), SUM(credits_posted), "
                "COUNT(*) FROM ledger_accounts GROUP BY ledger").all()
            transfers = conn.exec_driver_sql("SELECT COUNT(*) FROM ledger_transfers").scalar_one()
            failures = conn.exec_driver_sql("SELECT COUNT(*) FROM ledger_failures").scalar_one()
            pending = {r[0]: (r[1], r[2]) for r in conn.exec_driver_sql(
                "SELECT id, state, expires_ms FROM ledger_pending").all()}
            delegates = dict(conn.exec_driver_sql("SELECT delegatee_id, votes FROM staking_delegates").all())
            stakers = {r[0]: r[1:] for r in conn.exec_driver_sql(
                "SELECT account_id, staked, delegatee_id, cooldown_start_ms, cooldown_budget, reward_paid_rpt, "
                "rewards_stored, claims FROM staking_stakers").all()}
            total_staked, rpt = conn.exec_driver_sql("SELECT total_staked, reward_per_token FROM staking_state").one()
        for ledger, dp, dpo, cp, cpo, _ in sums:  # I1
            assert (int(dp), int(dpo)) == (int(cp), int(cpo)), f"I1 broken on ledger {ledger}: {sums}"
        assert sum(int(r[5]) for r in sums) == len(m.bal), "an account the model does not know exists"
        assert (transfers, failures) == (m.created, m.failures), "I5: transfers or burnt ids differ from the model"
        assert len(pending) == len(m.reservations), (pending, m.reservations)
        view = self.db_view(pending)
        found = node.ledger.lookup_accounts(list(view))
        assert len(found) == len(view)
        held = 0
        for a in found:
            got = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]
            assert got == view[a.id], f"account {a.id:032x} (code {a.code}): node {got}, model {view[a.id]}"
            if a.id not in UNFLAGGED:  # I3, reservations included
                assert a.debits_pending + a.debits_posted <= a.credits_posted, a
            if a.ledger == OPEN and a.id not in (ISSUANCE, BURN):
                held += a.credits_posted - a.debits_posted
        by_id = {a.id: a for a in found}  # I4: supply = issued - burnt = what is held, <= cap
        issued = by_id[ISSUANCE].debits_posted - by_id[ISSUANCE].credits_posted
        burnt = by_id[BURN].credits_posted - by_id[BURN].debits_posted
        assert issued - burnt == held == m.supply() <= m.params["supply_cap"], (issued, burnt, held, m.supply())
        for name in PEOPLE:  # I9: gOPEN == STAKED == staked units; votes per delegatee
            s = m.stakers[name]
            assert m.available(m.go(name)) == m.available(m.st(name)) == s.staked, name
            assert 0 <= s.budget <= s.staked and (s.budget > 0) == (s.start is not None), (name, s)
            assert int(delegates.get(m.ids[name], 0)) == m.votes.get(name, 0), (name, delegates, m.votes)
        assert set(delegates) <= {m.ids[n] for n in PEOPLE}, delegates
        assert sum(m.votes.values()) <= m.total_staked == sum(s.staked for s in m.stakers.values())
        # Every staker's position and claimable rewards (Synthetix: staked x (rpt - paid) / 1e18 + stored).
        assert (int(total_staked), int(rpt)) == (m.total_staked, m.rpt), (total_staked, rpt, m.total_staked, m.rpt)
        assert set(stakers) == {m.ids[n] for n in PEOPLE}, stakers
        for name in PEOPLE:
            staked, delegatee, start, budget, paid, stored, claims = stakers[m.ids[name]]
            s = m.stakers[name]
            claimable = int(staked) * (int(rpt) - int(paid)) // RPT + int(stored)
            have = (int(staked), delegatee, start, int(budget), claimable, int(claims))
            want = (s.staked, m.ids[s.delegatee] if s.delegatee else None, s.start, s.budget, s.earned(m.rpt), s.claims)
            assert have == want, f"{name}: node {have}, model {want}"
        for pid, p in m.proposals.items():
            state = m.state_of(p)
            if state not in ("executed", "canceled", "defeated", "expired") or step % FULL_EVERY == 0:
                assert node.governance.state(pid) == state, (pid, state, p)
            if m.now > p.snapshot:  # I10 on the model: weights are past votes, together <= past total supply
                assert sum(w for _, w in p.votes.values()) <= m.past_total(p.snapshot), p
        for e in m.epochs.values():  # I11 on the model
            if e.state == "distributed":
                assert e.paid is not None and e.dust is not None and e.paid + e.dust == e.funded, e
                assert m.available(e.pool) == 0, e
            elif e.state == "frozen":
                assert m.available(e.pool) == e.funded, e
        return view

    def check_staker(self, name: str, view: dict[int, list[int]]) -> None:
        m = self.model
        s = m.stakers[name]
        got = self.node.staking.state(name)
        dp, dpo, _, cpo = view[m.av(name)]
        opens = closes = None
        status = "none"
        if s.start is not None:
            opens, closes = m.window(s)
            status = "cooling" if m.now < opens else "redeemable" if m.now <= closes else "expired"
        want = (cpo - dpo - dp, s.staked, s.staked, m.ids.get(s.delegatee) if s.delegatee else None,
                m.votes.get(name, 0), s.start, s.budget, opens, closes, status, s.earned(m.rpt), s.claims)
        have = (got.available, got.staked, got.gopen, got.delegatee, got.votes, got.cooldown_start_ms,
                got.cooldown_budget, got.redeem_opens_ms, got.redeem_closes_ms, got.cooldown_status, got.claimable,
                got.claims)
        assert have == want, f"{name}: node {have}, model {want}"

    def check_all(self, view: dict[int, list[int]]) -> None:
        """Every read API against the model, and every service's audit (I9-I11)."""
        m, node = self.model, self.node
        for name in PEOPLE:
            self.check_staker(name, view)
            b = node.tokens.balance(name)
            dp, dpo, _, cpo = view[m.av(name)]
            assert (b.available, b.reserved, b.staked, b.gopen) == (cpo - dpo - dp, dp, m.stakers[name].staked,
                                                                     m.stakers[name].staked), (name, b)
            assert node.staking.get_votes(name) == m.votes.get(name, 0), name
            e = node.rewards.earnings(name)
            fee_items, fee_total, epoch_items, epoch_total = m.earned[name]
            assert (len(e.fees), e.total_fees, len(e.epochs), e.total_epochs) == (
                fee_items, fee_total, epoch_items, epoch_total), (name, e)
        supply = node.tokens.supply()
        issued = m.bal[ISSUANCE][1] - m.bal[ISSUANCE][3]
        assert (supply["issued"]["units"], supply["supply"]["units"], supply["cap"]["units"]) == (
            issued, m.supply(), m.params["supply_cap"]), supply
        assert node.params.current().model_dump() == m.params
        for pid, p in m.proposals.items():
            got = node.governance.get(pid)
            against, for_, abstain = p.tally()
            assert (got.state, got.tally.against, got.tally.for_, got.tally.abstain, got.voters) == (
                m.state_of(p), against, for_, abstain, len(p.votes)), (pid, got, p)
            assert got.quorum == (m.quorum(p) if m.now > p.snapshot else None), (pid, got.quorum)
            assert (got.eta_ms, got.expires_ms) == (p.queued if p.queued else (None, None)), (pid, got)
            if m.now > p.snapshot:  # I10 on the node
                assert against + for_ + abstain <= node.staking.get_past_total_supply(p.snapshot), pid
        for eid, e in m.epochs.items():
            got = node.rewards.epoch(eid)
            funded = m.available(e.pool) if e.state == "open" else e.funded
            assert (got.state, got.funded, got.paid, got.dust) == (e.state, funded, e.paid, e.dust), (eid, got, e)
            if got.paid is not None:  # I11
                assert got.paid <= got.funded and got.paid + (got.dust or 0) == got.funded, got
        for req, r in m.reservations.items():
            got = node.fees.reservation(req)
            assert (got.state, got.amount, got.expires_ms) == (r.state, r.amount, r.expires), (req, got, r)
            s = m.settlements.get(req)
            if s is not None:
                st_ = node.fees.settlement(req)
                assert (st_.amount, st_.treasury, st_.owner_amount, st_.stakers, st_.contributors, st_.dust) == (
                    s.amount, s.treasury, s.owner, s.stakers, s.contributors, s.dust), (req, st_, s)
        for service in ("staking", "fees", "governance", "rewards"):
            problems = getattr(node, service).audit()
            assert problems == [], (service, problems)


# --------------------------------------------------------------------------------------------------------------
# the template node, built once
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    home: Path
    now: int
    model: Model
    next_id: int
    used_ids: list[int]


def _scratch_root() -> str | None:
    """/dev/shm when usable: each example's SQLite home lives there, where fsync costs nothing."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


# Two proposals every example starts with, so that governance lifecycles often complete within 50 steps: the
# first is active with alice's 600 gOPEN for it (quorum 200), the second is pending.
TEMPLATE_PROPOSALS = (
    ("alice", [{"type": "treasury_transfer", "to": "carol", "amount": 50},
               {"type": "set_params", "changes": {"gov_quorum_percent": 10}}], "template: grant and quorum"),
    ("bob", [{"type": "mint", "to": "bob", "amount": 1_000}, {"type": "burn", "from": "treasury", "amount": 400}],
     "template: mint and burn"),
)


def build_template(home: Path) -> Template:
    """A closed node at ``home`` with small governed params, three people funded and staked, alice and bob
    self-delegated, bob cooling down, one active and one pending proposal (``TEMPLATE_PROPOSALS``), and the model
    of it."""
    clock = Clock(step=0)
    node, _ = royalty.init_node(home, clock=clock, params=GENESIS, supply=SUPPLY)
    model = Model(clock.now)
    with node:
        model.add_person("operator", node.operator())
        driver = Driver(node, clock, model, stats=False)
        for name in PEOPLE:
            acct, _ = node.accounts.create(name, with_key=False)
            model.add_person(name, acct.id)
            driver.faucet(name, FUND[name], driver.fresh_id())
            driver.stake(name, STAKE[name], driver.fresh_id(), name)
        for name in SELF_DELEGATED:
            driver.delegate(name, name, name)
        driver.cooldown("bob", "bob")  # bob's unstake window opens about 9 s into every example
        driver.advance(1_000)  # the stakes' checkpoints are in the past: alice and bob may propose
        (first, actions, text), (second, actions2, text2) = TEMPLATE_PROPOSALS
        driver.propose(actions, text, first)
        pid = next(iter(model.proposals))
        driver.advance(model.proposals[pid].snapshot + 1 - model.now)
        driver.vote(pid, 1, "alice")
        driver.propose(actions2, text2, second)
        driver.advance(1)
        assert [model.state_of(p) for p in model.proposals.values()] == ["active", "pending"]
        driver.check_all(driver.check_step(0))
        assert node.ledger_audit().ok
    return Template(home, clock.now, model, driver.next_id, list(driver.used_ids))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):  # module scope: the per-test environment cleanup has not run yet
            if name.startswith("ROYALTY_"):
                mp.delenv(name)
        return build_template(tmp_path_factory.mktemp("model") / "home")


# --------------------------------------------------------------------------------------------------------------
# the state machine
# --------------------------------------------------------------------------------------------------------------

amounts = st.integers(1, 3_000)
people = st.sampled_from(PEOPLE)
actors = st.sampled_from(ACTORS)
time_steps = st.one_of(st.integers(0, 2_000), st.integers(2_000, 90_000), st.integers(90_000, 3 * 86_400_000))


class ProtocolMachine(RuleBasedStateMachine):
    TEMPLATE: Template  # set by the test before running

    def __init__(self) -> None:
        super().__init__()
        t = self.TEMPLATE
        self.dir = tempfile.mkdtemp(prefix="royalty-model-", dir=_scratch_root())
        home = Path(self.dir) / "home"
        shutil.copytree(t.home, home)  # the template node is closed: its files are a consistent snapshot
        self.clock = Clock(start=t.now, step=0)
        self.node = royalty.open_node(home, clock=self.clock)
        self.d = Driver(self.node, self.clock, copy.deepcopy(t.model))
        self.d.next_id, self.d.used_ids = t.next_id, list(t.used_ids)
        self.steps = 0
        self.requests = 0
        self.descriptions = 0

    @property
    def m(self) -> Model:
        return self.d.model

    def any_id(self, data: st.DataObject) -> int:
        """Mostly a fresh id; sometimes one used before, by this kind of call or another (I5)."""
        if self.d.used_ids and data.draw(st.integers(0, 4)) == 0:
            return data.draw(st.sampled_from(self.d.used_ids))
        return self.d.fresh_id()

    def actor_for(self, data: st.DataObject, owner: str) -> str:
        """Mostly the rightful actor, sometimes someone else (PermissionDenied)."""
        return owner if data.draw(st.integers(0, 7)) else data.draw(actors)

    # --- tokens --------------------------------------------------------------------------------------------
    @rule(data=st.data(), name=people, amount=st.one_of(amounts, st.just(20 * SUPPLY)))
    def faucet(self, data: st.DataObject, name: str, amount: int) -> None:
        self.d.faucet(name, amount, self.any_id(data), self.actor_for(data, "operator"))

    @rule(data=st.data(), src=people, dst=people, amount=amounts)
    def transfer(self, data: st.DataObject, src: str, dst: str, amount: int) -> None:
        self.d.transfer(src, dst, amount, self.any_id(data), self.actor_for(data, src))

    # --- staking -------------------------------------------------------------------------------------------
    @rule(data=st.data(), name=people, amount=st.integers(1, 2_000))
    def stake(self, data: st.DataObject, name: str, amount: int) -> None:
        self.d.stake(name, amount, self.any_id(data), self.actor_for(data, name))

    @rule(data=st.data(), name=people)
    def cooldown(self, data: st.DataObject, name: str) -> None:
        self.d.cooldown(name, self.actor_for(data, name))

    @rule(data=st.data())
    def redeem(self, data: st.DataObject) -> None:
        cooling = [n for n in PEOPLE if self.m.stakers[n].start is not None]
        name = data.draw(st.sampled_from(cooling) if cooling and data.draw(st.integers(0, 3)) else people)
        s = self.m.stakers[name]
        if s.start is None and data.draw(st.booleans()):
            self.d.cooldown(name, name)
        if s.start is not None and data.draw(st.booleans()):  # often: into (or just past) the unstake window
            opens, closes = self.m.window(s)
            target = data.draw(st.sampled_from([opens - 1, opens, (opens + closes) // 2, closes, closes + 1]))
            if target > self.m.now:
                self.d.advance(target - self.m.now)
        amount = data.draw(st.one_of(st.integers(1, max(s.budget, 1)), st.just(max(s.budget, 1)),
                                     st.just(s.budget + 1), st.integers(1, 800)))
        self.d.redeem(name, amount, self.any_id(data), self.actor_for(data, name))

    @rule(data=st.data(), name=people, to=people)
    def delegate(self, data: st.DataObject, name: str, to: str) -> None:
        self.d.delegate(name, to, self.actor_for(data, name))

    @rule(data=st.data(), name=people)
    def claim(self, data: st.DataObject, name: str) -> None:
        tid = self.any_id(data) if data.draw(st.booleans()) else None
        self.d.claim(name, tid, self.actor_for(data, name))

    @rule(data=st.data(), name=people)
    def past_votes(self, data: st.DataObject, name: str) -> None:
        """get_past_votes / get_past_total_supply at a past timepoint, and the refusal for now or later."""
        back = data.draw(st.integers(-2, 200_000))
        t = self.m.now - back
        if t >= self.m.now:  # ERC5805FutureLookup: only settled time has a past
            with pytest.raises(InvalidInput):
                self.node.staking.get_past_votes(name, t)
            with pytest.raises(InvalidInput):
                self.node.staking.get_past_total_supply(t)
            return
        assert self.node.staking.get_past_votes(name, t) == self.m.past_votes(name, t), (name, t)
        assert self.node.staking.get_past_total_supply(t) == self.m.past_total(t), t

    # --- fees ------------------------------------------------------------------------------------------------
    @rule(data=st.data(), payer=people, amount=st.integers(1, 2_500),
          timeout_s=st.sampled_from([None, None, 1, 5, 30, 90]))
    def reserve(self, data: st.DataObject, payer: str, amount: int, timeout_s: int | None) -> None:
        if self.m.reservations and data.draw(st.integers(0, 5)) == 0:
            req = data.draw(st.sampled_from(list(self.m.reservations)))  # the same request id again
        else:
            self.requests += 1
            req = f"req-{self.requests}"
        actor = "operator" if data.draw(st.booleans()) else self.actor_for(data, payer)
        self.d.reserve(req, payer, amount, timeout_s, actor)

    def some_request(self, data: st.DataObject) -> str:
        """Mostly a pending reservation, sometimes any, rarely one that does not exist (NotFound)."""
        pending = [req for req, r in self.m.reservations.items() if r.state == "pending"]
        choice = data.draw(st.integers(0, 9))
        if choice == 0:
            return "req-none"
        if pending and choice > 3:
            return data.draw(st.sampled_from(pending))
        return data.draw(st.sampled_from(list(self.m.reservations)))

    @precondition(lambda self: bool(self.m.reservations))
    @rule(data=st.data(), owner=people)
    def settle(self, data: st.DataObject, owner: str) -> None:
        req = self.some_request(data)
        r = self.m.reservations.get(req)
        top = r.amount + 50 if r else 100
        amount = data.draw(st.one_of(st.integers(1, top), st.just(top - 50)))
        weights = data.draw(st.dictionaries(people, st.integers(0, 5), max_size=3))
        actor = "operator" if data.draw(st.booleans()) else self.actor_for(data, r.payer if r else "operator")
        self.d.settle(req, amount, owner, weights, actor)

    @precondition(lambda self: bool(self.m.reservations))
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        req = self.some_request(data)
        r = self.m.reservations.get(req)
        actor = "operator" if data.draw(st.booleans()) else self.actor_for(data, r.payer if r else "operator")
        self.d.void(req, actor)

    @rule()
    def sweep(self) -> None:
        """An explicit expiry sweep: afterwards the node has released every overdue reservation."""
        self.node.ledger.expire_pending()
        for req, r in self.m.reservations.items():
            if r.state == "expired":
                assert self.node.ledger.pending_state(transfer_id("fee", req, "reserve")) == "expired", req

    # --- reward epochs -------------------------------------------------------------------------------------
    @precondition(lambda self: len(self.m.epochs) < 3)
    @rule(data=st.data())
    def create_epoch(self, data: st.DataObject) -> None:
        self.d.create_epoch(self.actor_for(data, "operator"))

    @precondition(lambda self: bool(self.m.epochs))
    @rule(data=st.data(), source=st.sampled_from(["treasury", "treasury", "dust", "reward_pool"]))
    def fund(self, data: st.DataObject, source: str) -> None:
        eid = data.draw(st.sampled_from(list(self.m.epochs)))
        amount = data.draw(st.one_of(st.integers(1, 3_000), st.none())) if source != "treasury" else data.draw(
            st.one_of(st.integers(1, 3_000), st.integers(1, 3_000), st.integers(1, 3_000), st.none()))
        used = list(self.m.fundings)
        tid = data.draw(st.sampled_from(used)) if used and data.draw(st.integers(0, 4)) == 0 else self.any_id(data)
        self.d.fund(eid, amount, source, tid, self.actor_for(data, "operator"))

    @precondition(lambda self: bool(self.m.epochs))
    @rule(data=st.data(), weights=st.dictionaries(people, st.integers(0, 9), min_size=1, max_size=3))
    def freeze(self, data: st.DataObject, weights: dict[str, int]) -> None:
        eid = data.draw(st.sampled_from(list(self.m.epochs)))
        e = self.m.epochs[eid]
        if e.weights and data.draw(st.booleans()):
            weights = dict(e.weights)  # freezing again with the same weights answers the epoch
        self.d.freeze(eid, weights, self.actor_for(data, "operator"))

    @precondition(lambda self: bool(self.m.epochs))
    @rule(data=st.data())
    def distribute(self, data: st.DataObject) -> None:
        eid = data.draw(st.sampled_from(list(self.m.epochs)))
        self.d.distribute(eid, self.actor_for(data, "operator"))

    @rule(data=st.data())
    def drive_epoch(self, data: st.DataObject) -> None:
        """Take the newest epoch (or a new one) through 1-4 natural steps: fund it from the treasury (or the dust),
        freeze random weights, distribute, so that whole epochs happen between the other rules' steps."""
        m = self.m
        if not m.epochs or m.epochs[list(m.epochs)[-1]].state == "distributed":
            if len(m.epochs) < 3:
                self.d.create_epoch("operator")
            return
        eid = list(m.epochs)[-1]
        for _ in range(data.draw(st.integers(1, 4))):
            e = m.epochs[eid]
            self.d.note(f"drive_epoch: {e.state}")
            if e.state == "open" and (m.available(e.pool) == 0 or data.draw(st.booleans())):
                source = "dust" if m.available(DUST) and data.draw(st.booleans()) else "treasury"
                self.d.fund(eid, data.draw(st.one_of(st.integers(1, 5_000), st.none())) if source == "dust"
                            else data.draw(st.integers(1, 5_000)), source, self.d.fresh_id(), "operator")
            elif e.state == "open":
                self.d.freeze(eid, data.draw(st.dictionaries(people, st.integers(0, 9), min_size=1, max_size=3)),
                              "operator")
            elif e.state == "frozen":
                self.d.distribute(eid, "operator")
            else:
                break

    # --- governance ------------------------------------------------------------------------------------------
    def action(self, data: st.DataObject) -> dict[str, Any]:
        kind = data.draw(st.sampled_from(["treasury_transfer", "mint", "burn", "set_params", "set_params"]))
        if kind == "treasury_transfer":
            return {"type": kind, "to": data.draw(people), "amount": data.draw(st.integers(1, 500))}
        if kind == "mint":
            to = data.draw(st.sampled_from([*PEOPLE, "treasury"]))
            return {"type": kind, "to": to, "amount": data.draw(st.one_of(st.integers(1, 500),
                                                                           st.integers(1, 150_000)))}
        if kind == "burn":
            return {"type": kind, "from": "treasury",
                    "amount": data.draw(st.one_of(st.integers(1, 1_000), st.just(3 * SUPPLY)))}
        which = data.draw(st.sampled_from(["quorum", "split", "owner_only", "cooldown", "cap", "threshold"]))
        if which == "quorum":
            changes: dict[str, int] = {"gov_quorum_percent": data.draw(st.integers(0, 60))}
        elif which == "split":
            owner = data.draw(st.integers(0, 5_000))
            changes = {"fee_owner_bps": owner, "fee_treasury_bps": 5_000 - owner}
        elif which == "owner_only":  # valid only if it happens to keep the sum at 10,000
            changes = {"fee_owner_bps": data.draw(st.sampled_from([self.m.params["fee_owner_bps"], 3_000]))}
        elif which == "cooldown":
            changes = {"stake_cooldown_s": data.draw(st.integers(0, 40))}
        elif which == "cap":
            changes = {"supply_cap": self.m.supply() + data.draw(st.integers(-10, 200_000))}
        else:
            changes = {"gov_proposal_threshold": data.draw(st.integers(0, 1_000))}
        return {"type": "set_params", "changes": changes}

    @rule(data=st.data())
    def propose(self, data: st.DataObject) -> None:
        actor = data.draw(st.sampled_from(["alice", "alice", "bob", "carol", "operator"]))
        actions = [self.action(data) for _ in range(data.draw(st.integers(1, 2)))]
        self.descriptions += 1
        self.d.propose(actions, f"proposal {self.descriptions}", actor)

    @precondition(lambda self: bool(self.m.proposals))
    @rule(data=st.data())
    def propose_again(self, data: st.DataObject) -> None:
        """The same actions, description and proposer again: a Conflict (after the other checks)."""
        pid = data.draw(st.sampled_from(list(self.m.proposals)))
        p = self.m.proposals[pid]
        key = next(k for k in self.m.proposal_keys if k[0] == p.proposer and k[2] == repr(p.actions))
        self.d.propose(p.actions, key[1], p.proposer)

    def some_proposal(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(list(self.m.proposals)))

    @precondition(lambda self: bool(self.m.proposals))
    @rule(data=st.data(), support=st.sampled_from([0, 1, 1, 2]), voter=actors)
    def vote(self, data: st.DataObject, support: int, voter: str) -> None:
        self.d.vote(self.some_proposal(data), support, voter)

    @precondition(lambda self: bool(self.m.proposals))
    @rule(data=st.data(), actor=actors)
    def queue(self, data: st.DataObject, actor: str) -> None:
        self.d.queue(self.some_proposal(data), actor)

    @precondition(lambda self: bool(self.m.proposals))
    @rule(data=st.data(), actor=actors)
    def execute(self, data: st.DataObject, actor: str) -> None:
        self.d.execute(self.some_proposal(data), actor)

    @precondition(lambda self: bool(self.m.proposals))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        pid = self.some_proposal(data)
        self.d.cancel(pid, self.actor_for(data, self.m.proposals[pid].proposer))

    @rule(data=st.data())
    def drive_proposal(self, data: st.DataObject) -> None:
        """Take a live proposal (or make one) through 1-12 natural steps of its lifecycle, at or next to each
        boundary: voting opens, votes, voting closes, queue, the eta, execute (or cancel while pending), so that
        whole lifecycles happen between the other rules' steps."""
        m = self.m
        live = [pid for pid, p in m.proposals.items() if m.state_of(p) in ("pending", "active", "succeeded", "queued")]
        if not live:
            self.descriptions += 1
            actor = data.draw(st.sampled_from(["alice", "alice", "bob"]))
            self.d.propose([self.action(data)], f"proposal {self.descriptions}", actor)
            return
        pid = data.draw(st.sampled_from(live))
        p = m.proposals[pid]
        for _ in range(data.draw(st.integers(1, 12))):
            state = m.state_of(p)
            self.d.note(f"drive_proposal: {state}")
            if state == "pending":
                if data.draw(st.integers(0, 5)) == 0:
                    self.d.cancel(pid, p.proposer)
                else:
                    self.d.advance(data.draw(st.sampled_from([p.snapshot, p.snapshot + 1])) - m.now)
            elif state == "active":
                voters = [n for n in ACTORS if n not in p.votes]
                if voters and data.draw(st.booleans()):
                    self.d.vote(pid, data.draw(st.sampled_from([0, 1, 1, 1, 2])), data.draw(st.sampled_from(voters)))
                else:
                    self.d.advance(data.draw(st.sampled_from([p.deadline, p.deadline + 1])) - m.now)
            elif state == "succeeded":
                self.d.queue(pid, data.draw(actors))
            elif state == "queued" and p.queued is not None:
                eta, expires = p.queued
                if m.now < eta:  # then execute at the next step: before, at or after the eta, or too late
                    later = [t for t in (eta - 1, eta, eta, eta + 1, expires - 1, expires) if t > m.now]
                    self.d.advance(data.draw(st.sampled_from(later)) - m.now)
                else:
                    self.d.execute(pid, data.draw(actors))
            else:
                break

    # --- time and retries ------------------------------------------------------------------------------------
    @rule(ms=time_steps)
    def advance(self, ms: int) -> None:
        self.d.advance(ms)

    @rule(data=st.data())
    def to_boundary(self, data: st.DataObject) -> None:
        """Jump to (or next to) an instant a rule depends on: the cooldown window's ends, a fee's expiry, a
        proposal's snapshot, deadline, eta and end of grace."""
        m = self.m
        marks: list[int] = []
        for s in m.stakers.values():
            if s.start is not None:
                marks += list(m.window(s))
        marks += [r.expires for r in m.reservations.values() if r.state == "pending"]
        for p in m.proposals.values():
            marks += [p.snapshot, p.deadline] + (list(p.queued) if p.queued else [])
        near = sorted({t + d for t in marks for d in (-1, 0, 1) if t + d >= m.now})
        if near:
            self.d.advance(data.draw(st.sampled_from(near)) - m.now)

    @precondition(lambda self: bool(self.d.calls))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """Resubmit an earlier money-moving call with the same ids and arguments (I5)."""
        self.d.retry(data.draw(st.integers(0, len(self.d.calls) - 1)))

    # --- checks --------------------------------------------------------------------------------------------
    @invariant()
    def matches_the_model(self) -> None:
        self.steps += 1
        view = self.d.check_step(self.steps)
        if self.steps % FULL_EVERY == 0:
            self.d.check_all(view)

    def teardown(self) -> None:
        try:
            self.d.check_all(self.d.check_step(self.steps))
            report = self.node.ledger_audit()
            assert report.ok, report.problems
        finally:
            self.node.close()
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.slow
def test_protocol_state_machine(template: Template) -> None:
    """The protocol against the model: ≥ 300 examples × 50 steps (``ROYALTY_NIGHTLY=1``: 20,000 × 200)."""
    ProtocolMachine.TEMPLATE = template
    profile = PROFILE_NIGHTLY if NIGHTLY else PROFILE_CI
    COVERAGE.clear()
    run_state_machine_as_test(ProtocolMachine, settings=settings(
        **profile, deadline=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]))
    print("\n".join(f"{n:7d}  {what}" for what, n in sorted(COVERAGE.items())))
