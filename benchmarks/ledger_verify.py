"""Ledger audit benchmark: ``royalty ledger verify`` (``royalty.ledger.audit.audit_ledger``) over 1,000,000
transfers on SQLite.

Run:  .venv/bin/python benchmarks/ledger_verify.py            (builds 1M transfers, then verifies; minutes)
      .venv/bin/python benchmarks/ledger_verify.py --small    (20,000 transfers; seconds, writes nothing)

Setup: a fresh node (royalty.init_node in a temporary directory); 10,000 accounts on Asset.OPEN flagged
debits_must_not_exceed_credits, funded from one funding account; then transfers in calls of 1,000 through
``node.ledger.create_transfers`` (one journal event each): 90% of the calls are transfers between random
accounts, 10% are two-phase pairs (a call of 500 pending reservations, then a call posting them), so the replay
meets pending state too. Every result is checked to be ``ok``.

Measured: the whole audit, as the CLI runs it (journal replay into the reference ledger, the comparison with
every account, transfer, pending and failure row, the invariants, the triggers, ``journal.verify()`` and the
services' audits), beside a baseline in the same run: reading every journal event from the database and parsing
its JSON, the least any replay of the journal must do. The ratio is what checking costs on top of reading.
Target (shared/reference/ledger.md §7 F): verifier replay of 1M events <= 60 s. Peak memory (max RSS) is
reported too: the audit keeps one small record per transfer id, not the journal. Results replace the
"ledger_verify" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import royalty
from royalty.ledger import AccountFlags, AccountSpec, Asset, Result, TransferFlags, TransferSpec
from royalty.ledger.audit import audit_ledger
from royalty.store.schema import journal_events

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import publish  # noqa: E402  (benchmarks/ is on sys.path when run)

USERS = 10_000
LEDGER = int(Asset.OPEN)
CODE = 1
DR_LIMIT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
PENDING, POST = int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING_TRANSFER)
FUNDING = 1
USER0 = 1_000
FUND_EACH = 10**12
PER_CALL = 1_000


def check(results: list[Result]) -> None:
    bad = [r for r in results if r is not Result.ok]
    if bad:
        raise SystemExit(f"benchmark transfer failed: {bad[0]} ({len(bad)} of {len(results)})")


def build(node: royalty.Node, transfers: int, rng: random.Random) -> int:
    """Accounts, funding, then ``transfers`` transfers; returns how many transfers the node holds."""
    accounts = [AccountSpec(FUNDING, LEDGER, CODE)] + [AccountSpec(USER0 + i, LEDGER, CODE, flags=DR_LIMIT) for i in range(USERS)]
    for lo in range(0, len(accounts), 1_000):
        check(node.ledger.create_accounts(accounts[lo : lo + 1_000]))
    next_id = 1 << 64  # time-ordered ids, as TigerBeetle recommends
    made = 0
    for lo in range(0, USERS, PER_CALL):
        batch = []
        for i in range(lo, min(lo + PER_CALL, USERS)):
            next_id += 1
            batch.append(TransferSpec(next_id, FUNDING, USER0 + i, FUND_EACH, ledger=LEDGER, code=CODE))
        check(node.ledger.create_transfers(batch))
        made += len(batch)
    t0 = time.perf_counter()
    while made < transfers:
        if rng.random() < 0.1:  # a two-phase pair of calls: reserve 500, then post them all
            pending = []
            for _ in range(PER_CALL // 2):
                next_id += 1
                dr, cr = rng.sample(range(USERS), 2)
                pending.append(TransferSpec(next_id, USER0 + dr, USER0 + cr, rng.randint(2, 100), ledger=LEDGER,
                                            code=CODE, flags=PENDING, timeout=3_600))
            check(node.ledger.create_transfers(pending))
            posts = []
            for p in pending:
                next_id += 1
                posts.append(TransferSpec(next_id, pending_id=p.id, amount=p.amount - 1, flags=POST))
            check(node.ledger.create_transfers(posts))
            made += len(pending) + len(posts)
        else:
            batch = []
            for _ in range(PER_CALL):
                next_id += 1
                dr, cr = rng.sample(range(USERS), 2)
                batch.append(TransferSpec(next_id, USER0 + dr, USER0 + cr, rng.randint(1, 100), ledger=LEDGER, code=CODE))
            check(node.ledger.create_transfers(batch))
            made += len(batch)
        if made % 100_000 < PER_CALL:
            rate = made / (time.perf_counter() - t0)
            print(f"  built {made:,} transfers ({rate:,.0f}/s)", flush=True)
    return made


def read_journal(node: royalty.Node) -> tuple[int, int]:
    """The baseline: every journal event read from the database and its JSON parsed. Returns (events, bytes)."""
    events = size = 0
    after = -1
    with node.store.read() as conn:
        while True:
            rows = conn.execute(
                journal_events.select().with_only_columns(journal_events.c.seq, journal_events.c.body)
                .where(journal_events.c.seq > after).order_by(journal_events.c.seq).limit(256)
            ).all()
            if not rows:
                return events, size
            for seq, body in rows:
                json.loads(body)
                events += 1
                size += len(body)
            after = rows[-1][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="20,000 transfers; print only, write nothing")
    parser.add_argument("--transfers", type=int, default=None, help="override the number of transfers")
    args = parser.parse_args()
    transfers = args.transfers or (20_000 if args.small else 1_000_000)
    rng = random.Random(4)

    with tempfile.TemporaryDirectory(prefix="royalty-verify-bench-") as tmp:
        node, _ = royalty.init_node(Path(tmp) / "node")
        t0 = time.perf_counter()
        made = build(node, transfers, rng)
        build_s = time.perf_counter() - t0
        print(f"built {made:,} transfers in {build_s:.1f} s", flush=True)

        t0 = time.perf_counter()
        events, journal_bytes = read_journal(node)
        base_s = time.perf_counter() - t0
        print(f"baseline: read and parse {events:,} journal events ({journal_bytes / 2**20:,.0f} MiB) in {base_s:.1f} s",
              flush=True)

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        report = audit_ledger(node)
        verify_s = time.perf_counter() - t0
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if not report.ok:
            print("audit problems:", *report.problems, sep="\n  ")
            return 1
        t0 = time.perf_counter()
        node.journal.verify()
        journal_s = time.perf_counter() - t0
        print(f"ledger verify: {verify_s:.1f} s ({report.created:,} transfers, {report.events:,} events; of which "
              f"journal.verify {journal_s:.1f} s); max RSS {rss_after / 1024:,.0f} MiB", flush=True)
        db_bytes = sum(p.stat().st_size for p in (Path(tmp) / "node").glob("royalty.db*"))
        node.close()

    scale = f"{made / 1e6:g}M" if made >= 1_000_000 else f"{made:,}"
    rows = [
        (f"`ledger verify`, {scale} transfers in {events:,} journal events", f"{verify_s:.1f} s",
         f"read + parse every journal event {base_s:.1f} s", f"{verify_s / base_s:.1f}x", "<= 60 s for 1M",
         verify_s <= 60 * max(made, 1) / 1_000_000),
        ("Replay rate", f"{made / verify_s:,.0f} transfers/s", f"{made / base_s:,.0f} transfers/s read",
         f"{base_s / verify_s:.2f}x", ">= 16,667/s", made / verify_s >= 1_000_000 / 60),
    ]
    notes = (
        f"Also: the audit includes `journal.verify()` (I8), {journal_s:.1f} s on its own; peak memory (max RSS of "
        f"the process) went from {rss_before / 1024:,.0f} MiB before the audit to {rss_after / 1024:,.0f} MiB; the "
        f"journal held {journal_bytes / 2**20:,.0f} MiB of event JSON and the SQLite files "
        f"{db_bytes / 2**20:,.0f} MiB; building the ledger took {build_s:.0f} s."
    )
    return publish(
        "ledger_verify",
        "Ledger audit: `royalty ledger verify` (issue #4)",
        "python benchmarks/ledger_verify.py" + (" --small" if args.small else ""),
        rows,
        notes,
        write=not args.small and args.transfers is None,
        setup=f"{USERS:,} accounts; calls of {PER_CALL:,} transfers, 10% of them two-phase (reserve, then post).",
    )


if __name__ == "__main__":
    sys.exit(main())
