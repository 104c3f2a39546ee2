"""The ledger audit behind ``royalty ledger verify`` (``audit_ledger(node)``, also ``node.ledger_audit()``).

It rebuilds the whole ledger from the journal alone and compares the result with the database:

1. Replay. Every journal event, in ``seq`` order, is fed to a reference ledger kept in plain dicts (``_Model``
   below): ``account.created`` events (who may own ledger accounts), ``ledger.accounts`` events (ledger
   accounts, with their results recomputed), every event whose data has an ``expired`` list (pending transfers
   released, each checked to be overdue: I6) and every event whose data has a ``transfers`` list (whatever its
   type: fees, staking, governance and rewards journal their transfers this way). Each event's result code is
   recomputed with the TigerBeetle rules and compared with the journaled one. ``_Model`` is a second,
   independent implementation of those rules: it does not import ``core.py``, so a bug in the core cannot hide
   in the audit too.
2. Compare with the database, read in one snapshot: every ledger account (the four balances, version and
   newest position, ledger, code, flags, owner; I2), every transfer row (fields, timestamp,
   ``(event_seq, event_index)``, the history-chain pointers ``debit_prev``/``credit_prev``), every pending
   transfer's state (I6) and every burnt id (``ledger_failures``; I5). (``ledger_history_marks`` is an index
   derived from the chains and is not checked.)
3. Invariants: I1 (per ledger, Σ debits = Σ credits, posted and pending) and I3 (no flagged account over its
   limit, reservations included) on the stored balances; I4 (supply = issued − burnt ≤ cap; only GENESIS and
   MINT transfers debit ISSUANCE, only BURN transfers credit BURN) on the replay.
4. I7: the append-only triggers are in the catalog (cheaper than trying an UPDATE in a savepoint, and it does
   not depend on how a refusal is reported). I8: ``node.journal.verify()``. I9–I11: ``audit()`` of staking,
   governance, fees and rewards, when they have one.

The journal is read in pages of bounded size and the database tables in pages too, so memory grows with the
number of ids (transfers, accounts, pending transfers), not with the bytes of the journal: about 300 bytes per
transfer. Problems are collected, not raised: the report names the first ``MAX_PROBLEMS`` and counts them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Connection, func, select, text

from ..errors import RoyaltyError
from ..store.schema import APPEND_ONLY, accounts, ledger_failures, ledger_transfers
from .amounts import amount_json, format_amount
from .chart import AccountCode, TransferCode, system_account_id

if TYPE_CHECKING:
    from ..node import Node

MAX_PROBLEMS = 20
PAGE_BYTES = 8 << 20  # journal bytes per page (adaptive page length)
ROWS_PER_PAGE = 10_000  # database rows per page when streaming a table

# The TigerBeetle limits, restated here on purpose (see the module docstring).
_ID_MAX = 2**128 - 1
_AMOUNT_MAX = 2**63 - 1
_ZERO = "0" * 32
_INT_MAX = "f" * 32
_LINKED, _PENDING, _POST, _VOID = 1, 2, 4, 8
_TRANSFER_FLAGS = _LINKED | _PENDING | _POST | _VOID
_ACCOUNT_FLAGS = 1 | 2 | 4 | 8  # linked, debits_must_not_exceed_credits, credits_must_not_exceed_debits, history
_DR_LIMIT, _CR_LIMIT = 2, 4
_INDEX_BITS = 20  # a transfer's position is event_seq << 20 | event_index (royalty.ledger.core.position)
# Failures that depend on the ledger's state burn the id: a retry answers id_already_failed.
_BURNS_ID = frozenset({"debit_account_not_found", "credit_account_not_found", "pending_transfer_not_found",
                       "exceeds_credits", "exceeds_debits"})
_SUCCEEDED = frozenset({"ok", "exists"})

# Trigger names the migrations create (0001 and 0003): "<table>_no_update" / "<table>_no_delete".
_EXTRA_TRIGGERS = ("ledger_accounts_no_delete", "ledger_pending_no_delete", "ledger_pending_no_update")


@dataclass
class AuditReport:
    """What ``audit_ledger`` found. ``ok`` is true when ``problems`` is empty."""

    events: int = 0  # journal events read
    ledger_events: int = 0  # events that carried accounts, transfers or expiries
    accounts: int = 0  # ledger accounts replayed
    transfers: int = 0  # transfer events replayed (results of every kind)
    created: int = 0  # transfers created (result ok)
    failed: int = 0  # transfer events whose result was a failure
    expired: int = 0  # pending transfers released by expiry
    pending: int = 0  # pending transfers still reserved
    supply: int = 0  # issued - burnt, base units
    cap: int = 0
    journal: dict[str, Any] = field(default_factory=dict)
    services: dict[str, str] = field(default_factory=dict)  # staking/governance/fees/rewards: ok | n problems | …
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEMS
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def problem(self, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "ledger_events": self.ledger_events,
            "accounts": self.accounts,
            "transfers": self.transfers,
            "created": self.created,
            "failed": self.failed,
            "expired": self.expired,
            "pending": self.pending,
            "supply": amount_json(self.supply),
            "cap": amount_json(self.cap),
            "journal": self.journal,
            "services": self.services,
            "problems": self.problems,
            "problem_count": self.problem_count,
        }


def audit_ledger(node: Node) -> AuditReport:
    """Replay the journal into an independent reference ledger and check it against the database and the
    invariants I1–I8, then run the services' own audits (I9–I11). Never raises for what it finds: every
    finding is a line of ``report.problems``."""
    report = AuditReport()
    with _snapshot(node) as conn:
        names = {r.id: r.name for r in conn.execute(select(accounts.c.id, accounts.c.name))}
        model = _Model(report, names)
        _replay(conn, model, report)
        _compare_accounts(conn, model, report)
        _compare_pending(conn, model, report)
        _check_supply(model, report, node.params.current_in(conn).supply_cap)
        _check_triggers(conn, report)
    try:
        report.journal = node.journal.verify().to_dict()
    except RoyaltyError as exc:  # VerificationFailed names the first bad seq
        report.journal = {"ok": False, "error": exc.message}
        report.problem(f"I8: {exc.message}")
    for name in ("staking", "governance", "fees", "rewards"):
        _service_audit(name, getattr(node, name, None), report)
    return report


# --------------------------------------------------------------------------------------------------------------
# the snapshot and the streams
# --------------------------------------------------------------------------------------------------------------


@contextmanager
def _snapshot(node: Node) -> Iterator[Connection]:
    """One read transaction for the journal and the tables, so a busy node's concurrent writes cannot show up
    as differences. SQLite (WAL): a read transaction is a snapshot already. PostgreSQL: REPEATABLE READ (the
    default READ COMMITTED takes a new snapshot per statement)."""
    store = node.store
    if store.backend == "sqlite":
        with store.read() as conn:
            yield conn
        return
    with store.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def _fetch(conn: Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows straight from the driver (sqlite3 / psycopg), inside ``conn``'s transaction and snapshot. The audit
    reads every transfer: SQLAlchemy's row objects cost more than the queries themselves (profiled)."""
    if conn.dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    return conn.connection.driver_connection.execute(sql, params).fetchall()


