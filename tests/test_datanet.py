"""Datanets, at the library level (``node.datanets``), on SQLite and PostgreSQL: record schemas and ids, file
formats, contributing (partial success, exact and near duplicates, quotas and limits, all-or-nothing batches),
curation and who may do what, withdraw and purge, versions (immutability, Merkle roots, proofs around the
256-member block boundary, tampered bundles), export and re-import, and the journal trail of all of it.

Reference values come from ``royalty.journal.merkle.MemoryTree`` (checked against RFC 6962 in test_merkle.py);
tampering with stored versions is done with plain sqlite3/psycopg (``raw_db``), as an attacker would.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import random
import unicodedata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FREE_PUBLISHING, Clock, RawDB
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from royalty import Node
from royalty.datanet import verify_proof
from royalty.datanet.formats import read_rows
from royalty.datanet.records import RecordError, make_record, split_row
from royalty.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, PermissionDenied, VerificationFailed
from royalty.journal.checkpoint import Signer
from royalty.journal.merkle import MemoryTree
from royalty.journal.verify import hash_leaf, verify_inclusion

DAY_MS = 86_400_000


@pytest.fixture
def genesis_params() -> dict[str, Any]:
    """These tests are about datanets: publishing is free here (tests/test_fees.py covers the publishing fee)."""
    return FREE_PUBLISHING


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def person(node: Node, name: str) -> str:
    return node.accounts.create(name, with_key=False)[0].id


def make_dn(
    node: Node,
    owner: str,
    slug: str = "corpus",
    *,
    kind: str = "text",
    policy: str = "open",
    licenses: tuple[str, ...] = ("CC-BY-4.0",),
    **limits: Any,
) -> str:
    limits.setdefault("near_duplicate_threshold", 0.0)
    node.datanets.create(slug, title=slug.title(), kind=kind, licenses=list(licenses), policy=policy, owner=owner, limits=limits)
    return slug


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def texts(n: int, tag: str = "t", seed: int = 0) -> list[str]:
    """``n`` distinct texts that are not near-duplicates of one another."""
    rng = random.Random(f"{tag}-{seed}")
    return [f"{tag} {i} " + " ".join(f"w{rng.randrange(10**6)}" for _ in range(12)) for i in range(n)]


def text_id(text: str) -> str:
    return make_record("text", {"text": text}).id


def event_types(node: Node) -> list[str]:
    return [e.type for e in node.journal.events(limit=100_000)]


def contribute(node: Node, slug: str, who: str, items: list[str], **kw: Any) -> Any:
    return node.datanets.contribute_records(slug, [{"text": t} for t in items], contributor=who, **kw)


def long_text(seed: int, words: int = 200) -> list[str]:
    rng = random.Random(seed)
    return [f"word{rng.randrange(10**6)}" for _ in range(words)]


# --------------------------------------------------------------------------------------------------------------
# records: schemas and ids
# --------------------------------------------------------------------------------------------------------------


def test_text_schema_and_id_is_sha256_of_canonical_content() -> None:
    record = make_record("text", {"text": "Hello, wörld"})
    assert record.fields == {"text": "Hello, wörld"}
    assert record.content == '{"text":"Hello, wörld"}'.encode()
    assert record.id == hashlib.sha256(record.content).hexdigest()
    for bad, field in [({}, "text"), ({"text": ""}, "text"), ({"text": "   "}, "text"), ({"text": 5}, "text"), ({"text": "a\x00b"}, "text")]:
        with pytest.raises(RecordError) as info:
            make_record("text", bad)
        assert info.value.field == field


def test_instruction_schema_with_optional_system() -> None:
    plain = make_record("instruction", {"prompt": "2+2?", "response": "4"})
    assert plain.fields == {"prompt": "2+2?", "response": "4"}
    assert make_record("instruction", {"prompt": "2+2?", "response": "4", "system": ""}).id == plain.id
    with_system = make_record("instruction", {"system": "Be brief.", "prompt": "2+2?", "response": "4"})
    assert with_system.fields["system"] == "Be brief." and with_system.id != plain.id
    assert with_system.content == b'{"prompt":"2+2?","response":"4","system":"Be brief."}'
    with pytest.raises(RecordError) as info:
        make_record("instruction", {"prompt": "only a prompt"})
    assert info.value.field == "response"


def test_chat_schema_roles_and_assistant_turn() -> None:
    ok = make_record("chat", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    assert [m["role"] for m in ok.fields["messages"]] == ["system", "user", "assistant"]
    cases = [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),  # no assistant turn
        ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "messages[0].role"),
        ({"messages": [{"role": "assistant", "content": "y", "name": "z"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}, "messages[1].content"),
    ]
    for raw, field in cases:
        with pytest.raises(RecordError) as info:
            make_record("chat", raw)
        assert info.value.field == field, raw


def test_ids_stable_under_nfc_and_key_order() -> None:
    composed, decomposed = "café", "cafe\u0301"
    assert composed != decomposed
    assert text_id(composed) == text_id(decomposed)
    assert make_record("text", {"text": decomposed}).fields["text"] == unicodedata.normalize("NFC", decomposed)
    a = make_record("instruction", {"prompt": "p", "response": "r", "system": "s"})
    b = make_record("instruction", {"system": "s", "response": "r", "prompt": "p"})
    assert a.id == b.id and a.content == b.content
    chat1 = make_record("chat", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": decomposed}]})
    chat2 = make_record("chat", {"messages": [{"content": "x", "role": "user"}, {"content": composed, "role": "assistant"}]})
    assert chat1.id == chat2.id
    assert text_id("café ") != text_id(composed)  # content matters byte for byte after NFC


def test_unknown_fields_are_named_and_metadata_is_split() -> None:
    fields, meta = split_row("text", {"text": "x", "license": "MIT", "tags": ["a"], "contribution_id": "ab"})
    assert fields == {"text": "x"} and meta == {"license": "MIT", "tags": ["a"]}
    with pytest.raises(RecordError) as info:
        split_row("text", {"text": "x", "colour": "red"})
    assert info.value.field == "colour" and "'colour'" in info.value.message


def test_row_metadata_overrides_file_defaults(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice, licenses=("CC-BY-4.0", "MIT"))
    rows = [
        {"text": "first"},
        {"text": "second", "license": "MIT", "source": "https://example.org/2", "consent": "opt-in", "tags": ["Math", "qa"]},
        {"text": "third", "tags": "x,y"},
        {"text": "fourth", "license": "GPL-3.0"},
        {"text": "fifth", "colour": "red"},
    ]
    report = node.datanets.contribute_file(
        "corpus", jsonl(rows), "rows.jsonl", contributor=alice, license="CC-BY-4.0", consent="given", tags="default"
    )
    assert len(report.accepted) == 3
    got = {c.record["text"]: c for c in node.datanets.contributions("corpus")}
    assert (got["first"].license, got["first"].source, got["first"].consent, got["first"].tags) == ("CC-BY-4.0", "rows.jsonl", "given", ("default",))
    assert (got["second"].license, got["second"].source, got["second"].consent, got["second"].tags) == ("MIT", "https://example.org/2", "opt-in", ("math", "qa"))
    assert got["third"].tags == ("x", "y") and got["third"].license == "CC-BY-4.0"
    rejected = {r["line"]: r for r in report.to_dict()["rejected"]}
    assert set(rejected) == {4, 5}
    assert rejected[4]["field"] == "license" and "not accepted" in rejected[4]["reason"]
    assert rejected[5]["field"] == "colour" and "'colour'" in rejected[5]["reason"]


# --------------------------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------------------------


def test_jsonl_blank_lines_and_line_numbers() -> None:
    data = b'{"text": "a"}\n\n   \n{"text": "b"}\r\nnot json\n[1, 2]\n\xff\xfe\n{"text": "c"}'
    rows = list(read_rows(data, "f.jsonl", "text"))
    assert [(r.line, r.fields.get("text"), r.error is not None) for r in rows] == [
        (1, "a", False), (4, "b", False), (5, None, True), (6, None, True), (7, None, True), (8, "c", False)
    ]  # fmt: skip
    assert "JSON" in rows[2].error and "object" in rows[3].error and "UTF-8" in rows[4].error


def test_csv_header_multiline_cells_and_messages_column() -> None:
    data = b'text,license\n"one\nspanning\n\nfour lines",MIT\ntwo,\n\n"three ""quoted""",CC0-1.0\nbad,row,extra\n'
    rows = list(read_rows(data, "f.csv", "text"))
    assert [(r.line, r.fields, r.error is not None) for r in rows] == [
        (2, {"text": "one\nspanning\n\nfour lines", "license": "MIT"}, False),
        (6, {"text": "two"}, False),
        (8, {"text": 'three "quoted"', "license": "CC0-1.0"}, False),
        (9, {}, True),
    ]
    messages = [{"role": "user", "content": "hi,\nthere"}, {"role": "assistant", "content": "hello"}]
    buf = io.StringIO()
    import csv

    writer = csv.writer(buf)
    writer.writerow(["messages", "tags"])
    cell = json.dumps(messages, indent=1)  # a JSON cell spanning several lines
    writer.writerow([cell, '["a","b"]'])
    writer.writerow(["{not json", ""])
    chat = list(read_rows(buf.getvalue().encode(), "c.csv", "chat"))
    assert chat[0].line == 2 and chat[0].fields == {"messages": messages, "tags": ["a", "b"]}
    assert chat[1].line == 3 + cell.count("\n") and chat[1].error_field == "messages"
    with pytest.raises(InvalidInput, match="header"):
        list(read_rows(b"text,text\nx,y\n", "dup.csv", "text"))


