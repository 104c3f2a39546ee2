"""The journal: appends, canonical event bytes, rollback, proofs, signed checkpoints, whole-journal verification
against tampering, proof bundles, and the rule that the verifier shares no code with the writer.

Reference values come from ``merkle.MemoryTree`` (itself checked against RFC 6962 in test_merkle.py) and are
checked with ``royalty.journal.verify``; tampering is done with plain sqlite3/psycopg, as an attacker would.
"""

from __future__ import annotations

import ast
import base64
import gc
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from conftest import Clock, RawDB
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

import royalty
from royalty import Node
from royalty.errors import InvalidInput, NotFound, RoyaltyError, VerificationFailed
from royalty.journal import audit
from royalty.journal.audit import VerifierKey, open_note, verify_journal, verify_proof_bundle
from royalty.journal.checkpoint import Signer
from royalty.journal.merkle import MemoryTree
from royalty.journal.verify import verify_consistency, verify_inclusion

# node.genesis; account.created for treasury, fees, rewards, operator; params.set (the genesis Params);
# ledger.accounts (the protocol's ledger accounts); ledger.genesis (the genesis supply to the treasury).
GENESIS_TYPES = ["node.genesis"] + ["account.created"] * 4 + ["params.set", "ledger.accounts", "ledger.genesis"]
GENESIS_EVENTS = len(GENESIS_TYPES)


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def keys_of(node: Node) -> list[VerifierKey]:
    return [VerifierKey.parse(node.signer.verifier_key)]


def verify(node: Node) -> audit.JournalReport:
    with node.store.read() as conn:
        return verify_journal(conn, keys_of(node), node.origin)


def all_bodies(node: Node) -> list[bytes]:
    events = node.journal.events(limit=1_000_000)
    assert [e.seq for e in events] == list(range(len(events)))
    return [e.body for e in events]


def reference_tree(node: Node) -> MemoryTree:
    return MemoryTree(all_bodies(node))


def append(node: Node, count: int, *, tag: str = "e") -> list[Any]:
    start = node.journal.size()
    with node.store.write() as conn:
        return node.journal.append_many(
            conn, [("test.event", {"note": f"{tag}-{start + i}", "i": start + i}, None) for i in range(count)]
        )


def assert_matches_reference(node: Node) -> MemoryTree:
    tree = reference_tree(node)
    size, root = node.journal.head()
    assert size == tree.size
    assert root == tree.root()
    assert node.journal.root(size) == root
    report = verify(node)
    assert (report.size, report.root) == (size, root)
    return tree


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------------------------------------------
# append
# --------------------------------------------------------------------------------------------------------------


def test_genesis_journal(node: Node) -> None:
    events = node.journal.events()
    assert [e.type for e in events] == GENESIS_TYPES
    assert events[0].data["node_id"] == node.node_id
    assert events[0].data["verifier_key"] == node.signer.verifier_key
    latest = node.journal.latest_checkpoint()
    assert latest is not None and latest.size == GENESIS_EVENTS
    assert_matches_reference(node)


def test_append_assigns_contiguous_seqs_and_canonical_bodies(node: Node, clock: Clock) -> None:
    clock.now, clock.step = 1_234_567, 0
    with node.store.write() as conn:
        one = node.journal.append(conn, "test.single", {"b": "x y", "a": 1, "é": ["ü", True, None, -7]}, actor="acct_1")
        many = node.journal.append_many(
            conn, [("test.many", {"k": i}, None) for i in range(3)] + [("test.many", {}, "acct_2")]
        )
    g = GENESIS_EVENTS
    assert [one.seq] + [e.seq for e in many] == list(range(g, g + 5))
    expected = (
        '{"actor":"acct_1","data":{"a":1,"b":"x y","é":["ü",true,null,-7]},'
        f'"seq":{g},"ts":1234567,"type":"test.single","v":1}}'
    ).encode()
    assert one.body == expected
    assert b"\xc3\xa9" in one.body  # UTF-8, not \u escapes
    assert many[0].body == f'{{"actor":null,"data":{{"k":0}},"seq":{g + 1},"ts":1234567,"type":"test.many","v":1}}'.encode()
    assert many[3].body == f'{{"actor":"acct_2","data":{{}},"seq":{g + 4},"ts":1234567,"type":"test.many","v":1}}'.encode()
    for event in [one, *many]:
        assert event.leaf_hash == hashlib.sha256(b"\x00" + event.body).digest()
        assert canonical(json.loads(event.body)) == event.body
        stored = node.journal.event(event.seq)
        assert (stored.body, stored.leaf_hash, stored.type, stored.actor, stored.data, stored.ts_ms) == (
            event.body,
            event.leaf_hash,
            event.type,
            event.actor,
            event.data,
            1_234_567,
        )
    assert node.journal.size() == GENESIS_EVENTS + 5
    assert [e.seq for e in node.journal.events(type="test.many")] == [g + 1, g + 2, g + 3, g + 4]
    assert [e.seq for e in node.journal.events(after=g + 1, limit=2)] == [g + 2, g + 3]
    with node.store.write() as conn:
        assert node.journal.append_many(conn, []) == []
    assert_matches_reference(node)


