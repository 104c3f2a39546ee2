"""Governance (``node.governance``): gOPEN-weighted proposals, votes and a timelock, on OpenZeppelin Governor v5
(``Governor.sol``, ``GovernorCountingSimple``, ``GovernorVotesQuorumFraction``, Compound's timelock with a grace
period; ``shared/reference/ledger.md`` §5).

Lifecycle of a proposal (time = the node clock in ms; durations in Params are seconds)::

    propose ──► Pending ──(now > snapshot)──► Active ──(now > deadline)──► Defeated
                   │                                                   └─► Succeeded ──queue──► Queued
                 cancel (proposer only)                                         execute ◄──(eta ≤ now)──┘
                   ▼                                                            ▼
                Canceled                                    Executed   (or Expired once now ≥ eta + grace)

- **propose** needs ``get_past_votes(proposer, now − 1) ≥ gov_proposal_threshold``; snapshot = now +
  ``gov_voting_delay_s``; deadline = snapshot + ``gov_voting_period_s``. The id is ``"prop_"`` + the first 16
  hex digits of SHA-256 over the canonical JSON of ``{"actions", "description_hash", "proposer"}`` (actions in
  their normalised form, the SHA-256 hex of the UTF-8 description, the proposer's account id): proposing the
  same thing twice is a Conflict, as in OpenZeppelin.
- **vote** (Active only): against = 0, for = 1, abstain = 2; weight = ``get_past_votes(voter, snapshot)``, so
  stake bought after the snapshot adds nothing (flash-stake); one vote per voter. A zero-weight vote is
  accepted and recorded but counts nothing (OpenZeppelin allows it too).
- **outcome** after the deadline: Succeeded when For + Abstain ≥ quorum and For > Against, else Defeated. Quorum
  = ``get_past_total_supply(snapshot) × gov_quorum_percent // 100`` with the percent in force at the snapshot,
  so a later quorum change never touches a running proposal.
- **queue** (Succeeded only): eta = now + ``gov_timelock_delay_s``; the grace period in force at queue time fixes
  the end of the execution window, eta + ``gov_grace_period_s``. A Succeeded proposal that is never queued stays
  Succeeded (as in OpenZeppelin).
- **execute** (Queued, eta ≤ now < eta + grace; anyone may call it): the executed mark is written before the
  effects, and every action runs in the same transaction; if one fails, nothing happens and the error says
  which action and why. No path skips the timelock (Beanstalk).
- **cancel**: the proposer, while Pending only (OpenZeppelin v5).

State is never stored as a mutable status: it is derived from the clock and append-only rows (proposals,
votes, and one row each for queued / executed / canceled). Every step is one journal event: ``gov.propose``,
``gov.vote``, ``gov.queue``, ``gov.execute`` (followed by the actions' own ``params.set`` / ``ledger.*``
events, which carry ``proposal`` and ``action``), ``gov.cancel``.

Actions (validated at propose time against the current state, every problem reported at once; re-validated
when executed)::

    {"type": "set_params", "changes": {"fee_owner_bps": 3000, "fee_contributors_bps": 5000}}
    {"type": "treasury_transfer", "to": "alice", "amount": 5_000_000}     # base units
    {"type": "mint", "to": "alice" | "treasury", "amount": 1_000_000}     # within supply_cap
    {"type": "burn", "from": "treasury", "amount": 1_000_000}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, text

from ..accounts import Accounts
from ..errors import Conflict, InvalidInput, NotFound, PermissionDenied, RoyaltyError, TransferRejected
from ..journal.canonical import canonical_json
from ..journal.log import Event
from ..store import Store
from ..store.schema import gov_proposals, gov_transitions, gov_votes, journal_events, ledger_accounts, ledger_params
from .amounts import amount_json, format_amount, parse_amount
from .chart import AccountCode, account_id, system_account_id, transfer_id
from .codes import AMOUNT_MAX
from .core import Ledger, hex_id
from .params import Params, ParamsRegistry
from .staking import Staking
from .tokens import Tokens

AGAINST, FOR, ABSTAIN = 0, 1, 2
SUPPORT_NAMES = {AGAINST: "against", FOR: "for", ABSTAIN: "abstain"}
STATES = ("pending", "active", "canceled", "defeated", "succeeded", "queued", "expired", "executed")
ACTION_TYPES = ("set_params", "treasury_transfer", "mint", "burn")
MAX_ACTIONS = 32
MAX_DESCRIPTION = 10_000
MAX_REASON = 1_000
_ACTION_FIELDS = {
    "set_params": ("changes",),
    "treasury_transfer": ("to", "amount"),
    "mint": ("to", "amount"),
    "burn": ("from", "amount"),
}
# Serialises executes on PostgreSQL (pg_advisory_xact_lock): params.set_in reads the current Params and then
# appends a version, so two concurrent set_params executions would otherwise lose one's changes.
_EXECUTE_LOCK_KEY = 0x67_6F_76_65_78_65_63  # "govexec"


# --------------------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """Votes counted so far, in gOPEN base units (GovernorCountingSimple)."""

    against: int = 0
    for_: int = 0
    abstain: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"against": amount_json(self.against), "for": amount_json(self.for_), "abstain": amount_json(self.abstain)}


@dataclass(frozen=True)
class Vote:
    proposal: str
    voter: str  # account id
    support: int
    weight: int  # gOPEN base units delegated to the voter at the snapshot
    reason: str | None
    cast_ms: int
    seq: int  # the gov.vote journal event

    def to_dict(self) -> dict[str, Any]:
        return {
            "proposal": self.proposal, "voter": self.voter, "support": SUPPORT_NAMES[self.support],
            "support_code": self.support, "weight": amount_json(self.weight), "reason": self.reason,
            "cast_ms": self.cast_ms, "seq": self.seq,
        }


@dataclass(frozen=True)
class Proposal:
    """A proposal with its state at ``as_of_ms``. ``quorum`` is None while Pending (the snapshot is in the
    future). ``eta_ms``/``expires_ms`` are set once queued: executable from eta until just before expires."""

    id: str
    proposer: str
    description: str
    description_hash: str
    actions: tuple[dict[str, Any], ...]
    threshold: int
    created_ms: int
    snapshot_ms: int
    deadline_ms: int
    created_seq: int
    state: str
    as_of_ms: int
    tally: Tally
    quorum: int | None
    eta_ms: int | None = None
    expires_ms: int | None = None
    queued_ms: int | None = None
    executed_ms: int | None = None
    canceled_ms: int | None = None
    voters: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "proposer": self.proposer,
            "description": self.description,
            "description_hash": self.description_hash,
            "actions": [action_to_json(a) for a in self.actions],
            "threshold": amount_json(self.threshold),
            "state": self.state,
            "as_of_ms": self.as_of_ms,
            "created_ms": self.created_ms,
            "snapshot_ms": self.snapshot_ms,
            "deadline_ms": self.deadline_ms,
            "votes": self.tally.to_dict(),
            "voters": self.voters,
            "quorum": amount_json(self.quorum) if self.quorum is not None else None,
            "eta_ms": self.eta_ms,
            "expires_ms": self.expires_ms,
            "queued_ms": self.queued_ms,
            "executed_ms": self.executed_ms,
            "canceled_ms": self.canceled_ms,
            "created_seq": self.created_seq,
        }


@dataclass
class _Rows:
    """Everything stored about one proposal."""

    proposal: Any
    transitions: dict[str, Any] = field(default_factory=dict)  # kind -> row
    votes: list[Any] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# actions: edge form, canonical form
# --------------------------------------------------------------------------------------------------------------


def action_to_json(action: Mapping[str, Any]) -> dict[str, Any]:
    """The edge form of a normalised action: amounts as ``{"amount": "12.5", "units": 12500000}``."""
    out = dict(action)
    if "amount" in out:
        out["amount"] = amount_json(out["amount"])
    return out


def parse_edge_actions(items: Any) -> list[dict[str, Any]]:
    """Actions from the CLI or HTTP, whose amounts are decimal strings (``"12.5"`` OPEN), into the library's
    form (base units). Only amounts are converted here; ``propose`` checks everything else. Every bad amount is
    reported at once."""
    if not isinstance(items, list):
        raise InvalidInput("actions must be a list of action objects", field="actions")
    out: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and "amount" in item:
            item = dict(item)
            try:
                item["amount"] = parse_amount(item["amount"], f"actions[{i}].amount")
            except InvalidInput as exc:
                problems.append((f"actions[{i}].amount", exc.message))
        out.append(item)
    if problems:
        raise InvalidInput("; ".join(m for _, m in problems), field=problems[0][0])
    return out


def parse_support(value: Any) -> int:
    """0/1/2 or "against"/"for"/"abstain" (any case) as the support code."""
    if isinstance(value, str):
        names = {v: k for k, v in SUPPORT_NAMES.items()}
        key = value.strip().lower()
        if key in names:
            return names[key]
        if key in ("0", "1", "2"):
            return int(key)
    elif type(value) is int and value in SUPPORT_NAMES:
        return value
    raise InvalidInput(f"support {value!r} is not a vote: use for, against or abstain (1, 0, 2)", field="support")


def proposal_id(actions: Sequence[Mapping[str, Any]], description: str, proposer: str) -> str:
    """The id of a proposal of normalised ``actions`` by account ``proposer`` (OpenZeppelin's hashProposal):
    ``"prop_"`` + the first 16 hex digits of SHA-256(canonical JSON of {actions, description_hash, proposer})."""
    doc = {"actions": [dict(a) for a in actions], "description_hash": _description_hash(description), "proposer": proposer}
    return "prop_" + hashlib.sha256(canonical_json(doc)).hexdigest()[:16]


def _description_hash(description: str) -> str:
    return hashlib.sha256(description.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------------------------------


class Governance:
    """Proposals, votes and the timelock (``node.governance``). Authorization is here: anyone with enough
    delegated gOPEN proposes, any account votes with its own weight, anyone queues and executes (the rules and
    the timelock are the guard), only the proposer cancels."""

    def __init__(self, store: Store, ledger: Ledger, tokens: Tokens, staking: Staking, accounts: Accounts,
                 params: ParamsRegistry, clock: Callable[[], int]) -> None:
        self.store = store
        self.ledger = ledger
        self.tokens = tokens
        self.staking = staking
        self.accounts = accounts
        self.params = params
        self.clock = clock

    # --- writes --------------------------------------------------------------------------------------------------

    def propose(self, actions: Sequence[Mapping[str, Any]], description: str, *, actor: str) -> Proposal:
        """Create a proposal of ``actions`` (library form: amounts in base units) by ``actor``.

        Raises:
            InvalidInput: a bad action or description (all problems in one message).
            PermissionDenied: the actor's voting power at now − 1 is below the proposal threshold.
            Conflict: the same proposal (actions, description, proposer) exists already.
        """
        if not isinstance(description, str) or not description.strip() or len(description) > MAX_DESCRIPTION:
            raise InvalidInput(f"description must be non-empty text of at most {MAX_DESCRIPTION} characters",
                               field="description")

        def body(conn: Connection) -> str:
            now = self.clock()
            who = self._actor_in(conn, actor)
            params = self.params.current_in(conn)
            normalised = self._normalise_in(conn, actions, params)
            votes = self.staking.get_past_votes_in(conn, who.id, now - 1)
            if votes < params.gov_proposal_threshold:
                raise PermissionDenied(
                    f"{who.name} has {format_amount(votes)} gOPEN of voting power, below the proposal threshold of "
                    f"{format_amount(params.gov_proposal_threshold)}; stake and delegate (to yourself) first",
                    field="actor")
            pid = proposal_id(normalised, description, who.id)
            if conn.execute(select(gov_proposals.c.id).where(gov_proposals.c.id == pid)).first():
                raise Conflict(f"proposal {pid} already exists (same actions, description and proposer); "
                               "change the description to propose it again", field="description")
            snapshot = now + params.gov_voting_delay_s * 1000
            deadline = snapshot + params.gov_voting_period_s * 1000
            desc_hash = _description_hash(description)
            event = self._journal(conn, "gov.propose", {
                "proposal": pid, "proposer": who.id, "actions": normalised, "description": description,
                "description_hash": desc_hash, "threshold": params.gov_proposal_threshold, "proposer_votes": votes,
                "created_ms": now, "snapshot_ms": snapshot, "deadline_ms": deadline,
            }, who.id)
            conn.execute(gov_proposals.insert().values(
                id=pid, proposer_id=who.id, description=description, description_hash=desc_hash,
                actions_json=canonical_json(normalised).decode("utf-8"), threshold=params.gov_proposal_threshold,
                created_ms=now, snapshot_ms=snapshot, deadline_ms=deadline, created_seq=event.seq))
            return pid

        return self.get(self.ledger.transaction(body))

    def vote(self, proposal: str, support: Any, *, actor: str, reason: str | None = None) -> Vote:
        """Cast ``actor``'s vote on an Active proposal with their voting power at its snapshot.

        Raises:
            NotFound: no such proposal. InvalidInput: bad support or reason.
            Conflict: the proposal is not Active, or the actor has voted already.
        """
        code = parse_support(support)
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise InvalidInput(f"reason must be text of at most {MAX_REASON} characters", field="reason")

        def body(conn: Connection) -> Vote:
            now = self.clock()
            who = self._actor_in(conn, actor)
            rows = self._rows_in(conn, proposal)
            p = rows.proposal
            state = self._state_in(conn, rows, now)
            if state != "active":
                raise Conflict(f"proposal {p.id} is {state}; votes are accepted only while it is active, after "
                               f"{p.snapshot_ms} and until {p.deadline_ms} ms", field="proposal")
            if any(v.voter_id == who.id for v in rows.votes):
                raise Conflict(f"{who.name} has already voted on {p.id}; a vote cannot be changed", field="actor")
            weight = self.staking.get_past_votes_in(conn, who.id, p.snapshot_ms)
            event = self._journal(conn, "gov.vote", {
                "proposal": p.id, "voter": who.id, "support": code, "support_name": SUPPORT_NAMES[code],
                "weight": weight, "reason": reason, "snapshot_ms": p.snapshot_ms, "cast_ms": now,
            }, who.id)
            conn.execute(gov_votes.insert().values(
                proposal_id=p.id, voter_id=who.id, support=code, weight=weight, reason=reason, cast_ms=now,
                seq=event.seq))
            return Vote(p.id, who.id, code, weight, reason, now, event.seq)

        return self.ledger.transaction(body)

    def queue(self, proposal: str, *, actor: str) -> Proposal:
        """Queue a Succeeded proposal in the timelock: eta = now + gov_timelock_delay_s.

        Raises NotFound, or Conflict when it is not Succeeded."""

        def body(conn: Connection) -> None:
            now = self.clock()
            who = self._actor_in(conn, actor)
            rows = self._rows_in(conn, proposal)
            p = rows.proposal
            state = self._state_in(conn, rows, now)
            if state != "succeeded":
                raise Conflict(f"proposal {p.id} is {state}; only a succeeded proposal can be queued", field="proposal")
            params = self.params.current_in(conn)
            eta = now + params.gov_timelock_delay_s * 1000
            expires = eta + params.gov_grace_period_s * 1000
            tally = _tally(rows.votes)
            event = self._journal(conn, "gov.queue", {
                "proposal": p.id, "queued_ms": now, "eta_ms": eta, "expires_ms": expires,
                "votes": {"against": tally.against, "for": tally.for_, "abstain": tally.abstain},
                "quorum": self._quorum_in(conn, p),
            }, who.id)
            conn.execute(gov_transitions.insert().values(
                proposal_id=p.id, kind="queued", actor_id=who.id, at_ms=now, eta_ms=eta, expires_ms=expires,
                seq=event.seq))

        self.ledger.transaction(body)
        return self.get(proposal)

    def execute(self, proposal: str, *, actor: str) -> Proposal:
        """Execute a Queued proposal whose eta has come and whose grace period has not ended: every action in
        one transaction, after the executed mark. All or nothing.

        Raises:
            NotFound. Conflict: not Queued (e.g. already executed, expired), or before the eta; or an action
            failed (TransferRejected / InsufficientFunds when the ledger refused a transfer), naming the action.
        """

        def body(conn: Connection) -> None:
            now = self.clock()
            who = self._actor_in(conn, actor)
            rows = self._rows_in(conn, proposal)
            p = rows.proposal
            state = self._state_in(conn, rows, now)
            if state != "queued":
                raise Conflict(f"proposal {p.id} is {state}; only a queued proposal can be executed", field="proposal")
            queued = rows.transitions["queued"]
            if now < queued.eta_ms:
                raise Conflict(f"proposal {p.id} is in the timelock until {queued.eta_ms} ms "
                               f"({-(-(queued.eta_ms - now) // 1000)} s from now)", field="proposal")
            actions = json.loads(p.actions_json)
            self._lock_for_execute_in(conn, actions)
            # The executed mark goes first (OpenZeppelin sets `executed` before calling out): it is what makes a
            # concurrent second execute collide on the primary key.
            event = self._journal(conn, "gov.execute", {
                "proposal": p.id, "executed_ms": now, "eta_ms": queued.eta_ms, "actions": actions}, who.id)
            conn.execute(gov_transitions.insert().values(
                proposal_id=p.id, kind="executed", actor_id=who.id, at_ms=now, eta_ms=None, expires_ms=None,
                seq=event.seq))
            for index, action in enumerate(actions):
                try:
                    self._apply_in(conn, p.id, index, action, who.id)
                except RoyaltyError as exc:
                    raise _action_failed(p.id, index, action, exc) from None

        self.ledger.transaction(body)
        return self.get(proposal)

    def cancel(self, proposal: str, *, actor: str) -> Proposal:
        """Cancel a Pending proposal; only its proposer may (OpenZeppelin v5).

        Raises NotFound, PermissionDenied (not the proposer), Conflict (not Pending)."""

        def body(conn: Connection) -> None:
            now = self.clock()
            who = self._actor_in(conn, actor)
            rows = self._rows_in(conn, proposal)
            p = rows.proposal
            if who.id != p.proposer_id:
                raise PermissionDenied(f"only the proposer of {p.id} may cancel it", field="actor")
            state = self._state_in(conn, rows, now)
            if state != "pending":
                raise Conflict(f"proposal {p.id} is {state}; a proposal can be canceled only while pending "
                               f"(until {p.snapshot_ms} ms)", field="proposal")
            event = self._journal(conn, "gov.cancel", {"proposal": p.id, "canceled_ms": now}, who.id)
            conn.execute(gov_transitions.insert().values(
                proposal_id=p.id, kind="canceled", actor_id=who.id, at_ms=now, eta_ms=None, expires_ms=None,
                seq=event.seq))

        self.ledger.transaction(body)
        return self.get(proposal)

    # --- reads ---------------------------------------------------------------------------------------------------

    def get(self, proposal: str) -> Proposal:
        """The proposal with its state now. Raises NotFound."""
        with self.store.read() as conn:
            now = self.clock()
            return self._proposal_in(conn, self._rows_in(conn, proposal), now)

    def state(self, proposal: str) -> str:
        """One of STATES, now."""
        with self.store.read() as conn:
            now = self.clock()
            return self._state_in(conn, self._rows_in(conn, proposal), now)

    def list(self, *, state: str | None = None, limit: int = 100, after: str | None = None) -> list[Proposal]:
        """Proposals, oldest first, optionally only those in ``state``; ``after`` is the id of the last one
        seen (pagination)."""
        if state is not None and state not in STATES:
            raise InvalidInput(f"state {state!r} is unknown: choose one of {', '.join(STATES)}", field="state")
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be an integer in 1..10000", field="limit")
        with self.store.read() as conn:
            now = self.clock()
            query = select(gov_proposals).order_by(gov_proposals.c.created_seq)
            if after is not None:
                seq = conn.execute(select(gov_proposals.c.created_seq).where(gov_proposals.c.id == after)).scalar()
                if seq is None:
                    raise NotFound(f"after={after!r} is not a proposal id; pass the last id of the previous page",
                                   field="after")
                query = query.where(gov_proposals.c.created_seq > seq)
            out: list[Proposal] = []
            for row in conn.execute(query).all():
                prop = self._proposal_in(conn, self._load_rows_in(conn, row), now)
                if state is None or prop.state == state:
                    out.append(prop)
                    if len(out) == limit:
                        break
            return out

    def votes(self, proposal: str) -> list[Vote]:
        """The votes cast on a proposal, in order."""
        with self.store.read() as conn:
            rows = self._rows_in(conn, proposal)
        return [_vote(v) for v in rows.votes]

    # --- audit ---------------------------------------------------------------------------------------------------

    def audit(self) -> list[str]:
        """Invariant problems (I10), empty when all hold: every row matches its journal event and the journal
        has no governance event without its row; ids and description hashes re-derive; votes lie in
        (snapshot, deadline], one per voter, each weighing exactly get_past_votes(voter, snapshot), and together
        at most get_past_total_supply(snapshot); queued only after a succeeded vote, canceled only by the proposer
        while pending and never with another transition; executed at most once, queued first, at or after the
        eta and before the grace period ended."""
        problems: list[str] = []
        with self.store.read() as conn:
            now = self.clock()
            proposals = {r.id: _Rows(r) for r in conn.execute(select(gov_proposals).order_by(gov_proposals.c.created_seq))}
            for t in conn.execute(select(gov_transitions)).all():
                if t.proposal_id not in proposals:
                    problems.append(f"{t.kind} row for unknown proposal {t.proposal_id}")
                    continue
                proposals[t.proposal_id].transitions[t.kind] = t
            seen_votes: set[tuple[str, str]] = set()
            for v in conn.execute(select(gov_votes).order_by(gov_votes.c.seq)).all():
                if v.proposal_id not in proposals:
                    problems.append(f"vote by {v.voter_id} for unknown proposal {v.proposal_id}")
                    continue
                if (v.proposal_id, v.voter_id) in seen_votes:
                    problems.append(f"{v.proposal_id}: {v.voter_id} voted more than once")
                seen_votes.add((v.proposal_id, v.voter_id))
                proposals[v.proposal_id].votes.append(v)
            expected_events: dict[int, tuple[str, str]] = {}
            for pid, rows in proposals.items():
                problems += self._audit_one_in(conn, pid, rows, now)
                p = rows.proposal
                expected_events[p.created_seq] = ("gov.propose", pid)
                expected_events.update({v.seq: ("gov.vote", pid) for v in rows.votes})
                kinds = {"queued": "gov.queue", "executed": "gov.execute", "canceled": "gov.cancel"}
                expected_events.update({t.seq: (kinds.get(k, "?"), pid) for k, t in rows.transitions.items()})
            problems += self._audit_journal_in(conn, expected_events, proposals)
        return problems

    def _audit_one_in(self, conn: Connection, pid: str, rows: _Rows, now: int) -> list[str]:
        p, out = rows.proposal, []
        actions = json.loads(p.actions_json)
        if _description_hash(p.description) != p.description_hash:
            out.append(f"{pid}: the description does not match its hash")
        if proposal_id(actions, p.description, p.proposer_id) != pid:
            out.append(f"{pid}: the id does not re-derive from its actions, description and proposer")
        if not p.created_ms <= p.snapshot_ms < p.deadline_ms:
            out.append(f"{pid}: snapshot/deadline out of order")
        if rows.votes and p.snapshot_ms < now:
            supply = self.staking.get_past_total_supply_in(conn, p.snapshot_ms)
            total = 0
            for v in rows.votes:
                total += v.weight
                if not p.snapshot_ms < v.cast_ms <= p.deadline_ms:
                    out.append(f"{pid}: vote by {v.voter_id} at {v.cast_ms} ms is outside the voting period")
                if v.support not in SUPPORT_NAMES:
                    out.append(f"{pid}: vote by {v.voter_id} has support {v.support}")
                expected = self.staking.get_past_votes_in(conn, v.voter_id, p.snapshot_ms)
                if v.weight != expected:
                    out.append(f"{pid}: vote by {v.voter_id} weighs {v.weight}, but its votes at the snapshot "
                               f"are {expected}")
            if total > supply:
                out.append(f"{pid}: {total} votes cast exceed the total supply {supply} at the snapshot")
        t = rows.transitions
        canceled, queued, executed = t.get("canceled"), t.get("queued"), t.get("executed")
        if canceled is not None:
            if canceled.actor_id != p.proposer_id:
                out.append(f"{pid}: canceled by {canceled.actor_id}, not by its proposer")
            if canceled.at_ms > p.snapshot_ms:
                out.append(f"{pid}: canceled after its snapshot")
            if queued is not None or executed is not None:
                out.append(f"{pid}: canceled and also queued or executed")
        if queued is not None:
            if queued.at_ms <= p.deadline_ms:
                out.append(f"{pid}: queued before its deadline")
            elif self._outcome_in(conn, p, rows.votes) != "succeeded":
                out.append(f"{pid}: queued although the vote did not succeed")
            if queued.eta_ms is None or queued.expires_ms is None or not queued.at_ms <= queued.eta_ms < queued.expires_ms:
                out.append(f"{pid}: queued with an invalid eta/expiry")
        if executed is not None:
            if queued is None:
                out.append(f"{pid}: executed without being queued")
            elif queued.eta_ms is not None and queued.expires_ms is not None and not (
                    queued.eta_ms <= executed.at_ms < queued.expires_ms):
                out.append(f"{pid}: executed at {executed.at_ms} ms, outside its window "
                           f"[{queued.eta_ms}, {queued.expires_ms})")
        return out

    def _audit_journal_in(self, conn: Connection, expected: dict[int, tuple[str, str]],
                          proposals: dict[str, _Rows]) -> list[str]:
        out: list[str] = []
        found: set[int] = set()
        query = select(journal_events.c.seq, journal_events.c.body, journal_events.c.leaf_hash).where(
            journal_events.c.type.in_(["gov.propose", "gov.vote", "gov.queue", "gov.execute", "gov.cancel"]))
        for row in conn.execute(query).all():
            event = Event.from_row(int(row.seq), row.body, row.leaf_hash)
            want = expected.get(event.seq)
            pid = event.data.get("proposal")
            if want is None:
                out.append(f"journal event {event.seq} ({event.type} {pid}) has no governance row")
                continue
            found.add(event.seq)
            if want != (event.type, pid):
                out.append(f"journal event {event.seq} is {event.type} {pid}, but the row says {want[0]} {want[1]}")
            elif event.type == "gov.vote":
                vote = next(v for v in proposals[pid].votes if v.seq == event.seq)
                if (event.data.get("voter"), event.data.get("support"), event.data.get("weight")) != (
                        vote.voter_id, vote.support, vote.weight):
                    out.append(f"{pid}: the vote row of {vote.voter_id} differs from journal event {event.seq}")
            elif event.type == "gov.propose":
                p = proposals[pid].proposal
                if (event.data.get("snapshot_ms"), event.data.get("deadline_ms"), event.data.get("proposer")) != (
                        p.snapshot_ms, p.deadline_ms, p.proposer_id):
                    out.append(f"{pid}: the proposal row differs from journal event {event.seq}")
        for seq in sorted(set(expected) - found):
            out.append(f"{expected[seq][1]}: row for {expected[seq][0]} points at journal event {seq}, which is not one")
        return out

    # --- internals -----------------------------------------------------------------------------------------------

    def _journal(self, conn: Connection, type_: str, data: dict[str, Any], actor: str) -> Event:
        return self.ledger.journal.append(conn, type_, data, actor=actor)

    def _actor_in(self, conn: Connection, actor: str) -> Any:
        if not isinstance(actor, str) or not actor:
            raise InvalidInput("actor must be an account name or id", field="actor")
        who = self.accounts.get_in(conn, actor)
        if who.kind == "system":
            raise PermissionDenied(f"{who.name} is a system account; it cannot take part in governance", field="actor")
        return who

    def _rows_in(self, conn: Connection, proposal: str) -> _Rows:
        row = None
        if isinstance(proposal, str):
            row = conn.execute(select(gov_proposals).where(gov_proposals.c.id == proposal)).one_or_none()
        if row is None:
            raise NotFound(f"no proposal {proposal!r}; list them with: royalty gov list", field="proposal")
        return self._load_rows_in(conn, row)

    @staticmethod
    def _load_rows_in(conn: Connection, row: Any) -> _Rows:
        rows = _Rows(row)
        for t in conn.execute(select(gov_transitions).where(gov_transitions.c.proposal_id == row.id)).all():
            rows.transitions[t.kind] = t
        query = select(gov_votes).where(gov_votes.c.proposal_id == row.id).order_by(gov_votes.c.seq)
        rows.votes = list(conn.execute(query).all())
        return rows

    def _quorum_in(self, conn: Connection, p: Any) -> int:
        """Quorum at the snapshot (GovernorVotesQuorumFraction): total gOPEN then × the percent then // 100."""
        supply = self.staking.get_past_total_supply_in(conn, p.snapshot_ms)
        return supply * _params_at_in(conn, p.snapshot_ms).gov_quorum_percent // 100

    def _outcome_in(self, conn: Connection, p: Any, votes: Sequence[Any]) -> str:
        tally = _tally(votes)
        quorum = self._quorum_in(conn, p)
        return "succeeded" if tally.for_ + tally.abstain >= quorum and tally.for_ > tally.against else "defeated"

    def _state_in(self, conn: Connection, rows: _Rows, now: int) -> str:
        p, t = rows.proposal, rows.transitions
        if "executed" in t:
            return "executed"
        if "canceled" in t:
            return "canceled"
        if now <= p.snapshot_ms:
            return "pending"
        if now <= p.deadline_ms:
            return "active"
        if "queued" in t:
            return "expired" if now >= t["queued"].expires_ms else "queued"
        return self._outcome_in(conn, p, rows.votes)

    def _proposal_in(self, conn: Connection, rows: _Rows, now: int) -> Proposal:
        p, t = rows.proposal, rows.transitions
        queued = t.get("queued")
        return Proposal(
            id=p.id, proposer=p.proposer_id, description=p.description, description_hash=p.description_hash,
            actions=tuple(json.loads(p.actions_json)), threshold=int(p.threshold), created_ms=int(p.created_ms),
            snapshot_ms=int(p.snapshot_ms), deadline_ms=int(p.deadline_ms), created_seq=int(p.created_seq),
            state=self._state_in(conn, rows, now), as_of_ms=now, tally=_tally(rows.votes),
            quorum=self._quorum_in(conn, p) if now > p.snapshot_ms else None,
            eta_ms=queued.eta_ms if queued else None, expires_ms=queued.expires_ms if queued else None,
            queued_ms=queued.at_ms if queued else None,
            executed_ms=t["executed"].at_ms if "executed" in t else None,
            canceled_ms=t["canceled"].at_ms if "canceled" in t else None,
            voters=len(rows.votes),
        )

    def _normalise_in(self, conn: Connection, actions: Any, params: Params) -> list[dict[str, Any]]:
        """Check ``actions`` against the current state, simulating them in order (a set_params of supply_cap
        applies to a later mint); every problem at once. Returns the canonical form (account ids, sorted
        changes)."""
        if isinstance(actions, (str, bytes)) or not isinstance(actions, Sequence) or not actions:
            raise InvalidInput("a proposal needs a non-empty list of actions", field="actions")
        if len(actions) > MAX_ACTIONS:
            raise InvalidInput(f"a proposal may carry at most {MAX_ACTIONS} actions, got {len(actions)}", field="actions")
        problems: list[tuple[str, str]] = []  # (field, message)

        def fail(field: str, message: str) -> None:
            problems.append((field, f"{field}: {message}"))

        out: list[dict[str, Any]] = []
        supply = _supply_in(conn)
        for i, action in enumerate(actions):
            where = f"actions[{i}]"
            if not isinstance(action, Mapping) or action.get("type") not in ACTION_TYPES:
                got = action.get("type") if isinstance(action, Mapping) else action
                fail(f"{where}.type", f"{got!r} is not an action type; use one of {', '.join(ACTION_TYPES)}")
                continue
            kind = action["type"]
            unknown = sorted(set(action) - {"type", *_ACTION_FIELDS[kind]})
            missing = [f for f in _ACTION_FIELDS[kind] if f not in action]
            if unknown or missing:
                parts = ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) + (
                    [f"missing {', '.join(missing)}"] if missing else [])
                fail(where, f"({kind}) " + "; ".join(parts))
                continue
            if kind == "set_params":
                changes = action["changes"]
                if not isinstance(changes, Mapping) or not changes:
                    fail(f"{where}.changes", "must be a non-empty object of parameter: integer")
                    continue
                bad = [str(k) for k, v in changes.items() if type(v) is not int]
                if bad:
                    fail(f"{where}.changes", f"values must be integers ({', '.join(bad)})")
                    continue
                try:
                    params = params.with_changes(changes)
                except InvalidInput as exc:
                    fail(f"{where}.changes", exc.message)
                    continue
                if params.supply_cap < supply:
                    fail(f"{where}.changes", f"supply_cap {format_amount(params.supply_cap)} is below the supply of "
                                             f"{format_amount(supply)} at that point")
                out.append({"type": kind, "changes": dict(sorted(changes.items()))})
                continue
            amount = action["amount"]
            if type(amount) is not int or not 0 < amount <= AMOUNT_MAX:
                fail(f"{where}.amount", f"must be a positive integer of base units, got {amount!r}")
                continue
            if kind == "burn":
                if action["from"] != "treasury":
                    fail(f"{where}.from", "must be \"treasury\": governance burns only treasury OPEN")
                    continue
                supply -= amount
                out.append({"type": kind, "from": "treasury", "amount": amount})
                continue
            to = self._recipient_in(conn, action["to"], allow_treasury=kind == "mint", field=f"{where}.to", fail=fail)
            if to is None:
                continue
            if kind == "mint":
                if supply + amount > params.supply_cap:
                    fail(f"{where}.amount", f"minting {format_amount(amount)} OPEN would exceed the supply cap of "
                                            f"{format_amount(params.supply_cap)} (supply {format_amount(supply)})")
                    continue
                supply += amount
            out.append({"type": kind, "to": to, "amount": amount})
        if problems:
            raise InvalidInput("invalid proposal: " + "; ".join(m for _, m in problems), field=problems[0][0])
        return out

    def _recipient_in(self, conn: Connection, ref: Any, *, allow_treasury: bool, field: str,
                      fail: Callable[[str, str], None]) -> str | None:
        if allow_treasury and ref == "treasury":
            return "treasury"
        if not isinstance(ref, str) or not ref:
            fail(field, "must be an account name or id")
            return None
        try:
            who = self.accounts.get_in(conn, ref)
        except NotFound:
            fail(field, f"no account {ref!r}")
            return None
        if who.kind == "system":
            fail(field, f"{who.name} is a system account" + (" (mint to \"treasury\" instead)" if allow_treasury else ""))
            return None
        return who.id

    def _lock_for_execute_in(self, conn: Connection, actions: Sequence[Mapping[str, Any]]) -> None:
        """PostgreSQL: lock every ledger account the actions will touch, ascending, before anything journals
        (the journal head is locked after accounts everywhere), then take the execute lock."""
        if conn.dialect.name != "postgresql":
            return
        ids: set[int] = set()
        for a in actions:
            if a["type"] == "treasury_transfer":
                ids |= {system_account_id(AccountCode.TREASURY), account_id(AccountCode.AVAILABLE, a["to"])}
            elif a["type"] == "mint":
                ids.add(system_account_id(AccountCode.ISSUANCE))
                ids.add(system_account_id(AccountCode.TREASURY) if a["to"] == "treasury"
                        else account_id(AccountCode.AVAILABLE, a["to"]))
            elif a["type"] == "burn":
                ids |= {system_account_id(AccountCode.TREASURY), system_account_id(AccountCode.BURN)}
        if ids:
            conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.id.in_([hex_id(i) for i in ids]))
                         .order_by(ledger_accounts.c.id).with_for_update())
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EXECUTE_LOCK_KEY})

    def _apply_in(self, conn: Connection, pid: str, index: int, action: Mapping[str, Any], actor: str) -> None:
        kind = action["type"]
        extra = {"proposal": pid, "action": index}
        tid = transfer_id("gov", pid, str(index))
        if kind == "set_params":
            new = self.params.set_in(conn, action["changes"], reason=f"governance {pid} action {index}", actor=actor)
            supply = _supply_in(conn)
            if new.supply_cap < supply:
                raise InvalidInput(f"supply_cap {format_amount(new.supply_cap)} would be below the supply of "
                                   f"{format_amount(supply)}", field="supply_cap")
        elif kind == "treasury_transfer":
            self.tokens.grant_in(conn, action["to"], action["amount"], id=tid, actor=actor, extra=extra)
        elif kind == "mint":
            self.tokens.mint_in(conn, action["to"], action["amount"], id=tid, actor=actor, extra=extra)
        elif kind == "burn":
            self.tokens.burn_in(conn, "treasury", action["amount"], id=tid, actor=actor, extra=extra)
        else:  # normalised at propose time; a stored row can hold nothing else
            raise InvalidInput(f"unknown action type {kind!r}", field="actions")


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def _tally(votes: Sequence[Any]) -> Tally:
    sums = {AGAINST: 0, FOR: 0, ABSTAIN: 0}
    for v in votes:
        sums[int(v.support)] = sums.get(int(v.support), 0) + int(v.weight)
    return Tally(against=sums[AGAINST], for_=sums[FOR], abstain=sums[ABSTAIN])


