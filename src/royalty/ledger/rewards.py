"""Reward epochs and what participants earned (``node.rewards``).

An epoch pays a pot of OPEN by frozen integer weights (``shared/reference/ledger.md`` §2 "Reward epoch", I11):

    create_epoch  an EPOCH_POOL account of its own (id derived from the epoch id, owner: the rewards account)
    fund          REWARD_POOL, DUST (fee rounding dust, recycled here) or the treasury → EPOCH_POOL(e);
                  any number of times while the epoch is open
    freeze        the weights are fixed and journaled with ``weights_root``, the RFC 6962 Merkle root over the
                  canonical leaves ``{"account": id, "weight": w}`` in ascending account id order; the pool's
                  balance then is the epoch's ``funded`` amount, and no more funding is accepted
    distribute    ``share_i = floor(funded × w_i / Σw)`` to each account's AVAILABLE, the remainder (dust) to DUST,
                  in one linked chain with ids ``transfer_id("epoch", epoch_id, "pay", account)`` and
                  ``transfer_id("epoch", epoch_id, "dust")``: Σ paid + dust = funded, deterministically

Authorization: only an admin creates, funds, freezes and distributes epochs (the operator, or a service acting for
governance). Reads (epochs, earnings, weight proofs) are open: the journal already is.

Concurrency (PostgreSQL): fund, freeze and distribute lock the epoch's row first (SELECT … FOR UPDATE), then the
core locks the ledger accounts and the journal head. Nothing else locks epoch rows, so the order is always
epoch → accounts → journal head.

``earnings(account)`` explains what a participant received and why: each settled inference fee that paid them
(request, receipt, adapter, role, weight) and each epoch payout (epoch, weight of Σw, funded amount).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select, update

from ..accounts import Accounts
from ..errors import Conflict, InvalidInput, NotFound, PermissionDenied
from ..journal import merkle
from ..journal.canonical import canonical_json
from ..journal.verify import verify_inclusion
from ..store import Store
from ..store.engine import insert_rows
from ..store.schema import accounts as node_accounts
from ..store.schema import (
    fee_settlement_legs,
    fee_settlements,
    ledger_accounts,
    ledger_transfers,
    reward_epoch_fundings,
    reward_epoch_payouts,
    reward_epoch_weights,
    reward_epochs,
)
from .amounts import amount_json, format_amount
from .chart import USER_FLAGS, AccountCode, TransferCode, account_id, system_account_id, transfer_id
from .codes import AMOUNT_MAX, Asset, Result, TransferFlags
from .core import AccountSpec, Ledger, TransferSpec, hex_id, parse_id
from .fees import participants_in
from .params import ParamsRegistry
from .tokens import Tokens, new_transfer_id, raise_for

SOURCES: dict[str, AccountCode] = {
    "reward_pool": AccountCode.REWARD_POOL,
    "dust": AccountCode.DUST,
    "treasury": AccountCode.TREASURY,
}
_OPEN = int(Asset.OPEN)
_LINKED = int(TransferFlags.LINKED)
_DUST = system_account_id(AccountCode.DUST)


def weight_leaf(account: str, weight: int) -> bytes:
    """The canonical bytes of one (account, weight) leaf of an epoch's weights tree."""
    return canonical_json({"account": account, "weight": weight})


def weights_root(weights: Mapping[str, int]) -> bytes:
    """The Merkle root (RFC 6962) over ``weights`` as leaves in ascending account id order."""
    return merkle.MemoryTree(weight_leaf(a, w) for a, w in sorted(weights.items())).root()