def test_event_round_trips_through_to_dict(node: Node) -> None:
    with node.store.write() as conn:
        event = node.journal.append(conn, "test.dict", {"x": "y"}, actor="acct_a")
    assert node.journal.event(event.seq).to_dict() == {
        "seq": event.seq,
        "type": "test.dict",
        "ts": event.ts_ms,
        "actor": "acct_a",
        "data": {"x": "y"},
        "leaf_hash": hashlib.sha256(b"\x00" + event.body).hexdigest(),
    }
    with pytest.raises(NotFound, match="no journal event 999"):
        node.journal.event(999)


BAD_DATA = [
    pytest.param({"amount": 1.5}, id="float"),
    pytest.param({"amount": 1.0}, id="integral-float"),
    pytest.param({"x": float("nan")}, id="nan"),
    pytest.param({"x": float("inf")}, id="inf"),
    pytest.param({"x": 2**63}, id="int-too-big"),
    pytest.param({"x": -(2**63) - 1}, id="int-too-small"),
    pytest.param({1: "x"}, id="int-key"),
    pytest.param({"a": {("t",): 1}}, id="nested-tuple-key"),
    pytest.param({"a": {"b": [1, {"c": 0.5}]}}, id="nested-float"),
    pytest.param({"a": {"b": [2**64]}}, id="nested-big-int"),
    pytest.param({"x": b"bytes"}, id="bytes"),
    pytest.param({"x": {1, 2}}, id="set"),
    pytest.param({"x": "\ud800"}, id="lone-surrogate"),
]


@pytest.mark.parametrize("data", BAD_DATA)
def test_bad_event_data_is_rejected_and_nothing_written(node: Node, data: dict[str, Any]) -> None:
    size, root = node.journal.head()
    # Third of a batch, and the transaction goes on to COMMIT: the batch must be refused as a whole.
    with node.store.write() as conn:
        with pytest.raises(InvalidInput):
            node.journal.append_many(conn, [("test.ok", {"n": 1}, None), ("test.ok", {"n": 2}, None), ("test.bad", data, None)])
        with pytest.raises(InvalidInput):
            node.journal.append(conn, "test.bad", data)
    assert node.journal.head() == (size, root)
    assert node.journal.events(after=size - 1) == []
    # The journal is not disturbed: the next append lands at `size` with correct roots.
    (event,) = append(node, 1)
    assert event.seq == size
    assert_matches_reference(node)


def test_integer_bounds_and_plain_values_are_accepted(node: Node) -> None:
    data = {"max": 2**63 - 1, "min": -(2**63), "t": True, "f": False, "n": None, "l": [[], {}], "s": ""}
    with node.store.write() as conn:
        event = node.journal.append(conn, "test.bounds", data)
    assert node.journal.event(event.seq).data == data


@pytest.mark.parametrize("type_", ["Account.created", "account", "account.", ".created", "account created", "a.b-c", ""])
def test_bad_event_types_are_rejected(node: Node, type_: str) -> None:
    size = node.journal.size()
    with node.store.write() as conn:
        with pytest.raises(InvalidInput) as info:
            node.journal.append_many(conn, [("test.ok", {}, None), (type_, {}, None)])
        assert info.value.field == "type"
        with pytest.raises(InvalidInput):
            node.journal.append(conn, "test.ok", ["not", "an", "object"])  # type: ignore[arg-type]
    assert node.journal.size() == size


# --------------------------------------------------------------------------------------------------------------
# rollback and the cached right border
# --------------------------------------------------------------------------------------------------------------


def test_rollback_leaves_no_trace_even_with_a_second_writer(node: Node, home: Path, closing) -> None:  # type: ignore[no-untyped-def]
    append(node, 3, tag="a")
    size, root = node.journal.head()
    nodes_before = len(_journal_node_rows(node))

    with pytest.raises(RuntimeError, match="abort"), node.store.write() as conn:
        node.journal.append_many(conn, [("test.rolled_back", {"i": i}, None) for i in range(3)])
        raise RuntimeError("abort")
    assert node.journal.head() == (size, root)
    assert node.journal.events(type="test.rolled_back") == []
    assert len(_journal_node_rows(node)) == nodes_before
    assert_matches_reference(node)

    # Another Node object on the same home (another process, in production) appends exactly as many events as
    # were rolled back: the head's size now equals the size the first Node's cached border thinks it has.
    other = closing(royalty.open_node(home))
    append(other, 3, tag="b")
    assert_matches_reference(node)

    # The first Node appends again: its cache is stale and must not be used.
    events = append(node, 2, tag="c")
    assert [e.seq for e in events] == [size + 3, size + 4]
    assert_matches_reference(node)
    # And the other one, whose cache is stale now too.
    append(other, 5, tag="d")
    append(node, 1, tag="e")
    tree = assert_matches_reference(other)
    assert tree.size == size + 11
    checkpoint = node.journal.checkpoint()
    assert checkpoint.root == tree.root()


