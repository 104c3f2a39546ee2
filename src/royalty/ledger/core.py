"""The double-entry core: the TigerBeetle state machine over royalty's Store (``node.ledger``).

Model (``shared/reference/ledger.md`` §1): accounts with four cumulative balances (debits/credits ×
pending/posted), immutable transfers with client-chosen 128-bit ids, two-phase transfers (pending → post,
partial or full, / void / expiry), linked chains that succeed or fail together, and idempotency by id.

One ``create_transfers`` call is one write transaction and one journal event ``ledger.transfers`` listing
every event of the batch with its result, failures included (a state-dependent failure burns its id, so an
auditor replaying the journal needs failures to reproduce later ``id_already_failed`` answers and to see every
attempt), plus the pending transfers that expired lazily in that transaction.

Concurrency. SQLite: ``Store.write`` is BEGIN IMMEDIATE under the process's writer lock, so batches run one at a
time. PostgreSQL (READ COMMITTED): every account a batch may change (the transfers' accounts, the pending
transfers' accounts, the accounts of pending transfers it expires) is locked with SELECT … FOR UPDATE in
ascending id order before anything is read that depends on balances or pending states; every change to an
account's balances or to a pending transfer's state happens under the locks of its accounts. The journal head
is locked last (by ``Journal.append``), so lock order is always accounts (ascending) → journal head. Two
concurrent batches inserting the same new id on disjoint accounts collide on the primary key; the loser's
transaction is retried and then sees the winner's row (``exists`` / ``exists_with_different_*``).

Expiry. A pending transfer with a timeout expires at ``timestamp + timeout × 1000`` ms on the ledger's clock (the
node's injectable clock). Nothing runs in the background: a batch first expires every overdue pending transfer on
the accounts it locks (journaled in its event's ``expired`` list), and ``expire_pending()`` sweeps the rest
(journaled as ``ledger.expired``). An expired pending transfer can be neither posted nor voided
(``pending_transfer_expired``) even if no sweep has run yet. Until it is released, ``balance()`` still shows the
reservation as pending.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, or_, select, tuple_
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidInput, NotFound
from ..journal.log import Journal
from ..store import Store
from ..store.engine import insert_rows
from ..store.schema import accounts as node_accounts
from ..store.schema import ledger_accounts, ledger_failures, ledger_pending, ledger_transfers
from .codes import (
    ACCOUNT_FLAGS_KNOWN,
    AMOUNT_MAX,
    CODE_MAX,
    ID_MAX,
    LEDGER_MAX,
    TIMEOUT_MAX,
    TRANSFER_FLAGS_KNOWN,
    TRANSIENT,
    AccountFlags,
    Result,
    TransferFlags,
)

_LINKED = int(TransferFlags.LINKED)
_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING_TRANSFER)
_VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
_DR_LIMIT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CR_LIMIT = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_RETRIES = 5
_MISSING = object()


def hex_id(value: int) -> str:
    """The stored form of a 128-bit id: 32 lowercase hex digits (text order = numeric order)."""
    return format(value, "032x")


def parse_id(value: Any, field: str = "id") -> int:
    """An id given as an int, a ``uuid.UUID`` or 32 hex digits, as an int in [0, 2^128 − 1]."""
    if isinstance(value, uuid.UUID):
        return value.int
    if isinstance(value, str):
        text = value.replace("-", "")
        if len(text) != 32:
            raise InvalidInput(f"{field} {value!r} is not a 128-bit id (32 hex digits or a UUID)", field=field)
        try:
            return int(text, 16)
        except ValueError:
            raise InvalidInput(f"{field} {value!r} is not hexadecimal", field=field) from None
    if type(value) is not int or not 0 <= value <= ID_MAX:
        raise InvalidInput(f"{field} must be an integer in [0, 2^128 - 1], got {value!r}", field=field)
    return value


# --------------------------------------------------------------------------------------------------------------
# public records
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountSpec:
    id: int
    ledger: int
    code: int
    flags: int = 0
    owner: str | None = None  # a node account id (accounts.id), e.g. the person who holds it
    user_data: str | None = None


@dataclass(frozen=True)
class TransferSpec:
    """One event of ``create_transfers``. For post/void, zero accounts/ledger/code mean "those of the pending
    transfer" and ``amount=None`` means its full amount; for other transfers ``amount`` is required."""

    id: int
    debit_account_id: int = 0
    credit_account_id: int = 0
    amount: int | None = None
    pending_id: int = 0
    timeout: int = 0  # seconds, pending transfers only; 0 = never expires
    ledger: int = 0
    code: int = 0
    flags: int = 0
    user_data: str | None = None


