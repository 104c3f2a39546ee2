"""The double-entry core: the TigerBeetle state machine over royalty's Store (``node.ledger``).

Model (``shared/reference/ledger.md`` §1): accounts with four cumulative balances (debits/credits ×
pending/posted), immutable transfers with client-chosen 128-bit ids, two-phase transfers (pending → post,
partial or full, / void / expiry), linked chains that succeed or fail together, and idempotency by id.

One ``create_transfers`` call is one journal event ``ledger.transfers`` listing every event of the batch with its
result, failures included (a state-dependent failure burns its id, so an auditor replaying the journal needs
failures to reproduce later ``id_already_failed`` answers and to see every attempt), plus the pending transfers
that expired lazily in that transaction.

Group commit. Calls of ``create_transfers`` that arrive while another is committing queue up; the next one to
run takes the whole queue (up to ``group_max_events`` transfers) into one write transaction and one durable
commit. Each call keeps its own journal event, its own results and its own chains (a chain never spans two
calls), and gets its answer only after the commit. A lone call commits at once, in its own thread; under load a
group is whatever queued while the previous group was committing, and after a group of several calls the leader
waits up to ``group_window_ms`` (2 ms) for those callers to queue again, so groups do not split in halves, but
only while they keep arriving (each within ``group_gap_ms``, 0.3 ms, of the previous one): callers that are not
looping are not waited for. If a
group's transaction fails, its calls run one by one, so only the culprit gets the error. A retried transaction
keeps its first clock reading. ``Ledger(group_commit=False)`` gives every call its own transaction.
``create_transfers_in`` (composite operations) never groups: it runs in the caller's transaction.

Concurrency. SQLite: ``Store.write`` is BEGIN IMMEDIATE under the process's writer lock, so transactions run one
at a time; the ledger's own transactions (on ``Store.write_driver``'s kept connection) keep the committed rows of
the accounts they touched and read them again only after another connection has committed (``_AccountCache``,
checked with ``PRAGMA data_version``). PostgreSQL (READ COMMITTED): every account a batch may change (the transfers' accounts, the pending
transfers' accounts, the accounts of pending transfers it expires) is locked with SELECT … FOR UPDATE in
ascending id order before anything is read that depends on balances or pending states; every change to an
account's balances or to a pending transfer's state happens under the locks of its accounts. The journal head
is locked last (by ``Journal.append_many``), so lock order is always accounts (ascending) → journal head. Two
concurrent batches inserting the same new id on disjoint accounts collide on the primary key; the loser's
transaction is retried and then sees the winner's row (``exists`` / ``exists_with_different_*``). Whether any
reservation is overdue is probed after the locks, in their round trip; a hit whose other account is not locked
restarts the batch, which then looks for overdue reservations before locking (as long as any are seen).

Expiry. A pending transfer with a timeout expires at ``timestamp + timeout × 1000`` ms on the ledger's clock (the
node's injectable clock). Nothing runs in the background: a batch first expires every overdue pending transfer on
the accounts it locks (journaled in its event's ``expired`` list; in a group, in the first call's event), and
``expire_pending()`` sweeps the rest (journaled as ``ledger.expired``). An expired pending transfer can be
neither posted nor voided (``pending_transfer_expired``) even if no sweep has run yet. Until it is released,
``balance()`` still shows the reservation as pending.

History without secondary indexes. A transfer's position is ``pos = event_seq << 20 | event_index``. Each
account row keeps ``version`` (how many transfers touched it) and ``last_pos`` (its newest transfer); each
transfer row keeps ``debit_prev`` / ``credit_prev``, the position of the previous transfer of that account, so
an account's transfers form a backward chain that costs nothing beyond the account row the transfer updates
anyway. Every ``HISTORY_MARK_EVERY``-th transfer of an account is also recorded in ``ledger_history_marks``
(account, pos, version), so ``history`` starts its walk at most ``limit + 2 × HISTORY_MARK_EVERY`` steps from
what it returns. Two indexes on (account, order) cost two random B-tree inserts per transfer, measured as about
half of SQLite's write throughput at 100,000 accounts.

Hot statements go to the driver's own connection (sqlite3 / psycopg): building and compiling SQLAlchemy
expressions cost more than SQLite itself for small batches. ``create_transfers`` and ``expire_pending`` run in a
driver transaction of their own (``Store.write_driver``: no SQLAlchemy connection at all, ~70 µs less per call);
``create_transfers_in`` uses the driver connection under the caller's SQLAlchemy transaction. A batch journals
its event with ``Journal.append_encoded``, writing the event data's canonical JSON directly (``_item_texts``).
On PostgreSQL the lock and the reads that follow it are one pipeline (one round trip; the server still runs them
in order), the writes another, and the account updates and transfer inserts are one ``unnest`` statement each.
"""

from __future__ import annotations

import _thread
import functools
import itertools
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidInput, NotFound, StorageError
from ..journal.canonical import canonical_text, string_text
from ..journal.log import Journal
from ..store import Store
from ..store.schema import accounts as node_accounts
from ..store.schema import ledger_accounts, ledger_pending, ledger_transfers
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

INDEX_BITS = 20
MAX_BATCH = 1 << INDEX_BITS  # events per call: event_index must fit in INDEX_BITS bits of a position
_INDEX_MASK = MAX_BATCH - 1
HISTORY_MARK_EVERY = 32
GROUP_MAX_EVENTS = 1_000
GROUP_WINDOW_MS = 2.0
GROUP_GAP_MS = 0.3
_OK = Result.ok
_TEXT = {r: r.value for r in Result}  # Enum.value is a descriptor call: this is the hot path's lookup


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


def position(event_seq: int, event_index: int) -> int:
    """A transfer's place in the ledger's total order, as one integer (history chains point with it)."""
    return event_seq << INDEX_BITS | event_index


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


# Columns of a transfer row as the hot statements read them (see _transfer_from_tuple).
_TCOLS = ("id, debit_account_id, credit_account_id, amount, pending_id, timeout, ledger, code, flags, user_data, "
          "timestamp, event_seq, event_index")


def _transfer_from_tuple(r: Sequence[Any]) -> Transfer:
    return Transfer(
        int(r[0], 16), int(r[1], 16), int(r[2], 16), int(r[3]), int(r[4], 16) if r[4] else 0, int(r[5]), int(r[6]),
        int(r[7]), int(r[8]), r[9], int(r[10]), int(r[11]), int(r[12]),
    )


class _Tr(NamedTuple):
    """A transfer inside a batch (cheaper to build than ``Transfer``; same field names for ``_exists``)."""

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


_tuple_new = tuple.__new__  # _Tr(...) without the Python-level __new__ of a namedtuple

_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


