"""Differential test: one seeded stream of more than 100,000 ledger events goes into a node on SQLite and a node on
PostgreSQL, which must agree on every result code, every balance and pending state, and the journal root.

The stream has every kind of event: plain transfers, pending ones with and without timeouts, full and partial
posts, voids, expiry by moving the test clock (lazy on touch and by sweeps), linked chains that fail part-way
and chains left open, verbatim retries and retries with a changed field, duplicate ids inside a batch, and
invalid events (zero and maximal ids, unknown accounts, reserved flags, ...). Nothing checks the ledger against a
model here (tests/test_ledger_core.py does): the two backends check each other.

Journal roots cover every event's bytes, timestamps and actors included, so both nodes share what a node's
identity is made of: the same test clock, the same origin, the same signing key (node.key copied into both homes
before ``init_node``, which keeps a key it finds) and the same ids for the node and its genesis accounts
(``secrets.token_hex`` replaced by a counter while each node is created; only the ids' randomness is replaced,
nothing of royalty's). With identical identities the two journals must be identical event for event.

Reproduce with another stream: ``ROYALTY_DIFF_SEED=<seed> pytest tests/test_ledger_differential.py``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import royalty
from conftest import PG_ENV, Clock, PgSchemas, pg_base_url
from royalty import Node
from royalty.journal.checkpoint import create_key_file
from royalty.ledger import AMOUNT_MAX, ID_MAX, AccountFlags, AccountSpec, Result, TransferFlags, TransferSpec

SEED = int(os.environ.get("ROYALTY_DIFF_SEED", "20261129"))
EVENTS = 100_000
ORIGIN = "differential.test/ledger"

LINKED, PENDING = int(TransferFlags.LINKED), int(TransferFlags.PENDING)
POST, VOID = int(TransferFlags.POST_PENDING_TRANSFER), int(TransferFlags.VOID_PENDING_TRANSFER)
DR_LIMIT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CR_LIMIT = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)

SOURCE = 1
USERS = list(range(2, 26))  # debits must not exceed credits
CAPPED = list(range(26, 31))  # credits must not exceed debits
PLAIN = list(range(31, 39))
OTHER_LEDGER = [39, 40]
LEDGER1 = [SOURCE, *USERS, *CAPPED, *PLAIN]
MISSING = [999, 1_000]

Op = tuple[Any, ...]


# --------------------------------------------------------------------------------------------------------------
# the stream
# --------------------------------------------------------------------------------------------------------------


class Stream:
    """Builds the operations: ("transfers", specs), ("advance", ms), ("sweep",), ("accounts", specs)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sent: list[TransferSpec] = []
        self.pendings: list[TransferSpec] = []
        self.events = 0

    def build(self) -> list[Op]:
        accounts = [AccountSpec(SOURCE, 1, 1), *(AccountSpec(a, 1, 2, flags=DR_LIMIT) for a in USERS),
                    *(AccountSpec(a, 1, 3, flags=CR_LIMIT) for a in CAPPED), *(AccountSpec(a, 1, 4) for a in PLAIN),
                    *(AccountSpec(a, 2, 4) for a in OTHER_LEDGER)]
        ops: list[Op] = [("accounts", accounts)]
        funding = [TransferSpec(self.new_id(), SOURCE, a, 50_000, ledger=1, code=1) for a in USERS + PLAIN]
        funding += [TransferSpec(self.new_id(), a, SOURCE, 5_000, ledger=1, code=1) for a in CAPPED]
        funding += [TransferSpec(self.new_id(), 39, 40, 1_000, ledger=2, code=1)]
        ops.append(("transfers", funding))
        while self.events < EVENTS:
            r = self.rng.random()
            if r < 0.25:
                ops.append(("advance", self.rng.choice([0, 200, 700, 1_000, 1_500, 3_000])))
            elif r < 0.27:
                ops.append(("sweep",))
            elif r < 0.275:
                ops.append(("accounts", self.accounts()))
            ops.append(("transfers", self.batch()))
        return ops

    def new_id(self) -> int:
        return self.rng.getrandbits(126) | 1 << 100  # never 0 nor ID_MAX

    def accounts(self) -> list[AccountSpec]:
        """A few more accounts, some of them repeats (exists / exists_with_different_*) or invalid."""
        rng = self.rng
        out = []
        for _ in range(rng.randint(1, 4)):
            a = rng.choice([*PLAIN, 41, 42, 43, 0])
            out.append(AccountSpec(a, rng.choice([1, 1, 2]), rng.choice([4, 5]), flags=rng.choice([0, 0, DR_LIMIT])))
        return out

    def batch(self) -> list[TransferSpec]:
        rng = self.rng
        specs: list[TransferSpec] = []
        for _ in range(rng.randint(1, 100)):
            kind = rng.random()
            if kind < 0.12:
                for _ in range(rng.randint(1, 3)):
                    member = self.one()
                    specs.append(dataclasses.replace(member, flags=member.flags | LINKED))
                specs.append(self.one())
            else:
                specs.append(self.one())
        if rng.random() < 0.03:  # a chain left open at the end of the batch
            specs.append(dataclasses.replace(self.one(), flags=LINKED))
        self.events += len(specs)
        self.sent += specs
        return specs

    def one(self) -> TransferSpec:
        rng = self.rng
        kind = rng.random()
        if kind < 0.34:
            spec = self.plain()
        elif kind < 0.50:
            spec = dataclasses.replace(self.plain(), flags=PENDING, timeout=rng.choice([0, 0, 1, 2, 5]))
            self.pendings.append(spec)
        elif kind < 0.64 and self.pendings:
            spec = self.resolve(POST)
        elif kind < 0.71 and self.pendings:
            spec = self.resolve(VOID)
        elif kind < 0.82 and self.sent:
            old = rng.choice(self.sent[-2_000:])
            field = rng.choice(["same", "same", "amount", "user_data", "debit_account_id", "flags", "code"])
            if field == "same":
                spec = old
            elif field == "amount":
                spec = dataclasses.replace(old, amount=(old.amount or 0) + 1)
            elif field == "user_data":
                spec = dataclasses.replace(old, user_data="changed")
            elif field == "debit_account_id":
                spec = dataclasses.replace(old, debit_account_id=rng.choice(LEDGER1))
            elif field == "flags":
                spec = dataclasses.replace(old, flags=old.flags ^ PENDING)
            else:
                spec = dataclasses.replace(old, code=old.code + 1)
        else:
            spec = self.invalid()
        return spec

    def plain(self) -> TransferSpec:
        rng = self.rng
        pool = rng.choice([LEDGER1, LEDGER1, LEDGER1, USERS, OTHER_LEDGER])
        dr, cr = rng.sample(pool, 2)
        if rng.random() < 0.03:
            dr = rng.choice([*MISSING, *OTHER_LEDGER])
        if rng.random() < 0.03:
            cr = rng.choice(MISSING)
        amount = rng.choice([rng.randint(1, 500), rng.randint(1, 500), rng.randint(500, 60_000)])
        return TransferSpec(self.new_id(), dr, cr, amount, ledger=2 if dr in OTHER_LEDGER else 1, code=1,
                            user_data=rng.choice([None, None, None, "memo", "x" * 40]))

    def resolve(self, flag: int) -> TransferSpec:
        rng = self.rng
        target = rng.choice(self.pendings[-300:])
        if flag == VOID:
            return TransferSpec(self.new_id(), pending_id=target.id, flags=VOID,
                                amount=rng.choice([None, None, target.amount, 1]))
        amount = rng.choice([None, None, rng.randint(1, max(1, target.amount or 1)), (target.amount or 0) + 5])
        fields: dict[str, Any] = {}
        if rng.random() < 0.2:
            fields = rng.choice([{"debit_account_id": target.debit_account_id}, {"credit_account_id": SOURCE},
                                 {"ledger": 2}, {"code": 9}])
        return TransferSpec(self.new_id(), pending_id=target.id, flags=POST, amount=amount, **fields)

    def invalid(self) -> TransferSpec:
        rng = self.rng
        base = self.plain()
        return rng.choice([
            dataclasses.replace(base, id=0),
            dataclasses.replace(base, id=ID_MAX),
            dataclasses.replace(base, credit_account_id=base.debit_account_id),
            dataclasses.replace(base, debit_account_id=0),
            dataclasses.replace(base, credit_account_id=ID_MAX),
            dataclasses.replace(base, amount=0),
            dataclasses.replace(base, amount=AMOUNT_MAX + 1),
            dataclasses.replace(base, amount=None),
            dataclasses.replace(base, flags=1 << 9),
            dataclasses.replace(base, flags=PENDING | POST),
            dataclasses.replace(base, flags=POST | VOID),
            dataclasses.replace(base, timeout=5),
            dataclasses.replace(base, ledger=0),
            dataclasses.replace(base, code=0),
            dataclasses.replace(base, pending_id=7),
            TransferSpec(base.id, pending_id=base.id, flags=POST),
            TransferSpec(base.id, pending_id=0, flags=VOID),
            TransferSpec(base.id, pending_id=self.new_id(), flags=POST),
            TransferSpec(base.id, pending_id=ID_MAX, flags=VOID),
            TransferSpec(base.id, pending_id=rng.choice(self.sent).id if self.sent else 5, flags=POST),
            TransferSpec(base.id, pending_id=rng.choice(self.pendings).id if self.pendings else 5, flags=VOID, timeout=3),
            dataclasses.replace(base, debit_account_id=rng.choice(USERS), amount=10**12),  # exceeds_credits
            dataclasses.replace(base, credit_account_id=rng.choice(CAPPED), amount=10**9),  # exceeds_debits
        ])