def test_rollback_after_a_checkpoint_then_append(node: Node) -> None:
    append(node, 4)
    node.journal.checkpoint()
    with pytest.raises(KeyError), node.store.write() as conn:
        node.journal.append(conn, "test.gone", {})
        raise KeyError("x")
    append(node, 3)
    node.journal.checkpoint()
    assert_matches_reference(node)


def _journal_node_rows(node: Node) -> list[tuple[int, int, bytes]]:
    with node.store.read() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT level, idx, hash FROM journal_nodes ORDER BY level, idx")]  # type: ignore[misc]


def test_stored_nodes_are_exactly_the_perfect_subtrees(node: Node) -> None:
    append(node, 40)
    tree = reference_tree(node)
    rows = _journal_node_rows(node)
    expected = []
    size = tree.size
    level = 1
    while (1 << level) <= size:
        for idx in range(size >> level):
            expected.append((level, idx, tree.fetch([(level, idx)])[(level, idx)]))
        level += 1
    assert sorted(rows) == sorted(expected)


# --------------------------------------------------------------------------------------------------------------
# proofs
# --------------------------------------------------------------------------------------------------------------

BATCHES = (1, 2, 3, 5, 8, 13, 21)  # then one batch up to 70 events in all


@pytest.fixture
def journal70(node: Node) -> tuple[Node, MemoryTree, list[int]]:
    sizes = [GENESIS_EVENTS]
    for count in (*BATCHES, 70 - GENESIS_EVENTS - sum(BATCHES)):
        append(node, count)
        sizes.append(node.journal.checkpoint().size)
    tree = reference_tree(node)
    assert tree.size == 70 and sizes[-1] == 70
    return node, tree, sizes


def test_inclusion_proofs_for_every_event(journal70: tuple[Node, MemoryTree, list[int]]) -> None:
    node, tree, sizes = journal70
    assert [c.size for c in node.journal.checkpoints()] == sizes
    for size in sizes:
        checkpoint_root = tree.root(size)
        for seq in range(size):
            proof = node.journal.inclusion_proof(seq, size)
            assert proof.size == size and proof.checkpoint.size == size and proof.checkpoint.root == checkpoint_root
            assert proof.hashes == tree.inclusion_proof(seq, size), (seq, size)
            assert proof.event.seq == seq
            assert verify_inclusion(proof.event.leaf_hash, seq, size, proof.hashes, checkpoint_root)
            assert proof.event.leaf_hash == hashlib.sha256(b"\x00" + proof.event.body).digest()
    # Latest checkpoint by default.
    assert node.journal.inclusion_proof(0).size == 70


def test_consistency_proofs_for_every_pair(journal70: tuple[Node, MemoryTree, list[int]], backend: str) -> None:
    node, tree, sizes = journal70
    roots = [tree.root(n) for n in range(71)]
    for n in range(71):
        assert node.journal.root(n) == roots[n]
    # Every pair of sizes on SQLite (2,556 pairs). The proof arithmetic is the same on PostgreSQL, only the node
    # lookups differ, and each call is a round trip there: every old size against every signed size suffices.
    news = range(71) if backend == "sqlite" else sizes
    for new in news:
        for old in range(new + 1):
            proof = node.journal.consistency_proof(old, new)
            assert proof == tree.consistency_proof(old, new), (old, new)
            assert verify_consistency(old, new, roots[old], roots[new], proof), (old, new)


def test_proof_argument_errors(journal70: tuple[Node, MemoryTree, list[int]]) -> None:
    node, _, _ = journal70
    for old, new in ((5, 3), (-1, 3), (0, 71)):
        with pytest.raises(InvalidInput):
            node.journal.consistency_proof(old, new)
    with pytest.raises(NotFound, match="no checkpoint at size 7"):
        node.journal.inclusion_proof(0, 7)
    with pytest.raises(NotFound, match="not in the signed tree"):
        node.journal.inclusion_proof(8, 8)
    with pytest.raises(NotFound):
        node.journal.inclusion_proof(-1, 8)


def test_inclusion_proof_of_an_unsigned_event_makes_a_checkpoint(node: Node) -> None:
    (event,) = append(node, 1)
    assert node.journal.latest_checkpoint().size == event.seq  # type: ignore[union-attr]
    proof = node.journal.inclusion_proof(event.seq)
    assert proof.size == event.seq + 1
    assert node.journal.latest_checkpoint().size == event.seq + 1  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------------------

NOTE = re.compile(r"\A([^\n]+)\n(0|[1-9][0-9]*)\n([A-Za-z0-9+/]{43}=)\n\n\u2014 (\S+) ([A-Za-z0-9+/=]+)\n\Z")


