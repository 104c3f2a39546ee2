"""Ledger benchmark: the double-entry core (``node.ledger.create_transfers``) on SQLite (synchronous=FULL) and,
when a server is given, on PostgreSQL.

Run:  .venv/bin/python benchmarks/ledger.py            (~6 minutes on 2 cores)
      .venv/bin/python benchmarks/ledger.py --quick    (smaller rounds and 100,000 group-commit transfers; writes nothing)
PostgreSQL: --postgres postgresql://user@host/db, or ROYALTY_TEST_POSTGRES_URL; the run uses a schema of its own
and drops it afterwards. Without one, the PostgreSQL rows say "not run".

Setup: a fresh node (royalty.init_node in a temporary directory); user accounts on Asset.OPEN flagged
debits_must_not_exceed_credits, each funded from one funding account, plus a fee account, an escrow account, a
provider, a treasury and a reward pool. Transfer ids come from a counter (time-ordered, as TigerBeetle
recommends); every result is checked to be ``ok``, so only successful transfers are counted.

Each measurement runs beside a named baseline in the same process, so the ratio means something on a shared,
noisy machine:
- transfers, 1 per create_transfers call (each its own durable transaction):  raw sqlite3 with the same pragmas
  (WAL, synchronous=FULL), BEGIN IMMEDIATE, one INSERT of a transfer row and two UPDATEs of account balances,
  COMMIT; the ratio is what validation, the account reads, the journal event (canonical JSON, hashing, Merkle
  nodes) and the extra tables cost on top of the bare double-entry write.
- transfers in batches of 100 and 1,000 per call:  the same raw statements batched the same way.
- hot account:  batches of 1,000 where every transfer credits the same fee account, against batches of 1,000
  between uniformly random user accounts, both through royalty in the same rounds.
- inference-fee cycle (5 transfers): a pending reservation user -> escrow, a post of a smaller amount, then a
  linked chain of 3 splits escrow -> provider / treasury / reward pool. Pipelined as a real node would see it:
  each call carries the reservations of N new cycles and the post + splits of the N cycles reserved by the
  previous call. Baseline: the raw sqlite3 rows of the same cycle, batched the same way.
- group commit at scale: a second node with 100,000 funded accounts; 64 threads each submit calls of 16 random
  transfers until 1,000,000 transfers are in (group commit gathers the queued calls, <= 1,000 transfers per
  transaction). Then the same threads at 80% of that rate, paced, for the latency a caller sees (from the call's
  scheduled start, so waiting in the queue counts), counting Python's full garbage collections; then once more
  with the heap frozen (``gc.freeze()``, as a long-running server does after start-up). Baseline: raw sqlite3
  writing the same number of transfers over the same 100,000 accounts in transactions of 1,000.
- PostgreSQL (10,000 accounts): 1 transfer per call from one thread, and from 8 threads (grouped); batches of
  100 per call; 8 threads on 10 hot accounts, with group commit and with it off (each call its own transaction:
  ordered FOR UPDATE locks), counting failed calls. Baseline: raw psycopg doing the INSERT + 2 UPDATEs per
  transfer in transactions of the same size.
Rates are medians of rounds interleaved with their baselines (single runs for the scale and PostgreSQL rows).
Targets (shared/reference/ledger.md §7 F, issue #4): >= 2,000 transfers/s and p99 <= 5 ms at 1 per commit;
>= 25,000/s with group commit over 1M transfers and 100k accounts, p99 <= 25 ms at 80% load; hot account within
10% of uniform; fee cycle >= 5,000 cycles/s; PostgreSQL >= 2,000/s single, >= 8,000/s batched, >= 700/s on hot
accounts with 0 failures. Results replace the "ledger" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import royalty
from royalty.ledger import AccountFlags, AccountSpec, Asset, Result, TransferFlags, TransferSpec, hex_id

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Row, publish  # noqa: E402  (benchmarks/ is on sys.path when run)

USERS = 10_000
LEDGER = int(Asset.OPEN)
CODE = 1
DR_LIMIT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
LINKED, PENDING, POST = int(TransferFlags.LINKED), int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING_TRANSFER)
FUNDING, FEE, ESCROW, PROVIDER, TREASURY, REWARDS = 1, 2, 3, 4, 5, 6
USER0 = 1_000  # user accounts are USER0 .. USER0 + users - 1
FUND_EACH = 10**12  # far more than any benchmark moves; 100,000 of them stay below 2^63 on the funding account
RESERVE, CHARGE = 1_000, 700  # fee cycle: reserve 1,000, post 700, split 500 / 150 / 50
SPLITS = ((PROVIDER, 500), (TREASURY, 150), (REWARDS, 50))
GC_THREADS, GC_PER_CALL = 64, 16


class Ids:
    """Transfer ids from a counter: time-ordered, so new rows go to the right edge of the primary-key B-tree.
    ``take`` is safe from many threads (itertools.count is atomic under the GIL)."""

    def __init__(self, start: int = 1 << 64) -> None:
        self.start = start
        self._count = itertools.count(start + 1)

    def take(self) -> int:
        return next(self._count)

    def used(self) -> int:
        return next(self._count) - self.start - 1


def setup(node: royalty.Node, ids: Ids, users: int = USERS) -> None:
    system = [AccountSpec(a, LEDGER, CODE) for a in (FUNDING, FEE, PROVIDER, TREASURY, REWARDS)]
    system.append(AccountSpec(ESCROW, LEDGER, CODE, flags=DR_LIMIT))
    for lo in range(0, users, 1_000):
        accounts = [AccountSpec(USER0 + i, LEDGER, CODE, flags=DR_LIMIT) for i in range(lo, min(lo + 1_000, users))]
        check(node.ledger.create_accounts((system if lo == 0 else []) + accounts))
    for lo in range(0, users, 1_000):
        check(node.ledger.create_transfers([
            TransferSpec(ids.take(), FUNDING, USER0 + i, FUND_EACH, ledger=LEDGER, code=CODE)
            for i in range(lo, min(lo + 1_000, users))
        ]))


def check(results: list[Result]) -> None:
    if any(r is not Result.ok for r in results):
        bad = next(r for r in results if r is not Result.ok)
        raise SystemExit(f"benchmark transfer failed: {bad} ({sum(r is not Result.ok for r in results)} of {len(results)})")


def uniform(rng: random.Random, ids: Ids, n: int, users: int = USERS) -> list[TransferSpec]:
    out = []
    for _ in range(n):
        dr = rng.randrange(users)
        cr = (dr + 1 + rng.randrange(users - 1)) % users
        out.append(TransferSpec(ids.take(), USER0 + dr, USER0 + cr, rng.randint(1, 100), ledger=LEDGER, code=CODE))
    return out


def hot(rng: random.Random, ids: Ids, n: int) -> list[TransferSpec]:
    return [TransferSpec(ids.take(), USER0 + rng.randrange(USERS), FEE, rng.randint(1, 100), ledger=LEDGER, code=CODE)
            for _ in range(n)]


def run_batches(node: royalty.Node, batches: list[list[TransferSpec]]) -> tuple[float, list[float]]:
    """Seconds for all the calls, and each call's latency."""
    lat = []
    t0 = time.perf_counter()
    for b in batches:
        t = time.perf_counter()
        results = node.ledger.create_transfers(b)
        lat.append(time.perf_counter() - t)
        check(results)
    return time.perf_counter() - t0, lat


