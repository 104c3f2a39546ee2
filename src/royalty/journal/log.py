"""The Journal: the append-only Merkle log of every state change (writer side).

Order of work, as in Tessera: sequence (contiguous seq numbers under the head-row lock, never reused) →
integrate (leaf hash + newly completed perfect-subtree nodes, in the same transaction as the state change the
event records) → publish (sign a checkpoint over the current root).

Callers append inside their own write transaction, so a state change and its event commit together or not
at all::

    with node.store.write() as conn:
        conn.execute(insert(accounts).values(...))
        node.journal.append(conn, "account.created", {"id": ..., "name": ...}, actor=...)
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, TextClause, insert, select, text

from ..errors import InvalidInput, NotFound, VerificationFailed
from ..store import Store
from ..store.engine import insert_rows
from ..store.schema import journal_checkpoints, journal_events, journal_head
from . import merkle
from .audit import JournalReport, VerifierKey, open_note, verify_journal
from .canonical import canonical_json
from .checkpoint import Checkpoint, Signer
from .verify import verify_consistency

EVENT_FORMAT = 1
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


@dataclass(frozen=True)
class Event:
    """A journaled event. ``body`` is the canonical JSON that was hashed; the other fields are decoded from it."""

    seq: int
    type: str
    ts_ms: int
    actor: str | None
    data: dict[str, Any]
    body: bytes
    leaf_hash: bytes

    @classmethod
    def from_row(cls, seq: int, body: bytes, leaf_hash: bytes) -> Event:
        doc = json.loads(body)
        return cls(seq, doc["type"], doc["ts"], doc["actor"], doc["data"], bytes(body), bytes(leaf_hash))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "ts": self.ts_ms,
            "actor": self.actor,
            "data": self.data,
            "leaf_hash": self.leaf_hash.hex(),
        }


@dataclass(frozen=True)
class InclusionProof:
    """Everything an outsider needs to check that an event is in the log: see ``audit.verify_proof_bundle``."""

    event: Event
    size: int
    hashes: list[bytes]
    checkpoint: Checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "royalty.journal.inclusion_proof",
            "seq": self.event.seq,
            "event": self.event.body.decode("utf-8"),
            "leaf_hash": self.event.leaf_hash.hex(),
            "tree_size": self.size,
            "proof": [h.hex() for h in self.hashes],
            "root": self.checkpoint.root.hex(),
            "checkpoint": self.checkpoint.note,
        }


class Journal:
    def __init__(self, store: Store, signer: Signer, origin: str, clock: Callable[[], int]) -> None:
        self.store = store
        self.signer = signer
        self.origin = origin
        self.clock = clock
        # The right border of the tree as of the last append this process made. Only trusted when the head row
        # still shows the same size and root (another process, or a rolled-back transaction, may have moved it).
        self._border: merkle.CompactRange | None = None

    # --- append ------------------------------------------------------------------------------------------------

    def append(self, conn: Connection, type: str, data: dict[str, Any], *, actor: str | None = None) -> Event:
        """Append one event inside the caller's write transaction."""
        return self.append_many(conn, [(type, data, actor)])[0]

    def append_many(
        self, conn: Connection, items: Sequence[tuple[str, dict[str, Any], str | None]]
    ) -> list[Event]:
        """Append events in order inside the caller's write transaction; one round of inserts for the batch."""
        if not items:
            return []
        size, root = self._lock_head(conn)
        border = self._border_for(conn, size, root)
        ts = self.clock()
        events: list[Event] = []
        event_rows: list[tuple[int, str, bytes, bytes]] = []
        node_rows: list[tuple[int, int, bytes]] = []
        for offset, (type_, data, actor) in enumerate(items):
            if not _EVENT_TYPE.fullmatch(type_):
                raise InvalidInput(f"bad event type {type_!r}: use dotted lowercase like 'account.created'", field="type")
            if not isinstance(data, dict):
                raise InvalidInput("event data must be an object", field="data")
            seq = size + offset
            body = canonical_json({"v": EVENT_FORMAT, "seq": seq, "type": type_, "ts": ts, "actor": actor, "data": data})
            leaf = merkle.leaf_hash(body)
            node_rows.extend(border.append(leaf))
            event_rows.append((seq, type_, body, leaf))
            events.append(Event(seq, type_, ts, actor, data, body, leaf))
        insert_rows(conn, "journal_events", ("seq", "type", "body", "leaf_hash"), event_rows)
        if node_rows:
            insert_rows(conn, "journal_nodes", ("level", "idx", "hash"), node_rows)
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(f"UPDATE journal_head SET size = {mark}, root = {mark} WHERE id = 1", (border.size, border.root()))
        self._border = border
        return events

    def _lock_head(self, conn: Connection) -> tuple[int, bytes]:
        # Plain SQL: building the SQLAlchemy expressions here and for the head UPDATE cost ~0.2 ms per append,
        # more than the rest of a one-transfer ledger transaction (profiled for issue 4).
        lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
        size, root = conn.exec_driver_sql(f"SELECT size, root FROM journal_head WHERE id = 1{lock}").one()
        return int(size), bytes(root)

    def _border_for(self, conn: Connection, size: int, root: bytes) -> merkle.CompactRange:
        cached = self._border
        if cached is not None and cached.size == size and cached.root() == root:
            return cached.copy()
        border = merkle.CompactRange.load(size, lambda ids: _fetch_nodes(conn, ids))
        if border.root() != root:
            raise VerificationFailed(
                f"the journal's stored nodes do not reproduce its head root at size {size}; run: royalty journal verify",
                seq=size - 1 if size else None,
            )
        return border

    # --- read --------------------------------------------------------------------------------------------------

    def size(self) -> int:
        with self.store.read() as conn:
            return int(conn.execute(select(journal_head.c.size)).scalar_one())

    def head(self) -> tuple[int, bytes]:
        """(size, root) of the tree as committed now."""
        with self.store.read() as conn:
            row = conn.execute(select(journal_head.c.size, journal_head.c.root)).one()
            return int(row.size), bytes(row.root)

    def event(self, seq: int) -> Event:
        with self.store.read() as conn:
            row = conn.execute(
                select(journal_events.c.body, journal_events.c.leaf_hash).where(journal_events.c.seq == seq)
            ).one_or_none()
        if row is None:
            raise NotFound(f"no journal event {seq}; the journal has {self.size()} events (0..{self.size() - 1})", field="seq")
        return Event.from_row(seq, row.body, row.leaf_hash)

    def events(self, *, after: int = -1, limit: int = 100, type: str | None = None) -> list[Event]:
        query = select(journal_events.c.seq, journal_events.c.body, journal_events.c.leaf_hash).where(
            journal_events.c.seq > after
        )
        if type is not None:
            query = query.where(journal_events.c.type == type)
        with self.store.read() as conn:
            rows = conn.execute(query.order_by(journal_events.c.seq).limit(limit)).all()
        return [Event.from_row(r.seq, r.body, r.leaf_hash) for r in rows]

    # --- checkpoints and proofs --------------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """Sign the current tree head, or return the latest checkpoint if nothing was appended since.

        Never signs a head that is not consistent with the previous checkpoint (checked with a consistency
        proof before signing), so a node cannot be tricked into signing a forked history.
        """
        with self.store.write() as conn:
            size, root = self._lock_head(conn)
            latest = self._latest_checkpoint(conn)
            if latest is not None:
                # Trust only what was signed: the row's size and root columns are not covered by the signature.
                signed = open_note(latest.note, [VerifierKey.parse(self.signer.verifier_key)])
                if (signed.size, signed.root) != (latest.size, latest.root):
                    raise VerificationFailed(
                        f"refusing to sign: the stored checkpoint at size {latest.size} disagrees with its signed note",
                        seq=max(latest.size - 1, 0),
                    )
                if signed.size == size:
                    if signed.root != root:
                        raise VerificationFailed(
                            f"refusing to sign: the journal's root at size {size} differs from the signed one", seq=size - 1
                        )
                    return latest
                proof = merkle.consistency_proof(signed.size, size, lambda ids: _fetch_nodes(conn, ids))
                if not verify_consistency(signed.size, size, signed.root, root, proof):
                    raise VerificationFailed(
                        f"refusing to sign: size {size} is not consistent with checkpoint {signed.size}",
                        seq=signed.size,
                    )
            checkpoint = self.signer.sign_checkpoint(self.origin, size, root)
            conn.execute(
                insert(journal_checkpoints).values(size=size, root=root, note=checkpoint.note, created_ms=self.clock())
            )
            return checkpoint

    def latest_checkpoint(self) -> Checkpoint | None:
        with self.store.read() as conn:
            return self._latest_checkpoint(conn)

    def checkpoints(self) -> list[Checkpoint]:
        with self.store.read() as conn:
            rows = conn.execute(select(journal_checkpoints).order_by(journal_checkpoints.c.size)).all()
        return [Checkpoint(self.origin, int(r.size), bytes(r.root), r.note) for r in rows]

    def _latest_checkpoint(self, conn: Connection) -> Checkpoint | None:
        row = conn.execute(
            select(journal_checkpoints).order_by(journal_checkpoints.c.size.desc()).limit(1)
        ).one_or_none()
        return None if row is None else Checkpoint(self.origin, int(row.size), bytes(row.root), row.note)

    def inclusion_proof(self, seq: int, size: int | None = None) -> InclusionProof:
        """Proof that event ``seq`` is in the tree of a signed checkpoint: the one at ``size``, or the latest
        (made first if the event is newer than the latest checkpoint)."""
        if size is None:
            latest = self.latest_checkpoint()
            if latest is None or seq >= latest.size:
                self.checkpoint()
        with self.store.read() as conn:
            query = select(journal_checkpoints).order_by(journal_checkpoints.c.size.desc()).limit(1)
            if size is not None:
                query = select(journal_checkpoints).where(journal_checkpoints.c.size == size)
            row = conn.execute(query).one_or_none()
            if row is None:
                raise NotFound(f"no checkpoint at size {size}; list them with: royalty journal checkpoints", field="size")
            checkpoint = Checkpoint(self.origin, int(row.size), bytes(row.root), row.note)
            if not 0 <= seq < checkpoint.size:
                raise NotFound(f"event {seq} is not in the signed tree of size {checkpoint.size}", field="seq")
            event = conn.execute(
                select(journal_events.c.body, journal_events.c.leaf_hash).where(journal_events.c.seq == seq)
            ).one()
            hashes = merkle.inclusion_proof(seq, checkpoint.size, lambda ids: _fetch_nodes(conn, ids))
        return InclusionProof(Event.from_row(seq, event.body, event.leaf_hash), checkpoint.size, hashes, checkpoint)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        size = self.size()
        if not 0 <= old_size <= new_size <= size:
            raise InvalidInput(f"need 0 <= old <= new <= {size} (the journal's size), got {old_size}, {new_size}", field="size")
        with self.store.read() as conn:
            return merkle.consistency_proof(old_size, new_size, lambda ids: _fetch_nodes(conn, ids))

    def verify(self, keys: Sequence[str] = ()) -> JournalReport:
        """Replay the whole journal with the independent verifier (``audit.verify_journal``).

        ``keys`` are trusted verifier keys; by default the node's own. Raises VerificationFailed naming the first
        bad sequence number.
        """
        trusted = [VerifierKey.parse(k) for k in (keys or [self.signer.verifier_key])]
        with self.store.read() as conn:
            return verify_journal(conn, trusted, self.origin)

    def root(self, size: int) -> bytes:
        with self.store.read() as conn:
            return merkle.root(size, lambda ids: _fetch_nodes(conn, ids))


_CHUNK = 128


@functools.lru_cache(maxsize=_CHUNK)
def _node_query(count: int) -> TextClause:
    # An OR of point lookups: SQLite plans it as a MULTI-INDEX OR over the primary key, whereas a row-value IN
    # list scans the whole table (7 ms instead of 0.05 ms at 20k nodes). Cached per count: building the
    # expression anew for every proof cost more than running it.
    terms = " OR ".join(f"(level = :l{i} AND idx = :i{i})" for i in range(count))
    return text(f"SELECT level, idx, hash FROM journal_nodes WHERE {terms}")


@functools.lru_cache(maxsize=_CHUNK)
def _leaf_query(count: int) -> TextClause:
    marks = ", ".join(f":s{i}" for i in range(count))
    return text(f"SELECT seq, leaf_hash FROM journal_events WHERE seq IN ({marks})")


def _fetch_nodes(conn: Connection, ids: Sequence[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
    """Batch lookup of perfect-subtree hashes: level 0 from the events, higher levels from journal_nodes."""
    out: dict[merkle.NodeId, bytes] = {}
    seqs = [idx for level, idx in ids if level == 0]
    inner = [(level, idx) for level, idx in ids if level > 0]
    # A proof needs ~2 log2(n) nodes; bigger requests are split to stay under SQLite's expression-depth limit.
    for lo in range(0, len(seqs), _CHUNK):
        chunk = seqs[lo : lo + _CHUNK]
        params = {f"s{i}": seq for i, seq in enumerate(chunk)}
        for seq, digest in conn.execute(_leaf_query(len(chunk)), params):
            out[(0, int(seq))] = bytes(digest)
    for lo in range(0, len(inner), _CHUNK):
        params = {}
        for i, (level, idx) in enumerate(inner[lo : lo + _CHUNK]):
            params[f"l{i}"] = level
            params[f"i{i}"] = idx
        for level, idx, digest in conn.execute(_node_query(len(params) // 2), params):
            out[(int(level), int(idx))] = bytes(digest)
    missing = [i for i in ids if i not in out]
    if missing:
        raise VerificationFailed(
            f"journal node {missing[0]} is missing from the store; run: royalty journal verify",
            seq=missing[0][1] << missing[0][0],
        )
    return out