def test_parquet_rows_numbered_from_one() -> None:
    table = pa.table({"prompt": ["p1", "p2", None], "response": ["r1", "r2", "r3"], "system": [None, "s2", None]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    rows = list(read_rows(buf.getvalue(), "f.parquet", "instruction"))
    assert [(r.line, r.fields) for r in rows] == [
        (1, {"prompt": "p1", "response": "r1"}),
        (2, {"prompt": "p2", "response": "r2", "system": "s2"}),
        (3, {"response": "r3"}),
    ]
    with pytest.raises(InvalidInput, match="Parquet"):
        list(read_rows(b"PAR1 not really", "f.parquet", "text"))


def test_txt_paragraphs_split_on_blank_lines() -> None:
    data = b"first para\nstill first\n\n\nsecond para\n   \nthird\r\n"
    rows = list(read_rows(data, "notes.txt", "text"))
    assert [(r.line, r.fields["text"]) for r in rows] == [(1, "first para\nstill first"), (5, "second para"), (7, "third")]


def test_markdown_fenced_code_blocks_never_split() -> None:
    data = (
        b"# Title\n"
        b"\n"
        b"Intro text.\n"
        b"\n"
        b"```python\n"
        b"def f():\n"
        b"\n"
        b"\n"
        b"    return 1\n"
        b"```\n"
        b"\n"
        b"~~~\n"
        b"\n"
        b"tilde fence\n"
        b"~~~\n"
        b"After.\n"
    )
    rows = list(read_rows(data, "doc.md", "text"))
    assert [(r.line, r.fields["text"]) for r in rows] == [
        (1, "# Title"),
        (3, "Intro text."),
        (5, "```python\ndef f():\n\n\n    return 1\n```"),
        (12, "~~~\n\ntilde fence\n~~~\nAfter."),
    ]
    # The same bytes as .txt split on every blank line.
    assert len(list(read_rows(data, "doc.txt", "text"))) == 6


@pytest.mark.parametrize(
    ("data", "name", "kind", "match"),
    [
        (b"", "empty.jsonl", "text", "empty"),
        (b" \n\n\t\n", "blank.csv", "text", "empty"),
        (b'{"text": "a"}\n\x00\x01\x02binary', "bin.jsonl", "text", "binary"),
        (b"PK\x03\x04\x00\x00", "doc.txt", "text", "binary"),
        (b'{"text": "a"}\n', "notes.docx", "text", "unknown file type"),
        (b'{"text": "a"}\n', "noext", "text", "unknown file type"),
        (b"some text\n", "notes.txt", "instruction", "only be contributed to 'text'"),
        (b"some text\n", "notes.md", "chat", "only be contributed to 'text'"),
    ],
)
def test_whole_file_errors(data: bytes, name: str, kind: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as info:
        list(read_rows(data, name, kind))
    assert info.value.field == "file"


def test_whole_file_error_writes_nothing(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice, kind="instruction")
    size = node.journal.size()
    with pytest.raises(InvalidInput, match="only be contributed"):
        node.datanets.contribute_file("corpus", b"a paragraph\n", "x.txt", contributor=alice)
    assert node.journal.size() == size and node.datanets.contributions("corpus") == []


def test_contribute_each_format_end_to_end(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice)
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["pq one", "pq two"]}), buf)
    files = [
        (jsonl([{"text": "j one"}, {"text": "j two"}]), "a.jsonl"),
        (b'text\n"c\none"\nc two\n', "b.csv"),
        (buf.getvalue(), "c.parquet"),
        (b"t one\n\nt two\n", "d.txt"),
        (b"m one\n\n```\nm\n\ntwo\n```\n", "e.md"),
    ]
    for data, name in files:
        report = node.datanets.contribute_file("corpus", data, name, contributor=alice)
        assert len(report.accepted) == 2 and report.rejected == [], (name, report.to_dict())
    by_source: dict[str, list[str]] = {}
    for c in node.datanets.contributions("corpus"):
        by_source.setdefault(c.source, []).append(c.record["text"])
    assert by_source == {
        "a.jsonl": ["j one", "j two"],
        "b.csv": ["c\none", "c two"],
        "c.parquet": ["pq one", "pq two"],
        "d.txt": ["t one", "t two"],
        "e.md": ["m one", "```\nm\n\ntwo\n```"],
    }