def run_threads(node: royalty.Node, calls: int, threads: int, make: Callable[[random.Random], list[TransferSpec]],
                *, rate: float | None = None, strict: bool = True) -> tuple[float, list[float], int]:
    """``calls`` calls of ``make(rng)`` from ``threads`` threads: (seconds, latencies, failed calls). With ``rate``
    (calls/s) each call has a scheduled start and its latency counts from then (waiting included). The clock starts
    once every thread is running (starting 64 threads takes longer than the first calls' spacing: a schedule started
    before them would open with a burst of calls already late, the load generator's delay, not the ledger's).

    The calls are made before the clock starts: drawing random transfers is the load generator's work (in a real
    deployment, the clients'), and done in the timed threads it took ~20% of the one core Python code can use
    away from the ledger (measured at 100,000 accounts: 19,900/s against 23,600/s with the calls made up front)."""
    rng = random.Random(calls)
    prepared = [make(rng) for _ in range(calls)]
    taken = itertools.count()
    lat: list[float] = []
    failed = [0]
    ready = threading.Barrier(threads + 1)
    t0 = 0.0

    def work() -> None:
        ready.wait()
        while (n := next(taken)) < calls:
            specs = prepared[n]
            start = time.perf_counter()
            if rate is not None:
                start = t0 + n / rate
                if (wait := start - time.perf_counter()) > 0:
                    time.sleep(wait)
            try:
                results = node.ledger.create_transfers(specs)
            except Exception:  # noqa: BLE001  (counted: the target is 0 failed calls)
                failed[0] += 1
                continue
            lat.append(time.perf_counter() - start)
            if any(r is not Result.ok for r in results):
                if strict:
                    check(results)
                failed[0] += 1

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    t0 = time.perf_counter() + 0.01
    ready.wait()
    for t in pool:
        t.join()
    return time.perf_counter() - t0, lat, failed[0]


