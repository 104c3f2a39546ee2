"""Datanet versions: immutable, numbered snapshots of a datanet's accepted contributions, with Merkle proofs.

Version N is the list of accepted contribution ids in arrival order. Its root is the RFC 6962 Merkle root (the
journal's tree code) over leaves ``SHA-256(0x00 || id bytes)``. Publishing journals the root
(``datanet.published``), so a proof bundle chains: contribution id → version root (this tree) → journal event
→ signed checkpoint. ``verify_proof`` checks all of it with nothing but the node's verifier key.

Storage: the members table holds every (position, id); the tree's perfect-subtree hashes are stored from level
8 up only (one row per 256 members). A proof recomputes the levels below 8 from the at most 256 ids of the
leaf's block, one range read, so proofs stay fast while the tree costs n/256 rows.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import Counter
from itertools import repeat
from hashlib import sha256 as _sha256
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, TextClause, func, insert, select, text

from ..errors import Conflict, InvalidInput, NotFound, VerificationFailed
from ..journal import merkle
from ..journal.audit import VerifierKey, verify_proof_bundle
from ..journal.verify import hash_leaf, verify_inclusion
from ..store.engine import insert_rows
from ..store.schema import contributions, datanet_version_blocks, datanet_version_members, datanet_versions, datanets, journal_checkpoints

if TYPE_CHECKING:
    from .registry import Datanets

LOW_LEVELS = 8  # levels below this are recomputed from members, not stored
_BLOCK = 1 << LOW_LEVELS


@dataclass(frozen=True)
class DatanetVersion:
    datanet_id: str
    number: int
    root: bytes
    size: int
    stats: dict[str, Any]
    created_ms: int
    created_seq: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "datanet": self.datanet_id,
            "version": self.number,
            "root": self.root.hex(),
            "size": self.size,
            "stats": self.stats,
            "created_ms": self.created_ms,
            "created_seq": self.created_seq,
        }


def publish(svc: Datanets, datanet: str, *, actor: str) -> DatanetVersion:
    """Publish the next version of ``datanet`` (owner only). Refuses when nothing is accepted or nothing
    changed since the latest version. The owner pays the publishing fee (``Params.publish_fee``) in the same
    transaction; InsufficientFunds when they cannot, and then nothing is published."""
    dn = svc.get(datanet)
    owner = svc._require_owner(dn, actor, "publish versions")
    with svc.store.write() as conn:
        conn.execute(select(datanets.c.id).where(datanets.c.id == dn.id).with_for_update())
        latest = conn.execute(
            select(datanet_versions.c.number, datanet_versions.c.root)
            .where(datanet_versions.c.datanet_id == dn.id)
            .order_by(datanet_versions.c.number.desc())
            .limit(1)
        ).one_or_none()
        number = 1 if latest is None else int(latest.number) + 1
        # The hot path of a large publish (profiled at 1M members): rows come straight from the driver (no
        # SQLAlchemy Row per member), the tree is hashed level by level in list comprehensions rather than one
        # CompactRange.append per leaf, and member rows are built with zip.
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        cursor = conn.connection.cursor()
        try:
            cursor.execute(
                "SELECT id, ordinal, contributor_id, size_bytes FROM contributions "
                f"WHERE datanet_id = {mark} AND status = 'accepted' ORDER BY ordinal",
                (dn.id,),
            )
            members = cursor.fetchall()
        finally:
            cursor.close()
        if not members:
            raise Conflict(f"{dn.slug} has no accepted contributions yet; nothing to publish")
        ids = [m[0] for m in members]
        levels = _tree_levels(ids)
        root = merkle.root(len(ids), lambda wanted: {(lv, i): levels[lv][i] for lv, i in wanted})
        if latest is not None and bytes(latest.root) == root:
            raise Conflict(f"nothing changed since version {latest.number} of {dn.slug}; not publishing a copy")
        nodes = [
            (dn.id, number, level, idx, digest)
            for level in range(LOW_LEVELS, len(levels))
            for idx, digest in enumerate(levels[level])
        ]
        by_contributor = Counter(m[2] for m in members)
        stats = {
            "records": len(members),
            "bytes": sum(int(m[3]) for m in members),
            "contributors": len(by_contributor),
            "by_contributor": dict(sorted(by_contributor.items(), key=lambda kv: (-kv[1], kv[0]))),
        }
        if svc.fees is not None:
            # Before the journal event: ledger accounts are locked before the journal head (the core's order).
            # InsufficientFunds here rolls the whole publish back: no version, no event.
            svc.fees.charge_publish_fee_in(conn, owner.id, dn.id, number, len(members), actor=owner.id)
        event = svc.journal.append(
            conn,
            "datanet.published",
            {"datanet": dn.id, "slug": dn.slug, "version": number, "root": root.hex(), "size": len(members), "stats": stats},
            actor=owner.id,
        )
        now = svc.clock()
        conn.execute(
            insert(datanet_versions).values(
                datanet_id=dn.id,
                number=number,
                root=root,
                size=len(members),
                stats=json.dumps(stats),
                created_ms=now,
                created_seq=event.seq,
            )
        )
        insert_rows(
            conn,
            "datanet_version_members",
            ("datanet_id", "version", "position", "contribution_id"),
            list(zip(repeat(dn.id), repeat(number), range(len(ids)), ids)),
        )
        insert_rows(
            conn,
            "datanet_version_blocks",
            ("datanet_id", "version", "block", "first_ordinal"),
            [(dn.id, number, start // _BLOCK, int(members[start][1])) for start in range(0, len(members), _BLOCK)],
        )
        insert_rows(conn, "datanet_version_nodes", ("datanet_id", "version", "level", "idx", "hash"), nodes)
    return DatanetVersion(dn.id, number, root, len(members), stats, now, event.seq)


def _tree_levels(ids: list[str]) -> list[list[bytes]]:
    """Every perfect-subtree hash of the tree over ``ids``: ``levels[l][i]`` is node (l, i); leaves are
    ``SHA-256(0x00 || id bytes)``, as in ``merkle.leaf_hash``."""
    level = [_sha256(b"\x00" + bytes.fromhex(cid)).digest() for cid in ids]
    levels = [level]
    while len(level) > 1:
        level = [_sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        levels.append(level)
    return levels


def get_version(svc: Datanets, datanet: str, number: int | None = None) -> DatanetVersion:
    """Version ``number`` of a datanet, or its latest when ``number`` is None."""
    with svc.store.read() as conn:
        dn = svc.get_in(conn, datanet)
        return _version_in(conn, dn.id, dn.slug, number)


_VERSION_MAX = 2**31 - 1  # version numbers are INTEGER columns (32-bit on PostgreSQL)


def _version_in(conn: Connection, datanet_id: str, slug: str, number: int | None) -> DatanetVersion:
    query = select(datanet_versions).where(datanet_versions.c.datanet_id == datanet_id)
    query = query.where(datanet_versions.c.number == number) if number is not None else query.order_by(datanet_versions.c.number.desc()).limit(1)
    # A number no version can have is not found without asking the database (which would refuse to compare it).
    row = conn.execute(query).one_or_none() if number is None or 1 <= number <= _VERSION_MAX else None
    if row is None:
        which = f"version {number}" if number is not None else "published version"
        raise NotFound(f"{slug} has no {which}; publish one with: royalty datanet publish {slug}", field="version")
    return _version(row)


def list_versions(svc: Datanets, datanet: str) -> list[DatanetVersion]:
    dn = svc.get(datanet)
    with svc.store.read() as conn:
        rows = conn.execute(
            select(datanet_versions).where(datanet_versions.c.datanet_id == dn.id).order_by(datanet_versions.c.number)
        ).all()
    return [_version(r) for r in rows]


def member_ids(svc: Datanets, datanet: str, number: int) -> list[str]:
    """The contribution ids of a version, in leaf order."""
    version = get_version(svc, datanet, number)
    m = datanet_version_members.c
    with svc.store.read() as conn:
        rows = conn.execute(
            select(m.contribution_id).where(m.datanet_id == version.datanet_id, m.version == number).order_by(m.position)
        ).all()
    return [r.contribution_id for r in rows]


def proof(svc: Datanets, datanet: str, contribution_id: str, number: int | None = None) -> dict[str, Any]:
    """A self-contained proof that ``contribution_id`` is in a version (the latest by default), chained to the
    node's signed journal. Verify it with ``verify_proof`` (``royalty datanet verify-proof``)."""
    m, c = datanet_version_members.c, contributions.c
    # One read transaction for everything but the journal proof: this is the proof-serving path.
    with svc.store.read() as conn:
        dn = svc.get_in(conn, datanet)
        version = _version_in(conn, dn.id, dn.slug, number)
        # id -> ordinal (contributions) -> block (the last block starting at or before it) -> position (a scan
        # of that block's <= 256 members). Separate point queries: as one join, PostgreSQL scanned the members.
        ordinal = (
            conn.execute(select(c.ordinal).where(c.datanet_id == dn.id, c.id == contribution_id)).scalar_one_or_none()
            if isinstance(contribution_id, str) and "\x00" not in contribution_id and contribution_id.isascii()
            else None  # no id has NUL or non-ASCII (PostgreSQL and SQLite's driver would refuse the query)
        )
        position = None
        if ordinal is not None:
            b = datanet_version_blocks.c
            block = conn.execute(
                select(b.block)
                .where(b.datanet_id == dn.id, b.version == version.number, b.first_ordinal <= ordinal)
                .order_by(b.first_ordinal.desc())
                .limit(1)
            ).scalar_one_or_none()
            if block is not None:
                start = int(block) * _BLOCK
                position = conn.execute(
                    select(m.position).where(
                        m.datanet_id == dn.id,
                        m.version == version.number,
                        m.position >= start,
                        m.position < start + _BLOCK,
                        m.contribution_id == contribution_id,
                    )
                ).scalar_one_or_none()
        if position is None:
            raise NotFound(
                f"contribution {contribution_id} is not in version {version.number} of {dn.slug}", field="contribution"
            )
        hashes = merkle.inclusion_proof(
            int(position), version.size, lambda ids: _fetch(conn, dn.id, version.number, version.size, ids)
        )
        signed = conn.execute(select(func.max(journal_checkpoints.c.size))).scalar_one_or_none()
    journal_proof = _journal_proof(svc, version.created_seq, None if signed is None else int(signed))
    return {
        "kind": "royalty.datanet.inclusion_proof",
        "datanet": {"id": dn.id, "slug": dn.slug},
        "version": version.number,
        "contribution_id": contribution_id,
        "position": int(position),
        "size": version.size,
        "root": version.root.hex(),
        "proof": [h.hex() for h in hashes],
        "journal": journal_proof,
    }


