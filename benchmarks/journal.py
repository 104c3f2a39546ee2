"""Journal benchmark: append throughput, inclusion proofs and full verification at 1,000,000 events.

Run:  .venv/bin/python benchmarks/journal.py            (1M events, ~3 minutes on 2 cores)
      .venv/bin/python benchmarks/journal.py --events 100000 --no-write   (a quick look)

Each measurement runs beside a named baseline in the same process, so the ratio means something on a shared,
noisy machine:
- append (batched and single durable):  raw sqlite3 executemany of rows of the same size into the same kind of
  table with the same pragmas (WAL, synchronous=FULL); the ratio is what hashing, canonical JSON, Merkle
  nodes and the head row cost on top of the bare insert.
- inclusion proof:  the same proof computed from an in-memory tree (no database); the ratio is the cost of
  reading O(log n) stored nodes.
- verify:  reading every event row and hashing it, nothing else; the ratio is the cost of the full independent
  replay (canonical-form check, leaf and node comparison, checkpoint signatures).
Targets (issue #2): batched append >= 20,000 events/s; proof at 1M leaves <= 1 ms; verify of 1M <= 60 s.
Results replace the "journal" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import royalty
from royalty.journal import merkle
from royalty.journal.log import _fetch_nodes

from report import publish  # noqa: E402  (benchmarks/ is on sys.path when run)

BATCH = 1_000


def payload(i: int) -> dict[str, object]:
    # Shaped like a real event: a few ids, an amount, a short text.
    return {"account": f"acct_{i:016x}", "amount": i * 1_000_003 % 10**12, "memo": "benchmark event " + "x" * 40}


def append_batches(node: royalty.Node, start: int, count: int, batch: int) -> float:
    t = time.perf_counter()
    for lo in range(start, start + count, batch):
        with node.store.write() as conn:
            node.journal.append_many(conn, [("bench.event", payload(i), None) for i in range(lo, min(lo + batch, start + count))])
    return time.perf_counter() - t


def append_single(node: royalty.Node, start: int, count: int) -> float:
    t = time.perf_counter()
    for i in range(start, start + count):
        with node.store.write() as conn:
            node.journal.append(conn, "bench.event", payload(i))
    return time.perf_counter() - t


def raw_sqlite(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS ev (seq INTEGER PRIMARY KEY, type TEXT, body BLOB, leaf BLOB)")
    return db


def raw_batches(db: sqlite3.Connection, start: int, count: int, batch: int, body: bytes) -> float:
    t = time.perf_counter()
    for lo in range(start, start + count, batch):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO ev VALUES (?, ?, ?, ?)",
            [(i, "bench.event", body, body[:32]) for i in range(lo, min(lo + batch, start + count))],
        )
        db.execute("COMMIT")
    return time.perf_counter() - t


def median_of(fn, runs: int = 3) -> float:
    return statistics.median(fn() for _ in range(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="journal size for proof and verify (default 1M)")
    parser.add_argument("--no-write", action="store_true", help="print results only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="royalty-bench-") as tmp:
        work = Path(tmp)
        node, _ = royalty.init_node(work / "node")
        raw = raw_sqlite(work / "raw.db")
        body = royalty.journal.canonical.canonical_json({"v": 1, "seq": 0, "type": "bench.event", "ts": 0, "actor": None, "data": payload(0)})

        # 1. batched appends: interleave ours and the baseline, 3 rounds of 20k events each.
        n = 20_000
        ours, base = [], []
        for r in range(3):
            ours.append(n / append_batches(node, node.journal.size(), n, BATCH))
            base.append(n / raw_batches(raw, r * n, n, BATCH, body))
        batch_rate, raw_batch_rate = statistics.median(ours), statistics.median(base)
        print(f"append, batches of {BATCH}: {batch_rate:,.0f} events/s (raw insert {raw_batch_rate:,.0f}/s)", flush=True)

        # 2. single-event durable appends (one fsync'd transaction each).
        m = 300
        single = statistics.median(m / append_single(node, node.journal.size(), m) for _ in range(3))
        raw_single = statistics.median(m / raw_batches(raw, 10**7 + k * m, m, 1, body) for k in range(3))
        print(f"append, 1 per transaction: {single:,.0f} events/s (raw insert {raw_single:,.0f}/s)", flush=True)

        # 3. grow to the target size, then time inclusion proofs.
        t = time.perf_counter()
        append_batches(node, node.journal.size(), args.events - node.journal.size(), 10_000)
        fill = time.perf_counter() - t
        size = node.journal.size()
        print(f"filled to {size:,} events in {fill:.1f} s ({(size) / fill:,.0f}/s in batches of 10,000)", flush=True)
        node.journal.checkpoint()
        rng = random.Random(2)
        seqs = [rng.randrange(size) for _ in range(2_000)]
        with node.store.read() as conn:
            t = time.perf_counter()
            for s in seqs:
                merkle.inclusion_proof(s, size, lambda ids: _fetch_nodes(conn, ids))
            proof_ms = (time.perf_counter() - t) / len(seqs) * 1e3
            # Baseline: the same proofs from the hashes in memory (fetched once, outside the timing).
            needed = {i for s in seqs for group in merkle.inclusion_plan(s, size) for i in group}
            cache = _fetch_nodes(conn, sorted(needed))
        t = time.perf_counter()
        for s in seqs:
            merkle.inclusion_proof(s, size, lambda ids: {i: cache[i] for i in ids})
        memory_ms = (time.perf_counter() - t) / len(seqs) * 1e3
        t = time.perf_counter()
        for s in seqs[:200]:
            node.journal.inclusion_proof(s)
        bundle_ms = (time.perf_counter() - t) / 200 * 1e3
        print(f"inclusion proof at {size:,}: {proof_ms:.3f} ms (in memory {memory_ms:.3f} ms; full bundle with checkpoint {bundle_ms:.3f} ms)", flush=True)

        # 4. verify everything vs. just reading and hashing every row.
        t = time.perf_counter()
        report = node.journal.verify()
        verify_s = time.perf_counter() - t
        t = time.perf_counter()
        with node.store.read() as conn:
            for (b,) in conn.exec_driver_sql("SELECT body FROM journal_events ORDER BY seq"):
                hashlib.sha256(b"\0" + b).digest()
        read_s = time.perf_counter() - t
        print(f"verify {report.size:,} events: {verify_s:.1f} s (read + hash only {read_s:.1f} s)", flush=True)
        db_bytes = sum(p.stat().st_size for p in (work / "node").glob("royalty.db*"))
        node.close()

    rows = [
        ("Append, batches of 1,000 (SQLite, FULL)", f"{batch_rate:,.0f} events/s", f"raw sqlite3 insert {raw_batch_rate:,.0f}/s", f"{batch_rate / raw_batch_rate:.2f}x", ">= 20,000/s", batch_rate >= 20_000),
        ("Append, 1 per durable transaction", f"{single:,.0f} events/s", f"raw sqlite3 insert {raw_single:,.0f}/s", f"{single / raw_single:.2f}x", "reported", True),
        (f"Inclusion proof at {size:,} leaves", f"{proof_ms:.3f} ms", f"in-memory tree {memory_ms:.3f} ms", f"{proof_ms / memory_ms:.1f}x", "<= 1 ms", proof_ms <= 1.0),
        (f"`journal verify` of {size:,} events", f"{verify_s:.1f} s", f"read + hash only {read_s:.1f} s", f"{verify_s / read_s:.1f}x", "<= 60 s", verify_s <= 60),
    ]
    notes = (
        f"Also: filling the journal to {size:,} events in batches of 10,000 ran at {size / fill:,.0f} events/s; "
        f"a full proof bundle (checkpoint lookup, event, proof) took {bundle_ms:.2f} ms; the SQLite files "
        f"took {db_bytes / size:.0f} bytes per event (event body ~{len(body)} bytes)."
    )
    return publish("journal", "Journal (issue #2)", f".venv/bin/python benchmarks/journal.py --events {args.events}", rows, notes, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
