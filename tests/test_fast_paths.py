"""The speed paths of issue 4 against slow, obvious references (``shared/reference/ledger.md`` §7, style.md §9):
canonical JSON by hand vs ``canonical.canonical_text``, the journal's spliced event envelope, the ledger's directly
encoded event data (``core._item_texts`` / ``core._event_data_text``), all on random inputs; and the storage
paths behind them: ``Store.write_driver`` (commit, rollback, error translation, one SQLite connection kept warm),
the background WAL checkpointer, and a group commit leader that waits only for callers that keep coming.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RawDB
from hypothesis import given, settings
from hypothesis import strategies as st

import royalty
from royalty import Node
from royalty.errors import InvalidInput, StorageError
from royalty.journal.canonical import canonical_json, canonical_text
from royalty.ledger import AMOUNT_MAX, AccountSpec, Result, TransferFlags, TransferSpec
from royalty.ledger.core import _event_data_text, _item_texts, hex_id

# --------------------------------------------------------------------------------------------------------------
# the slow, obvious canonical encoder
# --------------------------------------------------------------------------------------------------------------

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def reference_json(value: Any) -> str:
    """RFC 8259 written out: object keys sorted by code point, no whitespace, only ``"``, ``\\`` and the C0
    controls escaped (short forms where JSON has them, else ``\\u00xx``), every other character as itself."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        assert -(2**63) <= value < 2**63
        return str(value)
    if type(value) is str:
        out = []
        for ch in value:
            out.append(_SHORT.get(ch) or (f"\\u{ord(ch):04x}" if ord(ch) < 0x20 else ch))
        return '"' + "".join(out) + '"'
    if type(value) in (list, tuple):
        return "[" + ",".join(reference_json(v) for v in value) + "]"
    if type(value) is dict:
        return "{" + ",".join(reference_json(k) + ":" + reference_json(value[k]) for k in sorted(value)) + "}"
    raise AssertionError(f"not a JSON value: {value!r}")


# Strings that exercise escaping: quotes, backslashes, controls, DEL, non-ASCII, astral characters.
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", '"', "\\", "\x00", "\x1f", "\x7f", "é", "\u2028", "😀", 'a"b\\c\nd', "\u0000\u0008\u000c"]
)
_INT = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**53 + 1])
_JSON = st.recursive(
    st.none() | st.booleans() | _INT | _TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_TEXT, inner, max_size=5),
    max_leaves=25,
)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """The same kinds of values for tests that hold a node (Hypothesis wants no per-example fixtures there)."""
    kind = rng.randrange(7 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(-(2**63), 2**63)])
    if kind in (3, 4):
        return random_text(rng)
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_text(rng: random.Random) -> str:
    pool = ['"', "\\", "\x00", "\x1f", "\x7f", "é", "\u2028", "😀", "a", "Z", " ", "\n"]
    return "".join(rng.choice(pool) for _ in range(rng.randrange(8)))


@settings(max_examples=400, deadline=None)
@given(_JSON)
def test_canonical_text_equals_the_reference_encoder(value: Any) -> None:
    assert canonical_text(value) == reference_json(value)
    assert canonical_json(value) == reference_json(value).encode("utf-8")
    assert json.loads(canonical_json(value)) == value


def test_canonical_text_still_refuses_what_it_refused() -> None:
    for bad in (1.5, 2**63, -(2**63) - 1, {1: "x"}, {"a": [b"x"]}):
        with pytest.raises(InvalidInput):
            canonical_text(bad)
    with pytest.raises(InvalidInput, match="lone surrogate"):
        canonical_json("\ud800")


# --------------------------------------------------------------------------------------------------------------
# the journal's spliced envelope
# --------------------------------------------------------------------------------------------------------------


