"""Staking and gOPEN (``node.staking``): stake OPEN for non-transferable gOPEN 1:1, delegate voting power,
cooldown then redeem, and the stakers' share of inference fees.

Time is the node's ledger clock in milliseconds; ``timepoint`` arguments are ms. Durations in Params are seconds.

Model (``shared/reference/ledger.md`` §2, I9, §5):

- **Stake** is one linked chain: ``AVAILABLE → STAKED`` (OPEN) and ``GOPEN_ISSUANCE → GOPEN`` (gOPEN). Nothing
  else ever moves gOPEN, so a participant's gOPEN always equals their STAKED OPEN. **Redeem** is the mirror chain
  (``STAKED → AVAILABLE``, ``GOPEN → GOPEN_ISSUANCE``).
- **Voting units** = staked balance; they count only once delegated (self-delegation included), as in
  OpenZeppelin's ERC20Votes. Each delegatee and the total supply keep append-only checkpoint histories
  (timepoint ms, value); ``get_past_votes(t)`` is the last checkpoint at or before ``t`` and refuses ``t >= now``
  (ERC5805FutureLookup), so staking after a snapshot never adds to it (flash-stake resistance).
- **Cooldown / redeem** follow Aave's Safety Module v1.5 (``bgd-labs/aave-stk-v1-5``): ``cooldown`` records a
  start and a redeem budget = the stake then; the budget only goes down (a redeem lowers it; a later stake does
  not raise it); redeem is allowed from ``start + stake_cooldown_s`` until ``stake_unstake_window_s`` after that,
  for at most the budget. Unlike Aave, an amount above the budget is refused rather than silently capped.
- **Stakers' rewards** use Synthetix's reward-per-token accumulator without a time rate: ``distribute_in(amount)``
  adds ``amount × 1e18 // total_staked`` to ``reward_per_token`` (mutable single-row state, ``staking_state``);
  a staker's earned = ``staked × (rpt − paid_rpt) // 1e18 + stored``, settled before each stake, redeem and claim
  of that staker. Both divisions round down, in favour of the pool, so Σ claimable ≤ STAKER_POOL (I11-like).

Storage (migration 0005): ``staking_state`` (one row), ``staking_stakers`` (one per participant),
``staking_delegates`` (current votes per delegatee), ``staking_vote_checkpoints`` and
``staking_supply_checkpoints`` (append-only). Money-moving operations journal one event carrying their transfers
plus the resulting staking state (``staking.stake``, ``staking.redeem``, ``staking.claim``); the payload describes
the effect of the transfers and applies only when their results are ``ok``. ``staking.cooldown`` and
``staking.delegate`` are events of their own. ``distribute_in`` journals nothing: the caller's transfer into
STAKER_POOL carries it, and the accumulator is a function of those transfers and the stake history.

Concurrency (PostgreSQL, READ COMMITTED): every operation locks, in this order, the ``staking_state`` row (stake,
redeem, distribute_in), one ``staking_stakers`` row, the ``staking_delegates`` rows it changes (ascending id),
then the ledger accounts (the core) and the journal head. Callers of ``distribute_in`` must call it before any
transfer of their transaction to keep that order. Rows are written after the journal append, so every row an
operation UPDATEs was locked before it; a row missing at lock time is INSERTed (a concurrent first insert
collides and the transaction is retried) rather than updated, which would wait on a lock while holding the
journal head. ``claim`` reads the accumulator without locking it: it only grows, and paying against a slightly
older value pays the rest later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from ..accounts import Accounts
from ..accounts.service import Account
from ..errors import Conflict, InsufficientFunds, InvalidInput, PermissionDenied, TransferRejected
from ..store import Store
from ..store.schema import (
    ledger_accounts,
    ledger_failures,
    ledger_transfers,
    staking_delegates,
    staking_state,
    staking_stakers,
    staking_supply_checkpoints,
    staking_vote_checkpoints,
)
from .amounts import amount_json, format_amount
from .chart import AccountCode, TransferCode, account_id, system_account_id, transfer_id
from .codes import AMOUNT_MAX, Asset, Result, TransferFlags
from .core import Ledger, TransferSpec, hex_id, parse_id
from .params import ParamsRegistry
from .tokens import Tokens, new_transfer_id, raise_for

RPT_SCALE = 10**18  # reward_per_token is in 1e-18 base units of OPEN per base unit staked (Synthetix's 1e18)
_LINKED = int(TransferFlags.LINKED)


def format_time(ms: int) -> str:
    """Ledger ms as an ISO 8601 UTC time with milliseconds, e.g. 2026-12-09T13:51:11.378Z (CLI and messages)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _check_amount(amount: Any) -> int:
    if type(amount) is not int:
        raise InvalidInput(f"amount must be an integer number of base units, got {amount!r}", field="amount")
    if not 0 < amount <= AMOUNT_MAX:
        raise InvalidInput(f"amount must be more than zero and below 2^63 base units, got {amount}", field="amount")
    return amount