# --------------------------------------------------------------------------------------------------------------
# running it
# --------------------------------------------------------------------------------------------------------------


def _token_counter() -> Any:
    counter = iter(range(1, 2**62))
    return lambda nbytes=32: format(next(counter), f"0{2 * nbytes}x")


def _make_node(home: Path, key: Path, url: str | None, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Node:
    home.mkdir(parents=True)
    shutil.copy(key, home / "node.key")
    with monkeypatch.context() as patch:
        patch.setattr(secrets, "token_hex", _token_counter())
        node, created = royalty.init_node(home, database_url=url, clock=clock, origin=ORIGIN)
    assert created
    return node


def _replay(node: Node, clock: Clock, ops: list[Op]) -> list[Any]:
    answers: list[Any] = []
    for op in ops:
        if op[0] == "transfers":
            answers.append([r.value for r in node.ledger.create_transfers(op[1])])
        elif op[0] == "accounts":
            answers.append([r.value for r in node.ledger.create_accounts(op[1])])
        elif op[0] == "sweep":
            answers.append(sorted(node.ledger.expire_pending()))
        else:
            clock.now += op[1]
    return answers


def _state(node: Node, stream: Stream) -> dict[str, Any]:
    accounts = [a.to_dict() for a in node.ledger.lookup_accounts([*LEDGER1, *OTHER_LEDGER, 41, 42, 43])]
    pending = {p.id: node.ledger.pending_state(p.id) for p in stream.pendings[::7]}
    history = {a: [t.to_dict() for t in node.ledger.history(a, limit=500)] for a in (SOURCE, USERS[0], CAPPED[0])}
    return {"accounts": accounts, "pending": pending, "history": history}


@pytest.fixture
def pg_url() -> Iterator[str]:
    base = pg_base_url()
    if base is None:
        pytest.skip(f"the differential test compares SQLite with PostgreSQL: set {PG_ENV} to run it")
    schemas = PgSchemas(base)
    try:
        yield schemas.new_url()
    finally:
        schemas.drop_all()


def test_sqlite_and_postgresql_agree_on_a_100k_event_stream(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = Stream(SEED)
    ops = stream.build()
    assert stream.events >= EVENTS
    create_key_file(tmp_path / "node.key")
    nodes: dict[str, Node] = {}
    outcome: dict[str, Any] = {}
    try:
        for backend, url in (("sqlite", None), ("postgresql", pg_url)):
            clock = Clock()
            node = nodes[backend] = _make_node(tmp_path / backend, tmp_path / "node.key", url, clock, monkeypatch)
            started = time.monotonic()
            answers = _replay(node, clock, ops)
            outcome[backend] = {"answers": answers, "state": _state(node, stream), "head": node.journal.head(),
                                "seconds": time.monotonic() - started}
        lite, pg = outcome["sqlite"], outcome["postgresql"]
        where = f"ROYALTY_DIFF_SEED={SEED}"
        for i, (a, b) in enumerate(zip(lite["answers"], pg["answers"], strict=True)):
            assert a == b, (where, f"operation {i}", ops[i][0], [(x, y) for x, y in zip(a, b) if x != y][:5])
        assert lite["state"] == pg["state"], where
        if lite["head"] != pg["head"]:
            first = next(seq for seq in range(lite["head"][0])
                         if nodes["sqlite"].journal.event(seq).body != nodes["postgresql"].journal.event(seq).body)
            pytest.fail(f"{where}: the journals differ from event {first} on:\n{nodes['sqlite'].journal.event(first).body[:400]!r}"
                        f"\n{nodes['postgresql'].journal.event(first).body[:400]!r}")
    finally:
        for node in nodes.values():
            node.close()

    # The stream really exercised the ledger: every result code of the reference's list occurred.
    seen = {code for answer in lite["answers"] for code in answer if isinstance(code, str)}
    wanted = {r.value for r in (
        Result.ok, Result.exists, Result.exists_with_different_amount, Result.exists_with_different_flags,
        Result.exists_with_different_user_data, Result.exists_with_different_debit_account_id,
        Result.exists_with_different_code, Result.id_already_failed, Result.linked_event_failed,
        Result.linked_event_chain_open, Result.accounts_must_be_different, Result.exceeds_credits,
        Result.exceeds_debits, Result.debit_account_not_found, Result.credit_account_not_found,
        Result.pending_transfer_not_found, Result.pending_transfer_already_posted,
        Result.pending_transfer_already_voided, Result.pending_transfer_expired,
        Result.exceeds_pending_transfer_amount, Result.id_must_not_be_zero, Result.id_must_not_be_int_max,
        Result.reserved_flag, Result.amount_out_of_range, Result.accounts_must_have_the_same_ledger,
    )}
    assert wanted <= seen, (where, sorted(wanted - seen))
    assert any(isinstance(a, list) and a and isinstance(a[0], int) for a in lite["answers"]), "no sweep expired anything"
    print(f"{stream.events:,} events, {len(ops):,} operations, {lite['head'][0]:,} journal events; "
          f"sqlite {lite['seconds']:.1f} s, postgresql {pg['seconds']:.1f} s")