def shares(funded: int, weights: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """``floor(funded × w_i / Σw)`` per account (ascending ids) and the dust ``funded − Σ shares``."""
    total = sum(weights.values())
    out = {a: funded * w // total for a, w in sorted(weights.items())}
    return out, funded - sum(out.values())


def verify_weight_proof(bundle: Mapping[str, Any]) -> bool:
    """True iff ``bundle`` (from ``Rewards.weight_proof``) shows (account, weight) in the epoch's weights tree whose
    root is ``bundle["weights_root"]`` (compare that root with the one journaled by ``rewards.epoch_frozen``)."""
    try:
        leaf = merkle.leaf_hash(weight_leaf(bundle["account"], bundle["weight"]))
        proof = [bytes.fromhex(h) for h in bundle["proof"]]
        return verify_inclusion(leaf, bundle["index"], bundle["size"], proof, bytes.fromhex(bundle["weights_root"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class Epoch:
    """A reward epoch. ``funded`` is the pool's balance now while open, and fixed from the freeze on."""

    id: str
    title: str
    state: str  # open | frozen | distributed
    pool_account: int
    funded: int
    total_weight: int | None
    weights_root: bytes | None
    paid: int | None
    dust: int | None
    created_ms: int
    created_seq: int
    frozen_seq: int | None
    distributed_seq: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "state": self.state,
            "pool_account": hex_id(self.pool_account),
            "funded": amount_json(self.funded),
            "total_weight": self.total_weight,
            "weights_root": self.weights_root.hex() if self.weights_root else None,
            "paid": None if self.paid is None else amount_json(self.paid),
            "dust": None if self.dust is None else amount_json(self.dust),
            "created_ms": self.created_ms,
            "created_seq": self.created_seq,
            "frozen_seq": self.frozen_seq,
            "distributed_seq": self.distributed_seq,
        }


@dataclass(frozen=True)
class EpochDetail:
    """An epoch with its fundings and, once frozen, every account's weight and (once distributed) payout."""

    epoch: Epoch
    fundings: list[dict[str, Any]]
    recipients: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {**self.epoch.to_dict(), "fundings": self.fundings, "recipients": self.recipients}


@dataclass(frozen=True)
class Earnings:
    """What one participant received from inference fees and reward epochs, with the reasons."""

    account: str
    name: str
    fees: list[dict[str, Any]]
    epochs: list[dict[str, Any]]

    @property
    def total_fees(self) -> int:
        return sum(item["amount"]["units"] for item in self.fees)

    @property
    def total_epochs(self) -> int:
        return sum(item["amount"]["units"] for item in self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "name": self.name,
            "totals": {"fees": amount_json(self.total_fees), "epochs": amount_json(self.total_epochs),
                       "all": amount_json(self.total_fees + self.total_epochs)},
            "fees": self.fees,
            "epochs": self.epochs,
        }


class Rewards:
    """Reward epochs, earnings and the I11 audit (``node.rewards``)."""

    def __init__(self, store: Store, ledger: Ledger, tokens: Tokens, accounts: Accounts, params: ParamsRegistry,
                 clock: Callable[[], int]) -> None:
        self.store = store
        self.ledger = ledger
        self.tokens = tokens
        self.accounts = accounts
        self.params = params
        self.clock = clock

    # --- epochs ------------------------------------------------------------------------------------------------

    def create_epoch(self, title: str = "", *, actor: str) -> Epoch:
        """Open a new epoch (admin only) with an EPOCH_POOL account of its own. Journals ``rewards.epoch_created``."""
        if not isinstance(title, str) or len(title) > 200 or "\n" in title:
            raise InvalidInput("title must be one line of at most 200 characters", field="title")
        epoch_id = "ep_" + secrets.token_hex(8)

        def body(conn: Connection) -> Epoch:
            who = self._admin_in(conn, actor, "create reward epochs")
            owner = self.accounts.get_in(conn, "rewards").id
            pool = account_id(AccountCode.EPOCH_POOL, epoch_id)
            event = self.ledger.journal.append(conn, "rewards.epoch_created", {
                "epoch": epoch_id, "title": title, "pool_account": hex_id(pool)}, actor=who.id)
            conn.execute(reward_epochs.insert().values(id=epoch_id, title=title, state="open", created_ms=event.ts_ms,
                                                       created_seq=event.seq))
            results = self.ledger.create_accounts_in(conn, [AccountSpec(
                pool, _OPEN, int(AccountCode.EPOCH_POOL), USER_FLAGS, owner=owner, user_data=epoch_id)], actor=who.id)
            if not results[0].succeeded:
                raise Conflict(f"could not open the epoch's pool account: {results[0].value}")
            return self._epoch_in(conn, epoch_id)

        return self.ledger.transaction(body)

    def fund(self, epoch: str, amount: int | None, *, source: str = "reward_pool", actor: str,
             id: Any = None) -> dict[str, Any]:
        """Move ``amount`` base units (None: the source's whole available balance) from ``source`` (reward_pool,
        dust or treasury) into the epoch's pool; admin only, while the epoch is open. ``id`` (a UUID or 128-bit
        int) makes a retry idempotent. Returns the funding (transfer id, source, amount) and the epoch."""
        if source not in SOURCES:
            raise InvalidInput(f"source must be one of {', '.join(SOURCES)}, got {source!r}", field="source")
        if amount is not None and (type(amount) is not int or not 0 < amount <= AMOUNT_MAX):
            raise InvalidInput(f"amount must be a positive number of base units, got {amount!r}", field="amount")
        tid = new_transfer_id() if id is None else parse_id(id, "id")
        src = system_account_id(SOURCES[source])

        def body(conn: Connection) -> dict[str, Any]:
            who = self._admin_in(conn, actor, "fund reward epochs")
            row = self._row_in(conn, epoch, lock=True)
            pool = account_id(AccountCode.EPOCH_POOL, row.id)
            done = conn.execute(select(reward_epoch_fundings).where(
                reward_epoch_fundings.c.transfer_id == hex_id(tid))).one_or_none()
            if done is not None:
                if done.epoch_id != row.id or done.source != source or (amount is not None and int(done.amount) != amount):
                    raise Conflict(f"funding {hex_id(tid)} was already made with other arguments", field="id")
                return {"transfer_id": hex_id(tid), "source": source, **amount_json(int(done.amount)),
                        "epoch": self._epoch_in(conn, row.id).to_dict()}
            if row.state != "open":
                raise Conflict(f"epoch {row.id} is {row.state}; only an open epoch can be funded", field="epoch")
            units = amount
            if units is None:
                units = _available_in(conn, src)
                if units <= 0:
                    raise Conflict(f"{source} holds no OPEN to fund epoch {row.id} with", field="amount")
            result = self.ledger.create_transfers_in(conn, [TransferSpec(
                tid, src, pool, units, ledger=_OPEN, code=int(TransferCode.EPOCH_FUND))], actor=who.id,
                event_type="rewards.epoch_funded", extra={"epoch": row.id, "source": source})[0]
            raise_for(result, f"funding epoch {row.id} with {format_amount(units)} OPEN from {source}")
            event_seq, created_ms = _transfer_seq_in(conn, tid)
            conn.execute(reward_epoch_fundings.insert().values(
                transfer_id=hex_id(tid), epoch_id=row.id, source=source, amount=units, created_ms=created_ms,
                event_seq=event_seq))
            return {"transfer_id": hex_id(tid), "source": source, **amount_json(units),
                    "epoch": self._epoch_in(conn, row.id).to_dict()}

        return self.ledger.transaction(body)

    def freeze(self, epoch: str, weights: Mapping[str, int], *, actor: str) -> Epoch:
        """Fix the epoch's weights (admin only): account (id or name) → non-negative integer weight, Σw > 0.

        ``funded`` becomes the pool's balance now and no more funding is accepted. Journals
        ``rewards.epoch_frozen`` with the weights and ``weights_root``. Freezing a frozen epoch again with the same
        weights returns it; other weights raise Conflict."""
        if not isinstance(weights, Mapping) or not weights:
            raise InvalidInput("weights must map at least one account to an integer weight", field="weights")
        for ref, w in weights.items():
            if not isinstance(ref, str) or not ref:
                raise InvalidInput(f"weights: {ref!r} is not an account", field="weights")
            if type(w) is not int or not 0 <= w <= AMOUNT_MAX:
                raise InvalidInput(f"the weight of {ref} must be a non-negative integer, got {w!r}", field="weights")
        total = sum(weights.values())
        if total == 0:
            raise InvalidInput("every weight is 0: nobody could be paid; give at least one account a weight",
                               field="weights")
        if total > AMOUNT_MAX:
            raise InvalidInput("the weights sum to more than 2^63 - 1; scale them down", field="weights")

        def body(conn: Connection) -> Epoch:
            who = self._admin_in(conn, actor, "freeze reward epochs")
            by_id: dict[str, int] = {}
            for ref, acct in participants_in(conn, list(weights)).items():
                if acct in by_id:
                    raise InvalidInput(f"weights: account {ref!r} is listed twice", field="weights")
                by_id[acct] = weights[ref]
            frozen = dict(sorted(by_id.items()))
            root = weights_root(frozen)
            row = self._row_in(conn, epoch, lock=True)
            pool = account_id(AccountCode.EPOCH_POOL, row.id)
            if row.state != "open":
                if bytes(row.weights_root) == root:
                    return self._epoch_in(conn, row.id)
                raise Conflict(f"epoch {row.id} is already {row.state} with other weights (root "
                               f"{bytes(row.weights_root).hex()[:16]}…)", field="epoch")
            funded = _available_in(conn, pool)
            if funded <= 0:
                raise Conflict(f"epoch {row.id} has no funds; fund it first (royalty rewards epoch fund)",
                               field="epoch")
            event = self.ledger.journal.append(conn, "rewards.epoch_frozen", {
                "epoch": row.id, "funded": funded, "total_weight": total, "weights_root": root.hex(),
                "weights": [[a, w] for a, w in frozen.items()]}, actor=who.id)
            conn.execute(update(reward_epochs).where(reward_epochs.c.id == row.id).values(
                state="frozen", funded=funded, total_weight=total, weights_root=root, frozen_ms=event.ts_ms,
                frozen_seq=event.seq))
            insert_rows(conn, "reward_epoch_weights", ("epoch_id", "account_id", "position", "weight"),
                        [(row.id, a, i, w) for i, (a, w) in enumerate(frozen.items())])
            return self._epoch_in(conn, row.id)

        return self.ledger.transaction(body)

    def distribute(self, epoch: str, *, actor: str) -> Epoch:
        """Pay a frozen epoch out (admin only): ``floor(funded × w_i / Σw)`` to each account, the dust to DUST, one
        linked chain journaled as ``rewards.epoch_distributed``. Distributing again returns the epoch unchanged."""

        # Recipients without ledger accounts get them first, in a transaction of their own: opening accounts
        # journals an event, and doing it inside the payout would lock the journal head before the accounts.
        with self.store.read() as conn:
            who = self._admin_in(conn, actor, "distribute reward epochs")
            w = reward_epoch_weights.c
            recipients = list(conn.execute(select(w.account_id).where(
                w.epoch_id == self._row_in(conn, epoch).id, w.weight > 0)).scalars())
        if recipients:
            self.ledger.transaction(lambda conn: self.tokens.ensure_accounts_in(conn, recipients, actor=who.id))

        def body(conn: Connection) -> Epoch:
            who = self._admin_in(conn, actor, "distribute reward epochs")
            row = self._row_in(conn, epoch, lock=True)
            epoch_id = row.id
            pool = account_id(AccountCode.EPOCH_POOL, epoch_id)
            if row.state == "distributed":
                return self._epoch_in(conn, epoch_id)
            if row.state != "frozen":
                raise Conflict(f"epoch {epoch_id} is open; freeze its weights first (royalty rewards epoch freeze)",
                               field="epoch")
            w = reward_epoch_weights.c
            frozen = {r.account_id: int(r.weight) for r in conn.execute(
                select(w.account_id, w.weight).where(w.epoch_id == epoch_id).order_by(w.position))}
            funded = int(row.funded)
            paid, dust = shares(funded, frozen)
            specs = [TransferSpec(transfer_id("epoch", epoch_id, "pay", a), pool, account_id(AccountCode.AVAILABLE, a),
                                  v, ledger=_OPEN, code=int(TransferCode.EPOCH_PAY), flags=_LINKED)
                     for a, v in paid.items() if v]
            if dust:
                specs.append(TransferSpec(transfer_id("epoch", epoch_id, "dust"), pool, _DUST, dust, ledger=_OPEN,
                                          code=int(TransferCode.EPOCH_DUST), flags=_LINKED))
            last = specs[-1]
            specs[-1] = TransferSpec(last.id, last.debit_account_id, last.credit_account_id, last.amount,
                                     ledger=_OPEN, code=last.code)
            total_paid = sum(paid.values())
            results = self.ledger.create_transfers_in(conn, specs, actor=who.id, event_type="rewards.epoch_distributed",
                                                      extra={"epoch": epoch_id, "funded": funded, "paid": total_paid,
                                                             "dust": dust, "weights_root": bytes(row.weights_root).hex()})
            failed = [r for r in results if not r.succeeded]
            if failed:
                raise_for(next((r for r in failed if r is not Result.linked_event_failed), failed[0]),
                          f"distributing epoch {epoch_id}")
            event_seq, now = _transfer_seq_in(conn, specs[0].id)
            conn.execute(update(reward_epochs).where(reward_epochs.c.id == epoch_id).values(
                state="distributed", paid=total_paid, dust=dust, distributed_ms=now, distributed_seq=event_seq))
            insert_rows(conn, "reward_epoch_payouts",
                        ("epoch_id", "account_id", "weight", "amount", "transfer_id", "event_seq"),
                        [(epoch_id, a, frozen[a], v, hex_id(transfer_id("epoch", epoch_id, "pay", a)) if v else None,
                          event_seq) for a, v in paid.items()])
            return self._epoch_in(conn, epoch_id)

        return self.ledger.transaction(body)

    # --- reads -------------------------------------------------------------------------------------------------

    def epoch(self, epoch: str) -> Epoch:
        with self.store.read() as conn:
            return self._epoch_in(conn, self._row_in(conn, epoch).id)

    def epochs(self) -> list[Epoch]:
        """Every epoch, oldest first."""
        with self.store.read() as conn:
            ids = conn.execute(select(reward_epochs.c.id).order_by(reward_epochs.c.created_seq)).scalars().all()
            return [self._epoch_in(conn, i) for i in ids]

    def detail(self, epoch: str) -> EpochDetail:
        """An epoch with its fundings, weights and payouts."""
        with self.store.read() as conn:
            e = self._epoch_in(conn, self._row_in(conn, epoch).id)
            f = reward_epoch_fundings.c
            fundings = [{"transfer_id": r.transfer_id, "source": r.source, **amount_json(int(r.amount)),
                         "created_ms": int(r.created_ms), "event_seq": int(r.event_seq)}
                        for r in conn.execute(select(reward_epoch_fundings).where(f.epoch_id == e.id)
                                              .order_by(f.event_seq))]
            w, p = reward_epoch_weights.c, reward_epoch_payouts.c
            payouts = {r.account_id: r for r in conn.execute(select(reward_epoch_payouts).where(p.epoch_id == e.id))}
            names = _names_in(conn, payouts.keys() | set(conn.execute(
                select(w.account_id).where(w.epoch_id == e.id)).scalars()))
            recipients = []
            for r in conn.execute(select(reward_epoch_weights).where(w.epoch_id == e.id).order_by(w.position)):
                pay = payouts.get(r.account_id)
                recipients.append({
                    "account": r.account_id, "name": names.get(r.account_id), "position": int(r.position),
                    "weight": int(r.weight), "paid": None if pay is None else amount_json(int(pay.amount)),
                    "transfer_id": None if pay is None else pay.transfer_id,
                })
        return EpochDetail(e, fundings, recipients)

    def weight_proof(self, epoch: str, account: str) -> dict[str, Any]:
        """An inclusion proof of ``account``'s (account, weight) leaf in a frozen epoch's weights tree; check it
        with ``verify_weight_proof`` against the ``weights_root`` journaled at the freeze."""
        with self.store.read() as conn:
            row = self._row_in(conn, epoch)
            if row.state == "open":
                raise Conflict(f"epoch {row.id} is not frozen yet; it has no weights tree", field="epoch")
            acct = participants_in(conn, [account])[account]
            w = reward_epoch_weights.c
            frozen = [(r.account_id, int(r.weight)) for r in conn.execute(
                select(w.account_id, w.weight).where(w.epoch_id == row.id).order_by(w.position))]
        index = next((i for i, (a, _) in enumerate(frozen) if a == acct), None)
        if index is None:
            raise NotFound(f"{account} has no weight in epoch {row.id}", field="account")
        tree = merkle.MemoryTree(weight_leaf(a, v) for a, v in frozen)
        return {"epoch": row.id, "account": acct, "weight": frozen[index][1], "index": index, "size": len(frozen),
                "proof": [h.hex() for h in tree.inclusion_proof(index)], "weights_root": bytes(row.weights_root).hex(),
                "frozen_seq": int(row.frozen_seq)}

    def earnings(self, account: str, *, limit: int = 1000) -> Earnings:
        """What ``account`` received and why, oldest first (at most ``limit`` items of each kind): every settled
        inference fee that paid it (request, receipt, adapter, role: owner or contributor, weight of Σw, share)
        and every reward epoch payout (epoch, weight of Σw, funded, amount, weights_root)."""
        if type(limit) is not int or not 1 <= limit <= 100_000:
            raise InvalidInput("limit must be an integer in 1..100000", field="limit")
        who = self.accounts.get(account)
        legs, s = fee_settlement_legs.c, fee_settlements.c
        with self.store.read() as conn:
            rows = conn.execute(
                select(legs.request_id, legs.role, legs.weight, legs.amount, legs.transfer_id, s.receipt_id,
                       s.adapter_id, s.payer_id, s.amount.label("fee"), s.contributors, s.owner_amount, s.settled_ms,
                       s.event_seq, s.params_seq)
                .join(fee_settlements, fee_settlements.c.request_id == legs.request_id)
                .where(legs.account_id == who.id)
                .order_by(legs.event_seq, legs.request_id, legs.role).limit(limit)
            ).all()
            requests = sorted({r.request_id for r in rows if r.role == "contributor"})
            total_weight: dict[str, int] = {}
            for lo in range(0, len(requests), 500):
                for r in conn.execute(
                    select(legs.request_id, func.sum(legs.weight)).where(
                        legs.request_id.in_(requests[lo:lo + 500]), legs.role == "contributor")
                    .group_by(legs.request_id)
                ):
                    total_weight[r[0]] = int(r[1])
            e, p = reward_epochs.c, reward_epoch_payouts.c
            payouts = conn.execute(
                select(p.epoch_id, p.weight, p.amount, p.transfer_id, p.event_seq, e.title, e.funded, e.total_weight,
                       e.weights_root, e.frozen_seq)
                .join(reward_epochs, reward_epochs.c.id == p.epoch_id)
                .where(p.account_id == who.id).order_by(p.event_seq).limit(limit)
            ).all()
        fees = []
        for r in rows:
            item = {"request_id": r.request_id, "receipt_id": r.receipt_id, "adapter_id": r.adapter_id,
                    "payer": r.payer_id, "role": r.role, "fee": amount_json(int(r.fee)),
                    "amount": amount_json(int(r.amount)), "transfer_id": r.transfer_id,
                    "settled_ms": int(r.settled_ms), "event_seq": int(r.event_seq), "params_seq": int(r.params_seq)}
            if r.role == "contributor":
                item |= {"weight": int(r.weight), "total_weight": total_weight.get(r.request_id, 0),
                         "contributors_pool": amount_json(int(r.contributors))}
            fees.append(item)
        epochs = [{"epoch": r.epoch_id, "title": r.title, "weight": int(r.weight), "total_weight": int(r.total_weight),
                   "funded": amount_json(int(r.funded)), "amount": amount_json(int(r.amount)),
                   "transfer_id": r.transfer_id, "weights_root": bytes(r.weights_root).hex(),
                   "frozen_seq": int(r.frozen_seq), "event_seq": int(r.event_seq)} for r in payouts]
        return Earnings(who.id, who.name, fees, epochs)

    # --- audit -------------------------------------------------------------------------------------------------

    def audit(self) -> list[str]:
        """Problems found (empty when all hold), I11 per epoch: Σ paid ≤ funded; once distributed Σ paid + dust =
        funded and the pool is empty; the payouts are exactly ``shares(funded, weights)``; the weights rows
        reproduce ``weights_root``; fundings and payouts rows match their transfers; the pool holds Σ fundings −
        what it paid out."""
        problems: list[str] = []
        with self.store.read() as conn:
            epochs = conn.execute(select(reward_epochs).order_by(reward_epochs.c.created_seq)).all()
            for row in epochs:
                eid = row.id
                pool = account_id(AccountCode.EPOCH_POOL, eid)
                acct = conn.execute(select(ledger_accounts).where(ledger_accounts.c.id == hex_id(pool))).one_or_none()
                if acct is None:
                    problems.append(f"epoch {eid}: its pool account {hex_id(pool)} is missing")
                    continue
                fundings = conn.execute(select(reward_epoch_fundings).where(
                    reward_epoch_fundings.c.epoch_id == eid)).all()
                funded_rows = sum(int(f.amount) for f in fundings)
                if funded_rows != int(acct.credits_posted):
                    problems.append(f"epoch {eid}: fundings rows sum to {funded_rows}, the pool received "
                                    f"{acct.credits_posted}")
                for f in fundings:
                    t = conn.execute(select(ledger_transfers).where(ledger_transfers.c.id == f.transfer_id)).one_or_none()
                    if t is None or int(t.amount) != int(f.amount) or t.credit_account_id != hex_id(pool):
                        problems.append(f"epoch {eid}: funding {f.transfer_id} does not match its transfer")
                w = reward_epoch_weights.c
                frozen = {r.account_id: int(r.weight) for r in conn.execute(
                    select(w.account_id, w.weight).where(w.epoch_id == eid).order_by(w.position))}
                payouts = {r.account_id: r for r in conn.execute(
                    select(reward_epoch_payouts).where(reward_epoch_payouts.c.epoch_id == eid))}
                paid = sum(int(r.amount) for r in payouts.values())
                balance = int(acct.credits_posted) - int(acct.debits_posted)
                if row.state == "open":
                    if frozen or payouts:
                        problems.append(f"epoch {eid}: open, yet it has weights or payouts")
                    continue
                funded = int(row.funded)
                if weights_root(frozen) != bytes(row.weights_root) or sum(frozen.values()) != int(row.total_weight):
                    problems.append(f"epoch {eid}: the weights rows do not reproduce weights_root / total_weight")
                if paid > funded:
                    problems.append(f"epoch {eid}: paid {paid} > funded {funded} (I11)")
                if row.state == "frozen":
                    if payouts:
                        problems.append(f"epoch {eid}: frozen, yet it has payouts")
                    if balance != funded:
                        problems.append(f"epoch {eid}: frozen with {funded} funded, the pool holds {balance}")
                    continue
                expected, dust = shares(funded, frozen)
                if paid != int(row.paid) or paid + int(row.dust) != funded:
                    problems.append(f"epoch {eid}: paid {paid} + dust {row.dust} != funded {funded} (I11)")
                if {a: int(r.amount) for a, r in payouts.items()} != expected or dust != int(row.dust):
                    problems.append(f"epoch {eid}: payouts differ from floor(funded * w / sum w) (I11, determinism)")
                if balance != 0:
                    problems.append(f"epoch {eid}: distributed, yet the pool still holds {balance}")
                for a, r in payouts.items():
                    if not int(r.amount):
                        continue
                    t = conn.execute(select(ledger_transfers).where(ledger_transfers.c.id == r.transfer_id)).one_or_none()
                    if (t is None or int(t.amount) != int(r.amount) or t.debit_account_id != hex_id(pool)
                            or t.credit_account_id != hex_id(account_id(AccountCode.AVAILABLE, a))):
                        problems.append(f"epoch {eid}: payout to {a} does not match its transfer")
        return problems

    # --- internals ---------------------------------------------------------------------------------------------

    def _admin_in(self, conn: Connection, actor: str, verb: str) -> Any:
        who = self.accounts.get_in(conn, actor)
        if not who.is_admin:
            raise PermissionDenied(f"only an admin may {verb}", field="actor")
        return who

    @staticmethod
    def _row_in(conn: Connection, epoch: str, *, lock: bool = False) -> Any:
        if not isinstance(epoch, str) or not epoch:
            raise InvalidInput("epoch must be an epoch id (ep_…)", field="epoch")
        query = select(reward_epochs).where(reward_epochs.c.id == epoch)
        row = conn.execute(query.with_for_update() if lock else query).one_or_none()
        if row is None:
            raise NotFound(f"no reward epoch {epoch!r}; list them with: royalty rewards epoch list", field="epoch")
        return row

    @staticmethod
    def _epoch_in(conn: Connection, epoch_id: str) -> Epoch:
        row = conn.execute(select(reward_epochs).where(reward_epochs.c.id == epoch_id)).one()
        pool = account_id(AccountCode.EPOCH_POOL, epoch_id)
        funded = int(row.funded) if row.funded is not None else _available_in(conn, pool)
        return Epoch(
            row.id, row.title, row.state, pool, funded,
            None if row.total_weight is None else int(row.total_weight),
            None if row.weights_root is None else bytes(row.weights_root),
            None if row.paid is None else int(row.paid), None if row.dust is None else int(row.dust),
            int(row.created_ms), int(row.created_seq),
            None if row.frozen_seq is None else int(row.frozen_seq),
            None if row.distributed_seq is None else int(row.distributed_seq),
        )


def _available_in(conn: Connection, ledger_account: int) -> int:
    r = conn.execute(select(ledger_accounts.c.credits_posted, ledger_accounts.c.debits_posted,
                            ledger_accounts.c.debits_pending).where(ledger_accounts.c.id == hex_id(ledger_account))).one()
    return int(r.credits_posted) - int(r.debits_posted) - int(r.debits_pending)


def _transfer_seq_in(conn: Connection, tid: int) -> tuple[int, int]:
    """(event_seq, timestamp) of a transfer."""
    r = conn.execute(select(ledger_transfers.c.event_seq, ledger_transfers.c.timestamp)
                     .where(ledger_transfers.c.id == hex_id(tid))).one()
    return int(r.event_seq), int(r.timestamp)


def _names_in(conn: Connection, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(conn.execute(select(node_accounts.c.id, node_accounts.c.name).where(node_accounts.c.id.in_(ids))).all())