@dataclass(frozen=True)
class Balance:
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @property
    def posted(self) -> int:
        """credits_posted − debits_posted: what a user (credit-normal) account holds."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What a credit-normal account can still send: posted credits minus posted and reserved debits."""
        return self.credits_posted - self.debits_posted - self.debits_pending

    def to_dict(self) -> dict[str, int]:
        return {
            "debits_pending": self.debits_pending,
            "debits_posted": self.debits_posted,
            "credits_pending": self.credits_pending,
            "credits_posted": self.credits_posted,
            "posted": self.posted,
            "available": self.available,
        }


@dataclass(frozen=True)
class LedgerAccount:
    id: int
    ledger: int
    code: int
    flags: int
    owner: str | None
    user_data: str | None
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    timestamp: int

    @property
    def balance(self) -> Balance:
        return Balance(self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": hex_id(self.id), "ledger": self.ledger, "code": self.code, "flags": self.flags,
            "owner": self.owner, "user_data": self.user_data, **self.balance.to_dict(), "timestamp": self.timestamp,
        }


@dataclass(frozen=True)
class Transfer:
    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    pending_id: int
    timeout: int
    ledger: int
    code: int
    flags: int
    user_data: str | None
    timestamp: int
    event_seq: int
    event_index: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": hex_id(self.id),
            "debit_account_id": hex_id(self.debit_account_id),
            "credit_account_id": hex_id(self.credit_account_id),
            "amount": self.amount,
            "pending_id": hex_id(self.pending_id) if self.pending_id else None,
            "timeout": self.timeout,
            "ledger": self.ledger,
            "code": self.code,
            "flags": self.flags,
            "user_data": self.user_data,
            "timestamp": self.timestamp,
            "event_seq": self.event_seq,
            "event_index": self.event_index,
        }


def _transfer_from_row(r: Any) -> Transfer:
    return Transfer(
        int(r.id, 16), int(r.debit_account_id, 16), int(r.credit_account_id, 16), int(r.amount),
        int(r.pending_id, 16) if r.pending_id else 0, int(r.timeout), int(r.ledger), int(r.code), int(r.flags),
        r.user_data, int(r.timestamp), int(r.event_seq), int(r.event_index),
    )


def _account_from_row(r: Any) -> LedgerAccount:
    return LedgerAccount(
        int(r.id, 16), int(r.ledger), int(r.code), int(r.flags), r.owner_id, r.user_data, int(r.debits_pending),
        int(r.debits_posted), int(r.credits_pending), int(r.credits_posted), int(r.timestamp),
    )


class _Retry(Exception):
    """Restart the batch in a new transaction (a concurrent writer changed what we must lock)."""


def _chains(flags: Sequence[int]) -> list[tuple[int, int, bool]]:
    """Split a batch into chains: (start, end exclusive, open). A chain ends at the first event without
    ``linked``; a chain still open at the end of the batch is marked open."""
    out: list[tuple[int, int, bool]] = []
    start = 0
    for i, f in enumerate(flags):
        if not f & _LINKED:
            out.append((start, i + 1, False))
            start = i + 1
    if start < len(flags):
        out.append((start, len(flags), True))
    return out


# --------------------------------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------------------------------