def _check_timepoint(timepoint: Any) -> int:
    if type(timepoint) is not int or timepoint < 0:
        raise InvalidInput(f"timepoint must be a non-negative integer of ms, got {timepoint!r}", field="timepoint")
    return timepoint


# --------------------------------------------------------------------------------------------------------------
# public records
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StakerState:
    """One participant's staking position. ``votes`` is the voting power delegated *to* them; ``delegatee`` is
    who their own units go to (None: not delegated, so they count nowhere). Cooldown times are ledger ms;
    ``cooldown_status`` is none | cooling | redeemable | expired."""

    account: str
    name: str
    available: int
    staked: int
    gopen: int
    delegatee: str | None
    votes: int
    cooldown_start_ms: int | None
    cooldown_budget: int
    redeem_opens_ms: int | None
    redeem_closes_ms: int | None
    cooldown_status: str
    claimable: int
    claims: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "name": self.name,
            "available": amount_json(self.available),
            "staked": amount_json(self.staked),
            "gopen": amount_json(self.gopen),
            "delegatee": self.delegatee,
            "votes": amount_json(self.votes),
            "cooldown": {
                "status": self.cooldown_status,
                "start_ms": self.cooldown_start_ms,
                "budget": amount_json(self.cooldown_budget),
                "redeem_opens_ms": self.redeem_opens_ms,
                "redeem_closes_ms": self.redeem_closes_ms,
            },
            "claimable": amount_json(self.claimable),
            "claims": self.claims,
        }


@dataclass(frozen=True)
class StakingReceipt:
    """The outcome of a staking operation. ``result`` is ``ok`` (done now), ``exists`` (a retry of an operation
    already done under the same id: nothing changed) or ``noop`` (nothing to do: delegate to the current
    delegatee, claim with nothing accrued). ``state`` is the participant's position afterwards."""

    operation: str
    account: str
    amount: int
    result: str
    transfer_id: int | None
    event_seq: int | None
    state: StakerState

    @property
    def replayed(self) -> bool:
        return self.result == Result.exists.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "account": self.account,
            "amount": amount_json(self.amount),
            "result": self.result,
            "replayed": self.replayed,
            "transfer_id": hex_id(self.transfer_id) if self.transfer_id is not None else None,
            "event_seq": self.event_seq,
            "state": self.state.to_dict(),
        }


@dataclass(frozen=True)
class _State:
    total_staked: int
    rpt: int
    distributed: int


@dataclass(frozen=True)
class _Staker:
    account_id: str
    staked: int = 0
    delegatee_id: str | None = None
    cooldown_start_ms: int | None = None
    cooldown_budget: int = 0
    paid_rpt: int = 0
    stored: int = 0
    claims: int = 0
    exists: bool = False

    def earned(self, rpt: int) -> int:
        # rpt never decreases and paid_rpt is always a value it had, so the difference is >= 0.
        return self.staked * (rpt - self.paid_rpt) // RPT_SCALE + self.stored

    def settled(self, rpt: int) -> _Staker:
        """Synthetix's updateReward: bank what was earned so far and restart from ``rpt``."""
        return dataclasses.replace(self, stored=self.earned(rpt), paid_rpt=max(rpt, self.paid_rpt))


def _staker_from_row(r: Any) -> _Staker:
    return _Staker(r.account_id, int(r.staked), r.delegatee_id, None if r.cooldown_start_ms is None else int(r.cooldown_start_ms),
                   int(r.cooldown_budget), int(r.reward_paid_rpt), int(r.rewards_stored), int(r.claims), True)


# --------------------------------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------------------------------