def test_event_bytes_equal_the_reference_envelope(node: Node) -> None:
    """Random data and actors through append_many, and pre-encoded data through append_encoded: every event's
    bytes are the reference encoding of {"v", "seq", "type", "ts", "actor", "data"}, and the journal verifies."""
    rng = random.Random(7)
    examples = [{"k": random_json(rng), **{f"x{i}": random_json(rng) for i in range(rng.randrange(4))}} for _ in range(40)]
    items = [("test.fast_path", data, rng.choice([None, "operator", 'we"ird\\actor', "é😀"])) for data in examples]
    with node.store.write() as conn:
        events = node.journal.append_many(conn, items)
        raw = conn.connection.driver_connection
        seqs = node.journal.append_encoded(raw, [("test.encoded", reference_json(d), a) for _, d, a in items[:10]])
    assert seqs == list(range(events[-1].seq + 1, events[-1].seq + 11))
    for event, (type_, data, actor) in zip(events, items, strict=True):
        envelope = {"v": 1, "seq": event.seq, "type": type_, "ts": event.ts_ms, "actor": actor, "data": data}
        assert event.body == reference_json(envelope).encode("utf-8")
        assert node.journal.event(event.seq).data == data
    for seq, (_, data, actor) in zip(seqs, items[:10], strict=True):
        stored = node.journal.event(seq)
        assert (stored.type, stored.actor, stored.data) == ("test.encoded", actor, data)
    node.journal.verify()


def test_a_bad_item_refuses_the_whole_batch_before_anything_is_written(node: Node) -> None:
    size, root = node.journal.head()
    with node.store.write() as conn:
        for items in ([("test.ok", {"n": 1}, None), ("test.ok", {"n": 1.5}, None)],
                      [("test.ok", {"n": 1}, None), ("test.ok", {"n": 1}, 1.5)],  # nor can an actor be a float
                      [("test.ok", {"n": 1}, None), ("Bad.type", {}, None)]):
            with pytest.raises(InvalidInput):
                node.journal.append_many(conn, items)  # type: ignore[arg-type]
    assert node.journal.head() == (size, root)


# --------------------------------------------------------------------------------------------------------------
# the ledger's event data, encoded directly
# --------------------------------------------------------------------------------------------------------------


def reference_item(s: TransferSpec, r: Result, transfers: dict[int, Any]) -> dict[str, Any]:
    """What the ledger journaled per event before its direct encoder: a dict, then the canonical encoder."""
    src = transfers[s.id] if r is Result.ok else s
    amount = src.amount
    return {
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
    }


def _random_call(rng: random.Random) -> tuple[list[TransferSpec], list[Result], dict[int, Any]]:
    ids = lambda: rng.choice([0, 1, 2**128 - 1, rng.getrandbits(128), rng.getrandbits(20)])
    user_data = [None, "", "plain", 'quo"te', "back\\slash", "line\nbreak\t\x01", "é😀\u2028", "x" * 1024]
    specs, results, transfers = [], [], {}
    for _ in range(rng.randint(1, 30)):
        amount = rng.choice([None, 0, 1, -5, -(2**63), AMOUNT_MAX, AMOUNT_MAX + 1, 2**128, rng.getrandbits(40)])
        s = TransferSpec(ids(), ids(), ids(), amount, pending_id=rng.choice([0, ids()]),
                         timeout=rng.choice([0, 2**32 - 1]), ledger=rng.choice([0, 1, 2**32 - 1]),
                         code=rng.choice([0, 1, 2**16 - 1]), flags=rng.randrange(1 << 16),
                         user_data=rng.choice(user_data))
        r = rng.choice(list(Result))
        if r is Result.ok:  # as applied: accounts, amount, ledger and code may come from the pending transfer
            transfers[s.id] = TransferSpec(s.id, ids(), ids(), rng.getrandbits(62), ledger=rng.randint(1, 9),
                                           code=rng.randint(1, 9))
        specs.append(s)
        results.append(r)
    return specs, results, transfers


def test_ledger_event_text_is_canonical() -> None:
    """``_item_texts`` / ``_event_data_text`` against the dict the ledger used to build and the reference
    encoder, on random calls: every result, ids at the bounds, amounts None / negative / above AMOUNT_MAX,
    user_data that needs escaping, and composite operations' ``extra`` fields."""
    rng = random.Random(2024)
    extras: list[dict[str, Any] | None] = [
        None, {}, {"kind": "stake"}, {"a": 1, "zz": [1, "x"], "é": {"n": None}},
        {"timestamp": "overridden", "transfers": "overridden", "expired": "overridden"},
    ]
    for _ in range(300):
        specs, results, transfers = _random_call(rng)
        hx = {0: "0" * 32}
        if rng.random() < 0.5:  # the batch's formatted ids, when it has them
            hx.update({i: hex_id(i) for s in specs for i in (s.id, s.debit_account_id, s.credit_account_id)})
        items = [reference_item(s, r, transfers) for s, r in zip(specs, results, strict=True)]
        if any(type(i["amount"]) is int and i["amount"] < -(2**63) for i in items):
            continue
        expected_items = reference_json(items)
        assert "[" + ",".join(_item_texts(specs, results, transfers, hx)) + "]" == expected_items
        extra = rng.choice(extras)
        now = rng.randrange(2**41)
        expired = [hex_id(rng.getrandbits(128)) for _ in range(rng.randint(0, 3))]
        data = {**(extra or {}), "timestamp": now, "transfers": items, "expired": expired}
        got = _event_data_text(extra, str(now), reference_json(expired), expected_items)
        assert got == reference_json(data)
        sweep = {"timestamp": now, "expired": expired}
        assert _event_data_text(None, str(now), reference_json(expired), None) == reference_json(sweep)