class Ledger:
    """The ledger service (``node.ledger``)."""

    def __init__(self, store: Store, journal: Journal, clock: Callable[[], int]) -> None:
        self.store = store
        self.journal = journal
        self.clock = clock

    # --- accounts ----------------------------------------------------------------------------------------------

    def create_accounts(self, specs: Sequence[AccountSpec], *, actor: str | None = None) -> list[Result]:
        """Create ledger accounts; one result per spec. Journals one ``ledger.accounts`` event per call."""
        specs = [_check_account_spec(s) for s in specs]
        if not specs:
            return []
        return self._retrying(lambda conn: self._create_accounts(conn, specs, actor))

    def _create_accounts(self, conn: Connection, specs: list[AccountSpec], actor: str | None) -> list[Result]:
        ids = {hex_id(s.id) for s in specs}
        existing = {
            int(r.id, 16): _account_from_row(r)
            for r in conn.execute(select(ledger_accounts).where(ledger_accounts.c.id.in_(ids))).all()
        }
        owners_wanted = {s.owner for s in specs if s.owner is not None}
        owners = set(conn.execute(select(node_accounts.c.id).where(node_accounts.c.id.in_(owners_wanted))).scalars())
        now = self.clock()
        results: list[Result] = [Result.ok] * len(specs)
        created: dict[int, AccountSpec] = {}
        for start, end, is_open in _chains([s.flags for s in specs]):
            if is_open:
                results[start:end] = [Result.linked_event_failed] * (end - start - 1) + [Result.linked_event_chain_open]
                continue
            made: list[int] = []
            for i in range(start, end):
                code = self._account_result(specs[i], existing, created, owners)
                if code is Result.ok:
                    created[specs[i].id] = specs[i]
                    made.append(specs[i].id)
                results[i] = code
                if not code.succeeded and end - start > 1:
                    for j in made:
                        del created[j]
                    results[start:end] = [Result.linked_event_failed] * (end - start)
                    results[i] = code
                    break
        event = self.journal.append(
            conn,
            "ledger.accounts",
            {
                "timestamp": now,
                "accounts": [
                    {"id": hex_id(s.id), "ledger": s.ledger, "code": s.code, "flags": s.flags, "owner": s.owner,
                     "user_data": s.user_data, "result": r.value}
                    for s, r in zip(specs, results, strict=True)
                ],
            },
            actor=actor,
        )
        if created:
            conn.execute(
                ledger_accounts.insert(),
                [
                    {"id": hex_id(s.id), "ledger": s.ledger, "code": s.code, "flags": s.flags, "owner_id": s.owner,
                     "user_data": s.user_data, "debits_pending": 0, "debits_posted": 0, "credits_pending": 0,
                     "credits_posted": 0, "timestamp": now, "created_seq": event.seq}
                    for s in created.values()
                ],
            )
        return results

    @staticmethod
    def _account_result(
        s: AccountSpec, existing: dict[int, LedgerAccount], created: dict[int, AccountSpec], owners: set[str]
    ) -> Result:
        if s.flags & ~ACCOUNT_FLAGS_KNOWN:
            return Result.reserved_flag
        if s.id == 0:
            return Result.id_must_not_be_zero
        if s.id == ID_MAX:
            return Result.id_must_not_be_int_max
        if s.flags & _DR_LIMIT and s.flags & _CR_LIMIT:
            return Result.flags_are_mutually_exclusive
        if s.ledger == 0:
            return Result.ledger_must_not_be_zero
        if s.code == 0:
            return Result.code_must_not_be_zero
        old = existing.get(s.id) or created.get(s.id)
        if old is not None:
            if old.flags != s.flags:
                return Result.exists_with_different_flags
            if old.user_data != s.user_data:
                return Result.exists_with_different_user_data
            if old.ledger != s.ledger:
                return Result.exists_with_different_ledger
            if old.code != s.code:
                return Result.exists_with_different_code
            return Result.exists
        if s.owner is not None and s.owner not in owners:
            return Result.owner_not_found
        return Result.ok

    # --- transfers ---------------------------------------------------------------------------------------------

    def create_transfers(self, specs: Sequence[TransferSpec], *, actor: str | None = None) -> list[Result]:
        """Apply a batch of transfers in one transaction; one result per spec (``ok`` or ``exists`` = done)."""
        specs = [_check_transfer_spec(s) for s in specs]
        if not specs:
            return []
        return self._retrying(lambda conn: _Batch(self, conn, specs, actor).run())

    def create_transfers_in(
        self,
        conn: Connection,
        specs: Sequence[TransferSpec],
        *,
        actor: str | None = None,
        event_type: str = "ledger.transfers",
        extra: dict[str, Any] | None = None,
    ) -> list[Result]:
        """``create_transfers`` inside the caller's write transaction (run it under ``transaction``), for
        services whose operation is transfers plus their own rows, atomically: staking, fees, governance.

        Journals one event of type ``event_type`` whose payload is the usual ``transfers``/``expired`` lists plus
        ``extra`` (the service's own fields); ``royalty ledger verify`` replays the transfers of every event
        that has them. The caller must check the results and raise to roll back when it needs all-or-nothing
        (or make the specs one linked chain)."""
        specs = [_check_transfer_spec(s) for s in specs]
        if not specs:
            return []
        return _Batch(self, conn, specs, actor, event_type=event_type, extra=extra).run()

    def create_accounts_in(
        self, conn: Connection, specs: Sequence[AccountSpec], *, actor: str | None = None
    ) -> list[Result]:
        """``create_accounts`` inside the caller's write transaction."""
        specs = [_check_account_spec(s) for s in specs]
        if not specs:
            return []
        return self._create_accounts(conn, specs, actor)

    def transaction(self, body: Callable[[Connection], Any]) -> Any:
        """Run ``body(conn)`` in one write transaction, retried (from the start, so ``body`` must be
        re-runnable) when PostgreSQL reports a concurrent insert of the same key or the batch must re-lock."""
        return self._retrying(body)

    def expire_pending(self, *, limit: int = 10_000, actor: str | None = None) -> list[int]:
        """Release every pending transfer whose timeout has passed (up to ``limit``); returns their ids. One
        transaction, one ``ledger.expired`` event (none when nothing expired)."""
        return self._retrying(lambda conn: _Batch(self, conn, [], actor, sweep_limit=limit).run_sweep())

    def _retrying(self, body: Callable[[Connection], Any]) -> Any:
        for attempt in range(_RETRIES):
            try:
                with self.store.write() as conn:
                    return body(conn)
            except (IntegrityError, _Retry):
                if attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # --- reads -------------------------------------------------------------------------------------------------

    def lookup_accounts(self, ids: Iterable[Any]) -> list[LedgerAccount]:
        """The accounts that exist among ``ids``, in the order asked."""
        wanted = [parse_id(i) for i in ids]
        with self.store.read() as conn:
            rows = conn.execute(select(ledger_accounts).where(ledger_accounts.c.id.in_({hex_id(i) for i in wanted}))).all()
        found = {int(r.id, 16): _account_from_row(r) for r in rows}
        return [found[i] for i in wanted if i in found]

    def lookup_transfers(self, ids: Iterable[Any]) -> list[Transfer]:
        """The transfers that exist among ``ids``, in the order asked."""
        wanted = [parse_id(i) for i in ids]
        with self.store.read() as conn:
            rows = conn.execute(select(ledger_transfers).where(ledger_transfers.c.id.in_({hex_id(i) for i in wanted}))).all()
        found = {int(r.id, 16): _transfer_from_row(r) for r in rows}
        return [found[i] for i in wanted if i in found]

    def balance(self, account_id: Any) -> Balance:
        found = self.lookup_accounts([account_id])
        if not found:
            raise NotFound(f"no ledger account {hex_id(parse_id(account_id, 'account'))}", field="account")
        return found[0].balance

    def pending_state(self, pending_id: Any) -> str | None:
        """'pending', 'posted', 'voided' or 'expired' for a pending transfer; None if it is not one."""
        with self.store.read() as conn:
            return conn.execute(
                select(ledger_pending.c.state).where(ledger_pending.c.id == hex_id(parse_id(pending_id)))
            ).scalar_one_or_none()

    def history(self, account_id: Any, *, limit: int = 100, after: Any = None) -> list[Transfer]:
        """The account's transfers, oldest first, after transfer ``after`` (an id) if given."""
        acct = hex_id(parse_id(account_id, "account"))
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be an integer in 1..10000", field="limit")
        t = ledger_transfers
        with self.store.read() as conn:
            if conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.id == acct)).first() is None:
                raise NotFound(f"no ledger account {acct}", field="account")
            out: list[Transfer] = []
            cursor = None
            if after is not None:
                row = conn.execute(
                    select(t.c.event_seq, t.c.event_index).where(t.c.id == hex_id(parse_id(after, "after")))
                ).one_or_none()
                if row is None:
                    raise NotFound("the 'after' transfer does not exist", field="after")
                cursor = (row.event_seq, row.event_index)
            for column in (t.c.debit_account_id, t.c.credit_account_id):
                query = select(t).where(column == acct)
                if cursor is not None:
                    query = query.where(tuple_(t.c.event_seq, t.c.event_index) > tuple_(*cursor))
                out += [_transfer_from_row(r) for r in conn.execute(query.order_by(t.c.event_seq, t.c.event_index).limit(limit))]
        out.sort(key=lambda x: (x.event_seq, x.event_index))
        return out[:limit]