class Staking:
    """Stake, cooldown, redeem, delegate and claim; voting power history; stakers' rewards (``node.staking``)."""

    def __init__(self, store: Store, ledger: Ledger, tokens: Tokens, accounts: Accounts, params: ParamsRegistry,
                 clock: Callable[[], int]) -> None:
        self.store = store
        self.ledger = ledger
        self.tokens = tokens
        self.accounts = accounts
        self.params = params
        self.clock = clock

    # --- participant operations (authorization: actor must be the participant) ----------------------------------
    def stake(self, ref: str, amount: int, *, actor: str, id: Any = None) -> StakingReceipt:
        """AVAILABLE → STAKED (OPEN) and GOPEN_ISSUANCE → GOPEN (gOPEN) for ``amount``, atomically; voting units
        of the participant's delegatee grow by ``amount``.

        ``amount`` is in base units. ``id`` (UUID, 32 hex digits or int) names the operation: a retry with the
        same id and amount answers ``exists`` without staking again; with another amount it raises
        TransferRejected (``exists_with_different_amount``). Raises InsufficientFunds when the available OPEN is
        short, PermissionDenied unless ``actor`` is the participant, NotFound for an unknown account."""
        who = self._acting(ref, actor, "stake")
        amount = _check_amount(amount)
        tid = new_transfer_id() if id is None else parse_id(id, "id")
        first = TransferSpec(tid, account_id(AccountCode.AVAILABLE, who.id), account_id(AccountCode.STAKED, who.id),
                             amount, ledger=int(Asset.OPEN), code=int(TransferCode.STAKE), flags=_LINKED)
        mint = TransferSpec(transfer_id("staking.stake", hex_id(tid), "gopen"), system_account_id(AccountCode.GOPEN_ISSUANCE),
                            account_id(AccountCode.GOPEN, who.id), amount, ledger=int(Asset.GOPEN),
                            code=int(TransferCode.GOPEN_MINT))
        what = f"stake of {format_amount(amount)} OPEN"

        def body(conn: Connection) -> tuple[str, int, int | None]:
            state = self._lock_state(conn)
            row = self._lock_staker(conn, who.id)
            prior = self._prior_in(conn, first, what)
            if prior is not None:
                return Result.exists.value, prior[0], None
            if not self._has_wallet(conn, who.id):
                raise InsufficientFunds(f"{what}: {who.name} has no OPEN yet", result=Result.exceeds_credits.value,
                                        field="amount")
            delegate, existing = self._lock_delegates(conn, [row.delegatee_id])
            now = self.clock()
            row = row.settled(state.rpt)
            row = dataclasses.replace(row, staked=row.staked + amount)
            total = state.total_staked + amount
            votes = {d: v + amount for d, v in delegate.items()}
            extra = {"operation": "stake", "account": who.id, "amount": amount, "staked": row.staked,
                     "total_staked": total, "delegatee": row.delegatee_id, "votes": votes.get(row.delegatee_id)}
            results = self.ledger.create_transfers_in(conn, [first, mint], actor=who.id, event_type="staking.stake",
                                                      extra=extra)
            if results != [Result.ok, Result.ok]:
                return _failure(results), amount, None
            seq = self._event_seq_of(conn, tid)
            self._write_staker(conn, row, seq)
            self._write_total(conn, now, seq, total)
            self._write_votes(conn, now, seq, votes, existing)
            return Result.ok.value, amount, seq

        result, moved, seq = self.ledger.transaction(body)
        raise_for(_as_result(result), what, field="amount")
        return StakingReceipt("stake", who.id, moved, result, tid, seq, self.state(who.id))

    def cooldown(self, ref: str, *, actor: str) -> StakingReceipt:
        """Start the cooldown; redeem is allowed after ``stake_cooldown_s`` and within ``stake_unstake_window_s``.

        The redeem budget is the stake now. Calling it again restarts the cooldown with the stake then (Aave
        v1.5). Raises Conflict when nothing is staked."""
        who = self._acting(ref, actor, "start a cooldown for")

        def body(conn: Connection) -> int:
            row = self._lock_staker(conn, who.id)
            if row.staked == 0:
                raise Conflict(f"{who.name} has nothing staked; stake first (royalty stake {who.name} AMOUNT)",
                               field="account")
            now = self.clock()
            p = self.params.current_in(conn)
            opens = now + p.stake_cooldown_s * 1000
            event = self.ledger.journal.append(conn, "staking.cooldown", {
                "account": who.id, "start_ms": now, "budget": row.staked, "redeem_opens_ms": opens,
                "redeem_closes_ms": opens + p.stake_unstake_window_s * 1000}, actor=who.id)
            self._write_staker(conn, dataclasses.replace(row, cooldown_start_ms=now, cooldown_budget=row.staked),
                               event.seq)
            return event.seq

        seq = self.ledger.transaction(body)
        state = self.state(who.id)
        return StakingReceipt("cooldown", who.id, state.cooldown_budget, Result.ok.value, None, seq, state)

    def redeem(self, ref: str, amount: int, *, actor: str, id: Any = None) -> StakingReceipt:
        """STAKED → AVAILABLE and burn gOPEN, within the redeem budget (Aave v1.5).

        Allowed from ``cooldown start + stake_cooldown_s`` through ``stake_unstake_window_s`` after that, for at
        most the budget; voting units of the delegatee drop by ``amount`` in the same transaction. Raises
        Conflict outside the window (saying when it opens or closed), without a cooldown, or above the budget;
        ``id`` works as for ``stake``."""
        who = self._acting(ref, actor, "redeem")
        amount = _check_amount(amount)
        tid = new_transfer_id() if id is None else parse_id(id, "id")
        first = TransferSpec(tid, account_id(AccountCode.STAKED, who.id), account_id(AccountCode.AVAILABLE, who.id),
                             amount, ledger=int(Asset.OPEN), code=int(TransferCode.REDEEM), flags=_LINKED)
        burn = TransferSpec(transfer_id("staking.redeem", hex_id(tid), "gopen"), account_id(AccountCode.GOPEN, who.id),
                            system_account_id(AccountCode.GOPEN_ISSUANCE), amount, ledger=int(Asset.GOPEN),
                            code=int(TransferCode.GOPEN_BURN))
        what = f"redeem of {format_amount(amount)} OPEN"

        def body(conn: Connection) -> tuple[str, int, int | None]:
            state = self._lock_state(conn)
            row = self._lock_staker(conn, who.id)
            prior = self._prior_in(conn, first, what)
            if prior is not None:
                return Result.exists.value, prior[0], None
            now = self.clock()
            self._check_redeem(conn, who, row, amount, now)
            delegate, existing = self._lock_delegates(conn, [row.delegatee_id])
            row = row.settled(state.rpt)
            staked = row.staked - amount
            budget = min(row.cooldown_budget - amount, staked)
            # Aave v1.5: a cooldown whose budget is used up is over.
            start = row.cooldown_start_ms if budget > 0 else None
            row = dataclasses.replace(row, staked=staked, cooldown_budget=max(budget, 0), cooldown_start_ms=start)
            total = state.total_staked - amount
            votes = {d: v - amount for d, v in delegate.items()}
            extra = {"operation": "redeem", "account": who.id, "amount": amount, "staked": staked,
                     "total_staked": total, "delegatee": row.delegatee_id, "votes": votes.get(row.delegatee_id),
                     "cooldown_budget": row.cooldown_budget}
            results = self.ledger.create_transfers_in(conn, [first, burn], actor=who.id, event_type="staking.redeem",
                                                      extra=extra)
            if results != [Result.ok, Result.ok]:
                return _failure(results), amount, None
            seq = self._event_seq_of(conn, tid)
            self._write_staker(conn, row, seq)
            self._write_total(conn, now, seq, total)
            self._write_votes(conn, now, seq, votes, existing)
            return Result.ok.value, amount, seq

        result, moved, seq = self.ledger.transaction(body)
        raise_for(_as_result(result), what, field="amount")
        return StakingReceipt("redeem", who.id, moved, result, tid, seq, self.state(who.id))

    def delegate(self, ref: str, delegatee: str, *, actor: str) -> StakingReceipt:
        """Give the participant's voting units to ``delegatee`` (themselves included). Votes count only when
        delegated.

        All current units move from the old delegatee (if any) to the new one, with a checkpoint for each;
        later stakes and redeems follow the delegation. Delegating to the current delegatee is a ``noop``."""
        who = self._acting(ref, actor, "delegate for")
        target = self.tokens.participant(delegatee)

        def body(conn: Connection) -> tuple[str, int, int | None]:
            row = self._lock_staker(conn, who.id)
            old = row.delegatee_id
            if old == target.id:
                return "noop", row.staked, None
            delegates, existing = self._lock_delegates(conn, [old, target.id])
            units = row.staked
            votes = dict(delegates)
            if old is not None:
                votes[old] -= units
            votes[target.id] += units
            now = self.clock()
            event = self.ledger.journal.append(conn, "staking.delegate", {
                "account": who.id, "from": old, "to": target.id, "units": units,
                "votes": {d: v for d, v in sorted(votes.items())}}, actor=who.id)
            self._write_staker(conn, dataclasses.replace(row, delegatee_id=target.id), event.seq)
            self._write_votes(conn, now, event.seq, votes, existing, checkpoint=units > 0)
            return Result.ok.value, units, event.seq

        result, units, seq = self.ledger.transaction(body)
        return StakingReceipt("delegate", who.id, units, result, None, seq, self.state(who.id))

    def claim(self, ref: str, *, actor: str, id: Any = None) -> StakingReceipt:
        """Pay the participant's accrued staker rewards STAKER_POOL → AVAILABLE.

        The transfer id is ``id`` when given (a retry with it answers ``exists`` with the amount first paid),
        else derived from (participant, claim number), so a re-run never pays twice. Nothing accrued: ``noop``."""
        who = self._acting(ref, actor, "claim for")
        given = None if id is None else parse_id(id, "id")
        dst = account_id(AccountCode.AVAILABLE, who.id)
        pool = system_account_id(AccountCode.STAKER_POOL)

        def body(conn: Connection) -> tuple[str, int, int | None, int | None]:
            row = self._lock_staker(conn, who.id)
            if given is not None:
                probe = TransferSpec(given, pool, dst, None, ledger=int(Asset.OPEN), code=int(TransferCode.STAKER_CLAIM))
                prior = self._prior_in(conn, probe, "claim")
                if prior is not None:
                    return Result.exists.value, prior[0], given, None
            rpt = self._read_state(conn).rpt
            row = row.settled(rpt)
            if row.stored == 0:
                return "noop", 0, None, None
            tid = given if given is not None else transfer_id("staking.claim", who.id, str(row.claims + 1))
            amount = row.stored
            spec = TransferSpec(tid, pool, dst, amount, ledger=int(Asset.OPEN), code=int(TransferCode.STAKER_CLAIM))
            results = self.ledger.create_transfers_in(conn, [spec], actor=who.id, event_type="staking.claim", extra={
                "operation": "claim", "account": who.id, "amount": amount, "claim": row.claims + 1})
            if results[0] is not Result.ok:
                return results[0].value, amount, tid, None
            seq = self._event_seq_of(conn, tid)
            self._write_staker(conn, dataclasses.replace(row, stored=0, claims=row.claims + 1), seq)
            return Result.ok.value, amount, tid, seq

        result, amount, tid, seq = self.ledger.transaction(body)
        if result != "noop":
            raise_for(_as_result(result), f"claim of {format_amount(amount)} OPEN")
        return StakingReceipt("claim", who.id, amount, result, tid, seq, self.state(who.id))

    # --- reads -----------------------------------------------------------------------------------------------------
    def state(self, ref: str) -> StakerState:
        """``ref``'s staking position (a participant by name or id), read in one snapshot."""
        who = self.tokens.participant(ref)
        with self.store.read() as conn:
            row = self._read_staker(conn, who.id)
            rpt = self._read_state(conn).rpt
            votes = conn.execute(select(staking_delegates.c.votes).where(
                staking_delegates.c.delegatee_id == who.id)).scalar_one_or_none() or 0
            ids = {hex_id(account_id(c, who.id)): c for c in (AccountCode.AVAILABLE, AccountCode.STAKED, AccountCode.GOPEN)}
            bal = {ids[r.id]: r for r in conn.execute(select(ledger_accounts).where(ledger_accounts.c.id.in_(ids)))}
            p = self.params.current_in(conn)

        def available(code: AccountCode) -> int:
            r = bal.get(code)
            return 0 if r is None else int(r.credits_posted) - int(r.debits_posted) - int(r.debits_pending)

        opens = closes = None
        status = "none"
        if row.cooldown_start_ms is not None:
            opens = row.cooldown_start_ms + p.stake_cooldown_s * 1000
            closes = opens + p.stake_unstake_window_s * 1000
            now = self.clock()
            status = "cooling" if now < opens else "redeemable" if now <= closes else "expired"
        return StakerState(
            account=who.id, name=who.name, available=available(AccountCode.AVAILABLE),
            staked=available(AccountCode.STAKED), gopen=available(AccountCode.GOPEN), delegatee=row.delegatee_id,
            votes=int(votes), cooldown_start_ms=row.cooldown_start_ms, cooldown_budget=row.cooldown_budget,
            redeem_opens_ms=opens, redeem_closes_ms=closes, cooldown_status=status, claimable=row.earned(rpt),
            claims=row.claims,
        )

    def claimable(self, ref: str) -> int:
        """Rewards ``ref`` could claim now (base units)."""
        return self.state(ref).claimable

    def total_staked(self) -> int:
        """Total OPEN staked = total gOPEN now."""
        with self.store.read() as conn:
            return self._read_state(conn).total_staked

    # --- voting power (ERC20Votes / ERC5805 semantics) ----------------------------------------------------------
    def get_votes(self, ref: str) -> int:
        """Current voting power (base units of gOPEN delegated to ``ref``)."""
        who = self.accounts.get(ref)
        with self.store.read() as conn:
            return self.get_votes_in(conn, who.id)

    def get_votes_in(self, conn: Connection, account_id: str) -> int:
        """``get_votes`` for a node account id (``acct_…``) inside the caller's transaction."""
        value = conn.execute(select(staking_delegates.c.votes).where(
            staking_delegates.c.delegatee_id == account_id)).scalar_one_or_none()
        return 0 if value is None else int(value)

    def get_past_votes(self, ref: str, timepoint: int) -> int:
        """Voting power at ``timepoint`` ms (the last checkpoint at or before it). Raises InvalidInput when
        ``timepoint`` >= now (ERC5805FutureLookup): the past must be settled."""
        who = self.accounts.get(ref)
        with self.store.read() as conn:
            return self.get_past_votes_in(conn, who.id, timepoint)

    def get_past_total_supply(self, timepoint: int) -> int:
        """Total gOPEN at ``timepoint`` ms (same rule)."""
        with self.store.read() as conn:
            return self.get_past_total_supply_in(conn, timepoint)

    def get_past_votes_in(self, conn: Connection, account_id: str, timepoint: int) -> int:
        """``get_past_votes`` for a node account id (``acct_…``) inside the caller's transaction. One index
        lookup on the checkpoints' primary key (delegatee, timepoint, event_seq)."""
        self._check_past(timepoint)
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        row = conn.exec_driver_sql(
            "SELECT votes FROM staking_vote_checkpoints WHERE delegatee_id = " + mark + " AND timepoint_ms <= " + mark
            + " ORDER BY timepoint_ms DESC, event_seq DESC LIMIT 1", (account_id, timepoint)).first()
        return 0 if row is None else int(row[0])

    def get_past_total_supply_in(self, conn: Connection, timepoint: int) -> int:
        self._check_past(timepoint)
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        row = conn.exec_driver_sql(
            "SELECT supply FROM staking_supply_checkpoints WHERE timepoint_ms <= " + mark
            + " ORDER BY timepoint_ms DESC, event_seq DESC LIMIT 1", (timepoint,)).first()
        return 0 if row is None else int(row[0])

    def _check_past(self, timepoint: Any) -> None:
        timepoint = _check_timepoint(timepoint)
        now = self.clock()
        if timepoint >= now:
            raise InvalidInput(f"timepoint {timepoint} is not in the past (now {now}): past votes are only known for "
                               "settled time (ERC5805FutureLookup)", field="timepoint")

    # --- fees -----------------------------------------------------------------------------------------------------
    def distribute_in(self, conn: Connection, amount: int) -> int:
        """Credit ``amount`` base units of stakers' rewards to every staker pro rata through the reward-per-token
        accumulator, inside the caller's transaction. Returns how much was allocated (0 when nothing is staked;
        the caller then sends that share elsewhere). The caller moves the allocated OPEN into STAKER_POOL in the
        same transaction; stakers later ``claim`` from it.

        Call it before any transfer of the transaction: it locks the ``staking_state`` row, which staking's own
        operations lock before ledger accounts (PostgreSQL lock order; a transfer first can deadlock with a
        concurrent stake). ``reward_per_token += amount × 1e18 // total_staked``, rounded down."""
        if type(amount) is not int or not 0 <= amount <= AMOUNT_MAX:
            raise InvalidInput(f"amount must be a non-negative integer of base units, got {amount!r}", field="amount")
        state = self._lock_state(conn)
        if amount == 0 or state.total_staked == 0:
            return 0
        increment = amount * RPT_SCALE // state.total_staked
        if increment == 0:  # more than 1e12 OPEN staked per base unit distributed: nothing can be credited
            return 0
        conn.execute(update(staking_state).where(staking_state.c.id == 1).values(
            reward_per_token=str(state.rpt + increment), distributed=state.distributed + amount))
        return amount

    # --- audit ----------------------------------------------------------------------------------------------------
    def audit(self) -> list[str]:
        """Invariant problems found (I9: staked = gOPEN per participant, budgets, voting units = stake); empty
        when all hold. ``royalty ledger verify`` calls this.

        Checks: per participant gOPEN == STAKED == their staked units; Σ gOPEN == total staked == the latest
        total-supply checkpoint; each delegatee's votes == Σ stake delegated to it == its latest checkpoint (so
        Σ delegated votes == Σ delegated stake); budget <= staked and a budget only with a cooldown; gOPEN moved
        only by stake and redeem; Σ claimable <= STAKER_POOL."""
        problems: list[str] = []
        with self.store.read() as conn:
            state = self._read_state(conn)
            stakers = [_staker_from_row(r) for r in conn.execute(select(staking_stakers))]
            balances: dict[tuple[str, int], int] = {}
            for r in conn.execute(select(ledger_accounts.c.owner_id, ledger_accounts.c.code, ledger_accounts.c.debits_posted,
                                         ledger_accounts.c.credits_posted)
                                  .where(ledger_accounts.c.code.in_([int(AccountCode.STAKED), int(AccountCode.GOPEN)]))):
                balances[(r.owner_id, int(r.code))] = int(r.credits_posted) - int(r.debits_posted)
            issuance = conn.execute(select(ledger_accounts.c.debits_posted, ledger_accounts.c.credits_posted).where(
                ledger_accounts.c.id == hex_id(system_account_id(AccountCode.GOPEN_ISSUANCE)))).one()
            pool = conn.execute(select(ledger_accounts.c.credits_posted, ledger_accounts.c.debits_posted,
                                       ledger_accounts.c.debits_pending).where(
                ledger_accounts.c.id == hex_id(system_account_id(AccountCode.STAKER_POOL)))).one()
            delegates = {r.delegatee_id: int(r.votes) for r in conn.execute(select(staking_delegates))}
            latest_votes: dict[str, int] = {}
            for r in conn.execute(select(staking_vote_checkpoints).order_by(
                    staking_vote_checkpoints.c.delegatee_id, staking_vote_checkpoints.c.timepoint_ms,
                    staking_vote_checkpoints.c.event_seq)):
                latest_votes[r.delegatee_id] = int(r.votes)
            supply_row = conn.execute(select(staking_supply_checkpoints.c.supply).order_by(
                staking_supply_checkpoints.c.timepoint_ms.desc(), staking_supply_checkpoints.c.event_seq.desc()).limit(1)).first()
            odd_gopen = conn.execute(select(func.count()).select_from(ledger_transfers).where(
                ledger_transfers.c.ledger == int(Asset.GOPEN),
                ledger_transfers.c.code.notin_([int(TransferCode.GOPEN_MINT), int(TransferCode.GOPEN_BURN)]))).scalar_one()

        gopen_total = int(issuance.debits_posted) - int(issuance.credits_posted)
        by_id = {s.account_id: s for s in stakers}
        owners = {o for o, _ in balances} | set(by_id)
        for owner in sorted(o for o in owners if o is not None):
            staked = balances.get((owner, int(AccountCode.STAKED)), 0)
            gopen = balances.get((owner, int(AccountCode.GOPEN)), 0)
            units = by_id[owner].staked if owner in by_id else 0
            if not staked == gopen == units:
                problems.append(f"{owner}: STAKED {staked} OPEN, gOPEN {gopen} and staked units {units} differ")
        if not gopen_total == state.total_staked == sum(s.staked for s in stakers):
            problems.append(f"total gOPEN {gopen_total}, total staked {state.total_staked} and Σ staked units "
                            f"{sum(s.staked for s in stakers)} differ")
        supply = 0 if supply_row is None else int(supply_row[0])
        if supply != state.total_staked:
            problems.append(f"the latest total-supply checkpoint {supply} is not the total staked {state.total_staked}")
        delegated: dict[str, int] = {}
        for s in stakers:
            if s.delegatee_id is not None:
                delegated[s.delegatee_id] = delegated.get(s.delegatee_id, 0) + s.staked
        for d in sorted(set(delegated) | set(delegates) | set(latest_votes)):
            want, have, last = delegated.get(d, 0), delegates.get(d, 0), latest_votes.get(d, 0)
            if not want == have == last:
                problems.append(f"{d}: votes {have}, stake delegated to it {want} and latest checkpoint {last} differ")
        if sum(delegates.values()) != sum(delegated.values()):
            problems.append(f"Σ delegated votes {sum(delegates.values())} != Σ delegated stake {sum(delegated.values())}")
        for s in stakers:
            if s.cooldown_budget > s.staked:
                problems.append(f"{s.account_id}: redeem budget {s.cooldown_budget} exceeds the stake {s.staked}")
            if s.cooldown_budget < 0 or (s.cooldown_budget > 0) != (s.cooldown_start_ms is not None):
                problems.append(f"{s.account_id}: redeem budget {s.cooldown_budget} without a matching cooldown")
        if odd_gopen:
            problems.append(f"{odd_gopen} gOPEN transfers are neither stake mints nor redeem burns (gOPEN is non-transferable)")
        claimable = sum(s.earned(state.rpt) for s in stakers)
        pool_balance = int(pool.credits_posted) - int(pool.debits_posted) - int(pool.debits_pending)
        if claimable > pool_balance:
            problems.append(f"Σ claimable staker rewards {claimable} exceed the STAKER_POOL balance {pool_balance}")
        return problems

    # --- internals ------------------------------------------------------------------------------------------------
    def _acting(self, ref: str, actor: str, verb: str) -> Account:
        who = self.tokens.participant(ref)
        by = self.accounts.get(actor)
        if by.id != who.id:
            raise PermissionDenied(f"only {who.name} may {verb} {who.name}'s stake", field="account")
        return who

    def _read_state(self, conn: Connection, *, lock: bool = False) -> _State:
        query = select(staking_state).where(staking_state.c.id == 1)
        if lock:
            query = query.with_for_update()
        r = conn.execute(query).one()
        return _State(int(r.total_staked), int(r.reward_per_token), int(r.distributed))

    def _lock_state(self, conn: Connection) -> _State:
        return self._read_state(conn, lock=True)

    def _read_staker(self, conn: Connection, who: str, *, lock: bool = False) -> _Staker:
        query = select(staking_stakers).where(staking_stakers.c.account_id == who)
        if lock:
            query = query.with_for_update()
        r = conn.execute(query).one_or_none()
        return _Staker(who) if r is None else _staker_from_row(r)

    def _lock_staker(self, conn: Connection, who: str) -> _Staker:
        # A missing row is inserted at write time; two first operations racing on PostgreSQL collide on the
        # primary key and the loser's transaction is retried by Ledger.transaction (it then sees the row).
        return self._read_staker(conn, who, lock=True)

    def _lock_delegates(self, conn: Connection, ids: list[str | None]) -> tuple[dict[str, int], set[str]]:
        """The current votes of ``ids`` (0 for a delegatee without a row yet), locked in ascending id order, and
        which rows exist. Rows missing now are INSERTed at write time, never UPDATEd: an UPDATE would find a
        row another transaction inserted meanwhile and wait for its lock while holding the journal head (a
        deadlock); the INSERT collides instead, and Ledger.transaction retries."""
        wanted = sorted({d for d in ids if d is not None})
        if not wanted:
            return {}, set()
        rows = conn.execute(select(staking_delegates.c.delegatee_id, staking_delegates.c.votes)
                            .where(staking_delegates.c.delegatee_id.in_(wanted))
                            .order_by(staking_delegates.c.delegatee_id).with_for_update()).all()
        found = {r.delegatee_id: int(r.votes) for r in rows}
        return {d: found.get(d, 0) for d in wanted}, set(found)

    def _has_wallet(self, conn: Connection, who: str) -> bool:
        return conn.execute(select(ledger_accounts.c.id).where(
            ledger_accounts.c.id == hex_id(account_id(AccountCode.AVAILABLE, who)))).first() is not None

    def _prior_in(self, conn: Connection, spec: TransferSpec, what: str) -> tuple[int] | None:
        """Whether ``spec.id`` was used before: (amount,) for the same operation (a retry), TransferRejected when
        it names another transfer or burnt its id failing. ``spec.amount`` None: any amount matches."""
        t = ledger_transfers
        r = conn.execute(select(t.c.debit_account_id, t.c.credit_account_id, t.c.amount, t.c.code, t.c.ledger)
                         .where(t.c.id == hex_id(spec.id))).first()
        if r is not None:
            differs = None
            if int(r.debit_account_id, 16) != spec.debit_account_id:
                differs = Result.exists_with_different_debit_account_id
            elif int(r.credit_account_id, 16) != spec.credit_account_id:
                differs = Result.exists_with_different_credit_account_id
            elif int(r.code) != spec.code or int(r.ledger) != spec.ledger:
                differs = Result.exists_with_different_code
            elif spec.amount is not None and int(r.amount) != spec.amount:
                differs = Result.exists_with_different_amount
            if differs is not None:
                raise TransferRejected(f"{what}: id {hex_id(spec.id)} was already used for a different request "
                                       f"({differs.value}); use a new id", result=differs.value, field="id")
            return (int(r.amount),)
        failed = conn.execute(select(ledger_failures.c.code).where(ledger_failures.c.id == hex_id(spec.id))).scalar()
        if failed is not None:
            raise TransferRejected(f"{what}: id {hex_id(spec.id)} already failed ({failed}); use a new id",
                                   result=Result.id_already_failed.value, field="id")
        return None

    def _check_redeem(self, conn: Connection, who: Account, row: _Staker, amount: int, now: int) -> None:
        if row.staked == 0:
            raise Conflict(f"{who.name} has nothing staked", field="account")
        if row.cooldown_start_ms is None:
            raise Conflict(f"{who.name} has no cooldown running: start one with 'royalty cooldown {who.name}', "
                           "then redeem once it ends, within the unstake window", field="account")
        p = self.params.current_in(conn)
        opens = row.cooldown_start_ms + p.stake_cooldown_s * 1000
        closes = opens + p.stake_unstake_window_s * 1000
        if now < opens:
            raise Conflict(f"the cooldown of {who.name} is still running: redeem opens at {format_time(opens)} (in "
                           f"{-(-(opens - now) // 1000)} s) and closes at {format_time(closes)}", field="account")
        if now > closes:
            raise Conflict(f"the unstake window of {who.name} closed at {format_time(closes)}; start a new cooldown with "
                           f"'royalty cooldown {who.name}'", field="account")
        if amount > row.cooldown_budget:
            raise Conflict(f"amount {format_amount(amount)} exceeds the redeem budget of {who.name}, "
                           f"{format_amount(row.cooldown_budget)} OPEN (the least staked since the cooldown started)",
                           field="amount")

    def _event_seq_of(self, conn: Connection, tid: int) -> int:
        return int(conn.execute(select(ledger_transfers.c.event_seq).where(ledger_transfers.c.id == hex_id(tid))).scalar_one())

    def _write_staker(self, conn: Connection, row: _Staker, seq: int) -> None:
        values = {"staked": row.staked, "delegatee_id": row.delegatee_id, "cooldown_start_ms": row.cooldown_start_ms,
                  "cooldown_budget": row.cooldown_budget, "reward_paid_rpt": str(row.paid_rpt),
                  "rewards_stored": row.stored, "claims": row.claims, "updated_seq": seq}
        if row.exists:
            conn.execute(update(staking_stakers).where(staking_stakers.c.account_id == row.account_id).values(**values))
        else:
            conn.execute(insert(staking_stakers).values(account_id=row.account_id, **values))

    def _write_total(self, conn: Connection, now: int, seq: int, total: int) -> None:
        conn.execute(update(staking_state).where(staking_state.c.id == 1).values(total_staked=total))
        c = staking_supply_checkpoints
        last = conn.execute(select(func.max(c.c.timepoint_ms))).scalar()
        # Clamp: the history stays ordered even if the wall clock steps back.
        conn.execute(insert(c).values(timepoint_ms=max(now, int(last or 0)), event_seq=seq, supply=total))

    def _write_votes(self, conn: Connection, now: int, seq: int, votes: dict[str, int], existing: set[str], *,
                     checkpoint: bool = True) -> None:
        d, c = staking_delegates, staking_vote_checkpoints
        for delegatee, value in sorted(votes.items()):
            if delegatee in existing:
                conn.execute(update(d).where(d.c.delegatee_id == delegatee).values(votes=value, updated_seq=seq))
            else:
                conn.execute(insert(d).values(delegatee_id=delegatee, votes=value, updated_seq=seq))
            if checkpoint:
                last = conn.execute(select(func.max(c.c.timepoint_ms)).where(c.c.delegatee_id == delegatee)).scalar()
                conn.execute(insert(c).values(delegatee_id=delegatee, timepoint_ms=max(now, int(last or 0)),
                                              event_seq=seq, votes=value))


def _failure(results: list[Result]) -> str:
    """The result that explains a failed chain: the first one that is not linked_event_failed."""
    for r in results:
        if not r.succeeded and r is not Result.linked_event_failed:
            return r.value
    return Result.linked_event_failed.value


def _as_result(value: str) -> Result:
    return Result(value)


__all__ = ["RPT_SCALE", "StakerState", "Staking", "StakingReceipt"]
