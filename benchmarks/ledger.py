"""Ledger benchmark: the double-entry core (``node.ledger.create_transfers``) on SQLite, synchronous=FULL.

Run:  .venv/bin/python benchmarks/ledger.py            (~3 minutes on 2 cores)
      .venv/bin/python benchmarks/ledger.py --quick    (fewer transfers; under a minute, writes nothing)

Setup: a fresh node (royalty.init_node in a temporary directory); 10,000 user accounts on Asset.OPEN flagged
debits_must_not_exceed_credits, each funded from one funding account, plus a fee account, an escrow account, a
provider, a treasury and a reward pool. Transfer ids come from a counter (time-ordered, as TigerBeetle
recommends); every result is checked to be ``ok``, so only successful transfers are counted.

Each measurement runs beside a named baseline in the same process, so the ratio means something on a shared,
noisy machine:
- transfers, 1 per create_transfers call (each its own durable transaction):  raw sqlite3 with the same pragmas
  (WAL, synchronous=FULL), BEGIN IMMEDIATE, one INSERT of a transfer row and two UPDATEs of account balances,
  COMMIT; the ratio is what validation, the account reads, the journal event (canonical JSON, hashing, Merkle
  nodes) and the extra tables and indexes cost on top of the bare double-entry write.
- transfers in batches of 100 and 1,000 per call:  the same raw statements batched the same way
  (executemany inside one transaction).
- hot account:  batches of 1,000 where every transfer credits the same fee account, against batches of 1,000
  between uniformly random user accounts, both through royalty in the same rounds.
- inference-fee cycle (5 transfers): a pending reservation user -> escrow, a post of a smaller amount, then a
  linked chain of 3 splits escrow -> provider / treasury / reward pool. Pipelined as a real node would see it:
  each call carries the reservations of N new cycles and the post + splits of the N cycles reserved by the
  previous call, so every post finds its pending transfer in the database. Baseline: the raw sqlite3 rows of
  the same cycle (5 transfer rows, a pending row inserted then resolved, 10 balance UPDATEs), batched the same
  way.
Rates are medians of rounds interleaved with their baselines.
Targets (shared/reference/ledger.md §7 F, issue #4): >= 2,000 transfers/s and p99 <= 5 ms at 1 per commit;
>= 25,000/s with group commit (batches of <= 1,000); hot account within 10% of uniform; fee cycle >= 5,000
cycles/s. Results replace the "ledger" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import royalty
from royalty.ledger import AccountFlags, AccountSpec, Asset, Result, TransferFlags, TransferSpec, hex_id

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish  # noqa: E402  (benchmarks/ is on sys.path when run)

USERS = 10_000
LEDGER = int(Asset.OPEN)
CODE = 1
DR_LIMIT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
LINKED, PENDING, POST = int(TransferFlags.LINKED), int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING_TRANSFER)
FUNDING, FEE, ESCROW, PROVIDER, TREASURY, REWARDS = 1, 2, 3, 4, 5, 6
USER0 = 1_000  # user accounts are USER0 .. USER0 + USERS - 1
FUND_EACH = 10**13  # far more than any benchmark moves, and 10,000 of them stay below 2^63 on the funding account
RESERVE, CHARGE = 1_000, 700  # fee cycle: reserve 1,000, post 700, split 500 / 150 / 50
SPLITS = ((PROVIDER, 500), (TREASURY, 150), (REWARDS, 50))


class Ids:
    """Transfer ids from a counter: time-ordered, so new rows go to the right edge of the primary-key B-tree."""

    def __init__(self, start: int = 1 << 64) -> None:
        self.next = start

    def take(self) -> int:
        self.next += 1
        return self.next


def setup(node: royalty.Node, ids: Ids) -> None:
    system = [AccountSpec(a, LEDGER, CODE) for a in (FUNDING, FEE, PROVIDER, TREASURY, REWARDS)]
    system.append(AccountSpec(ESCROW, LEDGER, CODE, flags=DR_LIMIT))
    users = [AccountSpec(USER0 + i, LEDGER, CODE, flags=DR_LIMIT) for i in range(USERS)]
    for lo in range(0, USERS, 1_000):
        check(node.ledger.create_accounts((system if lo == 0 else []) + users[lo : lo + 1_000]))
    for lo in range(0, USERS, 1_000):
        check(node.ledger.create_transfers([
            TransferSpec(ids.take(), FUNDING, USER0 + i, FUND_EACH, ledger=LEDGER, code=CODE)
            for i in range(lo, min(lo + 1_000, USERS))
        ]))


def check(results: list[Result]) -> None:
    if any(r is not Result.ok for r in results):
        bad = next(r for r in results if r is not Result.ok)
        raise SystemExit(f"benchmark transfer failed: {bad} ({sum(r is not Result.ok for r in results)} of {len(results)})")


def uniform(rng: random.Random, ids: Ids, n: int) -> list[TransferSpec]:
    out = []
    for _ in range(n):
        dr, cr = rng.sample(range(USERS), 2)
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

    def __init__(self, path: Path) -> None:
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
        accts = [FUNDING, FEE, ESCROW, PROVIDER, TREASURY, REWARDS, *range(USER0, USER0 + USERS)]
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


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer transfers per round; writes nothing")
    parser.add_argument("--no-write", action="store_true", help="print results only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    write = not (args.no_write or args.quick)
    rounds = 3 if args.quick else 5
    single_n = 200 if args.quick else 600  # transfers per round, 1 per call
    batch_n = 5_000 if args.quick else 20_000  # transfers per round and batch size
    cycles_n, cycles_per_call = (2_000, 200) if args.quick else (8_000, 200)

    rng = random.Random(4)
    ids = Ids()
    with tempfile.TemporaryDirectory(prefix="royalty-bench-") as tmp:
        work = Path(tmp)
        node, _ = royalty.init_node(work / "node")
        t = time.perf_counter()
        setup(node, ids)
        setup_s = time.perf_counter() - t
        print(f"setup: {USERS:,} accounts created and funded in {setup_s:.1f} s", flush=True)
        raw = Raw(work / "raw.db")

        # 1. one transfer per call, each its own durable transaction.
        ours, base, lat, raw_lat = [], [], [], []
        for _ in range(rounds):
            batches = [[s] for s in uniform(rng, ids, single_n)]
            secs, l = run_batches(node, batches)
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
            calls = cycle_calls(rng, ids, cycles_n, cycles_per_call)
            ours.append(cycles_n / run_cycles(node, calls))
            base.append(cycles_n / raw.cycles(cycle_calls(rng, ids, cycles_n, cycles_per_call)))
        cycle_rate, raw_cycle_rate = statistics.median(ours), statistics.median(base)
        print(f"fee cycles, {cycles_per_call} per call: {cycle_rate:,.0f} cycles/s (raw {raw_cycle_rate:,.0f}/s)", flush=True)

        transfers = ids.next - (1 << 64)
        db_bytes = sum(p.stat().st_size for p in (work / "node").glob("royalty.db*"))
        escrow = node.ledger.balance(ESCROW)
        assert escrow.debits_pending == escrow.credits_pending == 0 and escrow.posted == 0, escrow
        node.close()
        raw.db.close()

    rows = [
        ("Transfers, 1 per call (own durable transaction)", f"{single:,.0f} transfers/s",
         f"raw sqlite3 INSERT + 2 UPDATEs {raw_single:,.0f}/s", f"{single / raw_single:.2f}x", ">= 2,000/s", single >= 2_000),
        ("p99 latency, 1 per call", f"{single_p99:.2f} ms", f"raw sqlite3 {raw_single_p99:.2f} ms",
         f"{single_p99 / raw_single_p99:.1f}x", "<= 5 ms", single_p99 <= 5),
        ("Transfers, batches of 100", f"{med['u100']:,.0f} transfers/s", f"raw sqlite3, same batches {med['r100']:,.0f}/s",
         f"{med['u100'] / med['r100']:.2f}x", ">= 25,000/s", med["u100"] >= 25_000),
        ("Transfers, batches of 1,000", f"{med['u1000']:,.0f} transfers/s", f"raw sqlite3, same batches {med['r1000']:,.0f}/s",
         f"{med['u1000'] / med['r1000']:.2f}x", ">= 25,000/s", med["u1000"] >= 25_000),
        ("Hot fee account (every transfer credits it), batches of 1,000", f"{med['hot']:,.0f} transfers/s",
         f"uniform random accounts {med['u1000']:,.0f}/s", f"{hot_ratio:.2f}x", ">= 0.90x uniform", hot_ratio >= 0.90),
        (f"Inference-fee cycle (5 transfers), {cycles_per_call} cycles per call", f"{cycle_rate:,.0f} cycles/s",
         f"raw sqlite3 rows of the cycle {raw_cycle_rate:,.0f}/s", f"{cycle_rate / raw_cycle_rate:.2f}x",
         ">= 5,000/s", cycle_rate >= 5_000),
    ]
    notes = (
        f"Also: rounds of {single_n} single transfers and {batch_n:,} batched ones; fee cycles pipelined, each "
        f"call carrying {cycles_per_call} new reservations plus the post and 3 linked splits of the previous "
        f"call's {cycles_per_call} ({cycles_per_call * 5:,} transfers per call), {cycles_n:,} cycles per round; "
        f"p99 latency of a 1,000-transfer call {p99(lat1000) * 1e3:.1f} ms; setup (accounts and funding) "
        f"{setup_s:.1f} s; after {transfers:,} transfers the SQLite files took {db_bytes / transfers:,.0f} bytes "
        f"per transfer (ledger rows, indexes and journal events together)."
    )
    conditions = (
        f"SQLite, WAL, synchronous=FULL; {USERS:,} user accounts (debits_must_not_exceed_credits), funded from one "
        f"account; medians of {rounds} rounds interleaved with the baselines."
    )
    command = ".venv/bin/python benchmarks/ledger.py"
    return publish("ledger", "Ledger core (issue #4, part 1)", command, rows, notes, write=write, setup=conditions)


if __name__ == "__main__":
    sys.exit(main())