def test_checkpoint_note_format(node: Node) -> None:
    append(node, 3)
    checkpoint = node.journal.checkpoint()
    size, root = node.journal.head()
    expected_size = GENESIS_EVENTS + 3
    match = NOTE.match(checkpoint.note)
    assert match, checkpoint.note
    origin, size_text, root_b64, name, sig_b64 = match.groups()
    assert origin == node.origin == name
    assert int(size_text) == size == checkpoint.size == expected_size
    assert base64.b64decode(root_b64) == root == checkpoint.root
    blob = base64.b64decode(sig_b64, validate=True)
    assert len(blob) == 4 + 64
    # Independently of the code under test: parse the verifier key and check hint and signature.
    key_name, hint_hex, key_b64 = node.signer.verifier_key.split("+", 2)
    raw_key = base64.b64decode(key_b64)
    assert key_name == node.origin and raw_key[0] == 1 and len(raw_key) == 33
    assert bytes.fromhex(hint_hex) == blob[:4] == hashlib.sha256(name.encode() + b"\n" + raw_key).digest()[:4]
    body = f"{origin}\n{size_text}\n{root_b64}\n".encode()
    Ed25519PublicKey.from_public_bytes(raw_key[1:]).verify(blob[4:], body)  # raises if bad
    head = open_note(checkpoint.note, keys_of(node))
    assert (head.origin, head.size, head.root) == (node.origin, size, root)
    assert checkpoint.to_dict() == {"origin": node.origin, "size": expected_size, "root": root.hex(), "note": checkpoint.note}


def test_checkpoint_is_idempotent_when_nothing_is_new(node: Node) -> None:
    first = node.journal.checkpoint()
    assert node.journal.checkpoint() == first
    assert len(node.journal.checkpoints()) == 1
    append(node, 1)
    second = node.journal.checkpoint()
    assert second.size == first.size + 1
    assert node.journal.checkpoint() == second
    assert [c.size for c in node.journal.checkpoints()] == [first.size, second.size]
    assert node.journal.latest_checkpoint() == second


def test_note_signed_by_another_key_is_rejected(node: Node) -> None:
    size, root = node.journal.head()
    impostor = Signer(node.origin, Ed25519PrivateKey.generate())  # same name, different key
    note = impostor.sign_checkpoint(node.origin, size, root).note
    with pytest.raises(VerificationFailed, match="no signature from a trusted key"):
        open_note(note, keys_of(node))
    # The impostor's own key does accept it: the rejection is about the key, not the format.
    assert open_note(note, [VerifierKey.parse(impostor.verifier_key)]).size == size


def test_forged_signature_with_the_right_hint_is_rejected(node: Node) -> None:
    note = node.journal.checkpoint().note
    body, line = note.split("\n\n")
    name, sig = line[2:].rstrip("\n").split(" ")
    blob = bytearray(base64.b64decode(sig))
    blob[10] ^= 0x01
    forged = f"{body}\n\n\u2014 {name} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(VerificationFailed, match="does not verify"):
        open_note(forged, keys_of(node))
    # Right name, wrong key hint: not our key's line, so no trusted signature at all.
    blob = bytearray(base64.b64decode(sig))
    blob[0] ^= 0x01
    wrong_hint = f"{body}\n\n\u2014 {name} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(VerificationFailed, match="no signature from a trusted key"):
        open_note(wrong_hint, keys_of(node))


def test_unknown_extra_signature_lines_are_ignored(node: Node) -> None:
    checkpoint = node.journal.checkpoint()
    witness = Signer("witness.example", Ed25519PrivateKey.generate())
    witness_line = witness.sign_checkpoint(node.origin, checkpoint.size, checkpoint.root).note.split("\n\n")[1]
    body, ours = checkpoint.note.split("\n\n")
    for note in (f"{body}\n\n{ours}{witness_line}", f"{body}\n\n{witness_line}{ours}"):
        head = open_note(note, keys_of(node))
        assert (head.size, head.root) == (checkpoint.size, checkpoint.root)
    # Only the witness signed: not enough.
    with pytest.raises(VerificationFailed, match="no signature from a trusted key"):
        open_note(f"{body}\n\n{witness_line}", keys_of(node))
    # Trusting both keys works too.
    assert open_note(f"{body}\n\n{witness_line}{ours}", [VerifierKey.parse(witness.verifier_key), *keys_of(node)])