def _transient(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it wraps) is a PostgreSQL error that a retry of the whole transaction cures."""
    seen = 0
    while exc is not None and seen < 4:
        if getattr(exc, "sqlstate", None) in _TRANSIENT_SQLSTATES:
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__
        seen += 1
    return False


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
# statements on the driver's connection
# --------------------------------------------------------------------------------------------------------------

_CHUNK = 16_384  # ids per statement: SQLite allows 32,766 parameters (and "{in}" may appear twice)
_ROWS = 64  # rows per multi-row statement (_Db.bulk): 64 x 15 columns stays under even old SQLite's 999 parameters


@functools.lru_cache(maxsize=512)
def _sqlite_in(sql: str, n: int) -> str:
    return sql.replace("{in}", "IN (" + ",".join("?" * n) + ")")


_LOOKUP = re.compile(r"SELECT (?P<cols>.+) FROM (?P<table>\w+) WHERE id \{in\}(?P<rest>.*)", re.DOTALL)


@functools.lru_cache(maxsize=64)
def _pg(sql: str) -> str:
    """The PostgreSQL text of a statement: ``%s`` marks; a lookup by id becomes a join with the unnested array (an
    index probe per id whatever the planner thinks of the table's size: ``id = ANY(array)`` on a sequential scan
    costs rows x ids, measured at 3 ms for 60 ids on a 2,700-row table); other lists become ``= ANY(%s)``."""
    sql = sql.replace("?", "%s")
    lookup = _LOOKUP.fullmatch(sql)
    if lookup and "{in}" not in lookup["rest"]:
        return f"SELECT {lookup['cols']} FROM unnest(%s::text[]) AS v(id) JOIN {lookup['table']} USING (id){lookup['rest']}"
    return sql.replace("{in}", "= ANY(%s)")


class _Db:
    """The driver connection (sqlite3 / psycopg) under a SQLAlchemy connection, in the same transaction.

    Statements are written with ``?`` and ``{in}`` (membership in a list of values, given last): on PostgreSQL one
    array parameter (see ``_pg``); on SQLite ``IN (?, …)`` padded to a power of two, so a handful of statement
    texts stay in sqlite3's statement cache."""

    __slots__ = ("raw", "pg", "cache")

    def __init__(self, raw: Any, pg: bool, cache: _AccountCache | None = None) -> None:
        self.raw = raw
        self.pg = pg
        self.cache = cache  # SQLite, Store.write_driver's kept connection only (see _AccountCache)

    @classmethod
    def of(cls, conn: Connection) -> _Db:
        """The driver connection under a SQLAlchemy connection (composite operations' transactions)."""
        return cls(conn.connection.driver_connection, conn.dialect.name == "postgresql")

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.raw.execute(_pg(sql) if self.pg else sql, params).fetchall()

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.pg:
            with self.raw.cursor() as cur:
                cur.executemany(_pg(sql), rows)
        else:
            self.raw.executemany(sql, rows)

    def bulk(self, sql: str, pg_sql: str, rows: Sequence[Sequence[Any]],
             sqlite_rows: Callable[[int], str] | None = None) -> None:
        """Many rows through few statements: on PostgreSQL ``pg_sql`` with one array per column (unnest), one
        statement for the batch instead of one per row; on SQLite ``sqlite_rows(n)``, a statement taking n rows
        at once, for up to ``_ROWS`` rows per statement (executemany of ``sql`` without it).

        Why several rows per statement on SQLite: sqlite3 lets go of the GIL around every step, so executemany
        over a group's ~1,000 transfer rows hands the GIL to the callers waiting for it ~1,000 times, and the
        committing thread waits to get it back each time (up to the 5 ms switch interval) while they run; it also
        pays sqlite3's per-execution overhead per row."""
        if not rows:
            return
        if self.pg:
            self.raw.execute(pg_sql, [list(column) for column in zip(*rows, strict=True)])
        elif sqlite_rows is None:
            self.raw.executemany(sql, rows)
        else:
            execute, lo, total = self.raw.execute, 0, len(rows)
            while lo < total:
                # Whole statements of _ROWS rows, then the rest in power-of-two pieces: a handful of statement
                # texts, all in sqlite3's statement cache.
                n = min(_ROWS, 1 << ((total - lo).bit_length() - 1))
                execute(sqlite_rows(n), [value for row in rows[lo : lo + n] for value in row])
                lo += n

    def where_in(self, sql: str, values: Sequence[Any], before: Sequence[Any] = ()) -> list[Any]:
        """Rows of ``sql`` for ``values``, sorted (so lock statements take rows in ascending id order; on SQLite
        in chunks, in order). ``before`` are the parameters of the ``?`` marks."""
        values = sorted(values)
        times = sql.count("{in}")
        if self.pg:
            return self.raw.execute(_pg(sql), [*before, *[values] * times]).fetchall()  # type: ignore[no-any-return]
        out: list[Any] = []
        for lo in range(0, len(values), _CHUNK):
            chunk = values[lo : lo + _CHUNK]
            size = 1 << (len(chunk) - 1).bit_length()
            padded = chunk + [chunk[-1]] * (size - len(chunk))  # duplicates in an IN list change nothing
            out += self.raw.execute(_sqlite_in(sql, size), [*before, *padded * times]).fetchall()
        return out

    def where_in_each(self, queries: list[tuple[str, Sequence[Any] | None, Sequence[Any]]]) -> list[list[Any]]:
        """``where_in(sql, values, before)`` for several statements, in order (empty values: no statement, no
        rows; None: a statement without ``{in}``, with parameters ``before``); on PostgreSQL in one round trip (a
        pipeline: the server still runs them one after the other, so a read after a lock statement happens under
        its locks)."""
        if not self.pg:
            return [self.all(sql, before) if values is None else self.where_in(sql, values, before) if values else []
                    for sql, values, before in queries]
        with self.raw.pipeline():
            cursors = [
                self.raw.execute(_pg(sql), list(before) if values is None
                                 else [*before, *[sorted(values)] * sql.count("{in}")])
                if values is None or values else None
                for sql, values, before in queries
            ]
            return [cur.fetchall() if cur is not None else [] for cur in cursors]

    def pipeline(self) -> AbstractContextManager[Any]:
        """Statements sent together (PostgreSQL: one round trip for all of them; their errors raise at the end)."""
        return self.raw.pipeline() if self.pg else nullcontext()


