"""The CLI through its real entry point: in-process via ``royalty.cli.main`` for speed, and as a subprocess
(``python -m royalty``) for the bad-input cases a user meets first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import RawDB, run_cli as run

import royalty

from royalty.cli import app



def run_process(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "royalty", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture
def home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "node"
    code, _, err = run(capsys, "init", "--home", str(path))
    assert code == 0, err
    return path


def test_init_creates_home_and_is_safe_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node"
    code, out, _ = run(capsys, "init", "--home", str(path), "--json")
    assert code == 0
    first = json.loads(out)
    assert first["created"] is True and first["node_id"].startswith("node_")
    assert (path / "node.key").stat().st_mode & 0o777 == 0o600
    assert (path / "royalty.db").is_file() and (path / "blobs").is_dir() and (path / "node.json").is_file()

    code, out, _ = run(capsys, "init", "--home", str(path))
    assert code == 0 and "already initialised" in out
    code, out, _ = run(capsys, "init", "--home", str(path), "--json")
    again = json.loads(out)
    assert again["created"] is False and again["node_id"] == first["node_id"]
    code, out, _ = run(capsys, "journal", "events", "--home", str(path), "--json", "--type", "node.genesis")
    assert len(json.loads(out)["events"]) == 1  # genesis ran once


def test_home_from_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROYALTY_HOME", str(tmp_path / "envhome"))
    code, out, _ = run(capsys, "init", "--json")
    assert code == 0 and json.loads(out)["home"] == str(tmp_path / "envhome")
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0 and json.loads(out)["journal"]["size"] >= 5


def test_accounts_round_trip(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = ("--home", str(home))
    code, out, _ = run(capsys, "account", "create", "alice", *h, "--json")
    assert code == 0
    alice = json.loads(out)
    assert alice["id"].startswith("acct_") and alice["api_key"].startswith("rk_") and alice["roles"] == []

    code, out, _ = run(capsys, "account", "create", "root2", "--role", "admin", "--kind", "service", *h, "--json")
    assert json.loads(out)["roles"] == ["admin"] and json.loads(out)["kind"] == "service"

    code, out, _ = run(capsys, "account", "list", *h, "--json")
    names = [a["name"] for a in json.loads(out)["accounts"]]
    assert names == ["treasury", "fees", "rewards", "operator", "alice", "root2"]

    code, out, _ = run(capsys, "account", "new-key", "alice", "--label", "laptop", *h, "--json")
    key = json.loads(out)
    assert key["label"] == "laptop" and key["api_key"].split("_")[1] == key["id"]
    code, out, _ = run(capsys, "account", "revoke-key", key["id"], *h, "--json")
    assert json.loads(out)["revoked_ms"] is not None

    code, out, _ = run(capsys, "account", "show", alice["id"], *h, "--json")
    shown = json.loads(out)
    assert shown["name"] == "alice" and len(shown["keys"]) == 2
    assert "api_key" not in json.dumps(shown)  # keys are listed by id only

    code, out, _ = run(capsys, "account", "grant", "alice", "admin", *h, "--json")
    assert json.loads(out)["roles"] == ["admin"]


def test_account_mistakes_are_one_line_errors(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = ("--home", str(home))
    run(capsys, "account", "create", "alice", *h)
    code, out, err = run(capsys, "account", "create", "alice", *h)
    assert code == 1 and err == "royalty: error: an account named 'alice' already exists\n"

    code, out, err = run(capsys, "account", "create", "Bad Name", "--kind", "robot", "--role", "god", *h, "--json")
    assert code == 1 and err.count("\n") == 1
    assert "'Bad Name' is not allowed" in err and "kind 'robot'" in err and "role 'god'" in err  # all at once
    assert json.loads(out)["error"]["type"] == "invalid_input"

    code, _, err = run(capsys, "account", "show", "nobody", *h)
    assert code == 1 and "no account 'nobody'" in err and "royalty account list" in err
    code, _, err = run(capsys, "account", "revoke-key", "0000000000000000", *h)
    assert code == 1 and "no API key" in err


def test_journal_checkpoint_proof_and_offline_verification(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = ("--home", str(home))
    code, out, _ = run(capsys, "info", *h, "--json")
    key = json.loads(out)["verifier_key"]
    seq = json.loads(out)["journal"]["size"]  # alice's account.created lands here
    run(capsys, "account", "create", "alice", *h)  # account.created + account.key_created
    size = seq + 2
    code, out, _ = run(capsys, "journal", "checkpoint", *h, "--json")
    checkpoint = json.loads(out)
    assert checkpoint["size"] == size and checkpoint["note"].split("\n")[1] == str(size)
    code, out, _ = run(capsys, "journal", "checkpoint", *h)
    assert out.startswith(f"{checkpoint['origin']}\n{size}\n")  # nothing new: the same checkpoint

    code, out, _ = run(capsys, "journal", "proof", str(seq), *h, "--json")
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(out)
    bundle = json.loads(out)
    assert bundle["seq"] == seq and bundle["tree_size"] == size
    assert json.loads(bundle["event"])["type"] == "account.created"

    code, out, err = run(capsys, "journal", "verify-proof", str(proof_file), "--key", key, "--json")
    assert code == 0, err
    assert json.loads(out) == {"ok": True, "seq": seq, "tree_size": size, "root": checkpoint["root"],
                               "origin": checkpoint["origin"]}

    forged = dict(bundle, event=bundle["event"].replace("alice", "mallory"))
    proof_file.write_text(json.dumps(forged))
    code, _, err = run(capsys, "journal", "verify-proof", str(proof_file), "--key", key)
    assert code == 1 and "not included" in err

    code, _, err = run(capsys, "journal", "verify-proof", str(proof_file))
    assert code == 1 and "--key" in err
    proof_file.write_text("{not json")
    code, _, err = run(capsys, "journal", "verify-proof", str(proof_file), "--key", key)
    assert code == 1 and "not JSON" in err
    code, _, err = run(capsys, "journal", "verify-proof", str(tmp_path / "absent.json"), "--key", key)
    assert code == 1 and "no such file" in err
    proof_file.write_text(json.dumps(bundle))
    code, _, err = run(capsys, "journal", "verify-proof", str(proof_file), "--key", "garbage")
    assert code == 1 and "not a verifier key" in err

    code, _, err = run(capsys, "journal", "proof", "999", *h)
    assert code == 1 and "not in the signed tree" in err
    code, _, err = run(capsys, "journal", "proof", "1", "--size", "3", *h)
    assert code == 1 and "no checkpoint at size 3" in err


def test_journal_verify_names_the_tampered_event(
    tmp_path: Path, database_url: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node"
    h = ("--home", str(path))
    code, _, err = run(capsys, "init", *h, *(("--database-url", database_url) if database_url else ()))
    assert code == 0, err
    code, out, _ = run(capsys, "info", *h, "--json")
    genesis = json.loads(out)["journal"]["size"]
    for name in ("alice", "bob", "carol"):
        run(capsys, "account", "create", name, *h)  # account.created + account.key_created each
    bob = genesis + 2  # bob's account.created
    run(capsys, "journal", "checkpoint", *h)
    code, out, _ = run(capsys, "journal", "verify", *h, "--json")
    assert code == 0 and json.loads(out)["ok"] is True and json.loads(out)["size"] == genesis + 6

    with royalty.open_node(path) as node:
        db = RawDB(node.store.url)
    try:
        db.drop_trigger("journal_events", "UPDATE")  # what an attacker with database access does first
        body = db.one("SELECT body FROM journal_events WHERE seq = ?", (bob,))
        assert b'"name":"bob"' in bytes(body)
        db.execute("UPDATE journal_events SET body = ? WHERE seq = ?", (bytes(body).replace(b"bob", b"eve"), bob))
    finally:
        db.close()

    code, out, err = run(capsys, "journal", "verify", *h)
    assert code == 1
    assert err == f"royalty: error: journal event {bob} was altered: its bytes no longer match its leaf hash\n"
    code, out, err = run(capsys, "journal", "verify", *h, "--json")
    assert json.loads(out)["error"]["seq"] == bob


def test_every_data_command_prints_one_json_document(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = ("--home", str(home))
    commands = [
        ("info",),
        ("account", "list"),
        ("account", "show", "operator"),
        ("journal", "checkpoint"),
        ("journal", "checkpoints"),
        ("journal", "events", "--limit", "2"),
        ("journal", "show", "0"),
        ("journal", "proof", "0"),
        ("journal", "verify"),
    ]
    for command in commands:
        code, out, err = run(capsys, *command, *h, "--json")
        assert code == 0, (command, err)
        assert isinstance(json.loads(out), dict), command


def test_every_command_has_help_text() -> None:
    command = typer.main.get_command(app)
    missing = []

    def walk(cmd: object, path: str) -> None:
        subcommands = getattr(cmd, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, f"{path} {name}")
        elif not (getattr(cmd, "help", None) or "").strip():
            missing.append(path)

    walk(command, "royalty")
    assert not missing, f"commands without help: {missing}"


# --- the first mistakes a user makes, through a real process --------------------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("royalty: error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_unknown_home(tmp_path: Path) -> None:
    result = run_process("journal", "verify", "--home", str(tmp_path / "nowhere"))
    assert_one_line_error(result, "no royalty node at", "royalty init --home")
    (tmp_path / "empty").mkdir()
    result = run_process("info", "--home", str(tmp_path / "empty"))
    assert_one_line_error(result, "no royalty node at", "no node.json")


def test_corrupt_key_file(home: Path) -> None:
    key = home / "node.key"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    assert_one_line_error(run_process("info", "--home", str(home)), "node.key", "corrupt")


def test_key_file_readable_by_others(home: Path) -> None:
    (home / "node.key").chmod(0o644)
    assert_one_line_error(run_process("info", "--home", str(home)), "mode 0644", "chmod 600")


def test_missing_key_file(home: Path) -> None:
    (home / "node.key").unlink()
    assert_one_line_error(run_process("info", "--home", str(home)), "node.key", "missing")


def test_missing_database(home: Path) -> None:
    for path in home.glob("royalty.db*"):
        path.unlink()
    assert_one_line_error(run_process("account", "list", "--home", str(home)), "database", "missing")
    assert not (home / "royalty.db").exists()  # the check must not create an empty database either


def test_damaged_node_json(home: Path) -> None:
    (home / "node.json").write_text("{ this is not json")
    assert_one_line_error(run_process("info", "--home", str(home)), "node.json", "damaged")


def test_usage_errors_exit_2(home: Path) -> None:
    result = run_process("frobnicate")
    assert result.returncode == 2 and "No such command 'frobnicate'" in result.stderr and "Traceback" not in result.stderr
    result = run_process("journal", "show", "abc", "--home", str(home))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_process("account", "create")
    assert result.returncode == 2 and "missing argument 'name'" in result.stderr.lower()


def test_demo_tells_the_story_and_verifies(tmp_path: Path) -> None:
    # One run, kept (it trains an adapter: a second run would double the test's time; `make demo` runs the
    # throwaway variant). No pretraining: the story is the same, the base model just knows less language.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert_one_line_error(run_process("demo", "--home", str(tmp_path / "busy")), "not empty")
    result = run_process("demo", "--home", str(tmp_path / "kept"), "--pretrain-minutes", "0", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "— royalty.local/node_" in result.stdout  # the signed checkpoint note is printed
    assert re.search(r"verified: \d+ events, 2 signed checkpoint\(s\)", result.stdout), result.stdout
    assert "line 4: missing field 'response'" in result.stdout  # the bad line is reported, the rest kept
    assert "version 1: 20 contributions" in result.stdout
    assert "adapter first-aid-helper@1 registered by ben" in result.stdout
    assert "royalty adapter verify: ok" in result.stdout
    assert "royalty attribution verify: recomputed from the index bit for bit" in result.stdout
    assert re.search(r"ada\s+[\d,]+ OPEN|ada\s+0\.\d+ OPEN \(weight", result.stdout), result.stdout
    assert "verified: in version 1 of first-aid-qa" in result.stdout
    assert (tmp_path / "kept" / "node.json").exists()
    verified = re.search(r"verified: (\d+) events", result.stdout)
    assert verified is not None
    with royalty.open_node(tmp_path / "kept") as kept:
        assert int(verified.group(1)) == kept.journal.size()  # the whole journal was verified
        receipts = kept.journal.events(type="attribution.receipt")
        assert len(receipts) == 1 and kept.attribution.verify(receipts[0].data["receipt_id"])["ok"]


def test_verify_proof_from_stdin_that_is_not_utf8(home: Path) -> None:
    key = json.loads(run_process("info", "--home", str(home), "--json").stdout)["verifier_key"]
    result = subprocess.run(
        [sys.executable, "-m", "royalty", "journal", "verify-proof", "-", "--key", key],
        input=b"\xff\xfe{not text", capture_output=True, timeout=60,
    )
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert result.stderr.decode().strip() == "royalty: error: -: not a text file (not valid UTF-8)"