def test_tampered_or_malformed_notes_are_rejected(node: Node) -> None:
    note = node.journal.checkpoint().note
    origin, size, root_b64, blank, sig_line, end = note.split("\n")
    assert blank == "" and end == ""
    other_root = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    bad = {
        "size": f"{origin}\n{int(size) + 1}\n{root_b64}\n\n{sig_line}\n",
        "root": f"{origin}\n{size}\n{other_root}\n\n{sig_line}\n",
        "origin": f"{origin}x\n{size}\n{root_b64}\n\n{sig_line}\n",
        "no signature block": f"{origin}\n{size}\n{root_b64}\n{sig_line}\n",
        "no signatures": f"{origin}\n{size}\n{root_b64}\n\n",
        "size not decimal": f"{origin}\n+{size}\n{root_b64}\n\n{sig_line}\n",
        "size leading zero": f"{origin}\n0{size}\n{root_b64}\n\n{sig_line}\n",
        "root not base64": f"{origin}\n{size}\n{root_b64[:-2]}!=\n\n{sig_line}\n",
        "short root": f"{origin}\n{size}\n{base64.b64encode(b'abc').decode()}\n\n{sig_line}\n",
        "no em dash": f"{origin}\n{size}\n{root_b64}\n\n- {sig_line[2:]}\n",
        "sig not base64": f"{origin}\n{size}\n{root_b64}\n\n{sig_line[:-4]}!!!!\n",
        "missing root line": f"{origin}\n{size}\n\n{sig_line}\n",
    }
    for what, text in bad.items():
        with pytest.raises(VerificationFailed):
            open_note(text, keys_of(node))
            pytest.fail(f"accepted a note with a bad {what}")


def test_verifier_key_parsing(node: Node) -> None:
    key = VerifierKey.parse(node.signer.verifier_key)
    assert key.name == node.origin and key.public_key == node.signer.public_key and key.hint == node.signer.key_hint
    name, hint, b64 = node.signer.verifier_key.split("+", 2)
    wrong_hint = f"{name}+{bytes(b ^ 0xFF for b in bytes.fromhex(hint)).hex()}+{b64}"
    with pytest.raises(InvalidInput, match="hint does not match"):
        VerifierKey.parse(wrong_hint)
    with pytest.raises(InvalidInput, match="hint does not match"):
        VerifierKey.parse(f"other.name+{hint}+{b64}")  # the hint binds the name too
    for text in ("nonsense", "a+b", f"{name}+zz+{b64}", f"{name}+{hint}+!!", f"{name}+{hint}+{base64.b64encode(b'x' * 33).decode()}"):
        with pytest.raises(InvalidInput):
            VerifierKey.parse(text)


# --------------------------------------------------------------------------------------------------------------
# whole-journal verification and tampering
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tamper_journal(node: Node) -> Node:
    """30 events, checkpoints at GENESIS_EVENTS (8), 12, 20, 30."""
    for count in (12 - GENESIS_EVENTS, 8, 10):
        append(node, count)
        node.journal.checkpoint()
    assert node.journal.size() == 30
    return node


def test_untampered_journal_verifies(tamper_journal: Node) -> None:
    node = tamper_journal
    report = verify(node)
    assert (report.size, report.checkpoints, report.latest_checkpoint, report.unsigned_tail) == (30, 4, 30, 0)
    assert node.journal.verify() == report  # the service method runs the same verifier
    append(node, 3)
    report = verify(node)
    assert (report.size, report.latest_checkpoint, report.unsigned_tail) == (33, 30, 3)
    assert report.to_dict()["ok"] is True and report.to_dict()["root"] == node.journal.head()[1].hex()
    with node.store.read() as conn:
        with pytest.raises(VerificationFailed):
            verify_journal(conn, [VerifierKey.parse(Signer(node.origin, Ed25519PrivateKey.generate()).verifier_key)], node.origin)
        with pytest.raises(VerificationFailed, match="origin"):
            verify_journal(conn, keys_of(node), "someone.else/origin")


def _body(raw: RawDB, seq: int) -> bytes:
    return bytes(raw.one("SELECT body FROM journal_events WHERE seq = ?", (seq,)))


@pytest.mark.parametrize("seq", [0, 9, 17, 29])
def test_tampered_event_bytes_are_detected_at_their_seq(tamper_journal: Node, raw_db: RawDB, seq: int) -> None:
    node = tamper_journal
    body = _body(raw_db, seq)
    forged = _change_a_string(body)
    assert forged != body and json.loads(forged)  # still valid, canonical JSON
    raw_db.drop_trigger("journal_events", "update")
    raw_db.execute("UPDATE journal_events SET body = ? WHERE seq = ?", (forged, seq))
    with pytest.raises(VerificationFailed) as info:
        verify(node)
    assert info.value.seq == seq
    assert f"event {seq}" in info.value.message


def _change_a_string(body: bytes) -> bytes:
    """Change one letter inside a string value, keeping the JSON valid and canonical."""
    doc = json.loads(body)
    for key, value in sorted(doc["data"].items()):
        if isinstance(value, str) and value:
            doc["data"][key] = value[:-1] + ("Z" if value[-1] != "Z" else "Y")
            return canonical(doc)
    doc["ts"] += 1
    return canonical(doc)