_SELECT_TRANSFERS = f"SELECT {_TCOLS} FROM ledger_transfers WHERE id {{in}}"
_SELECT_FAILURES = "SELECT id, code FROM ledger_failures WHERE id {in}"
_OVERDUE_ON = (
    "SELECT id, debit_account_id, credit_account_id FROM ledger_pending WHERE state = 'pending' AND "
    "expires_ms <= ? AND (debit_account_id {in} OR credit_account_id {in})"
)
# Cheap (one index probe) and nearly always empty: spares binding every account id to _OVERDUE_ON.
_ANY_OVERDUE = "SELECT 1 FROM ledger_pending WHERE state = 'pending' AND expires_ms <= ? LIMIT 1"
_OVERDUE_ANY = (
    "SELECT id, debit_account_id, credit_account_id FROM ledger_pending WHERE state = 'pending' AND "
    "expires_ms <= ? ORDER BY expires_ms, id LIMIT ?"
)
_LOCK_ACCOUNTS = (
    "SELECT id, ledger, flags, debits_pending, debits_posted, credits_pending, credits_posted, version, last_pos, "
    "{key} FROM ledger_accounts WHERE id {in} ORDER BY id"
)
# SQLite updates the accounts by rowid (one B-tree descent instead of two: the text key is a separate index);
# rowids cannot change inside the write transaction. PostgreSQL updates by id, all rows in one statement.
_LOCK_ACCOUNTS_SQLITE = _LOCK_ACCOUNTS.replace("{key}", "rowid")
_LOCK_ACCOUNTS_PG = _LOCK_ACCOUNTS.replace("{key}", "id") + " FOR UPDATE OF ledger_accounts"
_SELECT_PENDING = (
    "SELECT id, debit_account_id, credit_account_id, amount, expires_ms, state, resolved_by FROM ledger_pending "
    "WHERE id {in}"
)
_UPDATE_ACCOUNT_SQLITE = (
    "UPDATE ledger_accounts SET debits_pending = ?, debits_posted = ?, credits_pending = ?, credits_posted = ?, "
    "version = ?, last_pos = ? WHERE rowid = ?"
)