# --------------------------------------------------------------------------------------------------------------
# contribute
# --------------------------------------------------------------------------------------------------------------


def test_valid_rows_kept_when_others_fail(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice)
    data = b'{"text": "good one"}\n{"text": 7}\n{oops\n{"text": "good two"}\n{"txt": "typo"}\n'
    report = node.datanets.contribute_file("corpus", data, "mixed.jsonl", contributor=alice)
    d = report.to_dict()
    assert d["rows"] == 5 and d["counts"] == {"accepted": 2, "pending": 0, "duplicates": 0, "rejected": 3}
    assert [r["line"] for r in d["rejected"]] == [2, 3, 5]
    assert d["rejected"][2]["field"] == "txt"
    assert report.accepted == [text_id("good one"), text_id("good two")]
    stored = node.datanets.contributions("corpus")
    assert [(c.id, c.status, c.contributor_id, c.ordinal) for c in stored] == [
        (text_id("good one"), "accepted", alice, 0),
        (text_id("good two"), "accepted", alice, 1),
    ]
    assert stored[0].size_bytes == len(make_record("text", {"text": "good one"}).content)


def test_exact_duplicates_within_file_and_across_accounts(node: Node) -> None:
    alice, bob = person(node, "alice"), person(node, "bob")
    make_dn(node, alice)
    data = jsonl([{"text": "same"}, {"text": "other"}, {"text": "same"}, {"text": "cafe\u0301"}, {"text": "café"}])
    report = node.datanets.contribute_file("corpus", data, "a.jsonl", contributor=alice)
    assert len(report.accepted) == 3
    assert report.duplicates == [
        {"line": 3, "id": text_id("same"), "duplicate_of_line": 1},
        {"line": 5, "id": text_id("café"), "duplicate_of_line": 4},
    ]
    size = node.journal.size()
    again = node.datanets.contribute_file("corpus", jsonl([{"text": "new"}, {"text": "same"}]), "b.jsonl", contributor=bob)
    assert again.accepted == [text_id("new")]
    assert again.duplicates == [
        {"line": 2, "id": text_id("same"), "duplicate_of": text_id("same"), "contributor": alice, "status": "accepted"}
    ]
    assert node.journal.size() == size + 1  # one contribution.added, for "new"
    first = node.datanets.contribution("corpus", text_id("same"))
    assert first.contributor_id == alice and first.source == "a.jsonl"  # the first keeps the credit


def test_rerunning_a_file_changes_nothing(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice)
    data = jsonl([{"text": t} for t in texts(30)] + [{"bad": 1}])
    first = node.datanets.contribute_file("corpus", data, "f.jsonl", contributor=alice)
    assert len(first.accepted) == 30 and not first.unchanged
    size, head = node.journal.size(), node.journal.head()
    before = [c.to_dict() for c in node.datanets.contributions("corpus")]
    second = node.datanets.contribute_file("corpus", data, "f.jsonl", contributor=alice)
    assert second.unchanged and second.to_dict()["unchanged"] is True
    assert len(second.duplicates) == 30 and len(second.rejected) == 1
    assert node.journal.size() == size and node.journal.head() == head
    assert [c.to_dict() for c in node.datanets.contributions("corpus")] == before


def test_near_duplicates_rejected_on_open_and_queued_on_curated(node: Node) -> None:
    alice, bob = person(node, "alice"), person(node, "bob")
    words = long_text(1)
    original = " ".join(words)
    edited = " ".join(words[:100] + ["CHANGED"] + words[101:])  # ~97% of 3-grams shared
    respaced = "  ".join(w.upper() for w in words)  # same words, other case and spacing
    make_dn(node, alice, "open-dn", near_duplicate_threshold=0.8)
    make_dn(node, alice, "curated-dn", policy="curated", near_duplicate_threshold=0.8)
    for slug in ("open-dn", "curated-dn"):
        contribute(node, slug, alice, [original])
    rejected = contribute(node, "open-dn", bob, [edited, respaced, "something else entirely"])
    assert rejected.accepted == [text_id("something else entirely")]
    assert [r["line"] for r in rejected.rejected] == [1, 2]
    assert all(f"near-duplicate of contribution {text_id(original)}" in r["reason"] for r in rejected.rejected)
    assert {c.id for c in node.datanets.contributions("open-dn")} == {text_id(original), text_id("something else entirely")}

    queued = contribute(node, "curated-dn", bob, [edited])
    assert queued.pending == [text_id(edited)] and queued.rejected == []
    (flag,) = queued.flagged
    assert flag["near_duplicate_of"] == text_id(original) and flag["line"] == 1 and 0.9 <= flag["similarity"] <= 1.0
    c = node.datanets.contribution("curated-dn", text_id(edited))
    assert c.status == "pending" and c.near_duplicate_of == text_id(original)
    assert c.to_dict()["near_duplicate_similarity"] == flag["similarity"]
    added = [e for e in node.journal.events(limit=1000, type="contribution.added") if e.data["id"] == text_id(edited)]
    assert added[0].data["near_duplicate_of"] == text_id(original)


