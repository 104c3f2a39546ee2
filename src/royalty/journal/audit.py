"""Verification of a journal, a checkpoint note, or an inclusion-proof bundle (reader side).

This module and ``verify.py`` are the verifier. By design neither imports the writer (``merkle.py``,
``checkpoint.py``, ``canonical.py``, ``log.py``): a bug in how the log is written cannot also hide in how it is
checked. ``tests/test_journal.py`` enforces that rule on the import graph.

``verify_journal`` replays the log from its leaves:
1. every event row: seq contiguous from 0, body is canonical JSON whose ``seq`` and ``type`` match the row,
   SHA-256(0x00 || body) equals the stored leaf hash;
2. every perfect-subtree node the replay completes equals the stored one (proofs are served from those);
3. every stored checkpoint: a valid signature by a trusted key, the expected origin, and a root equal to the
   replayed root at its size (which also makes all checkpoints mutually consistent);
4. the head row's size and root equal the replay's.
The first failure raises ``VerificationFailed`` naming the first bad sequence number.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, select

from ..errors import InvalidInput, VerificationFailed
from ..store.schema import journal_checkpoints, journal_events, journal_head, journal_nodes
from .verify import TreeReplayer, hash_leaf, verify_inclusion

_BATCH = 20_000  # rows per fetch for the small fixed-size rows (nodes)
_EVENT_BATCH = 1_000  # events can be large (a 1,000-transfer ledger batch is ~250 KB): fetch fewer at a time


@dataclass(frozen=True)
class VerifierKey:
    name: str
    hint: bytes
    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse ``<name>+<hint hex>+<base64(0x01 || key)>`` and check that the hint matches the key."""
        parts = text.strip().split("+", 2)  # the name has no "+", base64 may
        try:
            name, hint_hex, key_b64 = parts
            hint = bytes.fromhex(hint_hex)
            raw = base64.b64decode(key_b64, validate=True)
        except (ValueError, binascii.Error):
            raise InvalidInput(f"not a verifier key: {text!r} (expected NAME+HINT+BASE64KEY)", field="key") from None
        if len(hint) != 4 or len(raw) != 33 or raw[0] != 1:
            raise InvalidInput(f"not an Ed25519 verifier key: {text!r}", field="key")
        if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4] != hint:
            raise InvalidInput(f"verifier key {name!r}: hint does not match the key", field="key")
        return cls(name, hint, raw[1:])


@dataclass(frozen=True)
class SignedHead:
    origin: str
    size: int
    root: bytes


def open_note(note: str, keys: Sequence[VerifierKey]) -> SignedHead:
    """Check a checkpoint note's signature with any of ``keys`` and return its (origin, size, root).

    Signature lines from unknown keys are ignored (witness cosignatures, rotation); at least one line must
    come from a trusted key and verify.
    """
    body, sep, sigs = note.partition("\n\n")
    if not sep:
        raise VerificationFailed("checkpoint note has no signature block")
    lines = body.split("\n")
    if len(lines) < 3:
        raise VerificationFailed("checkpoint body must have origin, size and root lines")
    origin, size_text, root_b64 = lines[0], lines[1], lines[2]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise VerificationFailed(f"checkpoint size {size_text!r} is not a decimal number")
    root = _strict_b64(root_b64, "checkpoint root")
    if len(root) != 32:
        raise VerificationFailed("checkpoint root is not a SHA-256 hash")
    signed = (body + "\n").encode("utf-8")
    for line in sigs.split("\n"):
        if not line:
            continue
        if not line.startswith("\u2014 "):
            raise VerificationFailed(f"malformed signature line {line!r}")
        name, _, blob_b64 = line[2:].partition(" ")
        blob = _strict_b64(blob_b64, f"signature by {name!r}")
        for key in keys:
            if key.name == name and blob[:4] == key.hint:
                try:
                    Ed25519PublicKey.from_public_bytes(key.public_key).verify(blob[4:], signed)
                except InvalidSignature:
                    raise VerificationFailed(f"checkpoint signature by {name!r} does not verify") from None
                return SignedHead(origin, int(size_text), root)
    raise VerificationFailed("checkpoint carries no signature from a trusted key")


@dataclass
class JournalReport:
    size: int
    root: bytes
    checkpoints: int
    latest_checkpoint: int | None
    unsigned_tail: int  # events after the latest checkpoint, not yet covered by a signature
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "size": self.size,
            "root": self.root.hex(),
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "unsigned_tail": self.unsigned_tail,
        }


def verify_journal(conn: Connection, keys: Sequence[VerifierKey], origin: str) -> JournalReport:
    """Replay the whole journal from its leaves; raise VerificationFailed at the first inconsistency."""
    # Both streams are server-side cursors on PostgreSQL: close them however the replay ends.
    with ExitStack() as stack:
        events = stack.enter_context(closing(_events(conn)))
        nodes = stack.enter_context(closing(_stored_nodes_in_creation_order(conn)))
        return _replay(conn, keys, origin, events, nodes)