_INSERT_TRANSFER = (
    "INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, pending_id, timeout, ledger, "
    "code, flags, user_data, timestamp, event_seq, event_index, debit_prev, credit_prev) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@functools.lru_cache(maxsize=16)
def _insert_transfers_sqlite(n: int) -> str:
    """_INSERT_TRANSFER for n rows in one statement (see _Db.bulk). The account updates stay one statement per
    row: the same updates as one UPDATE … FROM (VALUES …) took 30% longer (SQLite 3.40, measured for issue 4)."""
    return _INSERT_TRANSFER.replace("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    "VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"] * n))


_UPDATE_ACCOUNTS_PG = (
    "UPDATE ledger_accounts AS a SET debits_pending = v.dp, debits_posted = v.dpo, credits_pending = v.cp, "
    "credits_posted = v.cpo, version = v.ver, last_pos = v.last FROM unnest(%s::bigint[], %s::bigint[], "
    "%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[]) AS v(dp, dpo, cp, cpo, ver, last, id) "
    "WHERE a.id = v.id"
)
_INSERT_TRANSFERS_PG = (
    "INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, pending_id, timeout, ledger, "
    "code, flags, user_data, timestamp, event_seq, event_index, debit_prev, credit_prev) SELECT * FROM unnest("
    "%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::bigint[], %s::int[], "
    "%s::int[], %s::text[], %s::bigint[], %s::bigint[], %s::int[], %s::bigint[], %s::bigint[])"
)
_INSERT_PENDING = (
    "INSERT INTO ledger_pending (id, debit_account_id, credit_account_id, amount, expires_ms, state, resolved_by, "
    "resolved_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_RESOLVE_PENDING = (
    "UPDATE ledger_pending SET state = ?, resolved_by = ?, resolved_ms = ? WHERE id = ? AND state = 'pending'"
)
_INSERT_FAILURE = "INSERT INTO ledger_failures (id, code, timestamp, event_seq) VALUES (?, ?, ?, ?)"
_INSERT_MARK = "INSERT INTO ledger_history_marks (account_id, pos, version) VALUES (?, ?, ?)"
# An account's transfers from position ? backwards while the position stays above ? (at most ? steps): the
# chain's pointer is debit_prev or credit_prev depending on the side the account is on.
_WALK = (
    "WITH RECURSIVE walk(pos, n) AS ("
    " SELECT CAST(? AS BIGINT), 0"
    " UNION ALL"
    " SELECT CASE WHEN t.debit_account_id = ? THEN t.debit_prev ELSE t.credit_prev END, walk.n + 1"
    f" FROM walk JOIN ledger_transfers t ON t.event_seq = (walk.pos >> {INDEX_BITS})"
    f" AND t.event_index = (walk.pos & {_INDEX_MASK})"
    " WHERE walk.pos > ? AND walk.n < ?)"
    f" SELECT {', '.join('t.' + c for c in _TCOLS.split(', '))} FROM walk JOIN ledger_transfers t"
    f" ON t.event_seq = (walk.pos >> {INDEX_BITS}) AND t.event_index = (walk.pos & {_INDEX_MASK})"
    " WHERE walk.pos > ?"
)


class _AccountCache:
    """SQLite: the committed rows of the accounts the ledger's batches touched, kept across transactions on
    ``Store.write_driver``'s kept connection, so a group does not read its ~2,000 random account rows again (a
    third of its SQLite time at 100,000 accounts, measured for issue 4).

    Trusted only while nothing else can have changed those rows: the entries belong to one connection, and are
    dropped when ``PRAGMA data_version``, read inside the write transaction (under the write lock), differs from
    the one the last publishing transaction saw. Any other connection's commit changes it, in this process
    (composite operations' transactions, ``create_accounts``) or another; this connection's own commits do not,
    so a batch marks the cache unpublished when it begins, and only after its COMMIT has returned does
    ``publish`` store its accounts as written and mark it published again, and only if no later batch has begun
    meanwhile. A batch that fails, or whose commit is not known to have happened, never publishes: the next one
    finds the cache unpublished and starts empty. At most ``MAX_ENTRIES`` accounts: past that the oldest quarter
    is dropped."""

    MAX_ENTRIES = 1 << 18

    __slots__ = ("lock", "conn", "version", "published", "generation", "rows", "metas")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conn: Any = None
        self.version: Any = None
        self.published = False
        self.generation = 0
        # Tuples of ints (and None), which the garbage collector stops tracking: 100,000 entries add nothing to
        # its full collections. account id -> (dp, dpo, cp, cpo, version, last_pos, rowid), its UPDATE's row;
        self.rows: dict[int, tuple[Any, ...]] = {}
        self.metas: dict[int, tuple[int, int]] = {}  # account id -> (ledger, flags), which never change

    def begin(self, raw: Any) -> tuple[int, dict[int, tuple[Any, ...]], dict[int, tuple[int, int]]]:
        """Inside a write transaction on ``raw``: this batch's generation and the entries it may use."""
        version = raw.execute("PRAGMA data_version").fetchone()[0]
        with self.lock:
            if not self.published or self.conn is not raw or self.version != version:
                self.rows, self.metas = {}, {}
                self.conn = raw
                self.version = version
            self.published = False
            self.generation += 1
            return self.generation, self.rows, self.metas

    def publish(self, generation: int, batch: _Batch) -> None:
        """After the batch's transaction committed: its accounts, as written, become the cache's."""
        with self.lock:
            if generation != self.generation:
                return  # a later batch began meanwhile (and found the cache unpublished: it starts empty)
            rows, metas = self.rows, self.metas
            bal, meta = batch.bal, batch.meta
            for a in batch.loaded:
                rows[a] = bal[a]
                metas[a] = meta[a]
            rows.update(zip(*batch.written))
            if len(rows) > self.MAX_ENTRIES:
                for a in list(itertools.islice(rows, len(rows) // 4)):
                    del rows[a]
                    del metas[a]
            self.published = True


# --------------------------------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------------------------------


class _Request:
    """One create_transfers call: its events, its journal event's type, actor and extra fields, its answer."""

    __slots__ = ("specs", "actor", "event_type", "extra", "results", "error", "done", "lead", "wake")

    def __init__(self, specs: list[TransferSpec], actor: str | None, event_type: str = "ledger.transfers",
                 extra: dict[str, Any] | None = None) -> None:
        self.specs = specs
        self.actor = actor
        self.event_type = event_type
        self.extra = extra
        self.results: list[Result] = []
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        # A follower's wake-up: a bare lock, created held; the follower blocks acquiring it again and whoever
        # answers it (or hands it the lead) releases it. A threading.Event is a Condition, a lock and a deque
        # of waiters in Python: ~2 µs to create, ~1 µs to set, four objects for the garbage collector to track
        # and promote while 64 callers wait through a commit.
        self.wake: Any = None

    def answer(self) -> list[Result]:
        if self.error is not None:
            raise self.error
        return self.results


class Ledger:
    """The ledger service (``node.ledger``).

    ``group_commit`` (default on): concurrent ``create_transfers`` calls share transactions (see the module
    docstring); ``group_max_events`` caps the transfers one group commits together; ``group_window_ms`` is how
    long a leader may wait for the callers of the previous group to come back (only after a group of several
    calls, and only while they keep arriving, each within ``group_gap_ms`` of the previous one)."""

    def __init__(self, store: Store, journal: Journal, clock: Callable[[], int], *, group_commit: bool = True,
                 group_max_events: int = GROUP_MAX_EVENTS, group_window_ms: float = GROUP_WINDOW_MS,
                 group_gap_ms: float = GROUP_GAP_MS) -> None:
        self.store = store
        self.journal = journal
        self.clock = clock
        self.group_commit = group_commit
        self.group_max_events = group_max_events
        self.group_window_ms = group_window_ms
        self.group_gap_ms = group_gap_ms
        self._queue: deque[_Request] = deque()
        self._queue_lock = threading.Lock()
        self._arrived = threading.Condition(self._queue_lock)
        self._leading = False
        self._lingering = False
        self._last_group = 1
        self._overdue_seen = False  # PostgreSQL: probe for overdue reservations before the locks (see _Batch)
        self._accounts = _AccountCache() if store.backend == "sqlite" else None
        # The hot path talks to the driver directly, so its integrity errors arrive unwrapped by SQLAlchemy.
        self._conflicts: tuple[type[BaseException], ...] = (
            IntegrityError, _Retry, store.engine.dialect.dbapi.IntegrityError)

    # --- accounts ----------------------------------------------------------------------------------------------

    def create_accounts(self, specs: Sequence[AccountSpec], *, actor: str | None = None) -> list[Result]:
        """Create ledger accounts; one result per spec. Journals one ``ledger.accounts`` event per call."""
        specs = [_check_account_spec(s) for s in specs]
        if not specs:
            return []
        return self._retrying(lambda conn: self._create_accounts(conn, specs, actor))

    def _create_accounts(self, conn: Connection, specs: list[AccountSpec], actor: str | None) -> list[Result]:
        db = _Db.of(conn)
        existing = {
            int(r[0], 16): AccountSpec(int(r[0], 16), int(r[1]), int(r[2]), int(r[3]), r[4], r[5])
            for r in db.where_in("SELECT id, ledger, code, flags, owner_id, user_data FROM ledger_accounts WHERE id {in}",
                                 list({hex_id(s.id) for s in specs}))
        }
        owners_wanted = {s.owner for s in specs if s.owner is not None}
        owners = set(conn.execute(select(node_accounts.c.id).where(node_accounts.c.id.in_(owners_wanted))).scalars())
        now = self.clock()
        results: list[Result] = [_OK] * len(specs)
        created: dict[int, AccountSpec] = {}
        for start, end, is_open in _chains([s.flags for s in specs]):
            if is_open:
                results[start:end] = [Result.linked_event_failed] * (end - start - 1) + [Result.linked_event_chain_open]
                continue
            made: list[int] = []
            for i in range(start, end):
                code = self._account_result(specs[i], existing, created, owners)
                if code is _OK:
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
        db.many(
            "INSERT INTO ledger_accounts (id, ledger, code, flags, owner_id, user_data, debits_pending, debits_posted, "
            "credits_pending, credits_posted, timestamp, created_seq, version, last_pos) "
            "VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0, ?, ?, 0, NULL)",
            [(hex_id(s.id), s.ledger, s.code, s.flags, s.owner, s.user_data, now, event.seq) for s in created.values()],
        )
        return results

    @staticmethod
    def _account_result(
        s: AccountSpec, existing: dict[int, AccountSpec], created: dict[int, AccountSpec], owners: set[str]
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
        return _OK

    # --- transfers ---------------------------------------------------------------------------------------------

    def create_transfers(self, specs: Sequence[TransferSpec], *, actor: str | None = None) -> list[Result]:
        """Apply a batch of transfers atomically per chain; one result per spec (``ok`` or ``exists`` = done).

        Returns only once the batch is durably committed. Concurrent calls may share one transaction (group
        commit), each keeping its own journal event, results and chains. At most ``MAX_BATCH`` specs a call."""
        checked = _check_transfer_specs(specs)
        if not checked:
            return []
        request = _Request(checked, actor)
        if self.group_commit:
            return self._submit(request)
        return self._driver_batch([request])[0]

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
        checked = _check_transfer_specs(specs)
        if not checked:
            return []
        return _Batch(self, _Db.of(conn), [_Request(checked, actor, event_type, extra)]).run()[0]

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
        re-runnable) when PostgreSQL reports a concurrent insert of the same key, a deadlock or a serialization
        failure, or the batch must re-lock."""
        return self._retrying(body)

    def lock_accounts_in(self, conn: Connection, ids: Iterable[int]) -> None:
        """PostgreSQL: lock the existing accounts among ``ids`` (ascending, FOR UPDATE) before anything in the
        transaction appends to the journal, keeping the one lock order accounts → journal head when a
        composite operation must journal (e.g. open new accounts) before its transfers run. SQLite: nothing to
        do (one writer)."""
        if conn.dialect.name != "postgresql":
            return
        wanted = sorted({hex_id(i) for i in ids})
        if wanted:
            conn.execute(select(ledger_accounts.c.id).where(ledger_accounts.c.id.in_(wanted))
                         .order_by(ledger_accounts.c.id).with_for_update()).all()

    def expire_pending(self, *, limit: int = 10_000, actor: str | None = None) -> list[int]:
        """Release every pending transfer whose timeout has passed (up to ``limit``); returns their ids. One
        transaction, one ``ledger.expired`` event (none when nothing expired)."""
        return self._driver_batch([], sweep_limit=limit, actor=actor)

    def _retrying(self, body: Callable[[Connection], Any]) -> Any:
        return self._retry(self.store.write, body)

    def _driver_batch(self, requests: list[_Request], *, sweep_limit: int | None = None,
                      actor: str | None = None) -> Any:
        """One ``_Batch`` of the ledger's own (the calls of a group, or a sweep when ``sweep_limit`` is given) in
        a transaction of its own, retried like ``_retrying``; on the driver's connection
        (``Store.write_driver``), without SQLAlchemy's connection and transaction bookkeeping. A retry keeps the
        first attempt's clock reading. Once committed, the batch's accounts go to the account cache (SQLite)."""
        pg = self.store.backend == "postgresql"
        cache = self._accounts
        first: list[int] = []
        made: list[_Batch] = []

        def body(raw: Any) -> Any:
            batch = _Batch(self, _Db(raw, pg, cache), requests, now=first, sweep_limit=sweep_limit or 0, actor=actor)
            made.append(batch)
            return batch.run() if sweep_limit is None else batch.run_sweep()

        out = self._retry(self.store.write_driver, body)
        batch = made[-1]
        if cache is not None and batch.cache_generation is not None:
            cache.publish(batch.cache_generation, batch)
        return out

    def _retry(self, transaction: Callable[[], AbstractContextManager[Any]], body: Callable[[Any], Any]) -> Any:
        for attempt in range(_RETRIES):
            try:
                with transaction() as conn:
                    return body(conn)
            except self._conflicts:
                if attempt == _RETRIES - 1:
                    raise
            except StorageError as exc:
                # A PostgreSQL deadlock victim or serialization failure is rolled back whole: run it again.
                # (Composite operations lock in one order, but a transaction that journals before it locks
                # accounts can still meet one that locks accounts before journaling.) Both kinds of transaction
                # translate the driver's OperationalError, wrapping it.
                if _transient(exc) and attempt < _RETRIES - 1:
                    continue
                raise
        raise AssertionError("unreachable")

    # --- group commit ------------------------------------------------------------------------------------------

    def _submit(self, request: _Request) -> list[Result]:
        """Queue the call; the first caller with nobody committing leads: it commits the queue's head (up to
        ``group_max_events`` transfers) in one transaction, answers those callers and hands the lead to the next
        waiting caller, if any. Followers sleep until answered or handed the lead."""
        with self._queue_lock:
            self._queue.append(request)
            if self._leading:
                request.wake = wake = _thread.allocate_lock()
                wake.acquire()
                if self._lingering:
                    self._arrived.notify()
            else:
                self._leading = True
                request.lead = True
        if not request.lead:
            request.wake.acquire()
            if request.done:
                return request.answer()
        self._lead()
        return request.answer()

    def _lead(self) -> None:
        group: list[_Request] = []
        try:
            with self._queue_lock:
                # Callers that loop come back right after their answer: give them up to the window to queue
                # again, so groups stay as large as the last one instead of splitting in halves, but only while
                # they keep coming (each within the gap of the previous one). Callers that are not looping (paced
                # load below saturation) arrive too far apart, so the leader stops after one gap: waiting out the
                # window after every group cost every caller its 2 ms (p50 at 80% load: 33 ms, 15 ms without).
                if self._last_group > 1 and self.group_window_ms > 0:
                    deadline = time.monotonic() + self.group_window_ms / 1000
                    while len(self._queue) < self._last_group and (left := deadline - time.monotonic()) > 0:
                        self._lingering = True
                        if not self._arrived.wait(min(left, self.group_gap_ms / 1000)):
                            break
                    self._lingering = False
                # The leader is always the queue's head: it arrived first, or was handed the lead as the head.
                events = 0
                while self._queue and (not group or events + len(self._queue[0].specs) <= self.group_max_events):
                    request = self._queue.popleft()
                    events += len(request.specs)
                    group.append(request)
                self._last_group = len(group)
            self._commit_group(group)
        finally:
            with self._queue_lock:
                for request in group:
                    request.done = True
                    if not request.lead:
                        request.wake.release()
                if self._queue:
                    head = self._queue[0]
                    head.lead = True
                    head.wake.release()
                else:
                    self._leading = False

    def _commit_group(self, group: list[_Request]) -> None:
        try:
            results = self._driver_batch(group)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            # Run the calls one by one, so that only the one that caused the error receives it.
            for request in group:
                try:
                    request.results = self._driver_batch([request])[0]
                except Exception as one:  # noqa: BLE001  (handed to its caller, who re-raises it)
                    request.error = one
            return
        except BaseException as exc:
            for request in group:
                request.error = exc
            raise
        for request, answer in zip(group, results, strict=True):
            request.results = answer

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
        """The account's transfers, oldest first, after transfer ``after`` (an id) if given.

        Walks the account's backward chain from the nearest history mark past the page (see the module
        docstring): at most ``limit + 2 × HISTORY_MARK_EVERY`` rows read, however long the history."""
        acct = hex_id(parse_id(account_id, "account"))
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be an integer in 1..10000", field="limit")
        with self.store.read() as conn:
            db = _Db.of(conn)
            row = db.all("SELECT last_pos FROM ledger_accounts WHERE id = ?", (acct,))
            if not row:
                raise NotFound(f"no ledger account {acct}", field="account")
            head = row[0][0]
            cursor = -1
            if after is not None:
                found = db.all("SELECT event_seq, event_index FROM ledger_transfers WHERE id = ?",
                               (hex_id(parse_id(after, "after")),))
                if not found:
                    raise NotFound("the 'after' transfer does not exist", field="after")
                cursor = position(int(found[0][0]), int(found[0][1]))
            if head is None or int(head) <= cursor:
                return []
            # Marks after the cursor are HISTORY_MARK_EVERY transfers apart, and the first one is less than that
            # past the cursor: the need-th one has at least `limit` transfers between it and the cursor.
            need = -(-(limit - 1) // HISTORY_MARK_EVERY) + 1
            marks = db.all("SELECT pos FROM ledger_history_marks WHERE account_id = ? AND pos > ? ORDER BY pos LIMIT ?",
                           (acct, cursor, need))
            start = int(marks[-1][0]) if len(marks) == need else int(head)
            steps = limit + 2 * HISTORY_MARK_EVERY  # a bound the walk never reaches; a guard only
            rows = db.all(_WALK, (start, acct, cursor, steps, cursor))
        out = sorted((_transfer_from_tuple(r) for r in rows), key=lambda t: (t.event_seq, t.event_index))
        return out[:limit]


# --------------------------------------------------------------------------------------------------------------
# one transaction: the calls of a group, or a sweep
# --------------------------------------------------------------------------------------------------------------

# An account in the batch: (debits_pending, debits_posted, credits_pending, credits_posted, version, last_pos, key).
_DP, _DPO, _CP, _CPO, _VER, _LAST = range(6)


class _Batch:
    """Loads what the calls need under the account locks, applies them in memory in order, writes once."""

    def __init__(
        self, ledger: Ledger, db: _Db, requests: list[_Request], *, now: list[int] | None = None,
        sweep_limit: int = 0, actor: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.db = db
        self.requests = requests
        self.sweep_limit = sweep_limit
        self.actor = actor  # of a sweep's event
        # The clock is read under the write lock, once: a retry of the transaction keeps its first reading (``now``
        # holds it across attempts), so a retry changes no timestamp.
        if now is None:
            now = []
        if not now:
            now.append(ledger.clock())
        self.now = now[0]
        # Working state; every change inside a chain goes through _set / _add so a failed chain can be undone.
        self.meta: dict[int, tuple[int, int]] = {}  # account id -> (ledger, flags)
        # account id -> (debits_pending, debits_posted, credits_pending, credits_posted, version, last_pos, key):
        # the parameters of its UPDATE, in order (key: what finds its row, the rowid on SQLite, the id on
        # PostgreSQL); version and last_pos are advanced by _write.
        # Tuples, replaced on every change, never lists changed in place: a cached row is used as it is (no copy
        # per account and group), goes back to the cache as it is, and tuples of ints stop being tracked by the
        # garbage collector at their first collection, so a group's ~2,000 accounts are not promoted to the
        # oldest generation while the group commits, which is what makes full collections (~60 ms pauses for
        # every caller) come round.
        self.bal: dict[int, tuple[Any, ...]] = {}
        self.hx: dict[int, str] = {0: "0" * 32}  # id -> its stored form, each formatted once
        self.transfers: dict[int, Any] = {}  # existing (db) and new: Transfer / _Tr
        self.pending: dict[int, tuple[str, int | None]] = {}  # pending id -> (state, resolved_by)
        self.pending_info: dict[int, tuple[int, int, int, int | None]] = {}  # id -> (dr, cr, amount, expires_ms)
        self.failed: dict[int, Result] = {}
        self.new_failures: dict[int, tuple[Result, int]] = {}  # id -> (code, index of its call in the group)
        self.new: list[int] = []  # transfer ids created, in order, all calls together
        self.bounds: list[tuple[int, int]] = []  # per call: its slice of self.new
        self.expired: list[int] = []
        self.undo: list[tuple[dict[Any, Any], Any, Any]] | None = None
        self.db_pending_states: dict[int, str] = {}
        self.dirty_accounts: set[int] = set()
        self.loaded: list[int] = []  # accounts read from the database (not from the account cache)
        self.cache_generation: int | None = None  # set when the batch used the account cache (see _AccountCache)
        self.written: tuple[list[int], list[tuple[Any, ...]]] = ([], [])  # the accounts updated, their UPDATE rows

    def _set(self, d: dict[Any, Any], key: Any, value: Any) -> None:
        if self.undo is not None:
            self.undo.append((d, key, d.get(key, _MISSING)))
        d[key] = value

    def _add(self, account: int, field: int, delta: int) -> None:
        bal = self.bal
        b = bal[account]
        if self.undo is not None:
            self.undo.append((bal, account, b))
        bal[account] = (*b[:field], b[field] + delta, *b[field + 1 :])
        self.dirty_accounts.add(account)

    # --- load under locks --------------------------------------------------------------------------------------

    def _load(self) -> None:
        db, now, hx = self.db, self.now, self.hx
        spec_ids: set[int] = set()
        pending_ids: set[int] = set()
        want: set[int] = set()
        for request in self.requests:
            for s in request.specs:
                spec_ids.add(s.id)
                if s.flags & (_POST | _VOID) and s.pending_id:
                    pending_ids.add(s.pending_id)
                want.add(s.debit_account_id)
                want.add(s.credit_account_id)
        want.discard(0)
        # Every id is formatted once: the statements, the rows and the journal event share the strings.
        for i in spec_ids | pending_ids | want:
            hx[i] = format(i, "032x")
        spec_ids.discard(0)
        # Phase 1, no locks: which accounts may change. Transfers are immutable, so reading them early is safe.
        if pending_ids:
            for r in db.where_in(_SELECT_TRANSFERS, [hx[i] for i in pending_ids]):
                tr = _transfer_from_tuple(r)
                self.transfers[tr.id] = tr
                for a, text in ((tr.debit_account_id, r[1]), (tr.credit_account_id, r[2])):
                    want.add(a)
                    hx[a] = text
        # Is any reservation overdue at all? SQLite: a local index probe, here. PostgreSQL, unless one was seen
        # lately: the probe rides in the lock round trip, after the locks (a pending transfer on a locked account
        # cannot appear meanwhile), and only a hit costs more (see _late_expiry).
        probe_late = db.pg and not self.sweep_limit and bool(want) and not self.ledger._overdue_seen
        if self.sweep_limit:
            candidates = db.all(_OVERDUE_ANY, (now, self.sweep_limit))
        elif want and not probe_late and db.all(_ANY_OVERDUE, (now,)):
            candidates = db.where_in(_OVERDUE_ON, [hx[a] for a in want], before=(now,))
        else:
            candidates = []
            if db.pg and not probe_late:
                self.ledger._overdue_seen = False
        for r in candidates:
            for text in (r[1], r[2]):
                a = int(text, 16)
                want.add(a)
                hx[a] = text
        # Phase 2: lock in ascending id order (SQLite: the writer lock is already held, no clause needed).
        # Phase 3, under the locks: fresh reads of everything that depends on state. (PostgreSQL: sent together,
        # run in this order.)
        lookup = [hx[i] for i in spec_ids if i not in self.transfers]
        meta, bal = self.meta, self.bal
        cache = db.cache
        if cache is None:
            read = want
        else:
            # SQLite's kept writer connection: the accounts whose committed rows are cached are not read again.
            self.cache_generation, cached, metas = cache.begin(db.raw)
            read = []
            for a in want:
                e = cached.get(a)
                if e is None:
                    read.append(a)
                else:
                    bal[a] = e
                    meta[a] = metas[a]
        locked, found, failures, pending_rows, overdue = db.where_in_each([
            (_LOCK_ACCOUNTS_PG if db.pg else _LOCK_ACCOUNTS_SQLITE, [hx[a] for a in read], ()),
            (_SELECT_TRANSFERS, lookup, ()),
            (_SELECT_FAILURES, lookup, ()),
            (_SELECT_PENDING, list({hx[i] for i in pending_ids} | {r[0] for r in candidates}), ()),
            (_ANY_OVERDUE, None if probe_late else [], (now,)),
        ])
        loaded = self.loaded
        for r in locked:
            a = int(r[0], 16)
            meta[a] = (r[1], r[2])
            bal[a] = tuple(r[3:10])
            loaded.append(a)
        for r in found:
            tr = _transfer_from_tuple(r)
            self.transfers[tr.id] = tr
        for r in failures:
            self.failed[int(r[0], 16)] = Result(r[1])
        self._take_pending(pending_rows)
        if overdue:
            self._late_expiry([hx[a] for a in want])
        # Release every overdue reservation we hold the locks for, before the calls run.
        for pid in sorted(self.pending):
            state, _ = self.pending[pid]
            expires = self.pending_info[pid][3]
            if state == "pending" and expires is not None and expires <= now:
                self._expire(pid)

    def _take_pending(self, rows: list[Any]) -> None:
        bal, hx = self.bal, self.hx
        for r in rows:
            pid = int(r[0], 16)
            dr, cr = int(r[1], 16), int(r[2], 16)
            if dr not in bal or cr not in bal:
                raise _Retry()  # created concurrently between phase 1 and the locks: lock its accounts too
            hx[pid] = r[0]
            self.pending[pid] = (r[5], int(r[6], 16) if r[6] else None)
            self.db_pending_states[pid] = r[5]
            self.pending_info[pid] = (dr, cr, r[3], r[4])

    def _late_expiry(self, locked: list[str]) -> None:
        """The PostgreSQL probe found an overdue reservation somewhere: load the ones on our accounts (under our
        locks). One that also needs an account we did not lock sends the batch back to the start, probing before
        the locks from then on (``Ledger._overdue_seen``) so that it locks that account too, in order."""
        late = self.db.where_in(_OVERDUE_ON, locked, before=(self.now,))
        if any(int(r[1], 16) not in self.bal or int(r[2], 16) not in self.bal for r in late):
            self.ledger._overdue_seen = True
            raise _Retry()
        self._take_pending(self.db.where_in(_SELECT_PENDING, [r[0] for r in late if int(r[0], 16) not in self.pending]))

    def _expire(self, pid: int) -> None:
        dr, cr, amount, _ = self.pending_info[pid]
        self._add(dr, _DP, -amount)
        self._add(cr, _CP, -amount)
        self._set(self.pending, pid, ("expired", None))
        self.expired.append(pid)

    # --- run ---------------------------------------------------------------------------------------------------

    def run(self) -> list[list[Result]]:
        """The results of each call, in order."""
        self._load()
        answers = [self._run_call(k, request.specs) for k, request in enumerate(self.requests)]
        self._write(answers)
        return answers

    def _run_call(self, call: int, specs: list[TransferSpec]) -> list[Result]:
        first_new = len(self.new)
        results: list[Result] = [_OK] * len(specs)
        apply = self._apply
        for start, end, is_open in _chains([s.flags for s in specs]):
            if is_open:
                results[start:end] = [Result.linked_event_failed] * (end - start - 1) + [Result.linked_event_chain_open]
                continue
            self.undo = [] if end - start > 1 else None
            new_mark = len(self.new)
            for i in range(start, end):
                code = apply(specs[i])
                results[i] = code
                if code is not _OK and code is not Result.exists:
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
                        self.new_failures[specs[i].id] = (code, call)
                    break
            self.undo = None
        self.bounds.append((first_new, len(self.new)))
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
        bal = self.bal
        dr, cr = bal[s.debit_account_id], bal[s.credit_account_id]
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
        pending = s.flags & _PENDING
        if self.undo is None and not pending:  # the common case, inlined: _add twice and _record
            bal[s.debit_account_id] = (dr[0], dr[1] + amount, dr[2], dr[3], dr[4], dr[5], dr[6])  # _DPO
            bal[s.credit_account_id] = (cr[0], cr[1], cr[2], cr[3] + amount, cr[4], cr[5], cr[6])  # _CPO
            dirty = self.dirty_accounts
            dirty.add(s.debit_account_id)
            dirty.add(s.credit_account_id)
            self.transfers[s.id] = _tuple_new(_Tr, (
                s.id, s.debit_account_id, s.credit_account_id, amount, s.pending_id, s.timeout, s.ledger, s.code,
                s.flags, s.user_data, self.now))
            self.new.append(s.id)
            return _OK
        self._add(s.debit_account_id, _DP if pending else _DPO, amount)
        self._add(s.credit_account_id, _CP if pending else _CPO, amount)
        self._record(s, s.debit_account_id, s.credit_account_id, amount, s.ledger, s.code)
        if pending:
            expires = self.now + s.timeout * 1000 if s.timeout else None
            self._set(self.pending_info, s.id, (s.debit_account_id, s.credit_account_id, amount, expires))
            self._set(self.pending, s.id, ("pending", None))
        return _OK

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
        return _OK

    def _record(self, s: TransferSpec, dr: int, cr: int, amount: int, ledger: int, code: int) -> None:
        tr = _tuple_new(_Tr, (s.id, dr, cr, amount, s.pending_id, s.timeout, ledger, code, s.flags, s.user_data, self.now))
        self._set(self.transfers, s.id, tr)
        self.new.append(s.id)

    # --- write -------------------------------------------------------------------------------------------------

    def _items_text(self, specs: list[TransferSpec], results: list[Result]) -> str:
        """The journal's record of one call: every event with its result (created ones as applied), as the
        canonical JSON text of the list (see ``_event_data_text``)."""
        return "[" + ",".join(_item_texts(specs, results, self.transfers, self.hx)) + "]"

    def _write(self, answers: list[list[Result]]) -> None:
        db, now, hx = self.db, self.now, self.hx
        now_text = canonical_text(now, "$.data.timestamp")  # the clock is injectable: one check per batch
        expired = "[" + ",".join(f'"{hx[i]}"' for i in self.expired) + "]"
        if self.requests:
            entries = [
                (request.event_type,
                 _event_data_text(request.extra, now_text, expired if k == 0 else "[]",
                                  self._items_text(request.specs, results)),
                 request.actor)
                for k, (request, results) in enumerate(zip(self.requests, answers, strict=True))
            ]
        else:
            entries = [("ledger.expired", _event_data_text(None, now_text, expired, None), self.actor)]
        seqs = self.ledger.journal.append_encoded(db.raw, entries)

        # New transfers, each linked to the previous transfer of both its accounts.
        bal, transfers, new = self.bal, self.transfers, self.new
        rows, marks = [], []
        for (lo, hi), seq in zip(self.bounds, seqs):
            base = seq << INDEX_BITS
            for index in range(hi - lo):
                tr = transfers[new[lo + index]]
                pos = base | index
                dr, cr = tr.debit_account_id, tr.credit_account_id
                d, c = bal[dr], bal[cr]
                d_prev, c_prev = d[_LAST], c[_LAST]
                d_ver, c_ver = d[_VER] + 1, c[_VER] + 1
                bal[dr] = (d[0], d[1], d[2], d[3], d_ver, pos, d[6])  # _VER, _LAST
                bal[cr] = (c[0], c[1], c[2], c[3], c_ver, pos, c[6])
                if not d_ver % HISTORY_MARK_EVERY:
                    marks.append((hx[dr], pos, d_ver))
                if not c_ver % HISTORY_MARK_EVERY:
                    marks.append((hx[cr], pos, c_ver))
                rows.append((
                    hx[tr.id], hx[dr], hx[cr], tr.amount, hx[tr.pending_id] if tr.pending_id else None,
                    tr.timeout, tr.ledger, tr.code, tr.flags, tr.user_data, tr.timestamp, seq, index, d_prev, c_prev,
                ))
        accounts = sorted(self.dirty_accounts)
        updates = [bal[a] for a in accounts]
        self.written = (accounts, updates)

        new_pending, changed = [], []
        for pid, (state, by) in self.pending.items():
            old = self.db_pending_states.get(pid)
            if old is None:
                dr, cr, amount, expires = self.pending_info[pid]
                resolved = None if state == "pending" else now
                new_pending.append((hx[pid], hx[dr], hx[cr], amount, expires, state, hx[by] if by else None, resolved))
            elif old != state:
                changed.append((state, hx[by] if by else None, now, hx[pid]))
        failures = [(hx[i], code.value, now, seqs[call]) for i, (code, call) in self.new_failures.items()]
        with db.pipeline():
            db.bulk(_UPDATE_ACCOUNT_SQLITE, _UPDATE_ACCOUNTS_PG, updates)
            db.bulk(_INSERT_TRANSFER, _INSERT_TRANSFERS_PG, rows, _insert_transfers_sqlite)
            db.many(_INSERT_MARK, marks)
            db.many(_INSERT_PENDING, new_pending)
            db.many(_RESOLVE_PENDING, changed)
            db.many(_INSERT_FAILURE, failures)


# --------------------------------------------------------------------------------------------------------------
# the journal event's data, encoded directly
# --------------------------------------------------------------------------------------------------------------
# The ledger writes its events' canonical JSON itself (``Journal.append_encoded``): building a dict per transfer,
# re-checking every value and sorting its keys cost ~5 µs a transfer, a tenth of a group commit's time. Every value
# here was validated by ``_check_transfer_spec`` (plain ints in range, strings) or comes from the database; the
# one string that may need escaping, user_data, goes through the canonical string encoder.
# tests/test_fast_paths.py::test_ledger_event_text_is_canonical checks these texts against the dicts they replace
# and a reference encoder on random calls.


def _item_texts(specs: list[TransferSpec], results: list[Result], transfers: dict[int, Any],
                hx: dict[int, str]) -> Iterator[str]:
    """One canonical JSON object per event: the keys of ``{"id", "result", "debit_account_id",
    "credit_account_id", "amount", "pending_id", "timeout", "ledger", "code", "flags", "user_data"}`` in code-point
    order; an amount above ``AMOUNT_MAX`` is journaled as a decimal string."""
    text, string = _TEXT, string_text
    for i, (s, r) in enumerate(zip(specs, results, strict=True)):
        src = transfers[s.id] if r is _OK else s
        amount = src.amount
        if amount is None:
            amount_text = "null"
        elif 0 <= amount <= AMOUNT_MAX:
            amount_text = str(amount)
        elif amount > AMOUNT_MAX:
            amount_text = f'"{amount}"'
        else:  # negative (a failed event): canonical_text refuses one below -2^63, naming it
            amount_text = canonical_text(amount, f"$.data.transfers[{i}].amount")
        pending = f'"{hx.get(s.pending_id) or hex_id(s.pending_id)}"' if s.pending_id else "null"
        user_data = "null" if s.user_data is None else string(s.user_data)
        dr, cr = src.debit_account_id, src.credit_account_id
        yield (
            f'{{"amount":{amount_text},"code":{src.code},"credit_account_id":"{hx.get(cr) or hex_id(cr)}",'
            f'"debit_account_id":"{hx.get(dr) or hex_id(dr)}","flags":{s.flags},"id":"{hx.get(s.id) or hex_id(s.id)}",'
            f'"ledger":{src.ledger},"pending_id":{pending},"result":"{text[r]}","timeout":{s.timeout},'
            f'"user_data":{user_data}}}'
        )


def _event_data_text(extra: dict[str, Any] | None, now: str, expired: str, transfers: str | None) -> str:
    """The canonical JSON text of ``{**extra, "timestamp": now, "expired": [...], "transfers": [...]}`` (no
    "transfers" for a sweep) from the texts of its lists; ``extra``, a composite operation's own fields, is checked
    and encoded by ``canonical_text``."""
    if not extra:
        if transfers is None:
            return f'{{"expired":{expired},"timestamp":{now}}}'
        return f'{{"expired":{expired},"timestamp":{now},"transfers":{transfers}}}'
    parts: dict[str, str] = {}
    for key, value in extra.items():
        if type(key) is not str:
            raise InvalidInput(f"$.data: object keys must be strings, got {type(key).__name__}", field="$.data")
        parts[key] = canonical_text(value, f"$.data.{key}")
    parts["expired"] = expired
    parts["timestamp"] = now
    if transfers is not None:
        parts["transfers"] = transfers
    return "{" + ",".join(f"{string_text(key)}:{parts[key]}" for key in sorted(parts)) + "}"


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
    if type(s) is TransferSpec:
        # Fast path: a spec whose fields are already plain, in-range values is used as it is.
        i, d, c, p, a, u = s.id, s.debit_account_id, s.credit_account_id, s.pending_id, s.amount, s.user_data
        t, lg, cd, f = s.timeout, s.ledger, s.code, s.flags
        if (type(i) is int and type(d) is int and type(c) is int and type(p) is int and type(t) is int
                and type(lg) is int and type(cd) is int and type(f) is int and (a is None or type(a) is int)
                and (u is None or (type(u) is str and len(u) <= 1024))
                and 0 <= i <= ID_MAX and 0 <= d <= ID_MAX and 0 <= c <= ID_MAX and 0 <= p <= ID_MAX
                and 0 <= t <= TIMEOUT_MAX and 0 <= lg <= LEDGER_MAX and 0 <= cd <= CODE_MAX and 0 <= f <= 0xFFFF):
            return s
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


def _check_transfer_specs(specs: Sequence[TransferSpec]) -> list[TransferSpec]:
    if not isinstance(specs, (list, tuple)):
        specs = list(specs)
    if len(specs) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH:,} transfers per call, got {len(specs):,}; split the batch",
                           field="transfers")
    return [_check_transfer_spec(s) for s in specs]
