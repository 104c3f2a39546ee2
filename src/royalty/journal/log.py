"""The Journal: the append-only Merkle log of every state change (writer side).

Order of work, as in Tessera: sequence (contiguous seq numbers under the head-row lock, never reused) →
integrate (leaf hash + newly completed perfect-subtree nodes, in the same transaction as the state change the
event records) → publish (sign a checkpoint over the current root).

Callers append inside their own write transaction, so a state change and its event commit together or not
at all::

    with node.store.write() as conn:
        conn.execute(insert(accounts).values(...))
        node.journal.append(conn, "account.created", {"id": ..., "name": ...}, actor=...)

The append statements run on the driver's own connection (sqlite3 / psycopg) inside the caller's transaction:
SQLAlchemy's statement machinery cost ~25 µs per statement, more than SQLite itself (profiled for issue 4). An
event's bytes are spliced from canonical texts (``canonical.canonical_text``): the envelope's keys are fixed and
already in order, so only ``data`` needs encoding, and a hot caller that builds its data's canonical text itself
(the ledger) hands it over with ``append_encoded``.
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
from ..store.schema import journal_checkpoints, journal_events, journal_head
from . import merkle
from .audit import JournalReport, VerifierKey, open_note, verify_journal
from .canonical import canonical_text, string_text, utf8
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
        # The right border of the tree and its root as of the last append this process made. Only trusted when the
        # head row still shows the same size and root (another process, or a rolled-back transaction, may have
        # moved it).
        self._border: tuple[merkle.CompactRange, bytes] | None = None

    # --- append ------------------------------------------------------------------------------------------------

    def append(self, conn: Connection, type: str, data: dict[str, Any], *, actor: str | None = None) -> Event:
        """Append one event inside the caller's write transaction."""
        return self.append_many(conn, [(type, data, actor)])[0]

    def append_many(
        self, conn: Connection, items: Sequence[tuple[str, dict[str, Any], str | None]]
    ) -> list[Event]:
        """Append events in order inside the caller's write transaction; one round of inserts for the batch.
        Every item is checked and encoded before anything is written: a bad one refuses the whole batch."""
        if not items:
            return []
        entries = []
        for type_, data, actor in items:
            if not isinstance(data, dict):
                raise InvalidInput("event data must be an object", field="data")
            entries.append((type_, canonical_text(data, "$.data"), actor))
        raw = conn.connection.driver_connection
        ts, seqs, bodies, leaves = self._append(raw, entries)
        return [
            Event(seq, type_, ts, actor, data, body, leaf)
            for seq, body, leaf, (type_, data, actor) in zip(seqs, bodies, leaves, items, strict=True)
        ]

    def append_encoded(self, raw: Any, entries: Sequence[tuple[str, str, str | None]]) -> list[int]:
        """Append events whose data the caller already encoded: ``(type, canonical JSON text of the data object,
        actor)``; returns their sequence numbers. ``raw`` is the driver connection of the caller's write
        transaction (``Store.write_driver``, or ``conn.connection.driver_connection``).

        For hot paths that build their payload from values they validated (the ledger): the text must be exactly
        ``canonical.canonical_text(data)``, which is not re-checked here. ``royalty journal verify`` re-derives
        every event's canonical bytes, so a caller that gets it wrong is caught; callers test their encoder
        against ``canonical_text`` on random inputs."""
        if not entries:
            return []
        return self._append(raw, entries)[1]

    def _append(
        self, raw: Any, entries: Sequence[tuple[str, str, str | None]]
    ) -> tuple[int, list[int], list[bytes], list[bytes]]:
        pg = self.store.backend == "postgresql"
        mark = "%s" if pg else "?"
        size, root = _lock_head(raw, pg)
        border = self._border_for(raw, pg, size, root)
        ts = self.clock()
        # The envelope {"actor", "data", "seq", "ts", "type", "v"}, its keys in canonical order: every part is
        # checked and encoded before anything is written; the seq goes in below.
        ts_text = canonical_text(ts, "$.ts")
        parts = []
        for type_, data_text, actor in entries:
            if type(type_) is not str or not _EVENT_TYPE.fullmatch(type_):
                raise InvalidInput(f"bad event type {type_!r}: use dotted lowercase like 'account.created'", field="type")
            actor_text = "null" if actor is None else canonical_text(actor, "$.actor")
            parts.append((type_, f'{{"actor":{actor_text},"data":{data_text},"seq":',
                           f',"ts":{ts_text},"type":{string_text(type_)},"v":{EVENT_FORMAT}}}'))
        seqs, bodies, leaves = [], [], []
        event_rows: list[tuple[int, str, bytes, bytes]] = []
        node_rows: list[tuple[int, int, bytes]] = []
        leaf_hash, append = merkle.leaf_hash, border.append
        for seq, (type_, head, tail) in enumerate(parts, start=size):
            body = utf8(f"{head}{seq}{tail}")
            leaf = leaf_hash(body)
            node_rows.extend(append(leaf))
            event_rows.append((seq, type_, body, leaf))
            seqs.append(seq)
            bodies.append(body)
            leaves.append(leaf)
        new_root = border.root()
        head_update = f"UPDATE journal_head SET size = {mark}, root = {mark} WHERE id = 1"
        events_sql = f"INSERT INTO journal_events (seq, type, body, leaf_hash) VALUES ({mark}, {mark}, {mark}, {mark})"
        nodes_sql = f"INSERT INTO journal_nodes (level, idx, hash) VALUES ({mark}, {mark}, {mark})"
        if pg:
            with raw.pipeline(), raw.cursor() as cur:  # one round trip for the three statements
                cur.executemany(events_sql, event_rows)
                if node_rows:
                    cur.executemany(nodes_sql, node_rows)
                cur.execute(head_update, (border.size, new_root))
        else:
            raw.executemany(events_sql, event_rows)
            if node_rows:
                raw.executemany(nodes_sql, node_rows)
            raw.execute(head_update, (border.size, new_root))
        self._border = (border, new_root)
        return ts, seqs, bodies, leaves

    def _border_for(self, raw: Any, pg: bool, size: int, root: bytes) -> merkle.CompactRange:
        cached = self._border
        if cached is not None and cached[0].size == size and cached[1] == root:
            return cached[0].copy()
        border = merkle.CompactRange.load(size, lambda ids: _fetch_border(raw, pg, ids))
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
            size, root = _lock_head(conn.connection.driver_connection, conn.dialect.name == "postgresql")
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


def _lock_head(raw: Any, pg: bool) -> tuple[int, bytes]:
    """(size, root) of the journal head, locked until the transaction ends (SQLite: the writer lock is held)."""
    size, root = raw.execute(f"SELECT size, root FROM journal_head WHERE id = 1{' FOR UPDATE' if pg else ''}").fetchone()
    return int(size), bytes(root)


def _fetch_border(raw: Any, pg: bool, ids: Sequence[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
    """The right border's nodes (at most 64, read once per process or after another writer moved the head), one
    point lookup each on the driver connection."""
    mark = "%s" if pg else "?"
    out: dict[merkle.NodeId, bytes] = {}
    for level, idx in ids:
        if level == 0:
            row = raw.execute(f"SELECT leaf_hash FROM journal_events WHERE seq = {mark}", (idx,)).fetchone()
        else:
            row = raw.execute(f"SELECT hash FROM journal_nodes WHERE level = {mark} AND idx = {mark}", (level, idx)).fetchone()
        if row is None:
            raise VerificationFailed(
                f"journal node {(level, idx)} is missing from the store; run: royalty journal verify", seq=idx << level
            )
        out[(level, idx)] = bytes(row[0])
    return out


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