# --- fee cycles ----------------------------------------------------------------------------------------------


def cycle_calls(rng: random.Random, ids: Ids, cycles: int, per_call: int) -> list[list[TransferSpec]]:
    """Pipelined fee cycles: call k = reservations of cycles k*N.. plus post + splits of the cycles of call k-1.
    ``cycles // per_call + 1`` calls; the first has only reservations, the last only posts and splits."""
    calls: list[list[TransferSpec]] = []
    prev: list[int] = []
    for k in range(cycles // per_call + 1):
        batch: list[TransferSpec] = []
        for pid in prev:
            batch.append(TransferSpec(ids.take(), amount=CHARGE, pending_id=pid, flags=POST))
            for j, (acct, amount) in enumerate(SPLITS):
                batch.append(TransferSpec(ids.take(), ESCROW, acct, amount, ledger=LEDGER, code=CODE,
                                          flags=LINKED if j < len(SPLITS) - 1 else 0))
        prev = []
        if k < cycles // per_call:
            for _ in range(per_call):
                pid = ids.take()
                prev.append(pid)
                batch.append(TransferSpec(pid, USER0 + rng.randrange(USERS), ESCROW, RESERVE, timeout=3_600,
                                          ledger=LEDGER, code=CODE, flags=PENDING))
        calls.append(batch)
    return calls


def run_cycles(node: royalty.Node, calls: list[list[TransferSpec]]) -> float:
    t = time.perf_counter()
    for b in calls:
        check(node.ledger.create_transfers(b))
    return time.perf_counter() - t


# --- the raw sqlite3 baseline --------------------------------------------------------------------------------


class Raw:
    """The bare double-entry write in sqlite3: an accounts table with four balance columns and a transfers table
    keyed by the same 32-hex-digit text ids, the same pragmas as the node's store."""

    def __init__(self, path: Path, users: int = USERS) -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA cache_size=-65536")
        db.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, dp INTEGER NOT NULL, dpo INTEGER NOT NULL, "
                   "cp INTEGER NOT NULL, cpo INTEGER NOT NULL)")
        db.execute("CREATE TABLE transfers (id TEXT PRIMARY KEY, dr TEXT NOT NULL, cr TEXT NOT NULL, "
                   "amount INTEGER NOT NULL, pending_id TEXT, flags INTEGER NOT NULL, ts INTEGER NOT NULL)")
        db.execute("CREATE TABLE pending (id TEXT PRIMARY KEY, dr TEXT NOT NULL, cr TEXT NOT NULL, "
                   "amount INTEGER NOT NULL, state TEXT NOT NULL)")
        accts = [FUNDING, FEE, ESCROW, PROVIDER, TREASURY, REWARDS, *range(USER0, USER0 + users)]
        db.execute("BEGIN")
        db.executemany("INSERT INTO accounts VALUES (?, 0, 0, 0, 0)", [(hex_id(a),) for a in accts])
        db.execute("UPDATE accounts SET cpo = ? WHERE id <> ?", (FUND_EACH, hex_id(FUNDING)))
        db.execute("COMMIT")
        self.db = db

    def transfers(self, batches: list[list[TransferSpec]]) -> tuple[float, list[float]]:
        db, lat = self.db, []
        t0 = time.perf_counter()
        for b in batches:
            t = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO transfers VALUES (?, ?, ?, ?, NULL, 0, ?)",
                           [(hex_id(s.id), hex_id(s.debit_account_id), hex_id(s.credit_account_id), s.amount, 0) for s in b])
            db.executemany("UPDATE accounts SET dpo = dpo + ? WHERE id = ?", [(s.amount, hex_id(s.debit_account_id)) for s in b])
            db.executemany("UPDATE accounts SET cpo = cpo + ? WHERE id = ?", [(s.amount, hex_id(s.credit_account_id)) for s in b])
            db.execute("COMMIT")
            lat.append(time.perf_counter() - t)
        return time.perf_counter() - t0, lat

    def cycles(self, calls: list[list[TransferSpec]]) -> float:
        """The same calls as rows: a pending transfer reserves (transfer + pending row + 2 pending-balance
        updates); a post moves the reservation to posted (transfer + pending state + 4 updates on 2 accounts);
        a split is a plain transfer (row + 2 updates)."""
        db = self.db
        pend: dict[int, tuple[int, int]] = {}
        t = time.perf_counter()
        for b in calls:
            rows, pending_rows, resolved, upd_dp, upd_cp, upd_dpo, upd_cpo = [], [], [], [], [], [], []
            for s in b:
                if s.flags & PENDING:
                    rows.append((hex_id(s.id), hex_id(s.debit_account_id), hex_id(s.credit_account_id), s.amount, None, s.flags, 0))
                    pending_rows.append((hex_id(s.id), hex_id(s.debit_account_id), hex_id(s.credit_account_id), s.amount))
                    upd_dp.append((s.amount, hex_id(s.debit_account_id)))
                    upd_cp.append((s.amount, hex_id(s.credit_account_id)))
                    pend[s.id] = (s.debit_account_id, s.credit_account_id)
                elif s.flags & POST:
                    dr, cr = pend.pop(s.pending_id)
                    rows.append((hex_id(s.id), hex_id(dr), hex_id(cr), s.amount, hex_id(s.pending_id), s.flags, 0))
                    resolved.append((hex_id(s.pending_id),))
                    upd_dp.append((-RESERVE, hex_id(dr)))
                    upd_cp.append((-RESERVE, hex_id(cr)))
                    upd_dpo.append((s.amount, hex_id(dr)))
                    upd_cpo.append((s.amount, hex_id(cr)))
                else:
                    rows.append((hex_id(s.id), hex_id(s.debit_account_id), hex_id(s.credit_account_id), s.amount, None, s.flags, 0))
                    upd_dpo.append((s.amount, hex_id(s.debit_account_id)))
                    upd_cpo.append((s.amount, hex_id(s.credit_account_id)))
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO transfers VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("INSERT INTO pending VALUES (?, ?, ?, ?, 'pending')", pending_rows)
            db.executemany("UPDATE pending SET state = 'posted' WHERE id = ? AND state = 'pending'", resolved)
            db.executemany("UPDATE accounts SET dp = dp + ? WHERE id = ?", upd_dp)
            db.executemany("UPDATE accounts SET cp = cp + ? WHERE id = ?", upd_cp)
            db.executemany("UPDATE accounts SET dpo = dpo + ? WHERE id = ?", upd_dpo)
            db.executemany("UPDATE accounts SET cpo = cpo + ? WHERE id = ?", upd_cpo)
            db.execute("COMMIT")
        return time.perf_counter() - t