@pytest.mark.parametrize("seq", [3, 16, 25])
def test_tampered_event_and_leaf_hash_are_detected(tamper_journal: Node, raw_db: RawDB, seq: int) -> None:
    node = tamper_journal
    forged = _change_a_string(_body(raw_db, seq))
    raw_db.drop_trigger("journal_events", "update")
    raw_db.execute(
        "UPDATE journal_events SET body = ?, leaf_hash = ? WHERE seq = ?",
        (forged, hashlib.sha256(b"\x00" + forged).digest(), seq),
    )
    with pytest.raises(VerificationFailed) as info:
        verify(node)
    assert info.value.seq is not None and info.value.seq <= 29


def test_consistent_rewrite_of_history_is_caught_by_the_signed_checkpoints(tamper_journal: Node, raw_db: RawDB) -> None:
    """An attacker rewrites an event AND every hash above it AND the head: only the signatures can tell."""
    node = tamper_journal
    seq = 14
    bodies = [_body(raw_db, s) for s in range(30)]
    bodies[seq] = _change_a_string(bodies[seq])
    forged_tree = MemoryTree(bodies)
    for table in ("journal_events", "journal_nodes"):
        raw_db.drop_trigger(table, "update")
    raw_db.execute(
        "UPDATE journal_events SET body = ?, leaf_hash = ? WHERE seq = ?",
        (bodies[seq], hashlib.sha256(b"\x00" + bodies[seq]).digest(), seq),
    )
    for level, idx, _ in _journal_node_rows(node):
        new = forged_tree.fetch([(level, idx)])[(level, idx)]
        raw_db.execute("UPDATE journal_nodes SET hash = ? WHERE level = ? AND idx = ?", (new, level, idx))
    raw_db.execute("UPDATE journal_head SET root = ? WHERE id = 1", (forged_tree.root(),))
    assert node.journal.head()[1] == forged_tree.root()

    with pytest.raises(VerificationFailed, match="checkpoint") as info:
        verify(node)
    assert info.value.seq == 19  # the first checkpoint covering event 14 is the one at size 20
    # The node itself refuses to sign the rewritten history.
    append(node, 1)
    with pytest.raises(VerificationFailed, match="refusing to sign"):
        node.journal.checkpoint()


def test_rewrite_including_checkpoint_root_column_is_still_refused_by_the_signer(
    tamper_journal: Node, raw_db: RawDB
) -> None:
    """The checkpoint table's root column is a copy of what the note says; the signed note is what counts.
    An attacker who rewrites history and also that column (but cannot forge notes) must not get the node to
    sign a checkpoint that forks from its own earlier signed ones."""
    node = tamper_journal
    seq = 14
    bodies = [_body(raw_db, s) for s in range(30)]
    bodies[seq] = _change_a_string(bodies[seq])
    forged_tree = MemoryTree(bodies)
    for table in ("journal_events", "journal_nodes", "journal_checkpoints"):
        raw_db.drop_trigger(table, "update")
    raw_db.execute(
        "UPDATE journal_events SET body = ?, leaf_hash = ? WHERE seq = ?",
        (bodies[seq], hashlib.sha256(b"\x00" + bodies[seq]).digest(), seq),
    )
    for level, idx, _ in _journal_node_rows(node):
        raw_db.execute(
            "UPDATE journal_nodes SET hash = ? WHERE level = ? AND idx = ?",
            (forged_tree.fetch([(level, idx)])[(level, idx)], level, idx),
        )
    raw_db.execute("UPDATE journal_head SET root = ? WHERE id = 1", (forged_tree.root(),))
    for size in (20, 30):
        raw_db.execute("UPDATE journal_checkpoints SET root = ? WHERE size = ?", (forged_tree.root(size), size))
    with pytest.raises(VerificationFailed):
        verify(node)
    append(node, 1)
    with pytest.raises(VerificationFailed):
        node.journal.checkpoint()
        pytest.fail("the node signed a checkpoint over a history that contradicts its own signed checkpoint at 30")


def test_deleted_events_are_detected(tamper_journal: Node, raw_db: RawDB) -> None:
    node = tamper_journal
    raw_db.drop_trigger("journal_events", "delete")
    raw_db.execute("DELETE FROM journal_events WHERE seq = 29")
    with pytest.raises(VerificationFailed) as info:
        verify(node)
    assert info.value.seq == 29
    raw_db.execute("DELETE FROM journal_events WHERE seq = 10")
    with pytest.raises(VerificationFailed, match="event 10 is missing") as info:
        verify(node)
    assert info.value.seq == 10


def test_deleted_unsigned_tail_event_is_detected(tamper_journal: Node, raw_db: RawDB) -> None:
    node = tamper_journal
    append(node, 2)  # 30, 31: not covered by a checkpoint
    raw_db.drop_trigger("journal_events", "delete")
    raw_db.execute("DELETE FROM journal_events WHERE seq = 31")
    with pytest.raises(VerificationFailed):
        verify(node)