def test_near_duplicate_threshold_is_configurable(node: Node) -> None:
    alice = person(node, "alice")
    words = long_text(2)
    original = " ".join(words)
    # Every 20th word changed: ~3/20 of the 3-grams differ, Jaccard ~0.74.
    variant = " ".join(("X" + w) if i % 20 == 10 else w for i, w in enumerate(words))
    edited = " ".join(words[:100] + ["CHANGED"] + words[101:])
    for slug, threshold in [("off", 0.0), ("loose", 0.6), ("strict", 0.9)]:
        make_dn(node, alice, slug, near_duplicate_threshold=threshold)
        contribute(node, slug, alice, [original])
    assert node.datanets.get("off").limits.near_duplicate_threshold == 0.0
    off = contribute(node, "off", alice, [variant, edited])
    assert len(off.accepted) == 2  # 0 = no near-duplicate detection
    loose = contribute(node, "loose", alice, [variant, edited])
    assert loose.accepted == [] and len(loose.rejected) == 2
    strict = contribute(node, "strict", alice, [variant, edited])
    assert strict.accepted == [text_id(variant)] and [r["line"] for r in strict.rejected] == [2]


def test_near_duplicate_of_withdrawn_contribution_is_allowed(node: Node) -> None:
    alice, bob = person(node, "alice"), person(node, "bob")
    make_dn(node, alice, near_duplicate_threshold=0.8)
    words = long_text(3)
    original, edited = " ".join(words), " ".join(words[:-1] + ["LAST"])
    contribute(node, "corpus", alice, [original])
    assert contribute(node, "corpus", bob, [edited]).accepted == []
    node.datanets.withdraw("corpus", text_id(original), actor=alice)
    assert contribute(node, "corpus", bob, [edited]).accepted == [text_id(edited)]


def test_quota_per_day_with_clock(node: Node, clock: Clock) -> None:
    alice, bob = person(node, "alice"), person(node, "bob")
    make_dn(node, alice, max_records_per_day=3)
    batch = texts(5, "q")
    report = contribute(node, "corpus", alice, batch)
    assert report.accepted == [text_id(t) for t in batch[:3]]
    assert [r["line"] for r in report.rejected] == [4, 5]
    assert all("max_records_per_day" in r["reason"] for r in report.rejected)
    assert contribute(node, "corpus", alice, texts(1, "later")).accepted == []
    assert len(contribute(node, "corpus", bob, texts(3, "bob")).accepted) == 3  # the quota is per account
    clock.now += DAY_MS + 1_000
    tomorrow = contribute(node, "corpus", alice, batch[3:] + texts(2, "tomorrow"))
    assert tomorrow.accepted == [text_id(t) for t in batch[3:]] + [text_id(texts(2, "tomorrow")[0])]
    assert len(tomorrow.rejected) == 1


def test_max_record_bytes(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice, max_record_bytes=64)
    fits = "x" * (64 - len('{"text":""}'))
    report = contribute(node, "corpus", alice, [fits, fits + "y"])
    assert report.accepted == [text_id(fits)]
    (rejection,) = report.rejected
    assert rejection["line"] == 2 and "65 bytes" in rejection["reason"] and "max_record_bytes" in rejection["reason"]


def test_max_file_bytes(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice, max_file_bytes=100)
    size = node.journal.size()
    ok = jsonl([{"text": "small"}])
    assert node.datanets.contribute_file("corpus", ok, "ok.jsonl", contributor=alice).accepted
    with pytest.raises(PayloadTooLarge, match="max_file_bytes") as info:
        node.datanets.contribute_file("corpus", jsonl([{"text": "y" * 100}]), "big.jsonl", contributor=alice)
    assert isinstance(info.value, InvalidInput) and info.value.field == "file"
    assert node.journal.size() == size + 1 and len(node.datanets.contributions("corpus")) == 1


def test_system_accounts_cannot_contribute(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice)
    size = node.journal.size()
    for system in ("treasury", "fees", "rewards"):
        with pytest.raises(PermissionDenied, match="system account"):
            contribute(node, "corpus", system, ["hello"])
        with pytest.raises(PermissionDenied):
            node.datanets.contribute_file("corpus", jsonl([{"text": "hello"}]), "f.jsonl", contributor=system)
    assert node.journal.size() == size and node.datanets.contributions("corpus") == []


def _fail_inserts_at(raw: RawDB, ordinal: int) -> None:
    """A write that fails half-way: the contributions insert aborts at ``ordinal`` (journal rows already in)."""
    if raw.backend == "sqlite":
        raw.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON contributions WHEN NEW.ordinal = {ordinal} "
            "BEGIN SELECT RAISE(ABORT, 'boom: disk on fire'); END"
        )
    else:
        raw.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN IF NEW.ordinal = {ordinal} THEN RAISE EXCEPTION 'boom: disk on fire'; END IF; RETURN NEW; END $$"
        )
        raw.execute("CREATE TRIGGER boom BEFORE INSERT ON contributions FOR EACH ROW EXECUTE FUNCTION boom()")


def _heal(raw: RawDB) -> None:
    raw.execute("DROP TRIGGER boom" if raw.backend == "sqlite" else "DROP TRIGGER boom ON contributions")


@pytest.mark.parametrize("threshold", [0.0, 0.8])
def test_failed_batch_leaves_nothing_half_written(node: Node, raw_db: RawDB, threshold: float) -> None:
    alice = person(node, "alice")
    make_dn(node, alice, near_duplicate_threshold=threshold)
    contribute(node, "corpus", alice, ["before"])
    size, head = node.journal.size(), node.journal.head()
    items = texts(10, "batch")
    _fail_inserts_at(raw_db, 5)
    with pytest.raises(Exception, match="boom"):
        contribute(node, "corpus", alice, items)
    assert node.journal.size() == size and node.journal.head() == head
    assert raw_db.one("SELECT count(*) FROM contributions") == 1
    assert raw_db.one("SELECT count(*) FROM journal_events") == size
    node.journal.verify()
    # Once the fault is gone, the same call succeeds in full: nothing of the failed attempt lingers (no phantom
    # duplicates, no near-duplicate index entries for rows that were rolled back).
    _heal(raw_db)
    report = contribute(node, "corpus", alice, items)
    assert report.accepted == [text_id(t) for t in items] and report.duplicates == [] and report.rejected == []
    assert [c.ordinal for c in node.datanets.contributions("corpus")] == list(range(11))
    node.journal.verify()