class FullCollections:
    """Counts Python's full (generation 2) garbage collections while active, and their longest pause."""

    def __enter__(self) -> Self:
        self.pauses: list[float] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._start)

    def __str__(self) -> str:
        longest = f", the longest {max(self.pauses) * 1e3:.0f} ms" if self.pauses else ""
        return f"{len(self.pauses)} full garbage collections{longest}"


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


# --- the scenarios ---------------------------------------------------------------------------------------------


def sqlite_core(work: Path, quick: bool) -> tuple[list[Row], str]:
    rounds = 3 if quick else 5
    single_n = 200 if quick else 600  # transfers per round, 1 per call
    batch_n = 5_000 if quick else 20_000  # transfers per round and batch size
    cycles_n, cycles_per_call = (2_000, 200) if quick else (8_000, 200)
    rng = random.Random(4)
    ids = Ids()
    node, _ = royalty.init_node(work / "node")
    t = time.perf_counter()
    setup(node, ids)
    setup_s = time.perf_counter() - t
    print(f"setup: {USERS:,} accounts created and funded in {setup_s:.1f} s", flush=True)
    raw = Raw(work / "raw.db")

    # 1. one transfer per call, each its own durable transaction.
    ours, base, lat, raw_lat = [], [], [], []
    for _ in range(rounds):
        secs, l = run_batches(node, [[s] for s in uniform(rng, ids, single_n)])
        ours.append(single_n / secs)
        lat += l
        secs, l = raw.transfers([[s] for s in uniform(rng, ids, single_n)])
        base.append(single_n / secs)
        raw_lat += l
    single, raw_single = statistics.median(ours), statistics.median(base)
    single_p99, raw_single_p99 = p99(lat) * 1e3, p99(raw_lat) * 1e3
    print(f"1 per call: {single:,.0f} transfers/s, p99 {single_p99:.2f} ms "
          f"(raw {raw_single:,.0f}/s, p99 {raw_single_p99:.2f} ms)", flush=True)

    # 2 + 3. batches of 100 and 1,000 (uniform), and hot-account batches of 1,000, interleaved.
    rates: dict[str, list[float]] = {"u100": [], "r100": [], "u1000": [], "r1000": [], "hot": []}
    lat1000: list[float] = []
    for _ in range(rounds):
        for size in (100, 1_000):
            specs = uniform(rng, ids, batch_n)
            secs, l = run_batches(node, [specs[i : i + size] for i in range(0, batch_n, size)])
            rates[f"u{size}"].append(batch_n / secs)
            if size == 1_000:
                lat1000 += l
            specs = uniform(rng, ids, batch_n)
            secs, _ = raw.transfers([specs[i : i + size] for i in range(0, batch_n, size)])
            rates[f"r{size}"].append(batch_n / secs)
        specs = hot(rng, ids, batch_n)
        secs, _ = run_batches(node, [specs[i : i + 1_000] for i in range(0, batch_n, 1_000)])
        rates["hot"].append(batch_n / secs)
    med = {k: statistics.median(v) for k, v in rates.items()}
    hot_ratio = med["hot"] / med["u1000"]
    print(f"batches of 100: {med['u100']:,.0f}/s (raw {med['r100']:,.0f}/s); batches of 1,000: "
          f"{med['u1000']:,.0f}/s (raw {med['r1000']:,.0f}/s), p99 per call {p99(lat1000) * 1e3:.1f} ms", flush=True)
    print(f"hot fee account, batches of 1,000: {med['hot']:,.0f}/s ({hot_ratio:.2f}x uniform)", flush=True)

    # 4. inference-fee cycles, pipelined (reservations in one call, post + splits in the next).
    ours, base = [], []
    for _ in range(rounds):
        ours.append(cycles_n / run_cycles(node, cycle_calls(rng, ids, cycles_n, cycles_per_call)))
        base.append(cycles_n / raw.cycles(cycle_calls(rng, ids, cycles_n, cycles_per_call)))
    cycle_rate, raw_cycle_rate = statistics.median(ours), statistics.median(base)
    print(f"fee cycles, {cycles_per_call} per call: {cycle_rate:,.0f} cycles/s (raw {raw_cycle_rate:,.0f}/s)", flush=True)

    transfers = ids.used()
    db_bytes = sum(p.stat().st_size for p in (work / "node").glob("royalty.db*"))
    escrow = node.ledger.balance(ESCROW)
    assert escrow.debits_pending == escrow.credits_pending == 0 and escrow.posted == 0, escrow
    node.close()
    raw.db.close()

    rows: list[Row] = [
        ("Transfers, 1 per call (own durable transaction)", f"{single:,.0f} transfers/s",
         f"raw sqlite3 INSERT + 2 UPDATEs {raw_single:,.0f}/s", f"{single / raw_single:.2f}x", ">= 2,000/s", single >= 2_000),
        ("p99 latency, 1 per call", f"{single_p99:.2f} ms", f"raw sqlite3 {raw_single_p99:.2f} ms",
         f"{single_p99 / raw_single_p99:.1f}x", "<= 5 ms", single_p99 <= 5),
        ("Transfers, batches of 100", f"{med['u100']:,.0f} transfers/s", f"raw sqlite3, same batches {med['r100']:,.0f}/s",
         f"{med['u100'] / med['r100']:.2f}x", "(reference)", True),
        ("Transfers, batches of 1,000", f"{med['u1000']:,.0f} transfers/s", f"raw sqlite3, same batches {med['r1000']:,.0f}/s",
         f"{med['u1000'] / med['r1000']:.2f}x", ">= 25,000/s", med["u1000"] >= 25_000),
        ("Hot fee account (every transfer credits it), batches of 1,000", f"{med['hot']:,.0f} transfers/s",
         f"uniform random accounts {med['u1000']:,.0f}/s", f"{hot_ratio:.2f}x", ">= 0.90x uniform", hot_ratio >= 0.90),
        (f"Inference-fee cycle (5 transfers), {cycles_per_call} cycles per call", f"{cycle_rate:,.0f} cycles/s",
         f"raw sqlite3 rows of the cycle {raw_cycle_rate:,.0f}/s", f"{cycle_rate / raw_cycle_rate:.2f}x",
         ">= 5,000/s", cycle_rate >= 5_000),
    ]
    notes = (
        f"Rounds of {single_n} single transfers and {batch_n:,} batched ones over {USERS:,} accounts; fee cycles "
        f"pipelined, each call carrying {cycles_per_call} new reservations plus the post and 3 linked splits of the "
        f"previous call's {cycles_per_call} ({cycles_per_call * 5:,} transfers per call), {cycles_n:,} cycles per "
        f"round; p99 latency of a 1,000-transfer call {p99(lat1000) * 1e3:.1f} ms; setup {setup_s:.1f} s; after "
        f"{transfers:,} transfers the SQLite files took {db_bytes / transfers:,.0f} bytes per transfer (ledger rows "
        f"and journal events together)."
    )
    return rows, notes