def test_tampered_journal_node_is_detected(tamper_journal: Node, raw_db: RawDB) -> None:
    node = tamper_journal
    raw_db.drop_trigger("journal_nodes", "update")
    raw_db.execute("UPDATE journal_nodes SET hash = ? WHERE level = 2 AND idx = 3", (hashlib.sha256(b"forged").digest(),))
    with pytest.raises(VerificationFailed, match="level 2, index 3") as info:
        verify(node)
    assert info.value.seq == 12


def test_tampered_checkpoint_signature_is_detected(tamper_journal: Node, raw_db: RawDB) -> None:
    node = tamper_journal
    note = raw_db.one("SELECT note FROM journal_checkpoints WHERE size = 12")
    body, line = note.split("\n\n")
    prefix, sig = line.rstrip("\n").rsplit(" ", 1)
    blob = bytearray(base64.b64decode(sig))
    blob[40] ^= 0x80
    forged = f"{body}\n\n{prefix} {base64.b64encode(bytes(blob)).decode()}\n"
    raw_db.drop_trigger("journal_checkpoints", "update")
    raw_db.execute("UPDATE journal_checkpoints SET note = ? WHERE size = 12", (forged,))
    with pytest.raises(VerificationFailed, match="does not verify"):
        verify(node)


def test_tampered_head_is_detected(tamper_journal: Node, raw_db: RawDB) -> None:
    node = tamper_journal
    raw_db.execute("UPDATE journal_head SET root = ? WHERE id = 1", (hashlib.sha256(b"forged").digest(),))
    with pytest.raises(VerificationFailed, match="head"):
        verify(node)
    # And the writer refuses to build on a head its stored nodes do not reproduce.
    fresh = royalty.open_node(node.home)
    try:
        with pytest.raises(VerificationFailed), fresh.store.write() as conn:
            fresh.journal.append(conn, "test.after_tamper", {})
    finally:
        fresh.close()


# --------------------------------------------------------------------------------------------------------------
# proof bundles
# --------------------------------------------------------------------------------------------------------------


def _bundle(node: Node, seq: int, size: int | None = None) -> dict[str, Any]:
    # Through JSON text, as it would travel.
    return json.loads(json.dumps(node.journal.inclusion_proof(seq, size).to_dict()))


def test_proof_bundle_verifies_without_the_database(tamper_journal: Node, home: Path) -> None:
    node = tamper_journal
    keys = keys_of(node)
    bundles = {seq: _bundle(node, seq) for seq in range(30)}
    old = _bundle(node, 7, 12)
    node.close()  # the database is not needed any more
    for seq, bundle in bundles.items():
        head = verify_proof_bundle(bundle, keys)
        assert (head.origin, head.size, seq) == (node.origin, 30, bundle["seq"])
        assert json.loads(bundle["event"])["seq"] == seq
        assert bundle["kind"] == "royalty.journal.inclusion_proof"
        assert bundle["leaf_hash"] == hashlib.sha256(b"\x00" + bundle["event"].encode()).hexdigest()
    assert verify_proof_bundle(old, keys).size == 12


def _variants(text: str) -> list[tuple[int, str]]:
    """Every single-character change of ``text`` to a neighbouring character."""
    out = []
    for i, c in enumerate(text):
        replacement = chr(ord(c) ^ 1) if ord(c) ^ 1 not in (0x0A, 0x0D) else chr(ord(c) ^ 2)
        out.append((i, text[:i] + replacement + text[i + 1 :]))
    return out


def test_proof_bundle_with_a_changed_event_byte_is_rejected(tamper_journal: Node) -> None:
    node = tamper_journal
    keys = keys_of(node)
    bundle = _bundle(node, 13)
    for i, event in _variants(bundle["event"]):
        with pytest.raises(RoyaltyError):
            verify_proof_bundle({**bundle, "event": event}, keys)
            pytest.fail(f"accepted event text changed at {i}: {event!r}")


