"""``royalty datanet …`` through the real entry point: in-process via ``royalty.cli.main`` (fast) and a few
subprocess runs (``python -m royalty``) for what a user meets first. Real files in tmp_path, every format."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer

from conftest import run_cli
from royalty.cli import app

Capsys = pytest.CaptureFixture[str]


def run(capsys: Capsys, *args: str, stdin: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return run_cli(capsys, *args)


def run_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "royalty", *args], capture_output=True, text=True, env=dict(os.environ), timeout=60)


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("royalty: error: "), err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def home(tmp_path: Path, capsys: Capsys) -> Path:
    path = tmp_path / "node"
    # Publishing is free on this node: these tests are about datanets (tests/test_fees.py covers the fee).
    code, _, err = run(capsys, "init", "--home", str(path), "--param", "publish_fee_base=0", "--param", "publish_fee_per_1k=0")
    assert code == 0, err
    for name in ("alice", "bob", "carol"):
        code, _, err = run(capsys, "account", "create", name, "--home", str(path))
        assert code == 0, err
    return path


def H(home: Path) -> tuple[str, str]:
    return ("--home", str(home))


def create(capsys: Capsys, home: Path, slug: str, *extra: str, kind: str = "text", policy: str = "open", license_: str = "CC-BY-4.0") -> dict:
    code, out, err = run(
        capsys, "datanet", "create", slug, "--title", slug.title(), "--kind", kind, "--license", license_,
        "--policy", policy, *extra, *H(home), "--json",
    )  # fmt: skip
    assert code == 0, err
    return json.loads(out)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def contribute(capsys: Capsys, home: Path, slug: str, file: Path, *extra: str) -> tuple[int, dict, str]:
    code, out, err = run(capsys, "datanet", "contribute", slug, str(file), *extra, *H(home), "--json")
    return code, json.loads(out) if out else {}, err


TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "Water boils at one hundred degrees Celsius at sea level pressure.",
]


# --- the whole flow --------------------------------------------------------------------------------------------


def test_full_flow_create_contribute_review_publish_prove_verify_export(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    created = create(capsys, home, "wiki", "--description", "Encyclopedic text", "--tags", "en,wiki",
                     "--limit", "max_record_bytes=4096", policy="curated", license_="CC-BY-4.0,MIT")  # fmt: skip
    assert created["slug"] == "wiki" and created["licenses"] == ["CC-BY-4.0", "MIT"] and created["tags"] == ["en", "wiki"]
    assert created["limits"]["max_record_bytes"] == 4096 and created["id"].startswith("dn_")
    code, out, err = run(capsys, "datanet", "add-curator", "wiki", "bob", *H(home))
    assert code == 0 and "bob is now a curator of wiki" in out, err

    data = write_jsonl(tmp_path / "wiki.jsonl", [{"text": t} for t in TEXTS[:3]])
    code, report, err = contribute(capsys, home, "wiki", data, "--as", "alice", "--license", "MIT", "--source", "my notes")
    assert code == 0, err
    assert report["counts"] == {"accepted": 0, "pending": 3, "duplicates": 0, "rejected": 0} and not report["unchanged"]
    pending = report["pending"]

    code, out, err = run(capsys, "datanet", "queue", "wiki", "--as", "bob", *H(home))
    assert code == 0 and all(cid in out for cid in pending) and "NEAR-DUPLICATE" in out, err
    code, out, _ = run(capsys, "datanet", "queue", "wiki", "--as", "bob", *H(home), "--json")
    assert [c["id"] for c in json.loads(out)["contributions"]] == pending

    code, out, err = run(capsys, "datanet", "review", "wiki", "--accept", pending[0], "--accept", pending[1],
                         "--reject", pending[2], "--reason", "off topic", "--as", "bob", *H(home), "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {"accepted": pending[:2], "rejected": pending[2:]}

    code, out, err = run(capsys, "datanet", "publish", "wiki", *H(home))
    assert code == 0 and "published wiki version 1" in out and "2 records" in out, err
    code, out, err = run(capsys, "datanet", "publish", "wiki", *H(home))
    one_line_error(code, err, "nothing changed since version 1")

    code, out, _ = run(capsys, "datanet", "show", "wiki", *H(home))
    assert "policy        curated" in out and "MIT" in out and "acceptance    66.7%" in out and "alice" in out
    code, out, _ = run(capsys, "datanet", "show", "wiki", "--version", "1", *H(home), "--json")
    v1 = json.loads(out)
    assert v1["version"] == 1 and v1["size"] == 2 and len(v1["root"]) == 64
    code, out, _ = run(capsys, "datanet", "show", "wiki", "--version", "1", *H(home))
    assert v1["root"] in out and "2 records" in out

    code, out, err = run(capsys, "datanet", "proof", "wiki", pending[1], *H(home))
    assert code == 0 and "position 1 of version 1 of wiki" in out, err
    code, out, _ = run(capsys, "datanet", "proof", "wiki", pending[1], *H(home), "--json")
    bundle = json.loads(out)
    assert bundle["root"] == v1["root"] and bundle["contribution_id"] == pending[1]
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(out)
    code, _, err = run(capsys, "datanet", "proof", "wiki", pending[2], *H(home))
    one_line_error(code, err, "is not in version 1 of wiki")

    code, out, _ = run(capsys, "info", *H(home), "--json")
    key = json.loads(out)["verifier_key"]
    code, out, err = run(capsys, "datanet", "verify-proof", str(proof_file), "--key", key, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] is True and result["contribution_id"] == pending[1] and result["root"] == v1["root"]
    code, out, err = run(capsys, "datanet", "verify-proof", str(proof_file), "--key", key)
    assert code == 0 and out.startswith("ok: contribution") and "version 1 of wiki" in out

    # export: JSONL on stdout and to a file, Parquet to a file
    code, out, err = run(capsys, "datanet", "export", "wiki", "--version", "1", "--format", "jsonl", *H(home))
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["contribution_id"] for r in rows] == pending[:2] and rows[0]["text"] == TEXTS[0]
    assert rows[0]["contributor_name"] == "alice" and rows[0]["license"] == "MIT" and rows[0]["source"] == "my notes"
    out_jsonl = tmp_path / "out" / "v1.jsonl"
    out_jsonl.parent.mkdir()
    code, out, err = run(capsys, "datanet", "export", "wiki", "--version", "1", "--format", "jsonl", "--output", str(out_jsonl), *H(home), "--json")
    assert code == 0 and json.loads(out)["rows"] == 2 and len(out_jsonl.read_text().splitlines()) == 2, err
    out_parquet = tmp_path / "out" / "v1.parquet"
    code, out, err = run(capsys, "datanet", "export", "wiki", "--version", "1", "--format", "parquet", "--output", str(out_parquet), *H(home))
    assert code == 0 and "wrote 2 rows" in out, err
    table_ = pq.read_table(out_parquet)
    assert table_.column("contribution_id").to_pylist() == pending[:2] and table_.column("text").to_pylist() == TEXTS[:2]
    assert not list(out_parquet.parent.glob(".*partial"))

    code, _, err = run(capsys, "datanet", "export", "wiki", "--version", "1", "--format", "parquet", *H(home))
    one_line_error(code, err, "--output")
    code, _, err = run(capsys, "datanet", "export", "wiki", "--version", "7", *H(home))
    one_line_error(code, err, "wiki has no version 7")
    code, _, err = run(capsys, "datanet", "export", "wiki", "--format", "xlsx", "--output", str(tmp_path / "x"), *H(home))
    one_line_error(code, err, "format 'xlsx' is unknown")
    code, _, err = run(capsys, "datanet", "export", "wiki", "--output", str(tmp_path / "no" / "dir" / "x.jsonl"), *H(home))
    one_line_error(code, err, "cannot write")


def test_verify_proof_needs_no_database_and_refuses_bad_input(
    home: Path, tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(capsys, home, "notes")
    _, report, _ = contribute(capsys, home, "notes", write_jsonl(tmp_path / "a.jsonl", [{"text": TEXTS[0]}]))
    run(capsys, "datanet", "publish", "notes", *H(home))
    _, out, _ = run(capsys, "datanet", "proof", "notes", report["accepted"][0], *H(home), "--json")
    bundle = json.loads(out)
    _, info, _ = run(capsys, "info", *H(home), "--json")
    key = json.loads(info)["verifier_key"]
    monkeypatch.chdir(tmp_path)  # no node here: verify-proof must not need one

    code, out, err = run(capsys, "datanet", "verify-proof", "-", "--key", key, "--json", stdin=json.dumps(bundle), monkeypatch=monkeypatch)
    assert code == 0 and json.loads(out)["ok"] is True, err
    assert not (tmp_path / ".royalty").exists()

    proof_file = tmp_path / "p.json"
    proof_file.write_text(json.dumps(bundle))
    code, _, err = run(capsys, "datanet", "verify-proof", str(proof_file))
    one_line_error(code, err, "--key")
    code, _, err = run(capsys, "datanet", "verify-proof", str(tmp_path / "absent.json"), "--key", key)
    one_line_error(code, err, "no such file")
    code, _, err = run(capsys, "datanet", "verify-proof", str(tmp_path), "--key", key)
    one_line_error(code, err, "is a directory")
    code, _, err = run(capsys, "datanet", "verify-proof", str(proof_file), "--key", "garbage")
    one_line_error(code, err, "not a verifier key")
    (tmp_path / "bad.json").write_text("{nope")
    code, _, err = run(capsys, "datanet", "verify-proof", str(tmp_path / "bad.json"), "--key", key)
    one_line_error(code, err, "not JSON")
    (tmp_path / "list.json").write_text("[1, 2]")
    code, _, err = run(capsys, "datanet", "verify-proof", str(tmp_path / "list.json"), "--key", key)
    one_line_error(code, err, "not a datanet proof")
    (tmp_path / "partial.json").write_text(json.dumps({"contribution_id": "ab"}))
    code, out, err = run(capsys, "datanet", "verify-proof", str(tmp_path / "partial.json"), "--key", key, "--json")
    one_line_error(code, err, "not a datanet proof document")
    assert json.loads(out)["error"]["type"] == "invalid_input"

    forged = dict(bundle, contribution_id="ab" * 32)
    proof_file.write_text(json.dumps(forged))
    code, _, err = run(capsys, "datanet", "verify-proof", str(proof_file), "--key", key)
    one_line_error(code, err, "is not in the tree")
    other_root = dict(bundle, root="00" * 32, proof=[])
    proof_file.write_text(json.dumps(other_root))
    code, _, err = run(capsys, "datanet", "verify-proof", str(proof_file), "--key", key)
    one_line_error(code, err, "not in the tree")


# --- bad input, each with its own clear message ----------------------------------------------------------------


def test_bad_files_are_one_line_errors(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    create(capsys, home, "small", "--limit", "max_file_bytes=2000")
    before = run(capsys, "datanet", "contributions", "small", *H(home), "--json")[1]

    cases: list[tuple[str, bytes | None, str]] = [
        ("binary.jsonl", b'{"text": "a"}\n\x00\x01\x02\x03\xff', "looks like a binary file"),
        ("empty.jsonl", b"", "the file is empty"),
        ("blank.txt", b"\n\n  \n", "the file is empty"),
        ("big.jsonl", json.dumps({"text": "x" * 3000}).encode() + b"\n", "max_file_bytes"),
        ("sheet.xlsx", b"PK\x03\x04", "unknown file type .xlsx"),
        ("noext", b"hello", "unknown file type (none)"),
        ("broken.parquet", b"PAR1 not really", "not a readable Parquet file"),
        ("missing.jsonl", None, "no such file"),
    ]
    for name, content, fragment in cases:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        code, _, err = run(capsys, "datanet", "contribute", "small", str(path), "--as", "alice", *H(home))
        one_line_error(code, err, fragment)
        assert name in err, err

    code, _, err = run(capsys, "datanet", "contribute", "small", str(tmp_path), "--as", "alice", *H(home))
    one_line_error(code, err, "is a directory, not a file")
    code, _, err = run(capsys, "datanet", "contribute", "nope", str(tmp_path / "binary.jsonl"), *H(home))
    one_line_error(code, err, "no datanet 'nope'", "royalty datanet list")
    code, out, err = run(capsys, "datanet", "contribute", "small", str(tmp_path / "empty.jsonl"), *H(home), "--json")
    one_line_error(code, err, "empty")
    assert json.loads(out)["error"]["type"] == "invalid_input"
    code, out, err = run(capsys, "datanet", "contribute", "small", str(tmp_path / "big.jsonl"), *H(home), "--json")
    assert json.loads(out)["error"]["type"] == "payload_too_large"

    unreadable = tmp_path / "secret.jsonl"
    unreadable.write_text('{"text": "hidden"}\n')
    unreadable.chmod(0)
    try:
        if not os.access(unreadable, os.R_OK):  # root reads anything
            code, _, err = run(capsys, "datanet", "contribute", "small", str(unreadable), *H(home))
            one_line_error(code, err, "permission denied")
    finally:
        unreadable.chmod(0o600)

    assert run(capsys, "datanet", "contributions", "small", *H(home), "--json")[1] == before  # nothing was written


def test_bad_rows_are_reported_by_line_and_good_rows_kept(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    create(capsys, home, "mixed", "--limit", "max_record_bytes=200", license_="CC-BY-4.0,MIT")
    lines = [
        json.dumps({"text": TEXTS[0], "license": "MIT"}),  # 1 ok
        b"\xff\xfe not utf-8".decode("latin-1"),  # 2 replaced below with raw bytes
        json.dumps({"txt": "wrong field"}),  # 3 wrong schema
        json.dumps({"text": "x" * 500, "license": "MIT"}),  # 4 oversized record
        json.dumps({"text": TEXTS[1], "license": "GPL-3.0"}),  # 5 wrong license
        "{not json",  # 6
        json.dumps(["a", "list"]),  # 7
        json.dumps({"text": 42}),  # 8 wrong type
        "",  # 9 blank: skipped
        json.dumps({"text": TEXTS[2], "license": "CC-BY-4.0"}),  # 10 ok
        json.dumps({"text": TEXTS[0], "license": "MIT"}),  # 11 duplicate of line 1
    ]
    raw = "\n".join(lines).encode("utf-8").replace("\xff\xfe not utf-8".encode("utf-8"), b"\xff\xfe not utf-8") + b"\n"
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(raw)

    code, out, err = run(capsys, "datanet", "contribute", "mixed", str(path), "--as", "alice", *H(home))
    one_line_error(code, err, "7 of 10 row(s) rejected")
    assert "2 accepted" in out and "1 duplicate(s)" in out and "7 rejected" in out
    for expected in [
        "line 2: not valid UTF-8 (byte 0xff at column 1)",
        "line 3: unknown field 'txt'",
        "line 4: record is 511 bytes; this datanet accepts at most 200 (max_record_bytes)",
        "line 5: license GPL-3.0 is not accepted by this datanet (accepted: CC-BY-4.0, MIT)",
        "line 6: not valid JSON",
        "line 7: expected a JSON object, got list",
        "line 8: text must be a string, got int",
    ]:
        assert expected in out, (expected, out)
    assert out.index("line 2:") < out.index("line 3:") < out.index("line 8:")

    code, out, _ = run(capsys, "datanet", "contributions", "mixed", *H(home), "--json")
    kept = json.loads(out)["contributions"]
    assert [c["record"]["text"] for c in kept] == [TEXTS[0], TEXTS[2]] and [c["license"] for c in kept] == ["MIT", "CC-BY-4.0"]

    code, out, err = run(capsys, "datanet", "contribute", "mixed", str(path), "--as", "alice", *H(home), "--json")
    assert code == 1 and err.count("\n") == 1
    report = json.loads(out)
    assert report["unchanged"] is True and report["counts"]["duplicates"] == 3 and report["counts"]["rejected"] == 7
    assert [r["line"] for r in report["rejected"]] == [2, 3, 4, 5, 6, 7, 8]

    # no license given, several accepted: the row names the fix
    path2 = write_jsonl(tmp_path / "nolicense.jsonl", [{"text": TEXTS[3]}])
    code, out, err = run(capsys, "datanet", "contribute", "mixed", str(path2), "--as", "alice", *H(home))
    assert code == 1 and "line 1: no license given" in out and "--license" in out


def test_rerunning_the_same_file_changes_nothing_and_says_so(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    create(capsys, home, "wiki")
    path = write_jsonl(tmp_path / "wiki.jsonl", [{"text": t} for t in TEXTS])
    code, out, err = run(capsys, "datanet", "contribute", "wiki", str(path), "--as", "alice", *H(home))
    assert code == 0 and err == "" and "4 accepted" in out and "nothing new" not in out
    code, out, err = run(capsys, "datanet", "contribute", "wiki", str(path), "--as", "alice", *H(home))
    assert code == 0 and err == ""
    assert "nothing new: every record is already in wiki" in out and "4 duplicate(s)" in out
    code, out, err = run(capsys, "datanet", "contribute", "wiki", str(path), "--as", "bob", *H(home), "--json")
    report = json.loads(out)
    assert code == 0 and report["unchanged"] is True and report["counts"]["duplicates"] == 4
    assert {d["contributor"] for d in report["duplicates"]} == {json.loads(run(capsys, "account", "show", "alice", *H(home), "--json")[1])["id"]}
    code, out, _ = run(capsys, "datanet", "show", "wiki", *H(home), "--json")
    assert json.loads(out)["counts"]["accepted"] == 4 and json.loads(out)["contributors"] == 1


def test_over_quota_rows_are_rejected(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    create(capsys, home, "quota", "--limit", "max_records_per_day=2")
    path = write_jsonl(tmp_path / "q.jsonl", [{"text": t} for t in TEXTS[:3]])
    code, out, err = run(capsys, "datanet", "contribute", "quota", str(path), "--as", "alice", *H(home))
    one_line_error(code, err, "1 of 3 row(s) rejected")
    assert "2 accepted" in out and "line 3: over quota: 2 contributions per account per day on quota" in out
    path2 = write_jsonl(tmp_path / "q2.jsonl", [{"text": TEXTS[3]}])
    code, out, err = run(capsys, "datanet", "contribute", "quota", str(path2), "--as", "alice", *H(home), "--json")
    assert code == 1 and "over quota" in json.loads(out)["rejected"][0]["reason"]
    code, out, err = run(capsys, "datanet", "contribute", "quota", str(path2), "--as", "bob", *H(home))
    assert code == 0 and "1 accepted" in out  # the quota is per account


# --- every input format ----------------------------------------------------------------------------------------


def test_jsonl_csv_parquet_txt_and_md_inputs(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    create(capsys, home, "prose")
    create(capsys, home, "qa", kind="instruction", license_="MIT")
    create(capsys, home, "talk", kind="chat", license_="MIT")

    txt = tmp_path / "prose.txt"
    txt.write_text(f"{TEXTS[0]}\ncontinued on a second line.\n\n\n{TEXTS[1]}\n")
    code, report, err = contribute(capsys, home, "prose", txt)
    assert code == 0 and report["counts"]["accepted"] == 2, err

    md = tmp_path / "notes.md"
    md.write_text(f"# Heading\n\n{TEXTS[2]}\n\n```python\ndef f():\n\n    return 1\n```\n")
    code, report, err = contribute(capsys, home, "prose", md)
    assert code == 0 and report["counts"]["accepted"] == 3, err
    _, out, _ = run(capsys, "datanet", "contributions", "prose", *H(home), "--json")
    texts = [c["record"]["text"] for c in json.loads(out)["contributions"]]
    assert texts[-1] == "```python\ndef f():\n\n    return 1\n```" and texts[0].endswith("second line.")

    code, _, err = run(capsys, "datanet", "contribute", "qa", str(md), *H(home))
    one_line_error(code, err, "plain text files can only be contributed to 'text' datanets")

    csv_path = tmp_path / "qa.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "response", "tags"])
        writer.writerow(["What is 2+2?", "4", "math"])
        writer.writerow(["Capital of France?", "Paris", "geo,europe"])
        writer.writerow(["only a prompt", "", ""])
        writer.writerow(["too", "many", "cells", "here"])
    code, out, err = run(capsys, "datanet", "contribute", "qa", str(csv_path), "--as", "bob", *H(home))
    one_line_error(code, err, "2 of 4 row(s) rejected")
    assert "2 accepted" in out and "line 4: missing field 'response'" in out and "line 5: has 4 columns, the header has 3" in out

    pq_path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"prompt": "Name a prime", "response": "7", "system": None},
        {"prompt": "Name a colour", "response": "blue", "system": "Be brief."},
        {"prompt": "What is 2+2?", "response": "4", "system": None},
    ]), pq_path)  # fmt: skip
    code, report, err = contribute(capsys, home, "qa", pq_path, "--as", "carol")
    assert code == 0, err
    assert report["counts"] == {"accepted": 2, "pending": 0, "duplicates": 1, "rejected": 0}
    assert report["duplicates"][0]["line"] == 3

    chat = write_jsonl(tmp_path / "talk.ndjson", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "ok"}]},
    ])  # fmt: skip
    code, out, err = run(capsys, "datanet", "contribute", "talk", str(chat), *H(home), "--json")
    report = json.loads(out)
    assert code == 1 and report["counts"]["accepted"] == 1
    assert [r["line"] for r in report["rejected"]] == [2, 3]
    assert "assistant turn" in report["rejected"][0]["reason"] and "role must be one of" in report["rejected"][1]["reason"]

    _, out, _ = run(capsys, "datanet", "contributions", "qa", "--limit", "1", "--after", "0", *H(home), "--json")
    page = json.loads(out)
    assert [c["ordinal"] for c in page["contributions"]] == [1] and page["next_after"] == 1
    _, out, _ = run(capsys, "datanet", "contributions", "qa", *H(home))
    assert "ORD" in out and "Capital of France? | Paris" in out


# --- curation, near-duplicates, withdraw, purge ----------------------------------------------------------------


def test_curated_near_duplicates_are_flagged_and_queued(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    create(capsys, home, "cur", policy="curated")
    base = "the committee met on tuesday to discuss the annual budget for road repairs and new street lights in the town"
    first = write_jsonl(tmp_path / "one.jsonl", [{"text": base}])
    _, report, _ = contribute(capsys, home, "cur", first, "--as", "alice")
    original = report["pending"][0]
    near = write_jsonl(tmp_path / "two.jsonl", [{"text": base + "."}])
    code, out, err = run(capsys, "datanet", "contribute", "cur", str(near), "--as", "bob", *H(home))
    assert code == 0, err
    assert "line 1: near-duplicate" in out and original in out and "flagged for review" in out
    code, out, _ = run(capsys, "datanet", "queue", "cur", *H(home), "--json")
    queued = json.loads(out)["contributions"]
    assert queued[1]["near_duplicate_of"] == original and queued[1]["near_duplicate_similarity"] >= 0.8
    code, out, _ = run(capsys, "datanet", "queue", "cur", *H(home))
    assert original[:12] in out and "%" in out and "the committee met" in out

    code, out, _ = run(capsys, "datanet", "contribution", "cur", queued[1]["id"], *H(home))
    assert "near-dup of" in out and "status       pending" in out and base in out

    code, _, err = run(capsys, "datanet", "review", "cur", "--reject", queued[1]["id"], *H(home))
    one_line_error(code, err, "needs a reason")
    code, _, err = run(capsys, "datanet", "review", "cur", *H(home))
    one_line_error(code, err, "nothing to review")
    code, _, err = run(capsys, "datanet", "review", "cur", "--accept", "ff" * 32, *H(home))
    one_line_error(code, err, "no contribution")
    code, out, err = run(capsys, "datanet", "review", "cur", "--reject", queued[1]["id"], "--reason", "near copy", *H(home))
    assert code == 0 and "rejected 1" in out
    code, out, _ = run(capsys, "datanet", "contribution", "cur", queued[1]["id"], *H(home), "--json")
    assert json.loads(out)["status"] == "rejected" and json.loads(out)["reason"] == "near copy"
    code, _, err = run(capsys, "datanet", "contributions", "cur", "--status", "bogus", *H(home))
    one_line_error(code, err, "status 'bogus' is unknown")


def test_authorization_refusals_are_one_line_errors(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    create(capsys, home, "own", "--as", "alice", policy="curated")
    _, report, _ = contribute(capsys, home, "own", write_jsonl(tmp_path / "a.jsonl", [{"text": TEXTS[0]}]), "--as", "bob")
    cid = report["pending"][0]

    code, out, err = run(capsys, "datanet", "review", "own", "--accept", cid, "--as", "carol", *H(home), "--json")
    one_line_error(code, err, "only the owner or a curator of own may review contributions")
    assert json.loads(out)["error"]["type"] == "permission_denied"
    code, _, err = run(capsys, "datanet", "queue", "own", "--as", "bob", *H(home))
    one_line_error(code, err, "only the owner or a curator of own")
    code, _, err = run(capsys, "datanet", "add-curator", "own", "carol", "--as", "bob", *H(home))
    one_line_error(code, err, "only the owner of own may add curators")
    code, _, err = run(capsys, "datanet", "review", "own", "--accept", cid, "--as", "alice", *H(home))
    assert code == 0, err
    code, _, err = run(capsys, "datanet", "publish", "own", "--as", "bob", *H(home))
    one_line_error(code, err, "only the owner of own may publish versions")
    code, _, err = run(capsys, "datanet", "withdraw", "own", cid, "--as", "alice", *H(home))
    one_line_error(code, err, f"only the contributor may withdraw contribution {cid}")
    code, _, err = run(capsys, "datanet", "purge", "own", cid, "--as", "bob", *H(home))
    one_line_error(code, err, "withdraw contribution", "before purging")
    code, _, err = run(capsys, "datanet", "contribute", "own", str(tmp_path / "a.jsonl"), "--as", "nobody", *H(home))
    one_line_error(code, err, "no account 'nobody'")

    code, out, err = run(capsys, "datanet", "publish", "own", "--as", "alice", *H(home), "--json")
    assert code == 0 and json.loads(out)["size"] == 1, err
    code, out, err = run(capsys, "datanet", "withdraw", "own", cid, "--as", "bob", *H(home))
    assert code == 0 and "withdrew" in out, err
    code, out, err = run(capsys, "datanet", "purge", "own", cid, "--as", "bob", *H(home), "--json")
    assert code == 0 and json.loads(out)["purged"] is True and json.loads(out)["record"] is None, err
    code, out, _ = run(capsys, "datanet", "contribution", "own", cid, *H(home))
    assert "(purged)" in out and "withdrawn" in out
    code, out, _ = run(capsys, "datanet", "export", "own", "--version", "1", *H(home))
    assert json.loads(out)["purged"] is True  # the version still lists the id
    code, _, err = run(capsys, "datanet", "publish", "own", "--as", "alice", *H(home))
    one_line_error(code, err, "no accepted contributions")


def test_create_mistakes_are_one_line_errors(home: Path, capsys: Capsys) -> None:
    code, _, err = run(capsys, "datanet", "create", "Bad Slug", "--title", "x", "--kind", "video", "--license", "not a license",
                       "--policy", "anarchy", *H(home))  # fmt: skip
    one_line_error(code, err, "slug 'Bad Slug'", "kind 'video'", "policy 'anarchy'", "'not a license'")
    code, _, err = run(capsys, "datanet", "create", "ok", "--title", "x", "--kind", "text", "--license", "MIT", "--policy", "open",
                       "--limit", "bogus=1", "--limit", "max_record_bytes=abc", "--limit", "novalue", *H(home))  # fmt: skip
    one_line_error(code, err, "unknown limit 'bogus'", "max_record_bytes", "'novalue' must look like key=value")
    code, _, err = run(capsys, "datanet", "create", "ok", "--title", "x", "--kind", "text", "--license", "MIT", "--policy", "open",
                       "--limit", "near_duplicate_threshold=2", *H(home))  # fmt: skip
    one_line_error(code, err, "near_duplicate_threshold")
    created = create(capsys, home, "ok", "--limit", "near_duplicate_threshold=0.5", "--limit", "max_records_per_day=7")
    assert created["limits"]["near_duplicate_threshold"] == 0.5 and created["limits"]["max_records_per_day"] == 7
    code, _, err = run(capsys, "datanet", "create", "ok", "--title", "x", "--kind", "text", "--license", "MIT", "--policy", "open", *H(home))
    one_line_error(code, err, "a datanet named 'ok' already exists")
    code, _, err = run(capsys, "datanet", "show", "missing", *H(home))
    one_line_error(code, err, "no datanet 'missing'")
    code, _, err = run(capsys, "datanet", "show", "ok", "--version", "1", *H(home))
    one_line_error(code, err, "ok has no version 1", "royalty datanet publish ok")


# --- JSON everywhere, help everywhere, real processes ----------------------------------------------------------


def test_every_data_command_prints_one_json_document(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    create(capsys, home, "j", policy="curated")
    _, report, _ = contribute(capsys, home, "j", write_jsonl(tmp_path / "j.jsonl", [{"text": t} for t in TEXTS[:2]]), "--as", "alice")
    a, b = report["pending"]
    run(capsys, "datanet", "review", "j", "--accept", a, "--accept", b, *H(home))
    commands = [
        ("datanet", "list"),
        ("datanet", "show", "j"),
        ("datanet", "add-curator", "j", "bob"),
        ("datanet", "queue", "j"),
        ("datanet", "contributions", "j"),
        ("datanet", "contribution", "j", a),
        ("datanet", "publish", "j"),
        ("datanet", "show", "j", "--version", "1"),
        ("datanet", "proof", "j", a),
        ("datanet", "proof", "j", a, "--version", "1"),
        ("datanet", "export", "j", "--output", str(tmp_path / "j.parquet")),
        ("datanet", "withdraw", "j", b, "--as", "alice"),
        ("datanet", "purge", "j", b, "--as", "alice"),
    ]
    for command in commands:
        code, out, err = run(capsys, *command, *H(home), "--json")
        assert code == 0, (command, err)
        assert isinstance(json.loads(out), dict), command
    code, out, _ = run(capsys, "datanet", "list", *H(home))
    assert "SLUG" in out and "j" in out
    code, _, err = run(capsys, "datanet", "export", "j", *H(home), "--json")
    one_line_error(code, err, "--json needs --output")


def test_every_datanet_command_has_help_text() -> None:
    group = typer.main.get_command(app).commands["datanet"]  # type: ignore[attr-defined]
    expected = {
        "create", "list", "show", "add-curator", "contribute", "queue", "review", "contributions", "contribution",
        "withdraw", "purge", "publish", "proof", "verify-proof", "export",
    }  # fmt: skip
    assert expected <= set(group.commands)
    assert not [name for name, cmd in group.commands.items() if not (cmd.help or "").strip()]
    for cmd in group.commands.values():
        for param in cmd.params:
            if param.param_type_name == "option":
                assert (param.help or "").strip(), (cmd.name, param.name)


def test_subprocess_contribute_report_and_errors(home: Path, tmp_path: Path) -> None:
    assert run_process("datanet", "create", "sub", "--title", "Sub", "--kind", "text", "--license", "MIT", "--policy", "open",
                       "--home", str(home)).returncode == 0  # fmt: skip
    path = tmp_path / "sub.jsonl"
    path.write_bytes(json.dumps({"text": TEXTS[0]}).encode() + b"\n\xc3\x28 broken\n" + json.dumps({"wrong": 1}).encode() + b"\n")
    result = run_process("datanet", "contribute", "sub", str(path), "--as", "alice", "--home", str(home))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == "royalty: error: 2 of 3 row(s) rejected (see the report above)\n"
    assert "1 accepted" in result.stdout and "line 2: not valid UTF-8" in result.stdout and "line 3: unknown field 'wrong'" in result.stdout

    result = run_process("datanet", "contribute", "sub", str(tmp_path / "gone.csv"), "--home", str(home))
    assert result.returncode == 1 and result.stderr == f"royalty: error: {tmp_path / 'gone.csv'}: no such file\n"
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)))
    result = run_process("datanet", "contribute", "sub", str(tmp_path / "bin.csv"), "--home", str(home))
    assert result.returncode == 1 and "binary file" in result.stderr and result.stderr.count("\n") == 1

    result = run_process("datanet", "contribute", "sub", "--home", str(home))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "Missing argument" in result.stderr
    result = run_process("datanet", "contributions", "sub", "--limit", "zero", "--home", str(home))
    assert result.returncode == 2 and "Traceback" not in result.stderr

    result = run_process("datanet", "contribute", "sub", str(path), "--as", "alice", "--home", str(home), "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["counts"]["duplicates"] == 1


def test_progress_bar_on_a_terminal_for_large_files(home: Path, tmp_path: Path, capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from royalty.cli import datanet as datanet_cli

    create(capsys, home, "big", "--limit", "near_duplicate_threshold=0")
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": f"record number {i} of the big file"} for i in range(2500)])
    seen: list[int] = []
    real = datanet_cli._progress_bar

    @contextmanager
    def spy(size: int, lines: int) -> Iterator[Callable[[int], None]]:
        with real(size, lines) as callback:  # the real rich bar, drawing on (captured) stderr
            assert callback is not None
            yield lambda done: (seen.append(done), callback(done))[-1]

    monkeypatch.setattr(datanet_cli, "PROGRESS_MIN_BYTES", 1000)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(datanet_cli, "_progress_bar", spy)
    code, out, err = run(capsys, "datanet", "contribute", "big", str(path), "--as", "alice", *H(home), "--json")
    assert code == 0, err
    assert json.loads(out)["counts"]["accepted"] == 2500
    assert seen == [1000, 2000, 2500]

    monkeypatch.setattr(datanet_cli, "_progress_bar", real)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # not a terminal: no bar, nothing on stderr
    code, out, err = run(capsys, "datanet", "contribute", "big", str(path), "--as", "alice", *H(home))
    assert code == 0 and err == "" and "nothing new: every record is already in big" in out


# --- library bugs found while building the CLI: these fail until the library is fixed --------------------------


def test_deeply_nested_json_line_is_a_rejected_row_not_a_traceback(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    """formats._jsonl (and _csv's 'messages' column) catch only ValueError; json.loads raises RecursionError on
    deep nesting, which escapes as a traceback."""
    create(capsys, home, "deep")
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps({"text": TEXTS[0]}) + "\n" + "[" * 100_000 + "\n")
    try:
        code, out, err = run(capsys, "datanet", "contribute", "deep", str(path), *H(home))
    except RecursionError:
        pytest.fail("RecursionError escaped from royalty.datanet.formats._jsonl")
    assert code == 1 and "1 accepted" in out and "line 2: not valid JSON" in out


def test_large_csv_field_within_max_record_bytes_is_accepted(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    """formats._csv uses the csv module's default field_size_limit (131072 chars), so a record that the datanet
    allows (max_record_bytes up to 16 MiB) is rejected as 'malformed CSV (field larger than field limit)'."""
    create(capsys, home, "longcsv", "--limit", "max_record_bytes=1048576")
    path = tmp_path / "long.csv"
    path.write_text("text\n" + "word " * 40_000 + "\n")
    code, out, err = run(capsys, "datanet", "contribute", "longcsv", str(path), *H(home))
    assert code == 0 and "1 accepted" in out, out


def test_parquet_export_keeps_fields_missing_from_the_first_row(home: Path, tmp_path: Path, capsys: Capsys) -> None:
    """export.export builds the Parquet table with pa.Table.from_pylist, which takes its columns from the first
    row only: an instruction datanet whose first record has no 'system' loses every later 'system' silently."""
    create(capsys, home, "sys", kind="instruction", license_="MIT")
    path = write_jsonl(tmp_path / "sys.jsonl", [
        {"prompt": "Name a prime", "response": "7"},
        {"prompt": "Name a colour", "response": "blue", "system": "Be brief."},
    ])  # fmt: skip
    assert contribute(capsys, home, "sys", path)[0] == 0
    run(capsys, "datanet", "publish", "sys", *H(home))
    out_path = tmp_path / "sys.parquet"
    code, _, err = run(capsys, "datanet", "export", "sys", "--version", "1", "--output", str(out_path), *H(home))
    assert code == 0, err
    table_ = pq.read_table(out_path)
    assert "system" in table_.column_names, table_.column_names
    assert table_.column("system").to_pylist() == [None, "Be brief."]


def test_proof_with_a_non_text_checkpoint_is_refused_not_a_traceback(
    home: Path, tmp_path: Path, capsys: Capsys
) -> None:
    """journal.audit.verify_proof_bundle takes bundle['checkpoint'] without checking it is a string; open_note
    then calls .partition on it and an AttributeError escapes."""
    create(capsys, home, "cp")
    _, report, _ = contribute(capsys, home, "cp", write_jsonl(tmp_path / "a.jsonl", [{"text": TEXTS[0]}]))
    run(capsys, "datanet", "publish", "cp", *H(home))
    _, out, _ = run(capsys, "datanet", "proof", "cp", report["accepted"][0], *H(home), "--json")
    bundle = json.loads(out)
    bundle["journal"]["checkpoint"] = 5
    proof_file = tmp_path / "p.json"
    proof_file.write_text(json.dumps(bundle))
    key = json.loads(run(capsys, "info", *H(home), "--json")[1])["verifier_key"]
    try:
        code, _, err = run(capsys, "datanet", "verify-proof", str(proof_file), "--key", key)
    except AttributeError:
        pytest.fail("AttributeError escaped from royalty.journal.audit.verify_proof_bundle")
    one_line_error(code, err, "not a journal proof document")
