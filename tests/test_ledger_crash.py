"""Crash safety of the ledger (SQLite, group commit on): a writer process submitting transfer batches from three
threads is killed with SIGKILL at random moments, 100 times. Nothing it acknowledged is lost; the parent then
retries every batch that was sent but not acknowledged, with the same ids, and every id ends with exactly one
effect: the balances are the fold of every batch, the journal replays, and each account's history is complete.

The writer (tests/ledger_crash_writer.py) is forked from this process rather than started as a new Python (which
would spend ~1 s importing royalty per cycle). Reproduce a failure with the seed it prints:
``ROYALTY_CRASH_SEED=<seed> pytest tests/test_ledger_crash.py``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import time
import traceback
from pathlib import Path

import pytest

import ledger_crash_writer as writer
import royalty
from royalty.ledger import AccountSpec, Result, TransferSpec

SEED = int(os.environ.get("ROYALTY_CRASH_SEED", "4404"))
KILLS = 100
FIRST_ACK_TIMEOUT_S = 30.0

Key = tuple[int, int, int]  # (run, thread, batch)


def _fork_and_kill(home: Path, run: int, writer_seed: int, delay: float) -> list[str]:
    """Fork a writer, wait for its first ack, let it run ``delay`` s more, SIGKILL it; return its complete lines."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: never returns into pytest
        try:
            os.close(read_fd)
            writer.run(str(home), run, writer_seed, write_fd)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(write_fd)
    data = b""
    try:
        deadline = time.monotonic() + FIRST_ACK_TIMEOUT_S
        while b"\nack " not in b"\n" + data:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"run {run}: the writer acknowledged nothing in {FIRST_ACK_TIMEOUT_S} s")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                pytest.fail(f"run {run}: the writer exited before its first ack (its traceback is in the captured stderr)")
            data += chunk
        time.sleep(delay)
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    while chunk := os.read(read_fd, 65536):
        data += chunk
    os.close(read_fd)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (run, status)
    return data.decode().split("\n")[:-1]  # a line cut by the kill was not acknowledged


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_transfer(tmp_path: Path) -> None:
    home = tmp_path / "home"
    node, _ = royalty.init_node(home)
    assert node.ledger.create_accounts([AccountSpec(a, writer.LEDGER, writer.CODE) for a in writer.ACCOUNTS]) == (
        [Result.ok] * len(writer.ACCOUNTS))
    rng = random.Random(SEED)
    where = f"ROYALTY_CRASH_SEED={SEED}"
    tried: set[Key] = set()
    acked: dict[Key, list[str]] = {}
    started = time.monotonic()
    try:
        for run in range(KILLS):
            lines = _fork_and_kill(home, run, rng.randrange(2**32), rng.uniform(0.005, 0.08))
            new_acks: list[Key] = []
            for line in lines:
                kind, r, t, b, *rest = line.split()
                key = (int(r), int(t), int(b))
                assert key[0] == run, (where, line)
                if kind == "try":
                    tried.add(key)
                else:
                    assert kind == "ack" and key in tried, (where, line)
                    acked[key] = rest[0].split(",")
                    new_acks.append(key)
            assert new_acks, (where, run, lines)

            db = sqlite3.connect(home / "royalty.db")  # also recovers the WAL the killed writer left
            try:
                assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], (where, run)
            finally:
                db.close()
            # Every transfer of every batch acknowledged in this run is in the ledger (0 lost).
            for key in new_acks:
                specs = writer.batch_specs(*key)
                assert acked[key] == ["ok"] * len(specs), (where, key, acked[key])
                assert len(node.ledger.lookup_transfers([s.id for s in specs])) == len(specs), (where, run, key)
        loop_s = time.monotonic() - started

        # Retry what was sent but never acknowledged: same ids, each lands once (ok if the kill came before its
        # commit, exists if after).
        outcomes = {"ok": 0, "exists": 0}
        for key in sorted(tried - set(acked)):
            specs = writer.batch_specs(*key)
            first = node.ledger.create_transfers(specs)
            assert len(set(first)) == 1 and first[0] in (Result.ok, Result.exists), (where, key, first)
            outcomes[first[0].value] += 1
            assert node.ledger.create_transfers(specs) == [Result.exists] * len(specs), (where, key)

        # Exactly one effect per id: the balances are the fold of every batch sent, and nothing is left pending.
        all_specs = [s for key in sorted(tried) for s in writer.batch_specs(*key)]
        want = _fold(all_specs)
        got = {a.id: (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
               for a in node.ledger.lookup_accounts(writer.ACCOUNTS)}
        assert got == want, where
        assert len(node.ledger.lookup_transfers([s.id for s in all_specs])) == len(all_specs), where
        # The history chains survived every crash: each account's history is exactly its transfers, in order.
        for account, ids in _touching(all_specs).items():
            history = node.ledger.history(account, limit=10_000)
            while history and len(history) % 10_000 == 0 and (page := node.ledger.history(account, limit=10_000, after=history[-1].id)):
                history += page  # a busy account passes 10,000 transfers (the most one page holds)
            assert {t.id for t in history} == ids and len(history) == len(ids), (where, account)
            order = [(t.event_seq, t.event_index) for t in history]
            assert order == sorted(order), (where, account)
        node.journal.verify()
        print(f"{KILLS} kills in {loop_s:.1f} s, {sum(len(writer.batch_specs(*k)) for k in acked):,} transfers "
              f"acknowledged, unacknowledged batches retried: {outcomes}")
    finally:
        node.close()


def _touching(specs: list[TransferSpec]) -> dict[int, set[int]]:
    """Account -> the ids of the transfers on it (a post or void is on its pending transfer's accounts)."""
    pending = {s.id: s for s in specs if s.flags & writer.PENDING}
    out: dict[int, set[int]] = {a: set() for a in writer.ACCOUNTS}
    for s in specs:
        p = pending[s.pending_id] if s.pending_id else s
        out[p.debit_account_id].add(s.id)
        out[p.credit_account_id].add(s.id)
    return out


def _fold(specs: list[TransferSpec]) -> dict[int, tuple[int, int, int, int]]:
    """Balances after every spec applied once: posted moves, and pending ones resolved in their own batch."""
    bal = {a: [0, 0, 0, 0] for a in writer.ACCOUNTS}
    pending = {s.id: s for s in specs if s.flags & writer.PENDING}
    for s in specs:
        if s.flags & writer.POST:
            p = pending[s.pending_id]
            bal[p.debit_account_id][1] += s.amount
            bal[p.credit_account_id][3] += s.amount
        elif not s.flags & (writer.PENDING | writer.VOID):
            bal[s.debit_account_id][1] += s.amount
            bal[s.credit_account_id][3] += s.amount
    return {a: tuple(v) for a, v in bal.items()}  # type: ignore[misc]