# --------------------------------------------------------------------------------------------------------------
# curate and authorization
# --------------------------------------------------------------------------------------------------------------


def test_curation_queue_accept_reject(node: Node) -> None:
    owner, curator, contributor = person(node, "owner"), person(node, "curator"), person(node, "carol")
    make_dn(node, owner, policy="curated")
    node.datanets.add_curator("corpus", curator, actor=owner)
    assert node.datanets.curators("corpus") == [curator]
    a, b, c = (text_id(t) for t in ("alpha", "beta", "gamma"))
    report = contribute(node, "corpus", contributor, ["alpha", "beta", "gamma"])
    assert report.pending == [a, b, c] and report.accepted == []
    assert [x.id for x in node.datanets.queue("corpus", actor=curator)] == [a, b, c]

    with pytest.raises(InvalidInput, match="reason"):
        node.datanets.review("corpus", actor=curator, reject=[b])
    with pytest.raises(InvalidInput, match="reason"):
        node.datanets.review("corpus", actor=curator, reject=[b], reason="   ")
    with pytest.raises(InvalidInput, match="nothing to review"):
        node.datanets.review("corpus", actor=curator)
    with pytest.raises(InvalidInput, match="both"):
        node.datanets.review("corpus", actor=curator, accept=[a], reject=[a], reason="x")
    size = node.journal.size()
    with pytest.raises(NotFound, match="0" * 64):
        node.datanets.review("corpus", actor=curator, accept=[a, "0" * 64])
    assert node.journal.size() == size and node.datanets.contribution("corpus", a).status == "pending"

    assert node.datanets.review("corpus", actor=curator, accept=[a], reject=[b], reason=" off-topic ") == {"accepted": [a], "rejected": [b]}
    got = {x.id: x for x in node.datanets.contributions("corpus")}
    assert (got[a].status, got[b].status, got[b].reason, got[c].status) == ("accepted", "rejected", "off-topic", "pending")
    assert [x.id for x in node.datanets.queue("corpus", actor=owner)] == [c]
    reviewed = node.journal.events(limit=100, type="contribution.reviewed")
    assert [(e.data["id"], e.data["status"], e.data["reason"], e.actor) for e in reviewed] == [
        (a, "accepted", "off-topic", curator),
        (b, "rejected", "off-topic", curator),
    ]

    # Only pending contributions can be reviewed, and one bad id changes nothing.
    size = node.journal.size()
    for kwargs in ({"accept": [b]}, {"reject": [a], "reason": "changed my mind"}, {"accept": [c, a]}):
        with pytest.raises(Conflict, match="not pending"):
            node.datanets.review("corpus", actor=owner, **kwargs)
    assert node.journal.size() == size and node.datanets.contribution("corpus", c).status == "pending"
    stats = node.datanets.stats("corpus")
    assert stats["counts"] == {"pending": 1, "accepted": 1, "rejected": 1, "withdrawn": 0} and stats["acceptance_rate"] == 0.5


ACTIONS = ("add_curator", "queue", "review", "publish", "withdraw", "purge")
ALLOWED = {
    "owner": {"add_curator", "queue", "review", "publish"},
    "curator": {"queue", "review"},
    "contributor": {"withdraw", "purge"},
    "other": set(),
}


@pytest.mark.parametrize("role", sorted(ALLOWED))
def test_authorization_every_role_and_action(node: Node, role: str) -> None:
    owner, curator, contributor, other = (person(node, n) for n in ("owner", "curator", "carol", "other"))
    actor = {"owner": owner, "curator": curator, "contributor": contributor, "other": other}[role]
    make_dn(node, owner, policy="curated")
    node.datanets.add_curator("corpus", curator, actor=owner)
    contribute(node, "corpus", contributor, ["one", "two", "three"])
    node.datanets.review("corpus", actor=owner, accept=[text_id("one")])
    calls = {
        "add_curator": lambda: node.datanets.add_curator("corpus", other, actor=actor),
        "queue": lambda: node.datanets.queue("corpus", actor=actor),
        "review": lambda: node.datanets.review("corpus", actor=actor, accept=[text_id("two")]),
        "publish": lambda: node.datanets.publish("corpus", actor=actor),
        "withdraw": lambda: node.datanets.withdraw("corpus", text_id("three"), actor=actor),
        "purge": lambda: node.datanets.purge("corpus", text_id("three"), actor=actor),
    }
    for action in ACTIONS:
        size = node.journal.size()
        if action in ALLOWED[role]:
            result = calls[action]()
            assert result is not None
        else:
            with pytest.raises(PermissionDenied):
                calls[action]()
            assert node.journal.size() == size, action
    got = {c.id: c for c in node.datanets.contributions("corpus")}
    assert (got[text_id("two")].status == "accepted") == ("review" in ALLOWED[role])
    assert (got[text_id("three")].status == "withdrawn") == ("withdraw" in ALLOWED[role])
    assert (got[text_id("three")].record is None) == ("purge" in ALLOWED[role])
    assert (len(node.datanets.versions("corpus")) == 1) == ("publish" in ALLOWED[role])
    assert (other in node.datanets.curators("corpus")) == ("add_curator" in ALLOWED[role])
    # Reading, proofs and export are for anyone.
    assert len(node.datanets.contributions("corpus")) == 3


# --------------------------------------------------------------------------------------------------------------
# withdraw and purge
# --------------------------------------------------------------------------------------------------------------


