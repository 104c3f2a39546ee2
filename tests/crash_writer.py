"""The writer process of tests/test_crash.py: opens a node and appends events until it is killed.

Usage: python crash_writer.py HOME RUN SEED

Each batch (1..50 events, one write transaction) carries a recognisable payload: every event's data is
``{"run": RUN, "batch": B, "i": I, "n": N, "tag": "crash:RUN:B:I"}`` with N the batch's size. After each commit it
prints, flushed::

    ack RUN B FIRST_SEQ LAST_SEQ

so everything on an ``ack`` line is acknowledged (durably committed, as far as the writer was told). Now and then
it signs a checkpoint and prints ``cp SIZE``. It never stops by itself; the test kills it with SIGKILL.
"""

from __future__ import annotations

import random
import sys
import time

import royalty

EVENT_TYPE = "crash.event"


def payload(run: int, batch: int, i: int, n: int) -> dict[str, object]:
    return {"run": run, "batch": batch, "i": i, "n": n, "tag": f"crash:{run}:{batch}:{i}"}


def main() -> None:
    home, run, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    out = sys.stdout
    node = royalty.open_node(home)
    batch = 0
    while True:
        n = rng.randint(1, 50)
        items = [(EVENT_TYPE, payload(run, batch, i, n), None) for i in range(n)]
        with node.store.write() as conn:
            events = node.journal.append_many(conn, items)
        out.write(f"ack {run} {batch} {events[0].seq} {events[-1].seq}\n")
        out.flush()
        if rng.random() < 0.15:
            checkpoint = node.journal.checkpoint()
            out.write(f"cp {checkpoint.size}\n")
            out.flush()
        batch += 1
        # A short pause keeps the journal small enough for the test to verify it 30 times quickly; most of the
        # time is still spent inside write transactions, where a kill is most interesting.
        time.sleep(rng.uniform(0, 0.003))


if __name__ == "__main__":
    main()