def _vote(row: Any) -> Vote:
    return Vote(row.proposal_id, row.voter_id, int(row.support), int(row.weight), row.reason, int(row.cast_ms),
                int(row.seq))


def _params_at_in(conn: Connection, ms: int) -> Params:
    row = conn.execute(
        select(ledger_params.c.values_json).where(ledger_params.c.effective_ms <= ms)
        .order_by(ledger_params.c.seq.desc()).limit(1)
    ).first()
    return Params() if row is None else Params(**json.loads(row.values_json))


def _supply_in(conn: Connection) -> int:
    """Total OPEN = issued − burnt (I4)."""
    ids = {hex_id(system_account_id(AccountCode.ISSUANCE)): 1, hex_id(system_account_id(AccountCode.BURN)): -1}
    supply = 0
    for r in conn.execute(select(ledger_accounts).where(ledger_accounts.c.id.in_(list(ids)))).all():
        if ids[r.id] == 1:
            supply += int(r.debits_posted) - int(r.credits_posted)
        else:
            supply -= int(r.credits_posted) - int(r.debits_posted)
    return supply


def _action_failed(pid: str, index: int, action: Mapping[str, Any], exc: RoyaltyError) -> RoyaltyError:
    message = f"executing {pid} failed at action {index} ({action['type']}), so nothing was done: {exc.message}"
    if isinstance(exc, TransferRejected):
        return type(exc)(message, result=exc.result, field=exc.field)
    return Conflict(message, field=exc.field)