def test_proof_bundle_with_a_changed_proof_or_note_is_rejected(tamper_journal: Node) -> None:
    node = tamper_journal
    keys = keys_of(node)
    bundle = _bundle(node, 13)
    assert len(bundle["proof"]) == 5
    for j, h in enumerate(bundle["proof"]):
        for i in (0, 31, 63):
            changed = h[:i] + format(int(h[i], 16) ^ 1, "x") + h[i + 1 :]
            proof = [*bundle["proof"][:j], changed, *bundle["proof"][j + 1 :]]
            with pytest.raises(VerificationFailed):
                verify_proof_bundle({**bundle, "proof": proof}, keys)
    for proof in (bundle["proof"][:-1], [*bundle["proof"], bundle["proof"][0]], bundle["proof"][::-1], []):
        with pytest.raises(VerificationFailed):
            verify_proof_bundle({**bundle, "proof": proof}, keys)
    with pytest.raises(InvalidInput):
        verify_proof_bundle({**bundle, "proof": ["zz"]}, keys)
    # The signed part of the note: origin, size and root lines.
    note = bundle["checkpoint"]
    signed_body = note.split("\n\n")[0]
    for i, changed in _variants(signed_body):
        with pytest.raises(VerificationFailed):
            verify_proof_bundle({**bundle, "checkpoint": changed + note[len(signed_body) :]}, keys)
            pytest.fail(f"accepted a note changed at {i}")
    # The signature itself.
    body, line = note.split("\n\n")
    prefix, sig = line.rstrip("\n").rsplit(" ", 1)
    blob = bytearray(base64.b64decode(sig))
    blob[20] ^= 1
    with pytest.raises(VerificationFailed):
        verify_proof_bundle({**bundle, "checkpoint": f"{body}\n\n{prefix} {base64.b64encode(bytes(blob)).decode()}\n"}, keys)
    # Another event's seq, or a proof for another tree size's note.
    with pytest.raises(VerificationFailed):
        verify_proof_bundle({**bundle, "seq": 14}, keys)
    other = _bundle(node, 13, 20)
    with pytest.raises(VerificationFailed):
        verify_proof_bundle({**bundle, "checkpoint": other["checkpoint"]}, keys)
    # Missing fields.
    for missing in ("event", "seq", "proof", "checkpoint"):
        with pytest.raises(InvalidInput):
            verify_proof_bundle({k: v for k, v in bundle.items() if k != missing}, keys)
    # Untrusted key.
    with pytest.raises(VerificationFailed):
        verify_proof_bundle(bundle, [VerifierKey.parse(Signer(node.origin, Ed25519PrivateKey.generate()).verifier_key)])
    assert verify_proof_bundle(bundle, keys).size == 30  # the original still verifies


# --------------------------------------------------------------------------------------------------------------
# the verifier shares no code with the writer
# --------------------------------------------------------------------------------------------------------------

WRITER = {"royalty.journal.merkle", "royalty.journal.checkpoint", "royalty.journal.canonical", "royalty.journal.log"}


def _imports(module_name: str, source: str) -> set[str]:
    """Absolute names of every module (and module-or-attribute) the source of module ``module_name`` imports."""
    package = module_name.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
            "import_module",
            "__import__",
        ):
            names.add("<dynamic import>")
    return names


def _module_imports(module: Any) -> set[str]:
    return _imports(module.__name__, Path(module.__file__).read_text(encoding="utf-8"))


def _writer_imports(names: set[str]) -> set[str]:
    return {n for n in names if any(n == w or n.startswith(w + ".") for w in WRITER) or n == "<dynamic import>"}


def test_verifier_does_not_import_the_writer() -> None:
    from royalty.journal import verify as verify_module

    audit_imports = _module_imports(audit)
    verify_imports = _module_imports(verify_module)
    # The resolver works (so an empty result below means something).
    assert "royalty.journal.verify" in audit_imports and "royalty.store.schema" in audit_imports
    assert "hashlib" in verify_imports
    assert _writer_imports(audit_imports) == set()
    assert _writer_imports(verify_imports) == set()
    # verify.py promises not to import anything from royalty at all.
    assert {n for n in verify_imports if n.startswith("royalty")} == set()
    # The check itself catches every form such an import can take.
    for source in (
        "from . import merkle",
        "from .merkle import fold",
        "from .log import Journal as J",
        "import royalty.journal.checkpoint",
        "from royalty.journal import canonical",
        "from ..journal import canonical",
        "def f():\n    from . import log",
        "import importlib\nimportlib.import_module('royalty.journal.merkle')",
    ):
        assert _writer_imports(_imports("royalty.journal.audit", source)), source
    assert _writer_imports(_imports("royalty.journal.audit", "from .verify import hash_leaf\nimport json")) == set()


def test_failed_verification_releases_its_server_cursors(pg_schemas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """On PostgreSQL, verify_journal streams rows with server-side cursors (yield_per); stopping at the first bad
    event must close them, not leave them open on the caller's connection until garbage collection."""
    node, _ = royalty.init_node(tmp_path / "home", database_url=pg_schemas.new_url())
    try:
        append(node, 10)
        raw = RawDB(node.store.url)
        try:
            raw.drop_trigger("journal_events", "update")
            raw.execute("UPDATE journal_events SET body = ? WHERE seq = 3", (_change_a_string(_body(raw, 3)),))
        finally:
            raw.close()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            seq, open_cursors = _verify_and_list_cursors(node)
            gc.collect()
    finally:
        node.close()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert seq == 3
    assert open_cursors == []
    assert leaks == []


def _verify_and_list_cursors(node: Node) -> tuple[int | None, list[str]]:
    seq: int | None = -1
    with node.store.read() as conn:
        try:
            verify_journal(conn, keys_of(node), node.origin)
        except VerificationFailed as exc:
            seq = exc.seq
        cursors = [str(name) for (name,) in conn.exec_driver_sql("SELECT name FROM pg_cursors").all()]
    return seq, cursors