def test_ledger_event_text_refuses_what_canonical_json_refuses() -> None:
    below = TransferSpec(5, 1, 2, -(2**63) - 1, ledger=1, code=1)
    with pytest.raises(InvalidInput, match=r"transfers\[0\]\.amount"):
        list(_item_texts([below], [Result.amount_out_of_range], {}, {}))
    with pytest.raises(InvalidInput):
        _event_data_text({"x": 1.5}, "1", "[]", "[]")
    with pytest.raises(InvalidInput):
        _event_data_text({1: "x"}, "1", "[]", "[]")  # type: ignore[dict-item]


def test_ledger_events_round_trip_and_audit(node: Node) -> None:
    """End to end: calls whose user_data needs escaping, failures and an amount above AMOUNT_MAX are journaled
    as the dicts the audit replays; the journal and the ledger audit pass."""
    L = node.ledger
    assert L.create_accounts([AccountSpec(1, 1, 1), AccountSpec(2, 1, 1)]) == [Result.ok] * 2
    calls = [
        [TransferSpec(10, 1, 2, 5, ledger=1, code=1, user_data='q"uote\\ \n é😀')],
        [TransferSpec(11, 1, 2, AMOUNT_MAX + 1, ledger=1, code=1), TransferSpec(12, 1, 1, 1, ledger=1, code=1)],
        [TransferSpec(13, 1, 2, 7, ledger=1, code=1, flags=int(TransferFlags.PENDING), timeout=60),
         TransferSpec(14, pending_id=13, flags=int(TransferFlags.POST_PENDING_TRANSFER))],
        [TransferSpec(10, 1, 2, 5, ledger=1, code=1, user_data='q"uote\\ \n é😀')],
    ]
    size = node.journal.size()
    answers = [L.create_transfers(c) for c in calls]
    assert answers == [[Result.ok], [Result.amount_out_of_range, Result.accounts_must_be_different],
                       [Result.ok, Result.ok], [Result.exists]]
    events = node.journal.events(after=size - 1)
    assert [e.data["transfers"][0]["id"] for e in events] == [hex_id(c[0].id) for c in calls]
    assert events[0].data["transfers"][0]["user_data"] == 'q"uote\\ \n é😀'
    assert events[1].data["transfers"][0]["amount"] == str(AMOUNT_MAX + 1)
    assert events[2].data["transfers"][1]["amount"] == 7  # a full post journals the pending transfer's amount
    node.journal.verify()
    assert node.ledger_audit().ok


# --------------------------------------------------------------------------------------------------------------
# Store.write_driver
# --------------------------------------------------------------------------------------------------------------


def test_write_driver_commits_or_rolls_back_whole(node: Node) -> None:
    size = node.journal.size()
    with node.store.write_driver() as raw:
        node.journal.append_encoded(raw, [("test.one", "{}", None)])
    assert node.journal.size() == size + 1
    with pytest.raises(RuntimeError), node.store.write_driver() as raw:
        node.journal.append_encoded(raw, [("test.two", "{}", None)])
        raise RuntimeError("boom")
    assert node.journal.size() == size + 1
    # The journal's cached border is not fooled by the rolled-back append.
    with node.store.write_driver() as raw:
        node.journal.append_encoded(raw, [("test.three", "{}", None)])
    assert [e.type for e in node.journal.events(after=size - 1)] == ["test.one", "test.three"]
    node.journal.verify()