def test_withdraw_purge_tombstone_and_old_proofs(node: Node) -> None:
    alice, bob = person(node, "alice"), person(node, "bob")
    make_dn(node, alice)
    items = texts(5, "w")
    ids = [text_id(t) for t in items]
    contribute(node, "corpus", bob, items)
    v1 = node.datanets.publish("corpus", actor=alice)
    assert node.datanets.members("corpus", 1) == ids

    with pytest.raises(Conflict, match="withdraw"):
        node.datanets.purge("corpus", ids[1], actor=bob)
    for stranger in (alice, person(node, "eve")):
        with pytest.raises(PermissionDenied, match="only the contributor"):
            node.datanets.withdraw("corpus", ids[1], actor=stranger)
    with pytest.raises(NotFound):
        node.datanets.withdraw("corpus", "f" * 64, actor=bob)
    withdrawn = node.datanets.withdraw("corpus", ids[1], actor=bob)
    assert withdrawn.status == "withdrawn" and withdrawn.record == {"text": items[1]}
    size = node.journal.size()
    assert node.datanets.withdraw("corpus", ids[1], actor=bob).status == "withdrawn"  # idempotent
    assert node.journal.size() == size
    with pytest.raises(PermissionDenied):
        node.datanets.purge("corpus", ids[1], actor=alice)
    purged = node.datanets.purge("corpus", ids[1], actor=bob)
    assert purged.id == ids[1] and purged.record is None and purged.to_dict()["purged"] is True
    assert purged.status == "withdrawn" and purged.contributor_id == bob  # the id stays: a tombstone
    node.datanets.purge("corpus", ids[1], actor=bob)  # purging twice journals nothing more
    assert node.journal.size() == size + 1

    v2 = node.datanets.publish("corpus", actor=alice)
    assert node.datanets.members("corpus", 2) == ids[:1] + ids[2:]
    assert v2.root == MemoryTree(bytes.fromhex(i) for i in v2_ids(node, 2)).root() != v1.root
    with pytest.raises(NotFound):
        node.datanets.proof("corpus", ids[1])  # latest version
    keys = [node.signer.verifier_key]
    for cid in ids:  # version 1 still proves every member, the purged one included
        result = verify_proof(node.datanets.proof("corpus", cid, version=1), keys)
        assert result["ok"] and result["version"] == 1 and result["root"] == v1.root.hex()

    rows = list(node.datanets.rows("corpus", version=1))
    assert [r["contribution_id"] for r in rows] == ids
    assert [r["purged"] for r in rows] == [False, True, False, False, False]
    assert rows[1]["text"] is None and rows[0]["text"] == items[0]
    out = io.BytesIO()
    assert node.datanets.export("corpus", version=1, format="jsonl", out=out) == 5
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert exported[1]["purged"] is True and exported[1]["text"] is None and items[1] not in out.getvalue().decode()
    assert items[1].encode() not in b"".join(
        bytes(r[0]) for r in _raw_contents(node) if r[0] is not None
    )
    types = event_types(node)
    assert types.count("contribution.withdrawn") == 1 and types.count("contribution.purged") == 1


def v2_ids(node: Node, number: int) -> list[str]:
    return node.datanets.members("corpus", number)


def _raw_contents(node: Node) -> list[tuple[Any, ...]]:
    with node.store.read() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT content FROM contributions")]


# --------------------------------------------------------------------------------------------------------------
# publish, versions, proofs
# --------------------------------------------------------------------------------------------------------------


def test_publish_refusals(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice, policy="curated")
    with pytest.raises(Conflict, match="no accepted"):
        node.datanets.publish("corpus", actor=alice)
    contribute(node, "corpus", alice, ["a", "b"])
    with pytest.raises(Conflict, match="no accepted"):
        node.datanets.publish("corpus", actor=alice)  # pending is not accepted
    node.datanets.review("corpus", actor=alice, accept=[text_id("a")])
    v1 = node.datanets.publish("corpus", actor=alice)
    assert (v1.number, v1.size, v1.stats["records"], v1.stats["contributors"]) == (1, 1, 1, 1)
    size = node.journal.size()
    with pytest.raises(Conflict, match="nothing changed since version 1"):
        node.datanets.publish("corpus", actor=alice)
    node.datanets.review("corpus", actor=alice, reject=[text_id("b")], reason="no")
    with pytest.raises(Conflict, match="nothing changed"):
        node.datanets.publish("corpus", actor=alice)  # a rejection does not change the members
    assert node.journal.size() == size + 1  # only the review
    with pytest.raises(NotFound, match="version 9"):
        node.datanets.version("corpus", 9)
    assert node.datanets.version("corpus").number == 1 and [v.number for v in node.datanets.versions("corpus")] == [1]


def test_versions_are_immutable(node: Node, raw_db: RawDB) -> None:
    alice = person(node, "alice")
    make_dn(node, alice)
    contribute(node, "corpus", alice, texts(300, "imm"))
    version = node.datanets.publish("corpus", actor=alice)
    assert raw_db.one("SELECT count(*) FROM datanet_version_nodes") >= 1  # 300 members: one stored level-8 node
    statements = [
        "UPDATE datanet_versions SET size = 1",
        "UPDATE datanet_versions SET root = ?",
        "DELETE FROM datanet_versions",
        "UPDATE datanet_version_members SET contribution_id = ?",
        "DELETE FROM datanet_version_members WHERE position = 0",
        "UPDATE datanet_version_nodes SET hash = ?",
        "DELETE FROM datanet_version_nodes",
    ]
    for sql in statements:
        params = (("0" * 64) if "contribution_id" in sql else b"\x00" * 32,) if "?" in sql else ()
        with pytest.raises(Exception, match="append-only"):
            raw_db.execute(sql, params)
    assert node.datanets.version("corpus", 1) == version
    assert MemoryTree(bytes.fromhex(i) for i in node.datanets.members("corpus", 1)).root() == version.root
    with pytest.raises(Exception, match="append-only"):
        raw_db.execute("UPDATE datanet_version_members SET position = position + 1000")


