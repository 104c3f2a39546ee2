"""Crash safety on SQLite: a writer process appending to the journal is killed with SIGKILL at random moments, 30
times; after each kill nothing it acknowledged is lost, the database is intact and the journal verifies.

The writer (tests/crash_writer.py) prints ``ack RUN BATCH FIRST LAST`` after each commit, so the test knows
exactly which events were acknowledged and what they must contain. Reproduce a failure with the seed it prints:
``ROYALTY_CRASH_SEED=<seed> pytest tests/test_crash.py``.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

import royalty
from royalty.journal.audit import VerifierKey, verify_journal

WRITER = Path(__file__).with_name("crash_writer.py")
SEED = int(os.environ.get("ROYALTY_CRASH_SEED", "1905"))
KILLS = 30
FIRST_ACK_TIMEOUT_S = 60.0  # generous: a slow CI machine importing everything


def _payload(run: int, batch: int, i: int, n: int) -> dict[str, object]:
    # The same recognisable payload crash_writer.py writes.
    return {"run": run, "batch": batch, "i": i, "n": n, "tag": f"crash:{run}:{batch}:{i}"}


def _run_and_kill(home: Path, run: int, writer_seed: int, delay: float, log: Path) -> list[str]:
    """Start the writer, wait for its first ack, let it run ``delay`` s more, SIGKILL it; return its stdout lines."""
    with log.open("wb") as err, subprocess.Popen(
        [sys.executable, str(WRITER), str(home), str(run), str(writer_seed)],
        stdout=subprocess.PIPE,
        stderr=err,
        bufsize=0,
    ) as proc:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + FIRST_ACK_TIMEOUT_S
        try:
            while b"\n" not in data:
                ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    pytest.fail(f"run {run}: the writer acknowledged nothing in {FIRST_ACK_TIMEOUT_S} s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    proc.wait()
                    pytest.fail(f"run {run}: the writer exited ({proc.returncode}) before its first ack:\n{log.read_text()}")
                data += chunk
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        while chunk := os.read(fd, 65536):
            data += chunk
    assert proc.returncode == -signal.SIGKILL, (run, proc.returncode, log.read_text())
    text = data.decode()
    # Only complete lines count: a line cut by the kill was not acknowledged.
    return text.split("\n")[:-1]


@pytest.mark.slow
def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    node, _ = royalty.init_node(home)
    keys = [VerifierKey.parse(node.signer.verifier_key)]
    origin = node.origin
    node.close()
    rng = random.Random(SEED)
    where = f"ROYALTY_CRASH_SEED={SEED}"

    acked: list[tuple[int, int, int, int]] = []  # (run, batch, first seq, last seq)
    acked_checkpoints: set[int] = set()
    for run in range(KILLS):
        lines = _run_and_kill(home, run, rng.randrange(2**32), rng.uniform(0.02, 0.2), tmp_path / f"writer-{run}.log")
        last_batch = -1
        for line in lines:
            kind, *fields = line.split()
            if kind == "ack":
                r, batch, first, last = map(int, fields)
                assert r == run and batch == last_batch + 1 and last >= first, (where, line)
                last_batch = batch
                acked.append((r, batch, first, last))
            else:
                assert kind == "cp", (where, line)
                acked_checkpoints.add(int(fields[0]))
        assert last_batch >= 0, (where, run, lines)

        # The database file itself is sound (this connection also recovers the WAL the killed writer left).
        db = sqlite3.connect(home / "royalty.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], (where, run)
        finally:
            db.close()

        node = royalty.open_node(home)
        try:
            with node.store.read() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT seq, body FROM journal_events WHERE type = 'crash.event' ORDER BY seq"
                ).all()
                report = verify_journal(conn, keys, origin)
            stored = {int(seq): json.loads(body)["data"] for seq, body in rows}

            # Every acknowledged event is there, at the acknowledged seq, with its payload.
            for r, batch, first, last in acked:
                n = last - first + 1
                for i, seq in enumerate(range(first, last + 1)):
                    assert stored.get(seq) == _payload(r, batch, i, n), (where, run, seq)

            # Transactions are atomic: every batch in the journal is complete and contiguous ...
            batches: dict[tuple[int, int], list[int]] = defaultdict(list)
            for seq, data in stored.items():
                batches[(data["run"], data["batch"])].append(seq)
            for (r, batch), seqs in batches.items():
                n = stored[seqs[0]]["n"]
                assert len(seqs) == n and seqs == list(range(seqs[0], seqs[0] + n)), (where, run, r, batch)
                assert [stored[s]["i"] for s in seqs] == list(range(n)), (where, run, r, batch)
            # ... and the only unacknowledged batch a run may leave is the one it was killed before acknowledging.
            acked_keys = {(r, batch) for r, batch, _, _ in acked}
            last_acked = {r: max(b for rr, b, _, _ in acked if rr == r) for r in range(run + 1)}
            for r, batch in set(batches) - acked_keys:
                assert batch == last_acked[r] + 1, (where, run, r, batch)

            # The whole journal replays, and the signed checkpoints the writer reported are there.
            assert report.size == node.journal.size() > max(last for _, _, _, last in acked), (where, run)
            assert acked_checkpoints <= {c.size for c in node.journal.checkpoints()}, (where, run)
        finally:
            node.close()

    assert len(acked) > KILLS, "each run should acknowledge a few batches"
