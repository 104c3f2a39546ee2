"""Regression tests for defects found in a review of the datanet library, the HTTP API and the datanet CLI.

Each test names the defect it pins: inputs that used to raise a traceback / answer 500 (or behave differently on
SQLite and PostgreSQL), proofs that verified with a forged field, near-duplicate checks that missed or invented a
match, and races between concurrent writers on PostgreSQL.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import LiveServer
from conftest import FREE_PUBLISHING, RawDB, run_cli as run

from royalty import Node
from royalty.api import create_app
from royalty.datanet import dedup, verify_proof
from royalty.errors import Conflict, InvalidInput, NotFound, VerificationFailed

LICENSE = "CC-BY-4.0"


@pytest.fixture
def genesis_params() -> dict[str, Any]:
    """These tests are about datanets: publishing is free here (tests/test_fees.py covers the publishing fee)."""
    return FREE_PUBLISHING


def person(node: Node, name: str) -> str:
    return node.accounts.create(name, with_key=False)[0].id


def make_dn(node: Node, owner: str, slug: str = "corpus", *, policy: str = "open", **limits: Any) -> str:
    limits.setdefault("near_duplicate_threshold", 0.0)
    node.datanets.create(slug, title=slug.title(), kind="text", licenses=[LICENSE], policy=policy, owner=owner, limits=limits)
    return slug


# --------------------------------------------------------------------------------------------------------------
# bad values in records and metadata: rejected per line, never a whole-call failure
# --------------------------------------------------------------------------------------------------------------


def test_lone_surrogate_in_metadata_rejects_only_its_row(node: Node) -> None:
    # Was: the journal refused the whole batch ("event contains a lone surrogate", field "data"); the good row
    # was lost with it.
    alice = person(node, "alice")
    make_dn(node, alice)
    for name in ("source", "consent"):
        report = node.datanets.contribute_records(
            "corpus", [{"text": f"bad {name} row", name: "x\ud800"}, {"text": f"good row next to bad {name}"}], contributor=alice
        ).to_dict()
        assert report["counts"]["accepted"] == 1, report
        assert report["rejected"] == [{"line": 1, "reason": f"{name} is not valid UTF-8 text", "field": name}]


def test_tags_must_be_strings(node: Node) -> None:
    # Was: null became the tag "none", 1 the tag "1", true the tag "true".
    alice = person(node, "alice")
    make_dn(node, alice)
    report = node.datanets.contribute_records(
        "corpus", [{"text": "tagged with null", "tags": [None]}, {"text": "tagged with numbers", "tags": [1, True]}], contributor=alice
    ).to_dict()
    assert report["counts"]["accepted"] == 0
    assert [r["field"] for r in report["rejected"]] == ["tags", "tags"]
    assert all("strings" in r["reason"] for r in report["rejected"])


def test_byte_order_mark_is_not_part_of_the_first_record(node: Node) -> None:
    # Was: a JSONL file from a Windows editor lost its first line ("Unexpected UTF-8 BOM"), and a .txt file's first
    # paragraph got a different id than the same text without the BOM.
    alice = person(node, "alice")
    make_dn(node, alice)
    bom = b"\xef\xbb\xbf"
    report = node.datanets.contribute_file("corpus", bom + b'{"text": "first line"}\n{"text": "second"}\n', "a.jsonl", contributor=alice)
    assert report.to_dict()["counts"] == {"accepted": 2, "pending": 0, "duplicates": 0, "rejected": 0}
    plain = node.datanets.contribute_file("corpus", b"a paragraph of text\n", "b.txt", contributor=alice)
    with_bom = node.datanets.contribute_file("corpus", bom + b"a paragraph of text\n", "c.txt", contributor=alice)
    assert with_bom.duplicates and with_bom.duplicates[0]["id"] == plain.accepted[0]


def test_parquet_values_python_cannot_hold_are_a_clear_file_error(node: Node) -> None:
    # Was: OverflowError from pyarrow's to_pylist (a traceback) for a date64 column beyond Python's date range.
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    alice = person(node, "alice")
    make_dn(node, alice)
    table = pa.table({"text": ["a record"], "source": pa.array([2**62], pa.int64()).cast(pa.date64())})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    with pytest.raises(InvalidInput, match="cannot be read") as info:
        node.datanets.contribute_file("corpus", buffer.getvalue(), "dates.parquet", contributor=alice)
    assert info.value.field == "file"
    assert node.datanets.contributions("corpus") == []


# --------------------------------------------------------------------------------------------------------------
# lookups and cursors: the same clear answer on both backends
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["x\x00y", "x\udcffy"], ids=["nul", "surrogate"])
def test_references_no_row_can_have_are_not_found(node: Node, bad: str) -> None:
    # Was: PostgreSQL refused NUL in the query (DataError -> 500) and SQLite's driver refused lone surrogates
    # (UnicodeEncodeError), where the other backend answered "not found".
    alice = person(node, "alice")
    make_dn(node, alice, policy="curated")
    added = node.datanets.contribute_records("corpus", [{"text": "one record"}], contributor=alice).pending[0]
    node.datanets.review("corpus", actor=alice, accept=[added])
    node.datanets.publish("corpus", actor=alice)
    calls = [
        lambda: node.datanets.get(bad),
        lambda: node.datanets.contribution("corpus", bad),
        lambda: node.datanets.withdraw("corpus", bad, actor=alice),
        lambda: node.datanets.purge("corpus", bad, actor=alice),
        lambda: node.datanets.review("corpus", actor=alice, accept=[bad]),
        lambda: node.datanets.add_curator("corpus", bad, actor=alice),
        lambda: node.datanets.contributions("corpus", contributor=bad),
        lambda: node.datanets.proof("corpus", bad),
        lambda: node.datanets.queue("corpus", actor=bad),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            call()


def test_out_of_range_cursors_and_version_numbers(node: Node) -> None:
    # Was: OverflowError on SQLite, "bigint/integer out of range" on PostgreSQL (500 over HTTP).
    alice = person(node, "alice")
    make_dn(node, alice)
    node.datanets.contribute_records("corpus", [{"text": "one record"}], contributor=alice)
    node.datanets.publish("corpus", actor=alice)
    assert node.datanets.contributions("corpus", after=10**20) == []
    assert len(node.datanets.contributions("corpus", after=-(10**20))) == 1
    for number in (2**31, 10**20, 0, -1):
        with pytest.raises(NotFound, match="has no version"):
            node.datanets.version("corpus", number)
    with pytest.raises(NotFound, match="has no published version"):
        node.datanets.version(make_dn(node, alice, "empty"))


def test_review_of_many_ids_is_answered(node: Node) -> None:
    # Was: one bound parameter per id; PostgreSQL allows 65,535, so a long list was a 500 (StorageError).
    alice = person(node, "alice")
    make_dn(node, alice, policy="curated")
    with pytest.raises(NotFound, match="no contribution"):
        node.datanets.review("corpus", actor=alice, accept=[f"{i:064x}" for i in range(70_000)])


# --------------------------------------------------------------------------------------------------------------
# creating datanets
# --------------------------------------------------------------------------------------------------------------


def test_create_refuses_lone_surrogates_in_title_and_description(node: Node) -> None:
    # Was: description -> UnicodeEncodeError (500); title -> "event contains a lone surrogate" with field "data".
    alice = person(node, "alice")
    for name in ("title", "description"):
        fields = {"title": "T", "description": "", name: "bad \ud800"}
        with pytest.raises(InvalidInput) as info:
            node.datanets.create("c-" + name, kind="text", licenses=[LICENSE], policy="open", owner=alice, **fields)
        assert info.value.field == name and "UTF-8" in info.value.message


def test_a_repeated_license_counts_once(node: Node) -> None:
    # Was: licenses ("MIT", "MIT") made every row without a license field fail with "no license given".
    alice = person(node, "alice")
    dn = node.datanets.create("mit", title="MIT", kind="text", licenses=["MIT", "MIT"], policy="open", owner=alice)
    assert dn.licenses == ("MIT",)
    report = node.datanets.contribute_records("mit", [{"text": "no license field"}], contributor=alice)
    assert len(report.accepted) == 1, report.to_dict()


def test_concurrent_create_of_one_slug_is_a_conflict(node: Node, database_url: str | None) -> None:
    # Was (PostgreSQL, READ COMMITTED): both creators passed the existence check, the second insert hit the unique
    # index: IntegrityError, a 500.
    if database_url is None:
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): no interleaving to test")
    alice = person(node, "alice")
    raw = RawDB(node.store.url)
    raw.execute("BEGIN")
    raw.execute(
        "INSERT INTO datanets (id, slug, title, description, kind, licenses, policy, tags, owner_id, limits, created_ms, created_seq) "
        "VALUES ('dn_other', 'race', 'R', '', 'text', '[\"MIT\"]', 'open', '[]', ?, ?, 0, 0)",
        (alice, json.dumps({"max_record_bytes": 65536, "max_records_per_day": 10, "near_duplicate_threshold_bp": 0, "max_file_bytes": 100})),
    )
    outcome: list[BaseException | None] = []

    def create() -> None:
        try:
            node.datanets.create("race", title="R", kind="text", licenses=[LICENSE], policy="open", owner=alice)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    time.sleep(0.5)  # the creator is now waiting on the uncommitted row's unique key
    raw.execute("COMMIT")
    thread.join(timeout=30)
    raw.conn.close()
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome


def test_review_waits_for_a_concurrent_withdrawal(node: Node, database_url: str | None) -> None:
    # Was (PostgreSQL): review read "pending", a withdrawal committed, and review then overwrote "withdrawn" with
    # "accepted" (the contributor's withdrawal silently undone). Now the rows are locked while decided.
    if database_url is None:
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): no interleaving to test")
    alice, bob = person(node, "alice"), person(node, "bob")
    make_dn(node, alice, policy="curated")
    cid = node.datanets.contribute_records("corpus", [{"text": "bob's record"}], contributor=bob).pending[0]
    raw = RawDB(node.store.url)
    raw.execute("BEGIN")
    raw.execute("UPDATE contributions SET status = 'withdrawn' WHERE id = ?", (cid,))
    outcome: list[Any] = []

    def review() -> None:
        try:
            outcome.append(node.datanets.review("corpus", actor=alice, accept=[cid]))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=review)
    thread.start()
    time.sleep(0.5)
    raw.execute("COMMIT")
    thread.join(timeout=30)
    raw.conn.close()
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    assert node.datanets.contribution("corpus", cid).status == "withdrawn"


# --------------------------------------------------------------------------------------------------------------
# near-duplicates
# --------------------------------------------------------------------------------------------------------------

_BASE = (
    "the quick brown fox jumps over the lazy dog while seven tired otters sing songs about rivers mountains and "
    "the distant silver sea under a pale moon"
).split()
A = " ".join(_BASE[:-3] + ["golden", "bright", "sun"])  # 79% like C
B = " ".join(_BASE)  # 96% like C
C = " ".join(_BASE[:-1] + ["sky"])


def test_texts_for_the_near_duplicate_tests() -> None:
    sa, sb, sc = (dedup.signature(t) for t in (A, B, C))
    assert dedup.similarity(sc, sb) > dedup.similarity(sc, sa) >= 7000


def test_a_withdrawn_best_match_does_not_hide_a_live_one(node: Node) -> None:
    # Was: only the single best match was checked; when it had been withdrawn the record counted as new, even
    # though another live contribution was above the threshold.
    alice, bob = person(node, "alice"), person(node, "bob")
    make_dn(node, alice, policy="curated", near_duplicate_threshold=0.7)
    a = node.datanets.contribute_records("corpus", [{"text": A}], contributor=alice).pending[0]
    b = node.datanets.contribute_records("corpus", [{"text": B}], contributor=bob).pending[0]
    node.datanets.withdraw("corpus", b, actor=bob)
    report = node.datanets.contribute_records("corpus", [{"text": C}], contributor=alice)
    assert [f["near_duplicate_of"] for f in report.flagged] == [a], report.to_dict()


def test_an_entry_never_stored_is_not_a_near_duplicate(node: Node) -> None:
    # Was: an id in the cached index with no row (left by another thread's rolled-back batch) counted as live.
    alice = person(node, "alice")
    make_dn(node, alice, policy="curated", near_duplicate_threshold=0.7)
    node.datanets.contribute_records("corpus", [{"text": "an unrelated first record to build the index"}], contributor=alice)
    dn = node.datanets.get("corpus")
    node.datanets._indexes[dn.id].add("f" * 64, dedup.signature(B))  # a phantom: in the index, not in the table
    report = node.datanets.contribute_records("corpus", [{"text": C}], contributor=alice)
    assert report.flagged == [], report.to_dict()


def test_texts_without_words_are_not_near_duplicates_of_each_other(node: Node) -> None:
    # Was: every text without word characters got the same single shingle, so "😀😀😀" was refused as a 100%
    # near-duplicate of "🎉".
    alice = person(node, "alice")
    make_dn(node, alice, near_duplicate_threshold=0.8)
    report = node.datanets.contribute_records("corpus", [{"text": "🎉"}, {"text": "😀😀😀"}, {"text": "!!! ???"}], contributor=alice)
    assert len(report.accepted) == 3, report.to_dict()


# --------------------------------------------------------------------------------------------------------------
# proofs
# --------------------------------------------------------------------------------------------------------------


def test_verify_proof_refuses_a_forged_slug(node: Node) -> None:
    # Was: the slug in the bundle was not checked against the journal, yet verify-proof printed it as verified.
    alice = person(node, "alice")
    make_dn(node, alice)
    cid = node.datanets.contribute_records("corpus", [{"text": "proved record"}], contributor=alice).accepted[0]
    node.datanets.publish("corpus", actor=alice)
    bundle = node.datanets.proof("corpus", cid)
    key = node.info.verifier_key
    assert verify_proof(copy.deepcopy(bundle), [key])["datanet"] == {"id": bundle["datanet"]["id"], "slug": "corpus"}
    forged = copy.deepcopy(bundle)
    forged["datanet"]["slug"] = "trusted-medical-corpus"
    with pytest.raises(VerificationFailed, match="slug|names datanet"):
        verify_proof(forged, [key])


# --------------------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def api(node: Node) -> Iterator[tuple[Node, httpx.Client, str]]:
    account, key = node.accounts.create("api-user")
    with LiveServer(create_app(node)) as server, server.client(key) as client:
        yield node, client, account.id


def assert_error(response: httpx.Response, status: int, says: str = "") -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in response.text
    assert says.lower() in body["error"]["message"].lower(), body


def test_http_deeply_nested_json_is_a_400(api: tuple[Node, httpx.Client, str]) -> None:
    node, client, me = api
    make_dn(node, me)
    body = b'{"records": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_error(client.post("/v1/datanets/corpus/contributions", content=body), 400, "nested too deeply")


def test_http_out_of_range_numbers_and_nul_ids(api: tuple[Node, httpx.Client, str]) -> None:
    node, client, me = api
    make_dn(node, me)
    cid = node.datanets.contribute_records("corpus", [{"text": "one"}], contributor=me).accepted[0]
    node.datanets.publish("corpus", actor=me)
    page = client.get("/v1/datanets/corpus/contributions", params={"after": str(10**20)})
    assert page.status_code == 200 and page.json()["data"] == [], page.text
    assert_error(client.get(f"/v1/datanets/corpus/versions/{10**20}"), 404, "has no version")
    assert_error(client.get(f"/v1/datanets/corpus/versions/{2**31}"), 404, "has no version")
    assert_error(client.get(f"/v1/datanets/corpus/versions/{2**31}/proof/{cid}"), 404, "has no version")
    assert_error(client.get("/v1/datanets/corpus/contributions/%00"), 404, "no contribution")
    assert_error(client.get("/v1/datanets/a%00b"), 404, "no datanet")
    assert_error(client.post("/v1/datanets/corpus/contributions/%00/withdraw"), 404, "no contribution")
    assert_error(client.get("/v1/datanets/corpus/versions/1/proof/%00"), 404, "not in version")
    assert_error(client.post("/v1/datanets/corpus/curators", json={"account": "x\x00"}), 404, "no account")
    assert_error(client.post("/v1/datanets/corpus/review", json={"accept": ["x\x00"]}), 404, "no contribution")


def test_http_upload_size_is_capped_whatever_the_datanet_allows(node: Node) -> None:
    # Was: the only cap was the datanet's max_file_bytes, which its owner (any account) may set to any size: the
    # server would read an unbounded body into memory.
    from royalty.api.datanets import MAX_UPLOAD_BYTES

    account, key = node.accounts.create("api-user")
    make_dn(node, account.id, max_file_bytes=10**12)
    claimed = MAX_UPLOAD_BYTES * 4
    with LiveServer(create_app(node)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        for path, type_ in (("contributions", "application/json"), ("contributions/upload", "multipart/form-data; boundary=x")):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(
                    f"POST /v1/datanets/corpus/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                    f"Content-Type: {type_}\r\nContent-Length: {claimed}\r\n\r\n".encode()
                )
                sock.settimeout(10)
                answer = b""
                while b'"}}' not in answer and (chunk := sock.recv(65536)):
                    answer += chunk
            head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
            assert head.startswith("HTTP/1.1 413"), (path, head, body)
            assert "uploads up to" in json.loads(body)["error"]["message"], body


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------



@pytest.fixture
def cli_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    home = tmp_path / "node"
    assert run(capsys, "init", "--home", str(home), "--param", "publish_fee_base=0", "--param", "publish_fee_per_1k=0")[0] == 0
    code, _, err = run(
        capsys, "datanet", "create", "corpus", "--title", "C", "--kind", "text", "--license", LICENSE, "--policy", "open",
        "--limit", "max_file_bytes=100", "--home", str(home),
    )  # fmt: skip
    assert code == 0, err
    return home


def test_cli_undecodable_arguments_are_one_line_errors(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: an argument with bytes that are not UTF-8 (Python passes them as lone surrogates) reached SQLite's
    # driver: UnicodeEncodeError with a traceback.
    H = ("--home", str(cli_home))
    for args in (("datanet", "show", "bad\udcff"), ("datanet", "queue", "corpus", "--as", "bad\udcff"),
                 ("datanet", "contributions", "corpus", "--after", str(10**20)), ("datanet", "show", "corpus", "--version", str(10**20))):  # fmt: skip
        code, out, err = run(capsys, *args, *H)
        if args[2] == "corpus" and args[-2] == "--after":
            assert code == 0, err
            continue
        assert code == 1 and err.startswith("royalty: error: ") and err.count("\n") == 1, err


def test_cli_contribute_refuses_an_oversized_file_before_reading_it(
    cli_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import royalty.cli.datanet as cli_datanet

    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"text": "x" * 500}) + "\n")

    def no_read(path: Path) -> bytes:
        raise AssertionError(f"read {path} although it is over the limit")

    monkeypatch.setattr(cli_datanet, "read_bytes", no_read)
    code, _, err = run(capsys, "datanet", "contribute", "corpus", str(big), "--home", str(cli_home))
    assert code == 1 and "max_file_bytes" in err and err.count("\n") == 1, err


def test_a_parquet_file_that_expands_beyond_the_file_limit_is_refused_before_reading(tmp_path: Path) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from royalty.datanet.formats import read_rows

    buffer = io.BytesIO()  # 2 MB of one repeated character compresses to a few KB
    pq.write_table(pa.table({"text": ["a" * 1_000_000, "b" * 1_000_000]}), buffer, compression="zstd")
    data = buffer.getvalue()
    assert len(data) < 100_000
    with pytest.raises(InvalidInput, match=r"expands to [\d,]+ bytes; this datanet accepts up to 1,000,000"):
        read_rows(data, "bomb.parquet", "text", max_bytes=1_000_000)
    rows = list(read_rows(data, "ok.parquet", "text", max_bytes=10_000_000))  # within the limit: read as usual
    assert [len(r.fields["text"]) for r in rows] == [1_000_000, 1_000_000]