# --------------------------------------------------------------------------------------------------------------
# one batch
# --------------------------------------------------------------------------------------------------------------

# Per-account balances in the batch: [debits_pending, debits_posted, credits_pending, credits_posted].
_DP, _DPO, _CP, _CPO = range(4)


class _Batch:
    def __init__(
        self,
        ledger: Ledger,
        conn: Connection,
        specs: list[TransferSpec],
        actor: str | None,
        *,
        sweep_limit: int = 0,
        event_type: str = "ledger.transfers",
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.ledger = ledger
        self.event_type = event_type
        self.extra = extra or {}
        self.conn = conn
        self.specs = specs
        self.actor = actor
        self.sweep_limit = sweep_limit
        self.now = ledger.clock()
        # Working state; every change inside a chain goes through _set so a failed chain can be undone.
        self.meta: dict[int, tuple[int, int]] = {}  # account id -> (ledger, flags)
        self.bal: dict[int, tuple[int, int, int, int]] = {}
        self.transfers: dict[int, Transfer] = {}  # existing (db) and new
        self.pending: dict[int, tuple[str, int | None]] = {}  # pending id -> (state, resolved_by)
        self.pending_info: dict[int, tuple[int, int, int, int | None]] = {}  # id -> (dr, cr, amount, expires_ms)
        self.failed: dict[int, Result] = {}
        self.new_failures: dict[int, Result] = {}
        self.new: list[int] = []  # transfer ids created, in order
        self.expired: list[int] = []
        self.undo: list[tuple[dict[Any, Any], Any, Any]] | None = None
        self.db_pending_states: dict[int, str] = {}
        self.dirty_accounts: set[int] = set()

    def _set(self, d: dict[Any, Any], key: Any, value: Any) -> None:
        if self.undo is not None:
            self.undo.append((d, key, d.get(key, _MISSING)))
        d[key] = value

    # --- load under locks --------------------------------------------------------------------------------------

    def _load(self) -> None:
        conn, t, p = self.conn, ledger_transfers, ledger_pending
        spec_ids = {hex_id(s.id) for s in self.specs if s.id}
        pending_ids = {hex_id(s.pending_id) for s in self.specs if s.pending_id and s.flags & (_POST | _VOID)}
        # Phase 1, no locks: which accounts may change. Transfers are immutable, so reading them early is safe.
        want: set[int] = {a for s in self.specs for a in (s.debit_account_id, s.credit_account_id) if a}
        pend_rows = conn.execute(
            select(t.c.id, t.c.debit_account_id, t.c.credit_account_id).where(t.c.id.in_(pending_ids))
        ).all() if pending_ids else []
        for r in pend_rows:
            want |= {int(r.debit_account_id, 16), int(r.credit_account_id, 16)}
        overdue = and_(p.c.state == "pending", p.c.expires_ms <= self.now)
        if self.sweep_limit:
            candidates = conn.execute(
                select(p.c.id, p.c.debit_account_id, p.c.credit_account_id).where(overdue)
                .order_by(p.c.expires_ms, p.c.id).limit(self.sweep_limit)
            ).all()
        elif want:
            hexes = {hex_id(a) for a in want}
            candidates = conn.execute(
                select(p.c.id, p.c.debit_account_id, p.c.credit_account_id).where(
                    overdue, or_(p.c.debit_account_id.in_(hexes), p.c.credit_account_id.in_(hexes))
                )
            ).all()
        else:
            candidates = []
        for r in candidates:
            want |= {int(r.debit_account_id, 16), int(r.credit_account_id, 16)}
        # Phase 2: lock in ascending id order (a no-op clause on SQLite, whose writer lock is already held).
        if want:
            rows = conn.execute(
                select(ledger_accounts.c.id, ledger_accounts.c.ledger, ledger_accounts.c.flags,
                       ledger_accounts.c.debits_pending, ledger_accounts.c.debits_posted,
                       ledger_accounts.c.credits_pending, ledger_accounts.c.credits_posted)
                .where(ledger_accounts.c.id.in_({hex_id(a) for a in want}))
                .order_by(ledger_accounts.c.id)
                .with_for_update()
            ).all()
            for r in rows:
                a = int(r.id, 16)
                self.meta[a] = (int(r.ledger), int(r.flags))
                self.bal[a] = (int(r.debits_pending), int(r.debits_posted), int(r.credits_pending), int(r.credits_posted))
        # Phase 3, under the locks: fresh reads of everything that depends on state.
        ids = spec_ids | pending_ids
        if ids:
            for r in conn.execute(select(t).where(t.c.id.in_(ids))).all():
                tr = _transfer_from_row(r)
                self.transfers[tr.id] = tr
        pend_keys = pending_ids | {r.id for r in candidates}
        if pend_keys:
            for r in conn.execute(select(p).where(p.c.id.in_(pend_keys))).all():
                pid = int(r.id, 16)
                dr, cr = int(r.debit_account_id, 16), int(r.credit_account_id, 16)
                if dr not in self.bal or cr not in self.bal:
                    raise _Retry()  # created concurrently between phase 1 and the locks: lock its accounts too
                self.pending[pid] = (r.state, int(r.resolved_by, 16) if r.resolved_by else None)
                self.db_pending_states[pid] = r.state
                self.pending_info[pid] = (dr, cr, int(r.amount), None if r.expires_ms is None else int(r.expires_ms))
        if spec_ids:
            for r in conn.execute(select(ledger_failures.c.id, ledger_failures.c.code).where(ledger_failures.c.id.in_(spec_ids))):
                self.failed[int(r.id, 16)] = Result(r.code)
        # Release every overdue reservation we hold the locks for, before the batch runs.
        for pid in sorted(self.pending):
            state, _ = self.pending[pid]
            expires = self.pending_info[pid][3]
            if state == "pending" and expires is not None and expires <= self.now:
                self._expire(pid)

    def _expire(self, pid: int) -> None:
        dr, cr, amount, _ = self.pending_info[pid]
        self._add(dr, _DP, -amount)
        self._add(cr, _CP, -amount)
        self._set(self.pending, pid, ("expired", None))
        self.expired.append(pid)

    def _add(self, account: int, field: int, delta: int) -> None:
        b = list(self.bal[account])
        b[field] += delta
        self._set(self.bal, account, tuple(b))
        self.dirty_accounts.add(account)

    # --- run ---------------------------------------------------------------------------------------------------

    def run(self) -> list[Result]:
        self._load()
        specs = self.specs
        results: list[Result] = [Result.ok] * len(specs)
        for start, end, is_open in _chains([s.flags for s in specs]):
            if is_open:
                results[start:end] = [Result.linked_event_failed] * (end - start - 1) + [Result.linked_event_chain_open]
                continue
            self.undo = [] if end - start > 1 else None
            new_mark = len(self.new)
            for i in range(start, end):
                code = self._apply(specs[i])
                results[i] = code
                if not code.succeeded:
                    if self.undo is not None:
                        for d, key, old in reversed(self.undo):
                            if old is _MISSING:
                                del d[key]
                            else:
                                d[key] = old
                        del self.new[new_mark:]
                        results[start:end] = [Result.linked_event_failed] * (end - start)
                        results[i] = code
                    if code in TRANSIENT and specs[i].id not in self.failed:
                        self.failed[specs[i].id] = code
                        self.new_failures[specs[i].id] = code
                    break
            self.undo = None
        self._write(results)
        return results

    def run_sweep(self) -> list[int]:
        self._load()
        if self.expired:
            self._write([])
        return list(self.expired)

    # --- one transfer ------------------------------------------------------------------------------------------

    def _apply(self, s: TransferSpec) -> Result:
        code = self._validate(s)
        if code is not None:
            return code
        if s.flags & (_POST | _VOID):
            return self._post_or_void(s)
        dr_meta, cr_meta = self.meta.get(s.debit_account_id), self.meta.get(s.credit_account_id)
        if dr_meta is None:
            return Result.debit_account_not_found
        if cr_meta is None:
            return Result.credit_account_not_found
        if dr_meta[0] != cr_meta[0]:
            return Result.accounts_must_have_the_same_ledger
        if s.ledger != dr_meta[0]:
            return Result.transfer_must_have_the_same_ledger_as_accounts
        amount = s.amount
        assert amount is not None
        dr, cr = self.bal[s.debit_account_id], self.bal[s.credit_account_id]
        if s.flags & _PENDING:
            if dr[_DP] + amount > AMOUNT_MAX:
                return Result.overflows_debits_pending
            if cr[_CP] + amount > AMOUNT_MAX:
                return Result.overflows_credits_pending
        else:
            if dr[_DPO] + amount > AMOUNT_MAX:
                return Result.overflows_debits_posted
            if cr[_CPO] + amount > AMOUNT_MAX:
                return Result.overflows_credits_posted
        if dr[_DP] + dr[_DPO] + amount > AMOUNT_MAX:
            return Result.overflows_debits
        if cr[_CP] + cr[_CPO] + amount > AMOUNT_MAX:
            return Result.overflows_credits
        # Pessimistic: reservations count against the limit, so a later post or void can never break it.
        if dr_meta[1] & _DR_LIMIT and dr[_DP] + dr[_DPO] + amount > dr[_CPO]:
            return Result.exceeds_credits
        if cr_meta[1] & _CR_LIMIT and cr[_CP] + cr[_CPO] + amount > cr[_DPO]:
            return Result.exceeds_debits
        pending = bool(s.flags & _PENDING)
        self._add(s.debit_account_id, _DP if pending else _DPO, amount)
        self._add(s.credit_account_id, _CP if pending else _CPO, amount)
        self._record(s, s.debit_account_id, s.credit_account_id, amount, s.ledger, s.code)
        if pending:
            expires = self.now + s.timeout * 1000 if s.timeout else None
            self._set(self.pending_info, s.id, (s.debit_account_id, s.credit_account_id, amount, expires))
            self._set(self.pending, s.id, ("pending", None))
        return Result.ok

    def _validate(self, s: TransferSpec) -> Result | None:
        if s.flags & ~TRANSFER_FLAGS_KNOWN:
            return Result.reserved_flag
        if s.id == 0:
            return Result.id_must_not_be_zero
        if s.id == ID_MAX:
            return Result.id_must_not_be_int_max
        old = self.transfers.get(s.id)
        if old is not None:
            return _exists(s, old)
        if s.id in self.failed:
            return Result.id_already_failed
        f = s.flags
        if (f & _PENDING and f & (_POST | _VOID)) or (f & _POST and f & _VOID):
            return Result.flags_are_mutually_exclusive
        if f & (_POST | _VOID):
            if s.pending_id == 0:
                return Result.pending_id_must_not_be_zero
            if s.pending_id == ID_MAX:
                return Result.pending_id_must_not_be_int_max
            if s.pending_id == s.id:
                return Result.pending_id_must_be_different
            if s.timeout:
                return Result.timeout_reserved_for_pending_transfer
            if s.amount is not None and not 0 < s.amount <= AMOUNT_MAX:
                return Result.amount_must_not_be_zero if s.amount == 0 else Result.amount_out_of_range
            return None
        if s.debit_account_id == 0:
            return Result.debit_account_id_must_not_be_zero
        if s.debit_account_id == ID_MAX:
            return Result.debit_account_id_must_not_be_int_max
        if s.credit_account_id == 0:
            return Result.credit_account_id_must_not_be_zero
        if s.credit_account_id == ID_MAX:
            return Result.credit_account_id_must_not_be_int_max
        if s.debit_account_id == s.credit_account_id:
            return Result.accounts_must_be_different
        if s.pending_id:
            return Result.pending_id_must_be_zero
        if s.timeout and not f & _PENDING:
            return Result.timeout_reserved_for_pending_transfer
        if s.amount is None or s.amount == 0:
            return Result.amount_must_not_be_zero
        if not 0 < s.amount <= AMOUNT_MAX:
            return Result.amount_out_of_range
        if s.ledger == 0:
            return Result.ledger_must_not_be_zero
        if s.code == 0:
            return Result.code_must_not_be_zero
        return None

    def _post_or_void(self, s: TransferSpec) -> Result:
        p = self.transfers.get(s.pending_id)
        if p is None:
            return Result.pending_transfer_not_found
        if not p.flags & _PENDING:
            return Result.pending_transfer_not_pending
        if s.debit_account_id and s.debit_account_id != p.debit_account_id:
            return Result.pending_transfer_has_different_debit_account_id
        if s.credit_account_id and s.credit_account_id != p.credit_account_id:
            return Result.pending_transfer_has_different_credit_account_id
        if s.ledger and s.ledger != p.ledger:
            return Result.pending_transfer_has_different_ledger
        if s.code and s.code != p.code:
            return Result.pending_transfer_has_different_code
        if s.flags & _POST:
            amount = p.amount if s.amount is None else s.amount
            if amount > p.amount:
                return Result.exceeds_pending_transfer_amount
        else:
            amount = p.amount
            if s.amount is not None and s.amount != p.amount:
                return Result.pending_transfer_has_different_amount
        state, _ = self.pending[s.pending_id]
        if state == "posted":
            return Result.pending_transfer_already_posted
        if state == "voided":
            return Result.pending_transfer_already_voided
        if state == "expired":
            return Result.pending_transfer_expired
        expires = self.pending_info[s.pending_id][3]
        if expires is not None and expires <= self.now:  # not reachable after _load's expiry; kept as a guard
            return Result.pending_transfer_expired
        dr, cr = self.bal[p.debit_account_id], self.bal[p.credit_account_id]
        if s.flags & _POST:
            if dr[_DPO] + amount > AMOUNT_MAX:
                return Result.overflows_debits_posted
            if cr[_CPO] + amount > AMOUNT_MAX:
                return Result.overflows_credits_posted
        self._add(p.debit_account_id, _DP, -p.amount)
        self._add(p.credit_account_id, _CP, -p.amount)
        if s.flags & _POST:
            self._add(p.debit_account_id, _DPO, amount)
            self._add(p.credit_account_id, _CPO, amount)
        self._record(s, p.debit_account_id, p.credit_account_id, amount, p.ledger, p.code)
        self._set(self.pending, s.pending_id, ("posted" if s.flags & _POST else "voided", s.id))
        return Result.ok

    def _record(self, s: TransferSpec, dr: int, cr: int, amount: int, ledger: int, code: int) -> None:
        tr = Transfer(s.id, dr, cr, amount, s.pending_id, s.timeout, ledger, code, s.flags, s.user_data, self.now, -1, -1)
        self._set(self.transfers, s.id, tr)
        self.new.append(s.id)

    # --- write -------------------------------------------------------------------------------------------------

    def _write(self, results: list[Result]) -> None:
        conn = self.conn
        if self.specs:
            items = []
            for s, r in zip(self.specs, results, strict=True):
                tr = self.transfers.get(s.id) if r is Result.ok else None
                src = tr or s
                amount = src.amount
                items.append({
                    "id": hex_id(s.id),
                    "result": r.value,
                    "debit_account_id": hex_id(src.debit_account_id),
                    "credit_account_id": hex_id(src.credit_account_id),
                    "amount": amount if amount is None or amount <= AMOUNT_MAX else str(amount),
                    "pending_id": hex_id(s.pending_id) if s.pending_id else None,
                    "timeout": s.timeout,
                    "ledger": src.ledger,
                    "code": src.code,
                    "flags": s.flags,
                    "user_data": s.user_data,
                })
            event = self.ledger.journal.append(
                conn, self.event_type,
                {**self.extra, "timestamp": self.now, "transfers": items, "expired": [hex_id(i) for i in self.expired]},
                actor=self.actor,
            )
        else:
            event = self.ledger.journal.append(
                conn, "ledger.expired", {"timestamp": self.now, "expired": [hex_id(i) for i in self.expired]},
                actor=self.actor,
            )
        seq = event.seq
        if self.dirty_accounts:
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(
                f"UPDATE ledger_accounts SET debits_pending = {mark}, debits_posted = {mark}, "
                f"credits_pending = {mark}, credits_posted = {mark} WHERE id = {mark}",
                [(*self.bal[a], hex_id(a)) for a in sorted(self.dirty_accounts)],
            )
        rows = []
        for index, tid in enumerate(self.new):
            tr = self.transfers[tid]
            rows.append((
                hex_id(tid), hex_id(tr.debit_account_id), hex_id(tr.credit_account_id), tr.amount,
                hex_id(tr.pending_id) if tr.pending_id else None, tr.timeout, tr.ledger, tr.code, tr.flags,
                tr.user_data, tr.timestamp, seq, index,
            ))
        insert_rows(conn, "ledger_transfers", (
            "id", "debit_account_id", "credit_account_id", "amount", "pending_id", "timeout", "ledger", "code",
            "flags", "user_data", "timestamp", "event_seq", "event_index"), rows)
        new_pending, changed = [], []
        for pid, (state, by) in self.pending.items():
            old = self.db_pending_states.get(pid)
            if old is None:
                dr, cr, amount, expires = self.pending_info[pid]
                resolved = None if state == "pending" else self.now
                new_pending.append((hex_id(pid), hex_id(dr), hex_id(cr), amount, expires, state,
                                    hex_id(by) if by else None, resolved))
            elif old != state:
                changed.append((state, hex_id(by) if by else None, self.now, hex_id(pid)))
        insert_rows(conn, "ledger_pending", (
            "id", "debit_account_id", "credit_account_id", "amount", "expires_ms", "state", "resolved_by",
            "resolved_ms"), new_pending)
        if changed:
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(
                f"UPDATE ledger_pending SET state = {mark}, resolved_by = {mark}, resolved_ms = {mark} "
                f"WHERE id = {mark} AND state = 'pending'",
                changed,
            )
        insert_rows(conn, "ledger_failures", ("id", "code", "timestamp", "event_seq"),
                    [(hex_id(i), c.value, self.now, seq) for i, c in self.new_failures.items()])


def _exists(s: TransferSpec, e: Transfer) -> Result:
    """The answer to a transfer whose id is taken by ``e``: ``exists`` only if every given field matches."""
    if s.flags != e.flags:
        return Result.exists_with_different_flags
    if s.pending_id != e.pending_id:
        return Result.exists_with_different_pending_id
    if s.timeout != e.timeout:
        return Result.exists_with_different_timeout
    resolving = bool(s.flags & (_POST | _VOID))  # zero / None fields of a post or void mean "the pending's"
    if s.debit_account_id != e.debit_account_id and not (resolving and s.debit_account_id == 0):
        return Result.exists_with_different_debit_account_id
    if s.credit_account_id != e.credit_account_id and not (resolving and s.credit_account_id == 0):
        return Result.exists_with_different_credit_account_id
    if s.amount != e.amount and not (resolving and s.amount is None):
        return Result.exists_with_different_amount
    if s.user_data != e.user_data:
        return Result.exists_with_different_user_data
    if s.ledger != e.ledger and not (resolving and s.ledger == 0):
        return Result.exists_with_different_ledger
    if s.code != e.code and not (resolving and s.code == 0):
        return Result.exists_with_different_code
    return Result.exists


def _uint(value: Any, top: int, field: str) -> int:
    """An int (IntEnum / IntFlag members included, bool not) in [0, top], as a plain int."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise InvalidInput(f"{field} must be an integer in [0, {top}], got {value!r}", field=field)
    return int(value)


def _user_data(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 1024):
        raise InvalidInput("user_data must be a string of at most 1024 characters, or None", field="user_data")
    return value


def _check_account_spec(s: Any) -> AccountSpec:
    """Type and range errors are the caller's bug and raise InvalidInput; rule violations are result codes."""
    if not isinstance(s, AccountSpec):
        raise InvalidInput("create_accounts takes AccountSpec objects", field="accounts")
    if s.owner is not None and not isinstance(s.owner, str):
        raise InvalidInput("owner must be a node account id", field="owner")
    return AccountSpec(
        parse_id(s.id), _uint(s.ledger, LEDGER_MAX, "ledger"), _uint(s.code, CODE_MAX, "code"),
        _uint(s.flags, 0xFFFF, "flags"), s.owner,
        _user_data(s.user_data),
    )


def _check_transfer_spec(s: Any) -> TransferSpec:
    if not isinstance(s, TransferSpec):
        raise InvalidInput("create_transfers takes TransferSpec objects", field="transfers")
    amount = s.amount
    if amount is not None and type(amount) is not int:
        raise InvalidInput(f"amount must be an integer number of base units, got {amount!r}", field="amount")
    return TransferSpec(
        parse_id(s.id), parse_id(s.debit_account_id, "debit_account_id"),
        parse_id(s.credit_account_id, "credit_account_id"), amount, parse_id(s.pending_id, "pending_id"),
        _uint(s.timeout, TIMEOUT_MAX, "timeout"), _uint(s.ledger, LEDGER_MAX, "ledger"),
        _uint(s.code, CODE_MAX, "code"),
        _uint(s.flags, 0xFFFF, "flags"),
        _user_data(s.user_data),
    )