def transactions_since(node: royalty.Node, before: int) -> int:
    """Write transactions since journal size ``before``: a group's transfers share one ledger-clock timestamp."""
    with node.store.read() as conn:
        return int(conn.exec_driver_sql(
            "SELECT COUNT(DISTINCT timestamp) FROM ledger_transfers WHERE event_seq >= ?", (before,)).scalar_one())


def sqlite_group_commit(work: Path, quick: bool) -> tuple[list[Row], str]:
    users = 20_000 if quick else 100_000
    total = 100_000 if quick else 1_000_000
    ids = Ids()
    node, _ = royalty.init_node(work / "scale")
    t = time.perf_counter()
    setup(node, ids, users)
    print(f"group commit: {users:,} accounts created and funded in {time.perf_counter() - t:.1f} s", flush=True)

    def make(rng: random.Random) -> list[TransferSpec]:
        return uniform(rng, ids, GC_PER_CALL, users)

    calls = total // GC_PER_CALL
    before = node.journal.size()
    secs, lat, _ = run_threads(node, calls, GC_THREADS, make)
    rate = calls * GC_PER_CALL / secs
    commits = transactions_since(node, before)
    print(f"group commit, {GC_THREADS} threads x {GC_PER_CALL} per call: {rate:,.0f} transfers/s over "
          f"{calls * GC_PER_CALL:,} (p99 {p99(lat) * 1e3:.1f} ms, {calls / commits:.1f} calls per commit)", flush=True)
    paced_calls = max(calls // 10, 2_000)
    pace = 0.8 * rate / GC_PER_CALL
    before = node.journal.size()
    with FullCollections() as full_gc:
        paced_secs, paced_lat, _ = run_threads(node, paced_calls, GC_THREADS, make, rate=pace)
    paced_commits = transactions_since(node, before)
    paced_p99 = p99(paced_lat) * 1e3
    print(f"  at 80% load ({0.8 * rate:,.0f}/s offered, {paced_calls * GC_PER_CALL / paced_secs:,.0f}/s done): "
          f"p99 {paced_p99:.1f} ms, p50 {statistics.median(paced_lat) * 1e3:.1f} ms; {full_gc}", flush=True)
    # Again with the heap frozen (gc.freeze(), what a long-running server does after start-up): a full collection
    # scans every object of the imported libraries (~100,000), and every caller queued meanwhile waits for it.
    gc.collect()
    gc.freeze()
    try:
        _, frozen_lat, _ = run_threads(node, paced_calls, GC_THREADS, make, rate=pace)
    finally:
        gc.unfreeze()
    frozen_p99 = p99(frozen_lat) * 1e3
    print(f"  at 80% load, heap frozen: p99 {frozen_p99:.1f} ms, p50 {statistics.median(frozen_lat) * 1e3:.1f} ms",
          flush=True)
    db_bytes = sum(p.stat().st_size for p in (work / "scale").glob("royalty.db*"))
    transfers = ids.used()
    node.close()

    raw = Raw(work / "raw-scale.db", users)
    rng = random.Random(9)
    raw_secs = 0.0
    for _ in range(total // 100_000):
        specs = uniform(rng, ids, 100_000, users)
        raw_secs += raw.transfers([specs[i : i + 1_000] for i in range(0, len(specs), 1_000)])[0]
    raw_rate = total / raw_secs
    raw.db.close()
    print(f"  raw sqlite3, {total:,} transfers in batches of 1,000 over {users:,} accounts: {raw_rate:,.0f}/s", flush=True)

    rows: list[Row] = [
        (f"Group commit, {total:,} transfers over {users:,} accounts ({GC_THREADS} threads x {GC_PER_CALL} per call)",
         f"{rate:,.0f} transfers/s", f"raw sqlite3, batches of 1,000, same scale {raw_rate:,.0f}/s",
         f"{rate / raw_rate:.2f}x", ">= 25,000/s", rate >= 25_000),
        ("Group commit, p99 call latency at 80% load", f"{paced_p99:.1f} ms",
         f"p50 {statistics.median(paced_lat) * 1e3:.1f} ms; heap frozen (gc.freeze()): p99 {frozen_p99:.1f} ms", "",
         "<= 25 ms", paced_p99 <= 25),
    ]
    notes = (
        f"Group commit: {calls / commits:.1f} calls ({calls / commits * GC_PER_CALL:,.0f} transfers) per transaction "
        f"on average at full load; p99 call latency at full load {p99(lat) * 1e3:.0f} ms (callers queue behind the "
        f"commit in progress); at 80% load {paced_calls / paced_commits:.1f} calls per transaction; during the 80% run "
        f"Python made {full_gc}; the scale node's SQLite files took "
        f"{db_bytes / transfers:,.0f} bytes per transfer."
    )
    return rows, notes


# --- PostgreSQL ------------------------------------------------------------------------------------------------


class RawPg:
    """The bare double-entry write in psycopg: the same two tables as Raw, in the benchmark's schema."""

    def __init__(self, url: str, users: int) -> None:
        import psycopg

        self.conn = psycopg.connect(url)
        with self.conn.transaction():
            self.conn.execute("CREATE TABLE raw_accounts (id TEXT PRIMARY KEY, dpo BIGINT NOT NULL, cpo BIGINT NOT NULL)")
            self.conn.execute("CREATE TABLE raw_transfers (id TEXT PRIMARY KEY, dr TEXT NOT NULL, cr TEXT NOT NULL, "
                              "amount BIGINT NOT NULL, ts BIGINT NOT NULL)")
            with self.conn.cursor() as cur:
                cur.executemany("INSERT INTO raw_accounts VALUES (%s, 0, %s)",
                                [(hex_id(USER0 + i), FUND_EACH) for i in range(users)])

    def transfers(self, batches: list[list[TransferSpec]]) -> float:
        t = time.perf_counter()
        for b in batches:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.executemany("INSERT INTO raw_transfers VALUES (%s, %s, %s, %s, 0)",
                                [(hex_id(s.id), hex_id(s.debit_account_id), hex_id(s.credit_account_id), s.amount) for s in b])
                cur.executemany("UPDATE raw_accounts SET dpo = dpo + %s WHERE id = %s",
                                [(s.amount, hex_id(s.debit_account_id)) for s in b])
                cur.executemany("UPDATE raw_accounts SET cpo = cpo + %s WHERE id = %s",
                                [(s.amount, hex_id(s.credit_account_id)) for s in b])
        return time.perf_counter() - t


def postgres(work: Path, base_url: str, quick: bool) -> tuple[list[Row], str]:
    import psycopg

    schema = "bench_" + secrets.token_hex(6)
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{base_url}{'&' if '?' in base_url else '?'}options=-csearch_path%3D{schema}"
    try:
        return _postgres(work, url, quick)
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _postgres(work: Path, url: str, quick: bool) -> tuple[list[Row], str]:
    single_n, threaded_n, batch_n, hot_n = (300, 2_000, 10_000, 2_000) if quick else (1_000, 8_000, 40_000, 6_000)
    rng = random.Random(5)
    ids = Ids()
    node, _ = royalty.init_node(work / "pg", database_url=url)
    setup(node, ids)
    hot_accounts = [USER0 + i for i in range(10)]
    raw = RawPg(url, USERS)

    secs, lat = run_batches(node, [[s] for s in uniform(rng, ids, single_n)])
    single, single_p99 = single_n / secs, p99(lat) * 1e3
    raw_single = single_n / raw.transfers([[s] for s in uniform(rng, ids, single_n)])
    secs, lat8, _ = run_threads(node, threaded_n, 8, lambda r: uniform(r, ids, 1))
    threaded = threaded_n / secs
    specs = uniform(rng, ids, batch_n)
    batched = batch_n / run_batches(node, [specs[i : i + 100] for i in range(0, batch_n, 100)])[0]
    specs = uniform(rng, ids, batch_n)
    raw_batched = batch_n / raw.transfers([specs[i : i + 100] for i in range(0, batch_n, 100)])

    def hot_call(r: random.Random) -> list[TransferSpec]:
        dr, cr = r.sample(hot_accounts, 2)
        return [TransferSpec(ids.take(), dr, cr, 1, ledger=LEDGER, code=CODE)]

    secs, _, hot_failed = run_threads(node, hot_n, 8, hot_call, strict=False)
    hot_rate = hot_n / secs
    node.ledger.group_commit = False
    secs, _, hot_off_failed = run_threads(node, hot_n, 8, hot_call, strict=False)
    hot_off = hot_n / secs
    node.close()
    raw.conn.close()
    print(f"postgresql: 1 per call {single:,.0f}/s (p99 {single_p99:.1f} ms; raw {raw_single:,.0f}/s); 8 threads x 1 "
          f"{threaded:,.0f}/s; batches of 100 {batched:,.0f}/s (raw {raw_batched:,.0f}/s); hot 10 accounts, 8 threads "
          f"{hot_rate:,.0f}/s ({hot_failed} failed), group commit off {hot_off:,.0f}/s ({hot_off_failed} failed)", flush=True)
    rows: list[Row] = [
        ("PostgreSQL, 1 transfer per call, 1 thread", f"{single:,.0f} transfers/s",
         f"raw psycopg INSERT + 2 UPDATEs {raw_single:,.0f}/s", f"{single / raw_single:.2f}x", "(reference)", True),
        ("PostgreSQL, 1 transfer per call, 8 threads (group commit)", f"{threaded:,.0f} transfers/s",
         f"raw psycopg, 1 thread {raw_single:,.0f}/s", f"{threaded / raw_single:.2f}x", ">= 2,000/s", threaded >= 2_000),
        ("PostgreSQL, batches of 100", f"{batched:,.0f} transfers/s", f"raw psycopg, same batches {raw_batched:,.0f}/s",
         f"{batched / raw_batched:.2f}x", ">= 8,000/s", batched >= 8_000),
        ("PostgreSQL, 10 hot accounts, 8 threads x 1 (group commit)", f"{hot_rate:,.0f} transfers/s, {hot_failed} failed",
         f"group commit off: {hot_off:,.0f}/s, {hot_off_failed} failed", f"{hot_rate / hot_off:.2f}x",
         ">= 700/s, 0 failed", hot_rate >= 700 and hot_failed == 0 and hot_off_failed == 0),
    ]
    notes = (f"PostgreSQL: p99 of a 1-transfer call from one thread {single_p99:.1f} ms, from 8 threads "
             f"{p99(lat8) * 1e3:.1f} ms; server on the same machine.")
    return rows, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller rounds; writes nothing")
    parser.add_argument("--no-write", action="store_true", help="print results only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--postgres", default=os.environ.get("ROYALTY_TEST_POSTGRES_URL"),
                        help="a PostgreSQL server URL for the PostgreSQL rows (default: $ROYALTY_TEST_POSTGRES_URL)")
    parser.add_argument("--only", choices=["core", "scale", "postgres"], help="run one part (writes nothing)")
    args = parser.parse_args()
    write = not (args.no_write or args.quick or args.only)
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="royalty-bench-") as tmp:
        work = Path(tmp)
        parts: list[tuple[str, Callable[[], tuple[list[Row], str]]]] = [
            ("core", lambda: sqlite_core(work, args.quick)),
            ("scale", lambda: sqlite_group_commit(work, args.quick)),
        ]
        if args.postgres:
            parts.append(("postgres", lambda: postgres(work, args.postgres, args.quick)))
        for name, part in parts:
            if args.only in (None, name):
                r, n = part()
                rows += r
                notes.append(n)
    if not args.postgres and args.only in (None, "postgres"):
        rows.append(("PostgreSQL rows", "not run", "", "", "give --postgres URL", False))
    conditions = (
        "SQLite: WAL, synchronous=FULL, user accounts flagged debits_must_not_exceed_credits, funded from one "
        "account; medians of rounds interleaved with the baselines. PostgreSQL: READ COMMITTED, same machine."
    )
    command = ".venv/bin/python benchmarks/ledger.py --postgres $ROYALTY_TEST_POSTGRES_URL"
    return publish("ledger", "Ledger core (issue #4)", command, rows, " ".join(notes), write=write, setup=conditions)


if __name__ == "__main__":
    sys.exit(main())