def _journal_proof(svc: Datanets, seq: int, signed: int | None) -> dict[str, Any]:
    """The journal half of a proof bundle: the publish event's inclusion under the latest signed checkpoint.
    It is the same for every member of a version until the next checkpoint, so it is cached by (event,
    checkpoint size): checkpoints never change, and serving many proofs of one version is the common case."""
    if signed is None or seq >= signed:
        proof = svc.journal.inclusion_proof(seq)  # makes a checkpoint covering the event
    else:
        cached = svc._journal_proofs.get((seq, signed))
        if cached is not None:
            return copy.deepcopy(cached)
        proof = svc.journal.inclusion_proof(seq, signed)
    bundle = proof.to_dict()
    if len(svc._journal_proofs) >= 256:
        svc._journal_proofs.clear()
    svc._journal_proofs[(seq, proof.size)] = bundle
    return copy.deepcopy(bundle)


def verify_proof(bundle: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Check a datanet proof bundle offline: the contribution is in the version's tree, and the version's root
    was published in the node's journal under a checkpoint signed by one of ``keys``.

    Uses only the verifier side of the journal (``journal.verify``, ``journal.audit``)."""
    if not keys:
        raise InvalidInput("pass the node's verifier key with --key (see `royalty info`): a proof cannot vouch for itself", field="key")
    trusted = [VerifierKey.parse(k) for k in keys]
    try:
        cid = str(bundle["contribution_id"])
        leaf = hash_leaf(bytes.fromhex(cid))
        position, size, version_ = bundle["position"], bundle["size"], bundle["version"]
        if not all(type(x) is int for x in (position, size, version_)):
            raise TypeError("position, size and version must be integers")
        root = bytes.fromhex(bundle["root"])
        hashes = [bytes.fromhex(h) for h in bundle["proof"]]
        datanet_id, version = bundle["datanet"]["id"], version_
        journal_bundle = bundle["journal"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"not a datanet proof document ({type(exc).__name__}: {exc})", field="proof") from None
    if len(bytes.fromhex(cid)) != 32 or not verify_inclusion(leaf, position, size, hashes, root):
        raise VerificationFailed(f"contribution {cid} is not in the tree with root {root.hex()}")
    head = verify_proof_bundle(journal_bundle, trusted)
    try:
        event = json.loads(journal_bundle["event"])
        data = event["data"]
        published = (event["type"], data["datanet"], data["version"], data["root"], data["size"])
        slug = data["slug"]
        claimed_slug = bundle["datanet"].get("slug", slug)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise VerificationFailed("the journal event in the proof is not a datanet.published event") from None
    if published != ("datanet.published", datanet_id, version, root.hex(), size):
        raise VerificationFailed(
            f"the journal event does not publish version {version} of {datanet_id} with this root and size"
        )
    if claimed_slug != slug:  # the slug is shown to the person verifying: it must be the signed one
        raise VerificationFailed(f"the proof names datanet {claimed_slug!r}, but the journal published {slug!r}")
    return {
        "ok": True,
        "contribution_id": cid,
        "datanet": {"id": datanet_id, "slug": slug},
        "version": version,
        "root": root.hex(),
        "journal_seq": int(journal_bundle["seq"]),
        "checkpoint_size": head.size,
        "origin": head.origin,
    }


# --- tree node lookup for proofs ------------------------------------------------------------------------------


def _fetch(conn: Connection, datanet_id: str, version: int, size: int, ids: Sequence[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
    out: dict[merkle.NodeId, bytes] = {}
    high = [(level, idx) for level, idx in ids if level >= LOW_LEVELS]
    if high:
        params: dict[str, Any] = {"d": datanet_id, "v": version}
        for i, (level, idx) in enumerate(high):
            params[f"l{i}"], params[f"i{i}"] = level, idx
        for level, idx, digest in conn.execute(_node_query(len(high)), params):
            out[(int(level), int(idx))] = bytes(digest)
    blocks: dict[int, list[list[bytes]]] = {}
    for level, idx in ids:
        if level >= LOW_LEVELS:
            continue
        block = (idx << level) >> LOW_LEVELS
        if block not in blocks:
            blocks[block] = _block_levels(conn, datanet_id, version, size, block)
        levels = blocks[block]
        local = idx - (block << (LOW_LEVELS - level))
        if level < len(levels) and local < len(levels[level]):
            out[(level, idx)] = levels[level][local]
    missing = [i for i in ids if i not in out]
    if missing:
        raise VerificationFailed(f"version {version} of {datanet_id} is missing tree node {missing[0]}")
    return out


def _block_levels(conn: Connection, datanet_id: str, version: int, size: int, block: int) -> list[list[bytes]]:
    """Every perfect-subtree hash inside one block of at most 256 members, level by level: one range read and
    at most 511 hashes (cheaper than a MemoryTree, which keeps a dict and a border per leaf)."""
    start = block * _BLOCK
    # fetchall: iterating a result row by row costs a driver fetchone per row, more than the hashing.
    rows = conn.execute(_BLOCK_QUERY, {"d": datanet_id, "v": version, "a": start, "b": min(start + _BLOCK, size)}).fetchall()
    level = [_sha256(b"\x00" + bytes.fromhex(row[0])).digest() for row in rows]
    levels = [level]
    while len(level) > 1:
        level = [_sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        levels.append(level)
    return levels


_BLOCK_QUERY = text(
    "SELECT contribution_id FROM datanet_version_members WHERE datanet_id = :d AND version = :v "
    "AND position >= :a AND position < :b ORDER BY position"
)


@functools.lru_cache(maxsize=64)
def _node_query(count: int) -> TextClause:
    # UNION ALL of point lookups: with OR-ed (level, idx) pairs and no ANALYZE statistics, SQLite scanned every
    # node of the version (~n/128 rows; 1.5 ms of a proof at 1M members).
    return text(
        " UNION ALL ".join(
            f"SELECT level, idx, hash FROM datanet_version_nodes "
            f"WHERE datanet_id = :d AND version = :v AND level = :l{i} AND idx = :i{i}"
            for i in range(count)
        )
    )


def _version(row: Any) -> DatanetVersion:
    return DatanetVersion(
        row.datanet_id, int(row.number), bytes(row.root), int(row.size), json.loads(row.stats), int(row.created_ms), int(row.created_seq)
    )