def _journal_pages(conn: Connection) -> Iterator[list[tuple[int, bytes]]]:
    """(seq, body) in seq order, in pages of about PAGE_BYTES: a page of 1,000-transfer events and a page of
    one-line events both stay bounded."""
    after, limit = -1, 256
    while True:
        rows = _fetch(conn, "SELECT seq, body FROM journal_events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        if not rows:
            return
        page = [(int(seq), bytes(body)) for seq, body in rows]
        yield page
        after = page[-1][0]
        size = sum(len(b) for _, b in page)
        limit = max(16, min(20_000, limit * PAGE_BYTES // max(size, 1)))


def _table_pages(conn: Connection, table: str, columns: str) -> Iterator[list[tuple[Any, ...]]]:
    """Every row of ``table`` (``columns`` starting with ``id``) in id order, ROWS_PER_PAGE at a time."""
    after = ""
    while True:
        rows = _fetch(conn, f"SELECT {columns} FROM {table} WHERE id > ? ORDER BY id LIMIT ?", (after, ROWS_PER_PAGE))
        if not rows:
            return
        yield rows
        after = rows[-1][0]


# --------------------------------------------------------------------------------------------------------------
# the reference model: TigerBeetle's rules in plain dicts
# --------------------------------------------------------------------------------------------------------------


class _Account:
    __slots__ = ("ledger", "code", "flags", "owner", "user_data", "seq", "dp", "dpo", "cp", "cpo", "version", "last_pos")

    def __init__(self, ledger: int, code: int, flags: int, owner: str | None, user_data: str | None, seq: int) -> None:
        self.ledger, self.code, self.flags, self.owner, self.user_data, self.seq = ledger, code, flags, owner, user_data, seq
        self.dp = self.dpo = self.cp = self.cpo = 0
        self.version = 0  # transfers that touched it
        self.last_pos: int | None = None  # position of the newest of them


class _Tr(NamedTuple):
    """A transfer as replayed; ids are the journal's 32-hex-digit strings."""

    dr: str
    cr: str
    amount: int
    pending_id: str | None
    timeout: int
    ledger: int
    code: int
    flags: int
    user_data: str | None
    timestamp: int


class _Event(NamedTuple):
    """One journaled transfer event, as submitted (for post/void: zero ids and a None amount mean the pending
    transfer's)."""

    id: str
    dr: str
    cr: str
    amount: int | None
    pending_id: str  # _ZERO when none
    timeout: int
    ledger: int
    code: int
    flags: int
    user_data: str | None


class _Model:
    def __init__(self, report: AuditReport, names: dict[str, str]) -> None:
        self.report = report
        self.names = names
        self.owners: set[str] = set()  # node accounts (account.created)
        self.accounts: dict[str, _Account] = {}
        self.canonical: dict[str, str] = {}  # account id -> the one string object used for it
        self.transfers: dict[str, _Tr] = {}
        self.pending: dict[str, list[Any]] = {}  # id -> [state, expires_ms | None, resolved_by | None]
        self.failed: dict[str, tuple[str, int]] = {}  # id -> (result, seq)
        self.now = 0
        # Undo log of the linked chain being applied: (object, attribute or key, old value).
        self.undo: list[tuple[Any, Any, Any]] | None = None
        self.created_in_event: list[str] = []

    # --- small helpers -------------------------------------------------------------------------------------------

    def label(self, account: str) -> str:
        a = self.accounts.get(account)
        if a is None:
            return account
        try:
            kind = AccountCode(a.code).name.lower()
        except ValueError:
            kind = f"code {a.code}"
        owner = self.names.get(a.owner or "", a.owner or "no owner")
        return f"{account} ({owner}, {kind})"

    def _add(self, a: _Account, attr: str, delta: int) -> None:
        if self.undo is not None:
            self.undo.append((a, attr, getattr(a, attr)))
        setattr(a, attr, getattr(a, attr) + delta)

    def _put(self, d: dict[str, Any], key: str, value: Any) -> None:
        if self.undo is not None:
            self.undo.append((d, key, d.get(key, _ABSENT)))
        d[key] = value

    def _rollback(self) -> None:
        assert self.undo is not None
        for obj, key, old in reversed(self.undo):
            if isinstance(obj, dict):
                if old is _ABSENT:
                    del obj[key]
                else:
                    obj[key] = old
            else:
                setattr(obj, key, old)

    # --- ledger accounts -------------------------------------------------------------------------------------------

    def create_accounts(self, seq: int, items: list[dict[str, Any]]) -> list[str]:
        results = ["ok"] * len(items)
        for start, end, is_open in _chains([int(i["flags"]) for i in items]):
            if is_open:
                results[start:end] = ["linked_event_failed"] * (end - start - 1) + ["linked_event_chain_open"]
                continue
            made: list[str] = []
            for i in range(start, end):
                item = items[i]
                code = self._account_result(item)
                results[i] = code
                if code == "ok":
                    self.accounts[item["id"]] = _Account(
                        int(item["ledger"]), int(item["code"]), int(item["flags"]), item.get("owner"),
                        item.get("user_data"), seq)
                    self.canonical[item["id"]] = item["id"]
                    made.append(item["id"])
                elif end - start > 1 and code != "exists":
                    for a in made:
                        del self.accounts[a]
                        del self.canonical[a]
                    results[start:end] = ["linked_event_failed"] * (end - start)
                    results[i] = code
                    break
        return results

    def _account_result(self, item: dict[str, Any]) -> str:
        flags, ident = int(item["flags"]), item["id"]
        if flags & ~_ACCOUNT_FLAGS:
            return "reserved_flag"
        if ident == _ZERO:
            return "id_must_not_be_zero"
        if ident == _INT_MAX:
            return "id_must_not_be_int_max"
        if flags & _DR_LIMIT and flags & _CR_LIMIT:
            return "flags_are_mutually_exclusive"
        if int(item["ledger"]) == 0:
            return "ledger_must_not_be_zero"
        if int(item["code"]) == 0:
            return "code_must_not_be_zero"
        old = self.accounts.get(ident)
        if old is not None:
            for name, mine in (("flags", old.flags), ("user_data", old.user_data), ("ledger", old.ledger),
                               ("code", old.code)):
                if item.get(name) != mine:
                    return f"exists_with_different_{name}"
            return "exists"
        owner = item.get("owner")
        if owner is not None and owner not in self.owners:
            return "owner_not_found"
        return "ok"

    # --- expiry ----------------------------------------------------------------------------------------------------

    def expire(self, seq: int, ids: list[str]) -> None:
        for pid in ids:
            p = self.pending.get(pid)
            if p is None or p[0] != "pending":
                state = "unknown" if p is None else p[0]
                self.report.problem(f"I6: seq {seq} expires pending transfer {pid}, which is {state}")
                continue
            if p[1] is None or p[1] > self.now:
                self.report.problem(
                    f"I6: seq {seq} expires pending transfer {pid} at {self.now} ms, before its timeout "
                    f"({'never' if p[1] is None else f'{p[1]} ms'})")
            t = self.transfers[pid]
            self.accounts[t.dr].dp -= t.amount
            self.accounts[t.cr].cp -= t.amount
            p[0] = "expired"
            self.report.expired += 1

    # --- transfers -------------------------------------------------------------------------------------------------

    def create_transfers(self, seq: int, events: list[_Event]) -> list[str]:
        results = ["ok"] * len(events)
        self.created_in_event = []
        for start, end, is_open in _chains([e.flags for e in events]):
            if is_open:
                results[start:end] = ["linked_event_failed"] * (end - start - 1) + ["linked_event_chain_open"]
                continue
            chained = end - start > 1
            self.undo = [] if chained else None
            mark = len(self.created_in_event)
            for i in range(start, end):
                code = self._transfer(events[i])
                results[i] = code
                if code in _SUCCEEDED:
                    continue
                if chained:
                    self._rollback()
                    del self.created_in_event[mark:]
                    results[start:end] = ["linked_event_failed"] * (end - start)
                    results[i] = code
                if code in _BURNS_ID and events[i].id not in self.failed:
                    self.failed[events[i].id] = (code, seq)
                break
            self.undo = None
        return results

    def _transfer(self, e: _Event) -> str:
        if e.flags & ~_TRANSFER_FLAGS:
            return "reserved_flag"
        if e.id == _ZERO:
            return "id_must_not_be_zero"
        if e.id == _INT_MAX:
            return "id_must_not_be_int_max"
        old = self.transfers.get(e.id)
        if old is not None:
            return _compare_existing(e, old)
        if e.id in self.failed:
            return "id_already_failed"
        f = e.flags
        resolving = bool(f & (_POST | _VOID))
        if (f & _PENDING and resolving) or (f & _POST and f & _VOID):
            return "flags_are_mutually_exclusive"
        if resolving:
            if e.pending_id == _ZERO:
                return "pending_id_must_not_be_zero"
            if e.pending_id == _INT_MAX:
                return "pending_id_must_not_be_int_max"
            if e.pending_id == e.id:
                return "pending_id_must_be_different"
            if e.timeout:
                return "timeout_reserved_for_pending_transfer"
            if e.amount is not None and not 0 < e.amount <= _AMOUNT_MAX:
                return "amount_must_not_be_zero" if e.amount == 0 else "amount_out_of_range"
            return self._resolve(e)
        for ident, what in ((e.dr, "debit_account_id"), (e.cr, "credit_account_id")):
            if ident == _ZERO:
                return f"{what}_must_not_be_zero"
            if ident == _INT_MAX:
                return f"{what}_must_not_be_int_max"
        if e.dr == e.cr:
            return "accounts_must_be_different"
        if e.pending_id != _ZERO:
            return "pending_id_must_be_zero"
        if e.timeout and not f & _PENDING:
            return "timeout_reserved_for_pending_transfer"
        if not e.amount:
            return "amount_must_not_be_zero"
        if not 0 < e.amount <= _AMOUNT_MAX:
            return "amount_out_of_range"
        if e.ledger == 0:
            return "ledger_must_not_be_zero"
        if e.code == 0:
            return "code_must_not_be_zero"
        dr, cr = self.accounts.get(e.dr), self.accounts.get(e.cr)
        if dr is None:
            return "debit_account_not_found"
        if cr is None:
            return "credit_account_not_found"
        if dr.ledger != cr.ledger:
            return "accounts_must_have_the_same_ledger"
        if e.ledger != dr.ledger:
            return "transfer_must_have_the_same_ledger_as_accounts"
        amount = e.amount
        pending = bool(f & _PENDING)
        if pending:
            if dr.dp + amount > _AMOUNT_MAX:
                return "overflows_debits_pending"
            if cr.cp + amount > _AMOUNT_MAX:
                return "overflows_credits_pending"
        else:
            if dr.dpo + amount > _AMOUNT_MAX:
                return "overflows_debits_posted"
            if cr.cpo + amount > _AMOUNT_MAX:
                return "overflows_credits_posted"
        if dr.dp + dr.dpo + amount > _AMOUNT_MAX:
            return "overflows_debits"
        if cr.cp + cr.cpo + amount > _AMOUNT_MAX:
            return "overflows_credits"
        if dr.flags & _DR_LIMIT and dr.dp + dr.dpo + amount > dr.cpo:
            return "exceeds_credits"
        if cr.flags & _CR_LIMIT and cr.cp + cr.cpo + amount > cr.dpo:
            return "exceeds_debits"
        self._add(dr, "dp" if pending else "dpo", amount)
        self._add(cr, "cp" if pending else "cpo", amount)
        self._created(e, e.dr, e.cr, amount, e.ledger, e.code)
        if pending:
            expires = self.now + e.timeout * 1000 if e.timeout else None
            self._put(self.pending, e.id, ["pending", expires, None])
        return "ok"

    def _resolve(self, e: _Event) -> str:
        p = self.transfers.get(e.pending_id)
        if p is None:
            return "pending_transfer_not_found"
        if not p.flags & _PENDING:
            return "pending_transfer_not_pending"
        if e.dr != _ZERO and e.dr != p.dr:
            return "pending_transfer_has_different_debit_account_id"
        if e.cr != _ZERO and e.cr != p.cr:
            return "pending_transfer_has_different_credit_account_id"
        if e.ledger and e.ledger != p.ledger:
            return "pending_transfer_has_different_ledger"
        if e.code and e.code != p.code:
            return "pending_transfer_has_different_code"
        post = bool(e.flags & _POST)
        if post:
            amount = p.amount if e.amount is None else e.amount
            if amount > p.amount:
                return "exceeds_pending_transfer_amount"
        else:
            amount = p.amount
            if e.amount is not None and e.amount != p.amount:
                return "pending_transfer_has_different_amount"
        state = self.pending[e.pending_id]
        if state[0] == "posted":
            return "pending_transfer_already_posted"
        if state[0] == "voided":
            return "pending_transfer_already_voided"
        if state[0] == "expired":
            return "pending_transfer_expired"
        if state[1] is not None and state[1] <= self.now:
            # The core releases every overdue reservation a batch touches (its "expired" list) before the batch.
            self.report.problem(f"I6: pending transfer {e.pending_id} was overdue at {self.now} ms but not released")
            return "pending_transfer_expired"
        dr, cr = self.accounts[p.dr], self.accounts[p.cr]
        if post:
            if dr.dpo + amount > _AMOUNT_MAX:
                return "overflows_debits_posted"
            if cr.cpo + amount > _AMOUNT_MAX:
                return "overflows_credits_posted"
        self._add(dr, "dp", -p.amount)
        self._add(cr, "cp", -p.amount)
        if post:
            self._add(dr, "dpo", amount)
            self._add(cr, "cpo", amount)
        self._created(e, p.dr, p.cr, amount, p.ledger, p.code)
        self._put(self.pending, e.pending_id, ["posted" if post else "voided", state[1], e.id])
        return "ok"

    def _created(self, e: _Event, dr: str, cr: str, amount: int, ledger: int, code: int) -> None:
        pending_id = e.pending_id if e.pending_id != _ZERO else None
        self._put(self.transfers, e.id, _new_tr(_Tr, (dr, cr, amount, pending_id, e.timeout, ledger, code, e.flags,
                                                      e.user_data, self.now)))
        self.created_in_event.append(e.id)


_ABSENT = object()
# tuple.__new__(cls, values) builds a NamedTuple several times faster than cls(...): one per transfer counts.
_new_tr = tuple.__new__


def _compare_existing(e: _Event, t: _Tr) -> str:
    """The answer to an id that is taken: ``exists`` only when every given field matches."""
    if e.flags != t.flags:
        return "exists_with_different_flags"
    if (e.pending_id if e.pending_id != _ZERO else None) != t.pending_id:
        return "exists_with_different_pending_id"
    if e.timeout != t.timeout:
        return "exists_with_different_timeout"
    resolving = bool(e.flags & (_POST | _VOID))
    if e.dr != t.dr and not (resolving and e.dr == _ZERO):
        return "exists_with_different_debit_account_id"
    if e.cr != t.cr and not (resolving and e.cr == _ZERO):
        return "exists_with_different_credit_account_id"
    if e.amount != t.amount and not (resolving and e.amount is None):
        return "exists_with_different_amount"
    if e.user_data != t.user_data:
        return "exists_with_different_user_data"
    if e.ledger != t.ledger and not (resolving and e.ledger == 0):
        return "exists_with_different_ledger"
    if e.code != t.code and not (resolving and e.code == 0):
        return "exists_with_different_code"
    return "exists"


def _chains(flags: list[int]) -> Iterator[tuple[int, int, bool]]:
    """(start, end, open) of each linked chain: a chain ends at the first event without the linked flag."""
    start = 0
    for i, f in enumerate(flags):
        if not f & _LINKED:
            yield start, i + 1, False
            start = i + 1
    if start < len(flags):
        yield start, len(flags), True


def _event_of(item: dict[str, Any], canon: dict[str, str]) -> _Event:
    amount = item.get("amount")
    dr, cr = item["debit_account_id"], item["credit_account_id"]
    # Account ids repeat across millions of transfers: one string object per account keeps memory per transfer flat.
    return _new_tr(_Event, (
        item["id"], canon.get(dr, dr), canon.get(cr, cr),
        None if amount is None else int(amount),  # amounts beyond 2^63 - 1 are journaled as strings
        item.get("pending_id") or _ZERO, int(item["timeout"]), int(item["ledger"]), int(item["code"]),
        int(item["flags"]), item.get("user_data"),
    ))


# --------------------------------------------------------------------------------------------------------------
# 1. replay, comparing transfers and burnt ids with the database page by page
# --------------------------------------------------------------------------------------------------------------

_ISSUANCE = format(system_account_id(AccountCode.ISSUANCE), "032x")
_BURN = format(system_account_id(AccountCode.BURN), "032x")
_GOPEN_ISSUANCE = format(system_account_id(AccountCode.GOPEN_ISSUANCE), "032x")
_GENESIS = int(TransferCode.GENESIS)
_ISSUING_CODES = {_ISSUANCE: {int(TransferCode.GENESIS), int(TransferCode.MINT)},
                  _GOPEN_ISSUANCE: {int(TransferCode.GOPEN_MINT)}}


# A created transfer as the comparison needs it: (seq, index, id, debit_prev, credit_prev).
_Created = tuple[int, int, str, int | None, int | None]


def _replay(conn: Connection, model: _Model, report: AuditReport) -> None:
    last_seq = -1
    for page in _journal_pages(conn):
        created: list[_Created] = []  # in journal order
        new_failures: dict[str, tuple[str, int]] = {}
        for seq, body in page:
            report.events += 1
            try:
                doc = json.loads(body)
                _apply_event(model, report, seq, doc["type"], doc["data"], created, new_failures)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                report.problem(f"seq {seq}: unreadable ledger event ({type(exc).__name__}: {exc})")
        first, last_seq = page[0][0], page[-1][0]
        _compare_transfers(conn, model, report, first, last_seq, created)
        _compare_failures(conn, report, first, last_seq, new_failures)
    for table, what in ((ledger_transfers, "transfer"), (ledger_failures, "burnt id")):
        stray = conn.execute(select(func.count()).select_from(table).where(table.c.event_seq > last_seq)).scalar_one()
        if stray:
            report.problem(f"I2: {stray} {what} row(s) in the database point past the journal's last event {last_seq}")


def _apply_event(model: _Model, report: AuditReport, seq: int, type_: str, data: Any,
                 created: list[_Created], new_failures: dict[str, tuple[str, int]]) -> None:
    if not isinstance(data, dict):
        return
    if type_ == "account.created":
        model.owners.add(data["id"])
        return
    if type_ == "ledger.accounts":
        report.ledger_events += 1
        items = data["accounts"]
        for item, mine in zip(items, model.create_accounts(seq, items), strict=True):
            if item["result"] != mine:
                report.problem(f"seq {seq}: ledger account {item['id']}: the journal says {item['result']}, "
                               f"the replay says {mine}")
        return
    expired, transfers = data.get("expired"), data.get("transfers")
    if not isinstance(expired, list) and not isinstance(transfers, list):
        return
    report.ledger_events += 1
    model.now = int(data["timestamp"])
    if isinstance(expired, list):
        model.expire(seq, expired)
    if not isinstance(transfers, list) or not transfers:
        return
    canon = model.canonical
    events = [_event_of(item, canon) for item in transfers]
    results = model.create_transfers(seq, events)
    for index, (item, mine) in enumerate(zip(transfers, results, strict=True)):
        report.transfers += 1
        journaled = item["result"]
        if journaled != mine:
            report.problem(f"seq {seq}: transfer {item['id']} (#{index}): the journal says {journaled}, "
                           f"the replay says {mine}")
        if mine not in _SUCCEEDED:
            report.failed += 1
    for index, tid in enumerate(model.created_in_event):
        t = model.transfers[tid]
        # The history chain: each transfer points to the previous transfer of each of its accounts.
        pos = seq << _INDEX_BITS | index
        dr, cr = model.accounts[t.dr], model.accounts[t.cr]
        created.append((seq, index, tid, dr.last_pos, cr.last_pos))
        dr.version += 1
        cr.version += 1
        dr.last_pos = cr.last_pos = pos
        allowed = _ISSUING_CODES.get(t.dr)
        if allowed is not None and t.code not in allowed:
            report.problem(f"I4: seq {seq}: transfer {tid} debits {model.label(t.dr)} with code {t.code}; only "
                           f"{', '.join(TransferCode(c).name for c in sorted(allowed))} may")
        elif t.dr == _ISSUANCE and t.code == _GENESIS and type_ != "ledger.genesis":
            report.problem(f"I4: seq {seq}: transfer {tid} issues OPEN as GENESIS outside the genesis event")
        if t.cr == _BURN and t.code != int(TransferCode.BURN):
            report.problem(f"I4: seq {seq}: transfer {tid} credits the burn account with code {t.code}")
    report.created += len(model.created_in_event)
    for e in events:  # ids this event burnt (an id burnt earlier carries an earlier seq)
        burnt = model.failed.get(e.id)
        if burnt is not None and burnt[1] == seq:
            new_failures[e.id] = burnt


_SELECT_TRANSFERS = (
    "SELECT event_seq, event_index, id, debit_account_id, credit_account_id, amount, pending_id, timeout, ledger, code, "
    "flags, user_data, timestamp, debit_prev, credit_prev FROM ledger_transfers WHERE event_seq >= ? AND event_seq <= ?"
)
_TRANSFER_FIELDS = ("id", "debit_account_id", "credit_account_id", "amount", "pending_id", "timeout", "ledger", "code",
                    "flags", "user_data", "timestamp", "debit_prev", "credit_prev")


def _compare_transfers(conn: Connection, model: _Model, report: AuditReport, first: int, last: int,
                       created: list[_Created]) -> None:
    """The database's transfer rows of journal events first..last must be exactly the replay's, in order."""
    stored = {(int(r[0]), int(r[1])): r for r in _fetch(conn, _SELECT_TRANSFERS, (first, last))}
    for seq, index, tid, debit_prev, credit_prev in created:
        row = stored.pop((seq, index), None)
        if row is None:
            report.problem(f"I2: transfer {tid} (seq {seq}, #{index}) is in the journal but not in the database")
            continue
        tr = model.transfers[tid]
        mine = (tid, tr.dr, tr.cr, tr.amount, tr.pending_id, tr.timeout, tr.ledger, tr.code, tr.flags, tr.user_data,
                tr.timestamp, debit_prev, credit_prev)
        theirs = (row[2], row[3], row[4], int(row[5]), row[6], int(row[7]), int(row[8]), int(row[9]), int(row[10]),
                  row[11], int(row[12]), _int_or_none(row[13]), _int_or_none(row[14]))
        if mine != theirs:
            diff = ", ".join(f"{n} {b!r} (journal: {a!r})" for n, a, b in zip(_TRANSFER_FIELDS, mine, theirs) if a != b)
            report.problem(f"I2: transfer {tid} (seq {seq}, #{index}) differs in the database: {diff}")
    for (seq, index), row in stored.items():
        report.problem(f"I2: transfer {row[2]} (seq {seq}, #{index}) is in the database but not in the journal")


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _compare_failures(conn: Connection, report: AuditReport, first: int, last: int,
                      expected: dict[str, tuple[str, int]]) -> None:
    rows = _fetch(conn, "SELECT id, code, event_seq FROM ledger_failures WHERE event_seq >= ? AND event_seq <= ?",
                  (first, last))
    stored = {ident: (code, int(seq)) for ident, code, seq in rows}
    for tid, want in expected.items():
        got = stored.pop(tid, None)
        if got != want:
            report.problem(f"I5: burnt id {tid}: the journal says {want[0]} at seq {want[1]}, the database has "
                           f"{'nothing' if got is None else f'{got[0]} at seq {got[1]}'}")
    for tid, (code, seq) in stored.items():
        report.problem(f"I5: burnt id {tid} ({code}, seq {seq}) is in the database but not in the journal")


# --------------------------------------------------------------------------------------------------------------
# 2. accounts and pending transfers against the database
# --------------------------------------------------------------------------------------------------------------


def _compare_accounts(conn: Connection, model: _Model, report: AuditReport) -> None:
    columns = ("id, ledger, code, flags, owner_id, user_data, created_seq, debits_pending, debits_posted, "
               "credits_pending, credits_posted, version, last_pos")
    seen: set[str] = set()
    sums: dict[int, list[int]] = {}  # per ledger: debits pending, posted; credits pending, posted
    for rows in _table_pages(conn, "ledger_accounts", columns):
        for ident, ledger, code, flags, owner, user_data, created_seq, *rest in rows:
            seen.add(ident)
            balances = tuple(int(v) for v in rest[:5]) + (_int_or_none(rest[5]),)
            _check_stored_balance(model, report, ident, int(flags), balances, sums.setdefault(int(ledger), [0, 0, 0, 0]))
            mine = model.accounts.get(ident)
            if mine is None:
                report.problem(f"I2: ledger account {ident} is in the database but was never created in the journal")
                continue
            if (int(ledger), int(code), int(flags), owner, user_data, int(created_seq)) != (
                    mine.ledger, mine.code, mine.flags, mine.owner, mine.user_data, mine.seq):
                report.problem(f"I2: ledger account {model.label(ident)}: ledger/code/flags/owner/user_data/created_seq "
                               "differ from the journal's")
            want = (mine.dp, mine.dpo, mine.cp, mine.cpo, mine.version, mine.last_pos)
            if balances != want:
                names = ("debits_pending", "debits_posted", "credits_pending", "credits_posted", "version", "last_pos")
                diff = ", ".join(f"{n} {b} (replay: {w})" for n, b, w in zip(names, balances, want) if b != w)
                report.problem(f"I2: ledger account {model.label(ident)} balance differs from the replay of its "
                               f"transfers: {diff}")
    for ident in model.accounts.keys() - seen:
        report.problem(f"I2: ledger account {model.label(ident)} was created in the journal but is not in the database")
    for ledger, (dp, dpo, cp, cpo) in sorted(sums.items()):
        if dpo != cpo or dp != cp:
            report.problem(f"I1: ledger {ledger}: debits posted {dpo} / pending {dp} differ from credits posted "
                           f"{cpo} / pending {cp}")
    report.accounts = len(model.accounts)


def _check_stored_balance(model: _Model, report: AuditReport, ident: str, flags: int, balances: tuple[Any, ...],
                          sums: list[int]) -> None:
    """I3 on one stored account, and its share of the I1 sums. (The replay satisfies both by construction; the
    database is what the node serves, and I2 ties the two together.)"""
    dp, dpo, cp, cpo = balances[:4]
    sums[0] += dp
    sums[1] += dpo
    sums[2] += cp
    sums[3] += cpo
    if min(dp, dpo, cp, cpo) < 0:
        report.problem(f"I3: ledger account {model.label(ident)} has a negative balance field")
    if flags & _DR_LIMIT and dp + dpo > cpo:
        report.problem(f"I3: ledger account {model.label(ident)} is overdrawn: debits {format_amount(dp + dpo)} "
                       f"(reservations included) > credits {format_amount(cpo)}")
    if flags & _CR_LIMIT and cp + cpo > dpo:
        report.problem(f"I3: ledger account {model.label(ident)}: credits {format_amount(cp + cpo)} exceed its "
                       f"debits {format_amount(dpo)}")


def _compare_pending(conn: Connection, model: _Model, report: AuditReport) -> None:
    columns = "id, debit_account_id, credit_account_id, amount, expires_ms, state, resolved_by"
    seen: set[str] = set()
    for rows in _table_pages(conn, "ledger_pending", columns):
        for ident, dr, cr, amount, expires, stored_state, resolved_by in rows:
            seen.add(ident)
            state = model.pending.get(ident)
            if state is None:
                report.problem(f"I6: pending transfer {ident} is in the database but not in the journal")
                continue
            t = model.transfers[ident]
            if (dr, cr, int(amount), _int_or_none(expires), stored_state, resolved_by) != (
                    t.dr, t.cr, t.amount, state[1], state[0], state[2]):
                report.problem(f"I6: pending transfer {ident} is {stored_state} in the database, {state[0]} in the "
                               "replay (or its accounts, amount, expiry or resolving transfer differ)")
    for ident in model.pending.keys() - seen:
        report.problem(f"I6: pending transfer {ident} is in the journal but not in the database")
    report.pending = sum(1 for s in model.pending.values() if s[0] == "pending")


# --------------------------------------------------------------------------------------------------------------
# 3. invariants on the replayed state; 4. triggers and the services
# --------------------------------------------------------------------------------------------------------------


def _check_supply(model: _Model, report: AuditReport, cap: int) -> None:
    """I4 on the replayed state: supply = issued - burnt, within the cap. (Σ of every other OPEN account's net
    balance equals it whenever I1 holds.)"""
    issuance, burn = model.accounts.get(_ISSUANCE), model.accounts.get(_BURN)
    issued = issuance.dpo - issuance.cpo if issuance else 0
    burnt = burn.cpo - burn.dpo if burn else 0
    report.supply, report.cap = issued - burnt, cap
    if report.supply > cap:
        report.problem(f"I4: supply {format_amount(report.supply)} OPEN exceeds the cap {format_amount(cap)}")
    if report.supply < 0:
        report.problem(f"I4: supply is negative ({format_amount(report.supply)} OPEN)")


def _check_triggers(conn: Connection, report: AuditReport) -> None:
    wanted = {f"{t}_no_{action}" for t in APPEND_ONLY for action in ("update", "delete")} | set(_EXTRA_TRIGGERS)
    if conn.dialect.name == "sqlite":
        present = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())
    else:
        present = set(conn.execute(text(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND NOT t.tgisinternal"
        )).scalars())
    for name in sorted(wanted - present):
        report.problem(f"I7: the append-only trigger {name} is missing: its table can be rewritten")


def _service_audit(name: str, service: Any, report: AuditReport) -> None:
    audit: Callable[[], list[str]] | None = getattr(service, "audit", None)
    if audit is None:
        report.services[name] = "no audit"
        return
    try:
        found = audit()
    except NotImplementedError:
        report.services[name] = "not implemented"
        return
    except RoyaltyError as exc:
        found = [exc.message]
    tag = {"staking": "I9", "governance": "I10", "rewards": "I11", "fees": "I11"}[name]
    for problem in found:
        report.problem(f"{tag} {name}: {problem}")
    report.services[name] = "ok" if not found else f"{len(found)} problem(s)"