def test_write_driver_lets_integrity_errors_through(node: Node) -> None:
    dbapi = node.store.engine.dialect.dbapi
    with pytest.raises(dbapi.IntegrityError), node.store.write_driver() as raw:
        mark = "?" if node.store.backend == "sqlite" else "%s"
        raw.execute(f"INSERT INTO journal_head (id, size, root) VALUES ({mark}, 0, {mark})", (1, b""))
    with node.store.write_driver() as raw:  # and the next transaction runs normally
        node.journal.append_encoded(raw, [("test.after", "{}", None)])
    node.journal.verify()


def test_write_driver_translates_a_busy_database_and_keeps_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "busy"
    royalty.init_node(home)[0].close()
    monkeypatch.setenv("ROYALTY_SQLITE_BUSY_TIMEOUT_MS", "100")
    node = royalty.open_node(home)
    try:
        with node.store.write_driver() as first:
            pass
        blocker = sqlite3.connect(home / "royalty.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageError, match="database error: database is locked"), node.store.write_driver():
                pass
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # One connection for every write_driver transaction (its page cache stays warm), and it still works.
        with node.store.write_driver() as again:
            node.journal.append_encoded(again, [("test.after", "{}", None)])
        assert again is first
        node.journal.verify()
    finally:
        node.close()


def test_write_driver_holds_the_sqlite_write_lock_from_its_start(tmp_path: Path) -> None:
    node, _ = royalty.init_node(tmp_path / "n")
    other = sqlite3.connect(tmp_path / "n" / "royalty.db", timeout=0, isolation_level=None)
    try:
        with node.store.write_driver(), pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
        node.close()


# --------------------------------------------------------------------------------------------------------------
# the WAL checkpointer
# --------------------------------------------------------------------------------------------------------------


def _checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "royalty-wal-checkpoint"]


def test_the_checkpointer_copies_the_wal_in_the_background_and_stops_with_the_store(tmp_path: Path) -> None:
    before = len(_checkpointer_threads())
    node, _ = royalty.init_node(tmp_path / "n")
    db = tmp_path / "n" / "royalty.db"
    assert node.ledger.create_accounts([AccountSpec(1, 1, 1), AccountSpec(2, 1, 1)]) == [Result.ok] * 2
    size_before = db.stat().st_size
    for k in range(50):
        assert node.ledger.create_transfers([TransferSpec(100 + k, 1, 2, 1, ledger=1, code=1)]) == [Result.ok]
    assert len(_checkpointer_threads()) == before + 1
    # Frames reach the database file without any commit checkpointing them (the WAL is far below 10,000 pages).
    deadline = time.monotonic() + 10
    while db.stat().st_size == size_before:
        assert time.monotonic() < deadline, "no checkpoint ran"
        time.sleep(0.05)
    node.close()
    assert len(_checkpointer_threads()) == before
    reopened = royalty.open_node(tmp_path / "n")
    try:
        assert reopened.ledger.balance(2).credits_posted == 50
        reopened.journal.verify()
    finally:
        reopened.close()


# --------------------------------------------------------------------------------------------------------------
# group commit: waiting for callers
# --------------------------------------------------------------------------------------------------------------


def test_a_leader_waits_only_while_callers_keep_coming(node: Node, raw_db: RawDB) -> None:
    """After a group of several calls, a lone call that nobody follows commits after one gap (0.3 ms), not after
    the whole window (here 2 s): callers that are not looping are not waited for."""
    L = node.ledger
    assert L.create_accounts([AccountSpec(1, 1, 1), AccountSpec(2, 1, 1)]) == [Result.ok] * 2
    L.group_window_ms = 2_000
    answers: list[Any] = [None] * 4

    def work(k: int) -> None:
        answers[k] = L.create_transfers([TransferSpec(10 + k, 1, 2, 1, ledger=1, code=1)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    raw_db.execute("BEGIN IMMEDIATE" if raw_db.backend == "sqlite" else "BEGIN")
    if raw_db.backend == "postgresql":
        raw_db.execute("SELECT size FROM journal_head FOR UPDATE")
    try:
        threads[0].start()
        deadline = time.monotonic() + 10
        while not L._leading:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        for t in threads[1:]:
            t.start()
        while len(L._queue) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    finally:
        raw_db.execute("COMMIT")
    for t in threads:
        t.join()
    assert answers == [[Result.ok]] * 4 and L._last_group == 3  # the leader's own call, then the three queued
    started = time.monotonic()
    assert L.create_transfers([TransferSpec(20, 1, 2, 1, ledger=1, code=1)]) == [Result.ok]
    assert time.monotonic() - started < 1.0