def _replay(
    conn: Connection,
    keys: Sequence[VerifierKey],
    origin: str,
    events: Iterator[tuple[int, str, bytes, bytes]],
    stored_nodes: Iterator[tuple[int, int, bytes]],
) -> JournalReport:
    checkpoints = [
        (int(r.size), bytes(r.root), r.note)
        for r in conn.execute(select(journal_checkpoints).order_by(journal_checkpoints.c.size))
    ]
    heads = []
    for size, root, note in checkpoints:
        head = open_note(note, keys)
        if head.origin != origin:
            raise VerificationFailed(f"checkpoint at size {size} names origin {head.origin!r}, expected {origin!r}")
        if head.size != size or head.root != root:
            raise VerificationFailed(f"checkpoint row at size {size} disagrees with its signed note", seq=max(size - 1, 0))
        heads.append(head)

    replay = TreeReplayer()
    pending = iter(heads)
    next_head = next(pending, None)
    if next_head is not None and next_head.size == 0:
        _check_head_root(next_head, replay.root())
        next_head = next(pending, None)

    expected = 0
    for seq, type_, body, leaf in events:
        if seq != expected:
            raise VerificationFailed(f"journal event {expected} is missing (next stored event is {seq})", seq=expected)
        _check_event_body(seq, type_, body)
        if hash_leaf(body) != leaf:
            raise VerificationFailed(
                f"journal event {seq} was altered: its bytes no longer match its leaf hash", seq=seq
            )
        for level, idx, digest in replay.push(leaf):
            stored = next(stored_nodes, None)
            if stored != (level, idx, digest):
                first = idx << level
                raise VerificationFailed(
                    f"journal node (level {level}, index {idx}) over events {first}..{first + (1 << level) - 1} "
                    "does not match the events",
                    seq=first,
                )
        expected += 1
        if next_head is not None and next_head.size == expected:
            _check_head_root(next_head, replay.root())
            next_head = next(pending, None)

    if next_head is not None:
        raise VerificationFailed(
            f"checkpoint at size {next_head.size} is beyond the journal's {expected} events (events were deleted)",
            seq=expected,
        )
    extra = next(stored_nodes, None)
    if extra is not None:
        raise VerificationFailed(f"journal node (level {extra[0]}, index {extra[1]}) has no events under it", seq=expected)
    head_size, head_root = conn.execute(select(journal_head.c.size, journal_head.c.root)).one()
    if int(head_size) != expected or bytes(head_root) != replay.root():
        raise VerificationFailed(
            f"journal head says size {head_size}, but {expected} events replay to a different tree", seq=expected
        )
    latest = heads[-1].size if heads else None
    return JournalReport(
        size=expected,
        root=replay.root(),
        checkpoints=len(heads),
        latest_checkpoint=latest,
        unsigned_tail=expected - (latest or 0),
    )


def verify_proof_bundle(bundle: dict[str, Any], keys: Sequence[VerifierKey]) -> SignedHead:
    """Check a ``royalty journal proof --json`` document with nothing but the verifier key(s)."""
    try:
        event = bundle["event"].encode("utf-8")
        seq = int(bundle["seq"])
        proof = [bytes.fromhex(h) for h in bundle["proof"]]
        note = bundle["checkpoint"]
        if not isinstance(note, str) or not isinstance(bundle["event"], str) or type(bundle["seq"]) is not int:
            raise TypeError("event and checkpoint must be text, seq an integer")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"not a journal proof document: {exc}", field="proof") from None
    head = open_note(note, keys)
    if not verify_inclusion(hash_leaf(event), seq, head.size, proof, head.root):
        raise VerificationFailed(f"event {seq} is not included in the signed tree of size {head.size}", seq=seq)
    try:
        claimed = json.loads(event).get("seq")
    except (ValueError, AttributeError):
        claimed = None
    if claimed != seq:  # included, but at another position than the bundle says
        raise VerificationFailed(f"the event inside the proof says it is event {claimed}, not {seq}", seq=seq)
    return head


def _strict_b64(text: str, what: str) -> bytes:
    """Decode base64 that must be in its one canonical spelling. Lenient decoders ignore the unused low bits of
    the last character, so without this check a note could be altered without changing what it decodes to."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationFailed(f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise VerificationFailed(f"{what} is not canonical base64")
    return raw


def _check_head_root(head: SignedHead, root: bytes) -> None:
    if head.root != root:
        raise VerificationFailed(
            f"the signed checkpoint at size {head.size} does not match the stored events", seq=max(head.size - 1, 0)
        )


def _check_event_body(seq: int, type_: str, body: bytes) -> None:
    try:
        doc = json.loads(body)
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise VerificationFailed(f"journal event {seq} is not valid JSON", seq=seq) from None
    if canonical != body:
        raise VerificationFailed(f"journal event {seq} is not in canonical form", seq=seq)
    if not isinstance(doc, dict) or doc.get("seq") != seq or doc.get("type") != type_:
        raise VerificationFailed(f"journal event {seq} claims a different seq or type than its row", seq=seq)


def _events(conn: Connection) -> Iterator[tuple[int, str, bytes, bytes]]:
    cols = (journal_events.c.seq, journal_events.c.type, journal_events.c.body, journal_events.c.leaf_hash)
    with conn.execute(select(*cols).order_by(journal_events.c.seq).execution_options(yield_per=_EVENT_BATCH)) as result:
        for seq, type_, body, leaf in result:
            yield int(seq), type_, bytes(body), bytes(leaf)


def _stored_nodes_in_creation_order(conn: Connection) -> Iterator[tuple[int, int, bytes]]:
    # Node (level, idx) is completed by the append of leaf ((idx + 1) << level) - 1; among nodes completed by
    # the same append, lower levels come first. Sorting by that reproduces the replay's order exactly.
    completed_by = (journal_nodes.c.idx + 1).op("<<")(journal_nodes.c.level)
    query = (
        select(journal_nodes.c.level, journal_nodes.c.idx, journal_nodes.c.hash)
        .order_by(completed_by, journal_nodes.c.level)
        .execution_options(yield_per=_BATCH)
    )
    with conn.execute(query) as result:
        for level, idx, digest in result:
            yield int(level), int(idx), bytes(digest)
