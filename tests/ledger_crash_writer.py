"""The writer process of tests/test_ledger_crash.py: opens a node and submits transfer batches from a few threads
(so group commit puts several calls in one transaction) until it is killed.

Usage: python tests/ledger_crash_writer.py HOME RUN SEED
(the test forks instead of starting Python each time: importing royalty costs ~1 s, a cycle only ~0.2 s).

Every batch is ``batch_specs(RUN, THREAD, B)``: a pure function, so the parent rebuilds exactly what was sent.
Before submitting a batch the writer writes ``try RUN THREAD B`` and, once ``create_transfers`` returned (the
batch is durably committed), ``ack RUN THREAD B RESULTS``; each line is one ``os.write`` of a short line to a
pipe, hence atomic. A batch with a ``try`` line and no ``ack`` may or may not have been committed: the parent
retries it with the same ids.

Every batch always succeeds (accounts without balance limits; pending transfers are posted or voided in the same
batch), so the final balances are the fold of every batch, whichever attempt committed it.
"""

from __future__ import annotations

import os
import random
import sys
import threading

import royalty
from royalty.ledger import TransferFlags, TransferSpec

ACCOUNTS = list(range(1, 11))  # ledger account ids the parent creates (ledger 1, code 1, no flags)
LEDGER, CODE = 1, 1
THREADS = 3
LINKED = int(TransferFlags.LINKED)
PENDING, POST, VOID = int(TransferFlags.PENDING), int(TransferFlags.POST_PENDING_TRANSFER), int(TransferFlags.VOID_PENDING_TRANSFER)


def batch_specs(run: int, thread: int, batch: int) -> list[TransferSpec]:
    """1..24 transfers: plain ones, linked chains, and pending transfers posted (partly) or voided in the batch."""
    rng = random.Random(f"{run}:{thread}:{batch}")
    base = (run + 1) << 64 | thread << 48 | batch << 16
    specs: list[TransferSpec] = []

    def next_id() -> int:
        return base | len(specs)

    def plain(flags: int = 0) -> TransferSpec:
        dr, cr = rng.sample(ACCOUNTS, 2)
        return TransferSpec(next_id(), dr, cr, rng.randint(1, 100), ledger=LEDGER, code=CODE, flags=flags)

    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        if kind < 0.5:
            specs.append(plain())
        elif kind < 0.75:
            for _ in range(rng.randint(1, 2)):
                specs.append(plain(LINKED))
            specs.append(plain())
        else:
            dr, cr = rng.sample(ACCOUNTS, 2)
            reserved = rng.randint(2, 100)
            pid = next_id()
            specs.append(TransferSpec(pid, dr, cr, reserved, ledger=LEDGER, code=CODE, flags=PENDING))
            if rng.random() < 0.7:
                specs.append(TransferSpec(next_id(), amount=rng.randint(1, reserved), pending_id=pid, flags=POST))
            else:
                specs.append(TransferSpec(next_id(), pending_id=pid, flags=VOID))
    return specs


def run(home: str, run_no: int, seed: int, out: int) -> None:
    """Write batches forever from THREADS threads, reporting on file descriptor ``out``."""
    node = royalty.open_node(home)

    def say(line: str) -> None:
        os.write(out, (line + "\n").encode())

    def work(thread: int) -> None:
        rng = random.Random(seed * 31 + thread)
        batch = 0
        while True:
            specs = batch_specs(run_no, thread, batch)
            say(f"try {run_no} {thread} {batch}")
            results = node.ledger.create_transfers(specs)
            say(f"ack {run_no} {thread} {batch} {','.join(r.value for r in results)}")
            batch += 1
            if rng.random() < 0.3:
                threading.Event().wait(rng.uniform(0, 0.002))

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.stdout.fileno())