def test_root_and_every_proof_around_block_boundaries(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice)
    pool = texts(600, "blk")
    keys = [node.signer.verifier_key]
    done = 0
    for size in (1, 255, 256, 257, 513, 600):
        contribute(node, "corpus", alice, pool[done:size])
        done = size
        version = node.datanets.publish("corpus", actor=alice)
        members = node.datanets.members("corpus", version.number)
        assert members == [text_id(t) for t in pool[:size]]
        tree = MemoryTree(bytes.fromhex(m) for m in members)
        assert version.size == size and version.root == tree.root()
        published = node.journal.event(version.created_seq)
        assert published.type == "datanet.published" and published.data["root"] == version.root.hex()
        assert published.data["size"] == size and published.data["version"] == version.number
        for position, cid in enumerate(members):
            bundle = node.datanets.proof("corpus", cid, version=version.number)
            assert bundle["position"] == position and bundle["size"] == size
            assert [bytes.fromhex(h) for h in bundle["proof"]] == tree.inclusion_proof(position)
            result = verify_proof(bundle, keys)
            assert (result["ok"], result["contribution_id"], result["version"]) == (True, cid, version.number)
        with pytest.raises(NotFound, match="not in version"):
            node.datanets.proof("corpus", text_id("never contributed"), version=version.number)
        if size < 600:  # the next one, not contributed yet
            with pytest.raises(NotFound, match="not in version"):
                node.datanets.proof("corpus", text_id(pool[size]), version=version.number)
    # Members of a later version are not in an earlier one.
    with pytest.raises(NotFound, match="not in version 1"):
        node.datanets.proof("corpus", text_id(pool[1]), version=1)


def test_verify_proof_rejects_any_tampering_and_a_wrong_key(node: Node) -> None:
    alice = person(node, "alice")
    make_dn(node, alice)
    items = texts(300, "tam")
    contribute(node, "corpus", alice, items)
    node.datanets.publish("corpus", actor=alice)
    bundle = node.datanets.proof("corpus", text_id(items[261]))
    keys = [node.signer.verifier_key]
    assert verify_proof(bundle, keys)["ok"]
    assert len(bundle["proof"]) == 7  # 5 inside the last 32 members, the 12 after them, the stored 256-block root

    def flip_hex(text: str, i: int) -> str:
        return text[:i] + ("0" if text[i] != "0" else "1") + text[i + 1 :]

    def flip_char(text: str, i: int) -> str:
        return text[:i] + ("x" if text[i] != "x" else "y") + text[i + 1 :]

    variants: list[tuple[str, dict[str, Any]]] = []

    def variant(name: str, change: Any) -> None:
        b = copy.deepcopy(bundle)
        change(b)
        variants.append((name, b))

    for i in range(0, 64, 5):
        variant(f"id[{i}]", lambda b, i=i: b.__setitem__("contribution_id", flip_hex(b["contribution_id"], i)))
        variant(f"root[{i}]", lambda b, i=i: b.__setitem__("root", flip_hex(b["root"], i)))
    for k in range(len(bundle["proof"])):
        for i in (0, 31, 63):
            variant(f"proof[{k}][{i}]", lambda b, k=k, i=i: b["proof"].__setitem__(k, flip_hex(b["proof"][k], i)))
    variant("proof dropped", lambda b: b["proof"].pop())
    variant("proof extended", lambda b: b["proof"].append("00" * 32))
    for delta in (-1, 1, 2):
        variant(f"position{delta:+}", lambda b, d=delta: b.__setitem__("position", b["position"] + d))
    for delta in (-1, 1, 100):
        variant(f"size{delta:+}", lambda b, d=delta: b.__setitem__("size", b["size"] + d))
    variant("version", lambda b: b.__setitem__("version", 2))
    variant("datanet id", lambda b: b["datanet"].__setitem__("id", "dn_" + "0" * 16))
    event = bundle["journal"]["event"]
    for i in range(len(event)):
        variant(f"event[{i}]", lambda b, i=i: b["journal"].__setitem__("event", flip_char(b["journal"]["event"], i)))
    variant("journal seq", lambda b: b["journal"].__setitem__("seq", b["journal"]["seq"] - 1))
    for k in range(len(bundle["journal"]["proof"])):
        variant(f"journal proof[{k}]", lambda b, k=k: b["journal"]["proof"].__setitem__(k, flip_hex(b["journal"]["proof"][k], 10)))
    note = bundle["journal"]["checkpoint"]
    for i in range(len(note)):
        variant(f"checkpoint[{i}]", lambda b, i=i: b["journal"].__setitem__("checkpoint", flip_char(b["journal"]["checkpoint"], i)))

    for name, tampered in variants:
        assert tampered != bundle, name
        with pytest.raises((VerificationFailed, InvalidInput)):
            verify_proof(tampered, keys)
            pytest.fail(f"tampered bundle verified: {name}")
    impostor = Signer(node.origin, Ed25519PrivateKey.generate()).verifier_key
    with pytest.raises(VerificationFailed):
        verify_proof(bundle, [impostor])
    with pytest.raises(InvalidInput, match="key"):
        verify_proof(bundle, [])
    for broken in ({}, {"contribution_id": "zz"}, {**bundle, "proof": "nope"}):
        with pytest.raises((InvalidInput, VerificationFailed)):
            verify_proof(broken, keys)
    # An untrusted key next to the right one does no harm.
    assert verify_proof(bundle, [impostor, *keys])["ok"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    data=st.lists(
        st.tuples(st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and "\x00" not in s), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_property_every_member_proves_and_no_non_member_does(node: Node, data: list[tuple[str, bool]]) -> None:
    alice = node.accounts.get("operator").id
    slug = f"p{node.journal.size()}"
    make_dn(node, alice, slug, policy="curated")
    report = node.datanets.contribute_records(slug, [{"text": t} for t, _ in data], contributor=alice)
    decisions: dict[str, bool] = {}
    for (t, keep) in data:
        decisions.setdefault(make_record("text", {"text": t}).id, keep)
    assert set(report.pending) == set(decisions)
    accept = [i for i, keep in decisions.items() if keep]
    reject = [i for i, keep in decisions.items() if not keep]
    if not accept:
        with pytest.raises(Conflict):
            node.datanets.publish(slug, actor=alice)
        return
    node.datanets.review(slug, actor=alice, accept=accept, reject=reject, reason="property test" if reject else None)
    version = node.datanets.publish(slug, actor=alice)
    members = node.datanets.members(slug, version.number)
    assert sorted(members) == sorted(accept)
    assert members == [i for i in report.pending if decisions[i]]  # arrival order
    root = version.root
    keys = [node.signer.verifier_key]
    bundles = {}
    for cid in members:
        bundle = node.datanets.proof(slug, cid)
        assert verify_proof(bundle, keys)["ok"]
        assert verify_inclusion(hash_leaf(bytes.fromhex(cid)), bundle["position"], version.size, [bytes.fromhex(h) for h in bundle["proof"]], root)
        bundles[cid] = bundle
    for cid in reject:
        with pytest.raises(NotFound):
            node.datanets.proof(slug, cid)
        for bundle in bundles.values():  # a non-member id with a member's position and path never verifies
            hashes = [bytes.fromhex(h) for h in bundle["proof"]]
            assert not verify_inclusion(hash_leaf(bytes.fromhex(cid)), bundle["position"], version.size, hashes, root)
            with pytest.raises(VerificationFailed):
                verify_proof({**bundle, "contribution_id": cid}, keys)


# --------------------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "instruction", "chat"])
def test_export_reimport_and_dataset(node: Node, kind: str) -> None:
    alice, bob = person(node, "alice"), person(node, "bob")
    records: list[dict[str, Any]] = {
        "text": [{"text": t} for t in texts(7, "exp")],
        "instruction": [{"prompt": f"q{i}", "response": f"a{i}", **({"system": "sys"} if i % 2 else {})} for i in range(7)],
        "chat": [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello ✓"}]} for i in range(7)],
    }[kind]
    make_dn(node, alice, "src", kind=kind, licenses=("CC-BY-4.0", "MIT"))
    node.datanets.contribute_records("src", records[:4], contributor=alice, license="CC-BY-4.0", source="mine", tags="a,b")
    node.datanets.contribute_records("src", records[4:], contributor=bob, license="MIT")
    version = node.datanets.publish("src", actor=alice)
    ids = node.datanets.members("src", version.number)
    rows = list(node.datanets.rows("src", version=1))
    assert [r["contribution_id"] for r in rows] == ids and [r["position"] for r in rows] == list(range(7))
    assert [r["contributor"] for r in rows] == [alice] * 4 + [bob] * 3
    assert [r["contributor_name"] for r in rows] == ["alice"] * 4 + ["bob"] * 3
    assert rows[0]["tags"] == ["a", "b"] and rows[0]["source"] == "mine" and rows[5]["license"] == "MIT"
    for row, record in zip(rows, records):
        assert {k: row[k] for k in record} == make_record(kind, record).fields

    out = {}
    for fmt in ("jsonl", "parquet"):
        buf = io.BytesIO()
        assert node.datanets.export("src", version=1, format=fmt, out=buf) == 7
        out[fmt] = buf.getvalue()
    from_jsonl = [json.loads(line) for line in out["jsonl"].splitlines()]
    from_parquet = pq.read_table(io.BytesIO(out["parquet"])).to_pylist()
    for exported in (from_jsonl, from_parquet):
        assert [r["contribution_id"] for r in exported] == ids
        assert [r["contributor"] for r in exported] == [alice] * 4 + [bob] * 3
    with pytest.raises(InvalidInput, match="format"):
        node.datanets.export("src", version=1, format="xml", out=io.BytesIO())

    # Re-import each export into a new datanet: the same contribution ids, credited to the new contributor.
    for fmt, name in (("jsonl", "export.jsonl"), ("parquet", "export.parquet")):
        slug = f"copy-{fmt}"
        make_dn(node, bob, slug, kind=kind, licenses=("CC-BY-4.0", "MIT"))
        report = node.datanets.contribute_file(slug, out[fmt], name, contributor=bob)
        assert report.rejected == [] and report.accepted == ids, (fmt, report.to_dict())
        copies = node.datanets.contributions(slug)
        assert [c.license for c in copies] == [r["license"] for r in rows]
        assert all(c.contributor_id == bob for c in copies)

    ds = node.datanets.dataset("src", version=1)
    import datasets

    assert isinstance(ds, datasets.Dataset) and ds.num_rows == 7
    assert ds["contribution_id"] == ids
    assert ds.to_list() == [{**{k: None for k in ds.column_names}, **row} for row in rows]


# --------------------------------------------------------------------------------------------------------------
# the journal trail
# --------------------------------------------------------------------------------------------------------------


def test_every_state_change_is_journaled(node: Node) -> None:
    owner, curator, carol = person(node, "owner"), person(node, "curator"), person(node, "carol")
    start = node.journal.size()
    dn = node.datanets.create(
        "trail", title="Trail", kind="text", licenses=["CC-BY-4.0"], policy="curated", owner=owner, tags="x", limits={"max_records_per_day": 50}
    )
    node.datanets.add_curator("trail", curator, actor=owner)
    contribute(node, "trail", carol, ["one", "two", "three", "four"])
    node.datanets.review("trail", actor=curator, accept=[text_id("one"), text_id("two"), text_id("three")], reject=[text_id("four")], reason="dup")
    v1 = node.datanets.publish("trail", actor=owner)
    node.datanets.withdraw("trail", text_id("two"), actor=carol)
    node.datanets.purge("trail", text_id("two"), actor=carol)
    v2 = node.datanets.publish("trail", actor=owner)
    events = node.journal.events(after=start - 1, limit=1000)
    assert [e.type for e in events] == [
        "datanet.created",
        "account.role_granted",
        *["contribution.added"] * 4,
        *["contribution.reviewed"] * 4,
        "datanet.published",
        "contribution.withdrawn",
        "contribution.purged",
        "datanet.published",
    ]
    created = events[0].data
    assert (created["id"], created["slug"], created["owner"], created["policy"], events[0].actor) == (dn.id, "trail", owner, "curated", owner)
    assert created["limits"]["max_records_per_day"] == 50 and isinstance(created["limits"]["near_duplicate_threshold_bp"], int)
    added = [e for e in events if e.type == "contribution.added"]
    assert [(e.data["id"], e.data["contributor"], e.data["status"], e.data["ordinal"], e.actor) for e in added] == [
        (text_id(t), carol, "pending", i, carol) for i, t in enumerate(["one", "two", "three", "four"])
    ]
    published = [e for e in events if e.type == "datanet.published"]
    assert [(e.data["version"], e.data["root"], e.data["size"]) for e in published] == [(1, v1.root.hex(), 3), (2, v2.root.hex(), 2)]
    # Each stored row points at the event that made or last changed it.
    got = {c.id: c for c in node.datanets.contributions("trail")}
    assert [got[text_id(t)].created_seq for t in ["one", "two", "three", "four"]] == [e.seq for e in added]
    assert (v1.created_seq, v2.created_seq) == (published[0].seq, published[1].seq)
    report = node.journal.verify()
    assert report.size == node.journal.size()
