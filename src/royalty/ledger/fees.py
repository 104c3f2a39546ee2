"""Inference fees and protocol fees (``node.fees``).

An inference request's fee moves in three steps (``shared/reference/ledger.md`` §2 "Inference fee"):

1. ``reserve_fee``: a pending transfer payer AVAILABLE → FEE_ESCROW for the most the request may cost, with a
   timeout (``Params.fee_timeout_s`` unless given). The payer's available balance drops at once; nothing is paid.
2. ``settle_fee``: ONE linked chain posts the actual cost (the rest of the reservation returns to the payer) and
   splits it FEE_ESCROW → TREASURY / the adapter owner / STAKER_POOL / each contributor / DUST by the governed
   basis points in force at settlement (``split_fee`` states the arithmetic). A settlement row records who was
   paid what for which request and receipt; ``node.rewards.earnings`` reads it.
3. ``void_fee`` when the request failed. A reservation nobody settles or voids expires ``timeout`` seconds after
   it was made, on the ledger clock (the core releases it; see ``royalty.ledger.core``).

Every transfer id is derived from the request id and the leg (``chart.transfer_id("fee", request_id, leg[,
account])``), so each call is idempotent: a retry answers with the first outcome and moves nothing again.

Authorization: the serving layer calls these as the node (an admin actor). A participant may also reserve, settle
or void their own fee (the payer); nobody else may touch it. Protocol fees (publishing a datanet version,
registering an adapter) are charged inside the caller's transaction by ``charge_publish_fee_in`` and
``charge_adapter_registration_in``, from the publisher's or owner's available balance to the treasury.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from ..accounts import Accounts
from ..errors import Conflict, InsufficientFunds, InvalidInput, NotFound, PermissionDenied
from ..journal.canonical import canonical_json
from ..store import Store
from ..store.engine import insert_rows
from ..store.schema import fee_settlement_legs, fee_settlements, ledger_accounts, ledger_transfers
from .amounts import amount_json, format_amount
from .chart import AccountCode, TransferCode, account_id, system_account_id, transfer_id
from .codes import AMOUNT_MAX, Asset, Result, TransferFlags
from .core import Ledger, TransferSpec, hex_id
from .params import BPS, Params, ParamsRegistry
from .tokens import Tokens, raise_for

_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
_REF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
_OPEN = int(Asset.OPEN)
_LINKED = int(TransferFlags.LINKED)
_ESCROW = system_account_id(AccountCode.FEE_ESCROW)
_TREASURY = system_account_id(AccountCode.TREASURY)
_STAKER_POOL = system_account_id(AccountCode.STAKER_POOL)
_DUST = system_account_id(AccountCode.DUST)


# --------------------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeeRecipients:
    """Who a request's fee pays: the adapter's ``owner`` (a node account id or name) and the data contributors
    by attribution weight (account → non-negative integer weight, e.g. parts per million from an
    AttributionReceipt; may be empty). ``receipt_id`` and ``adapter_id`` are recorded for provenance."""

    owner: str
    contributors: Mapping[str, int] = field(default_factory=dict)
    receipt_id: str | None = None
    adapter_id: str | None = None


@dataclass(frozen=True)
class FeeReservation:
    """A reserved inference fee. ``state``: pending, posted (settled), voided or expired."""

    request_id: str
    payer: str
    amount: int
    transfer_id: int
    timeout_s: int
    state: str
    created_ms: int
    expires_ms: int | None
    event_seq: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "payer": self.payer,
            "reserved": amount_json(self.amount),
            "transfer_id": hex_id(self.transfer_id),
            "timeout_s": self.timeout_s,
            "state": self.state,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "event_seq": self.event_seq,
        }


@dataclass(frozen=True)
class Split:
    """How one fee divides. Legs always sum to the fee exactly (``total``) and none is negative."""

    treasury: int
    owner: int
    stakers: int
    contributors: dict[str, int]  # account id -> amount, ascending ids, weights > 0 only
    dust: int

    @property
    def total(self) -> int:
        return self.treasury + self.owner + self.stakers + sum(self.contributors.values()) + self.dust

    def with_stakers(self, allocated: int) -> Split:
        """The split once staking allocated ``allocated`` of the stakers' share: the rest goes to the treasury
        (nothing is staked: 0 allocated)."""
        if not 0 <= allocated <= self.stakers:
            raise ValueError(f"staking allocated {allocated} of a stakers' share of {self.stakers}")
        return Split(self.treasury + self.stakers - allocated, self.owner, allocated, self.contributors, self.dust)


def split_fee(amount: int, params: Params, weights: Mapping[str, int]) -> Split:
    """Divide ``amount`` base units by the Params basis points and the contributors' ``weights``.

    Each leg is ``floor(amount × bps / 10,000)``; what those floors leave over goes to the treasury, so the legs sum
    exactly. The contributors' pool is divided ``floor(pool × w_i / Σw)``; what that leaves over goes to DUST (which
    is recycled into reward epochs). With no contributor weight at all the contributors' pool goes to the treasury.
    The stakers' share is what is due; ``Split.with_stakers`` applies what staking actually allocated."""
    treasury = amount * params.fee_treasury_bps // BPS
    owner = amount * params.fee_owner_bps // BPS
    stakers = amount * params.fee_stakers_bps // BPS
    pool = amount * params.fee_contributors_bps // BPS
    treasury += amount - (treasury + owner + stakers + pool)
    total_weight = sum(weights.values())
    if total_weight == 0:
        return Split(treasury + pool, owner, stakers, {}, 0)
    shares = {a: pool * w // total_weight for a, w in sorted(weights.items()) if w > 0}
    return Split(treasury, owner, stakers, shares, pool - sum(shares.values()))


@dataclass(frozen=True)
class SettlementLeg:
    role: str  # owner | contributor
    account: str
    weight: int
    amount: int
    transfer_id: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "account": self.account, "weight": self.weight, **amount_json(self.amount),
                "transfer_id": hex_id(self.transfer_id) if self.transfer_id else None}


@dataclass(frozen=True)
class Settlement:
    """A settled fee: what was reserved, what was paid, and who received what."""

    request_id: str
    receipt_id: str | None
    adapter_id: str | None
    payer: str
    owner: str
    reserved: int
    amount: int
    treasury: int
    owner_amount: int
    stakers: int
    contributors: int
    dust: int
    legs: tuple[SettlementLeg, ...]
    params_seq: int
    settled_ms: int
    event_seq: int

    @property
    def refunded(self) -> int:
        return self.reserved - self.amount

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "receipt_id": self.receipt_id,
            "adapter_id": self.adapter_id,
            "payer": self.payer,
            "owner": self.owner,
            "reserved": amount_json(self.reserved),
            "amount": amount_json(self.amount),
            "refunded": amount_json(self.refunded),
            "split": {
                "treasury": amount_json(self.treasury),
                "owner": amount_json(self.owner_amount),
                "stakers": amount_json(self.stakers),
                "contributors": amount_json(self.contributors),
                "dust": amount_json(self.dust),
            },
            "legs": [leg.to_dict() for leg in self.legs],
            "params_seq": self.params_seq,
            "settled_ms": self.settled_ms,
            "event_seq": self.event_seq,
        }


# --------------------------------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------------------------------


class Fees:
    """Inference fees (reserve, settle, void) and protocol fees (``node.fees``)."""

    def __init__(self, store: Store, ledger: Ledger, tokens: Tokens, staking: Any, accounts: Accounts,
                 params: ParamsRegistry, clock: Callable[[], int]) -> None:
        self.store = store
        self.ledger = ledger
        self.tokens = tokens
        self.staking = staking
        self.accounts = accounts
        self.params = params
        self.clock = clock

    # --- inference fees ----------------------------------------------------------------------------------------

    def reserve_fee(self, request_id: str, payer: str, max_amount: int, *, timeout_s: int | None = None,
                    actor: str) -> FeeReservation:
        """Reserve up to ``max_amount`` base units of ``payer``'s available OPEN for request ``request_id``.

        A pending transfer payer AVAILABLE → FEE_ESCROW with id ``transfer_id("fee", request_id, "reserve")`` that
        expires after ``timeout_s`` seconds (default ``Params.fee_timeout_s``). The same call again returns the
        same reservation (whatever its state now); the same request id with another payer, amount or timeout
        raises TransferRejected (``exists_with_different_*``).

        Raises:
            InsufficientFunds: the payer's available balance is below ``max_amount`` (nothing is recorded).
            PermissionDenied: ``actor`` is neither an admin nor the payer.
        """
        _check_request_id(request_id)
        _check_amount(max_amount, "max_amount")
        if timeout_s is not None and (type(timeout_s) is not int or not 1 <= timeout_s <= 2**32 - 1):
            raise InvalidInput(f"timeout_s must be a whole number of seconds >= 1, got {timeout_s!r}", field="timeout_s")
        reserve_id = transfer_id("fee", request_id, "reserve")

        def body(conn: Connection) -> FeeReservation:
            actor_id, is_admin = _actor_in(conn, actor)
            payer_id = participants_in(conn, [payer], "payer")[payer]
            if actor_id != payer_id and not is_admin:
                raise PermissionDenied("only an admin or the payer may reserve a fee from the payer's OPEN", field="actor")
            timeout = timeout_s if timeout_s is not None else _params_in(conn)[0].fee_timeout_s
            spec = TransferSpec(reserve_id, account_id(AccountCode.AVAILABLE, payer_id), _ESCROW, max_amount,
                                timeout=timeout, ledger=_OPEN, code=int(TransferCode.FEE_RESERVE),
                                flags=int(TransferFlags.PENDING), user_data=request_id)
            result = self.ledger.create_transfers_in(
                conn, [spec], actor=actor_id, event_type="fees.reserve",
                extra={"request_id": request_id, "payer": payer_id})[0]
            # Raised inside the transaction: a refused reservation leaves nothing behind (no event, no burnt id).
            # A payer without a ledger account yet has never held OPEN: the same answer.
            if result in (Result.exceeds_credits, Result.debit_account_not_found):
                raise InsufficientFunds(
                    f"request {request_id}: reserving {format_amount(max_amount)} OPEN needs more than the payer's "
                    "available balance; fund the account or lower the maximum", result=Result.exceeds_credits.value,
                    field="max_amount")
            found = self._reservation_in(conn, request_id)
            if (result is Result.exists_with_different_timeout and timeout_s is None and found is not None
                    and (found.payer, found.amount) == (payer_id, max_amount)):
                return found  # a retry after governance changed fee_timeout_s: still the same reservation
            raise_for(result, f"reserving the fee of request {request_id}")
            assert found is not None
            return found

        return self.ledger.transaction(body)

    def settle_fee(self, request_id: str, actual_amount: int, recipients: FeeRecipients, *, actor: str) -> Settlement:
        """Charge ``actual_amount`` of request ``request_id``'s reservation and split it, in one linked chain.

        The chain posts the pending transfer for ``actual_amount`` (the rest returns to the payer), then moves
        FEE_ESCROW → TREASURY / the owner's AVAILABLE / STAKER_POOL / each contributor's AVAILABLE / DUST as
        ``split_fee`` computes it with the Params in force now (legs of 0 are skipped). The stakers' share is
        credited through ``node.staking.distribute_in``; whatever it does not allocate (nothing staked) goes to the
        treasury. Journals one ``fees.settle`` event and stores a settlement row with a row per paid participant.

        A retry with the same arguments returns the same Settlement and moves nothing; different arguments for a
        settled request raise Conflict.

        Raises:
            NotFound: no fee was reserved for ``request_id``.
            Conflict: the reservation was voided or expired; ``actual_amount`` exceeds the reservation.
            PermissionDenied: ``actor`` is neither an admin nor the payer.
            InvalidInput: bad amount, weights or accounts (nothing changes).
        """
        _check_request_id(request_id)
        _check_amount(actual_amount, "actual_amount")
        if not isinstance(recipients, FeeRecipients):
            raise InvalidInput("recipients must be a FeeRecipients", field="recipients")
        for name in ("receipt_id", "adapter_id"):
            value = getattr(recipients, name)
            if value is not None and (not isinstance(value, str) or not _REF_ID.fullmatch(value)):
                raise InvalidInput(f"{name} {value!r} is not an id (1-128 letters, digits and ._:@/+=-)", field=name)
        weights_in = _check_weights(recipients.contributors)
        reserve_id = transfer_id("fee", request_id, "reserve")

        def body(conn: Connection) -> Settlement:
            # The reservation's state is read before the settlement row: a settle committed in between shows up in
            # the second read.
            pend = _rows(conn, "SELECT p.amount, p.state, p.expires_ms, a.owner_id FROM ledger_pending p "
                               "JOIN ledger_accounts a ON a.id = p.debit_account_id WHERE p.id = ?", (hex_id(reserve_id),))
            if not pend:
                raise NotFound(f"no fee is reserved for request {request_id}; reserve it first", field="request_id")
            reserved, state, expires, payer_id = int(pend[0][0]), pend[0][1], pend[0][2], pend[0][3]
            actor_id, is_admin = _actor_in(conn, actor)
            if actor_id != payer_id and not is_admin:
                raise PermissionDenied("only an admin or the payer may settle a fee", field="actor")
            ids = participants_in(conn, [recipients.owner, *weights_in], "recipient")
            owner_id = ids[recipients.owner]
            weights: dict[str, int] = {}
            for ref, w in weights_in.items():
                cid = ids[ref]
                if cid in weights:
                    raise InvalidInput(f"contributor {ref!r} is listed twice", field="contributors")
                weights[cid] = w
            weights = {a: w for a, w in weights.items() if w > 0}
            fingerprint = _fingerprint(actual_amount, owner_id, weights, recipients.receipt_id, recipients.adapter_id)
            done = _rows(conn, "SELECT fingerprint FROM fee_settlements WHERE request_id = ?", (request_id,))
            if done:
                settled = self._settlement_in(conn, request_id)
                assert settled is not None
                if done[0][0] != fingerprint:
                    raise Conflict(f"request {request_id} was already settled with other arguments "
                                   f"({format_amount(settled[0].amount)} OPEN); a settlement is final",
                                   field="request_id")
                return settled[0]
            if state == "pending" and expires is not None and int(expires) <= self.clock():
                state = "expired"
            if state != "pending":
                raise _not_pending(request_id, state)
            if actual_amount > reserved:
                raise Conflict(f"the actual fee {format_amount(actual_amount)} OPEN exceeds the "
                               f"{format_amount(reserved)} OPEN reserved for request {request_id}",
                               field="actual_amount")
            missing = _missing_wallets_in(conn, [owner_id, *weights])
            if missing:
                raise _OpenWallets(missing, actor_id)
            params, params_seq = _params_in(conn)
            split = split_fee(actual_amount, params, weights)
            # Staking's lock order is staking_state → ledger accounts → journal head, so distribute_in runs before
            # any transfer. A concurrent settle of the same request is caught when the settlement row's insert
            # collides: the whole transaction (this allocation included) is rolled back and retried, and the retry
            # returns the settlement that won.
            allocated = self.staking.distribute_in(conn, split.stakers) if split.stakers else 0
            split = split.with_stakers(allocated)
            legs, specs = self._chain(request_id, reserve_id, actual_amount, owner_id, weights, split)
            extra = {
                "request_id": request_id, "receipt_id": recipients.receipt_id, "adapter_id": recipients.adapter_id,
                "payer": payer_id, "owner": owner_id, "reserved": reserved, "amount": actual_amount,
                "split": {"treasury": split.treasury, "owner": split.owner, "stakers": split.stakers,
                          "contributors": sum(split.contributors.values()), "dust": split.dust},
                "weights": [[a, w] for a, w in sorted(weights.items())], "params_seq": params_seq,
            }
            results = self.ledger.create_transfers_in(conn, specs, actor=actor_id, event_type="fees.settle", extra=extra)
            if results[0] in _PENDING_GONE:  # voided or expired concurrently, after the checks above
                raise _not_pending(request_id, _PENDING_GONE[results[0]])
            _raise_first_failure(results, f"settling the fee of request {request_id}")
            (event_seq, settled_ms), = _rows(conn, "SELECT event_seq, timestamp FROM ledger_transfers WHERE id = ?",
                                             (hex_id(specs[0].id),))
            contributors = sum(split.contributors.values())
            insert_rows(conn, "fee_settlements", _SETTLEMENT_COLUMNS, [(
                request_id, recipients.receipt_id, recipients.adapter_id, payer_id, owner_id, reserved, actual_amount,
                split.treasury, split.owner, split.stakers, contributors, split.dust, params_seq, fingerprint,
                settled_ms, event_seq)])
            insert_rows(conn, "fee_settlement_legs",
                        ("request_id", "role", "account_id", "weight", "amount", "transfer_id", "event_seq"),
                        [(request_id, leg.role, leg.account, leg.weight, leg.amount,
                          hex_id(leg.transfer_id) if leg.transfer_id else None, event_seq) for leg in legs])
            return Settlement(request_id, recipients.receipt_id, recipients.adapter_id, payer_id, owner_id, reserved,
                              actual_amount, split.treasury, split.owner, split.stakers, contributors, split.dust,
                              tuple(legs), params_seq, int(settled_ms), int(event_seq))

        try:
            return self.ledger.transaction(body)
        except _OpenWallets as need:
            # New recipients get their ledger accounts in a transaction of their own, committed first: opening
            # accounts journals an event (locking the journal head) and the settlement then locks accounts, the
            # reverse of the core's order (accounts → journal head), which can deadlock with a concurrent writer.
            owners, opener = need.owners, need.actor
            self.ledger.transaction(lambda conn: self.tokens.ensure_accounts_in(conn, owners, actor=opener))
            return self.ledger.transaction(body)

    def void_fee(self, request_id: str, *, actor: str) -> FeeReservation:
        """Release request ``request_id``'s whole reservation back to the payer (the request failed).

        Idempotent: voiding a voided fee returns it again. Raises NotFound when nothing was reserved, Conflict when
        the fee was already settled or has expired, PermissionDenied when ``actor`` is neither an admin nor the
        payer."""
        _check_request_id(request_id)
        reserve_id = transfer_id("fee", request_id, "reserve")

        def body(conn: Connection) -> FeeReservation:
            found = self._reservation_in(conn, request_id)
            if found is None:
                raise NotFound(f"no fee is reserved for request {request_id}", field="request_id")
            actor_id, is_admin = _actor_in(conn, actor)
            if actor_id != found.payer and not is_admin:
                raise PermissionDenied("only an admin or the payer may void a fee", field="actor")
            spec = TransferSpec(transfer_id("fee", request_id, "void"), pending_id=reserve_id,
                                flags=int(TransferFlags.VOID_PENDING_TRANSFER))
            result = self.ledger.create_transfers_in(conn, [spec], actor=actor_id, event_type="fees.void",
                                                     extra={"request_id": request_id})[0]
            if result is Result.pending_transfer_already_posted:
                raise Conflict(f"the fee of request {request_id} is already settled; it cannot be voided",
                               field="request_id")
            if result is Result.pending_transfer_expired:
                raise Conflict(f"the fee reserved for request {request_id} has expired; it was already released",
                               field="request_id")
            raise_for(result, f"voiding the fee of request {request_id}")
            out = self._reservation_in(conn, request_id)
            assert out is not None
            return out

        return self.ledger.transaction(body)

    def reservation(self, request_id: str) -> FeeReservation:
        """Request ``request_id``'s reservation and its state (expired ones show 'expired' even before a sweep)."""
        _check_request_id(request_id)
        with self.store.read() as conn:
            found = self._reservation_in(conn, request_id)
        if found is None:
            raise NotFound(f"no fee is reserved for request {request_id}", field="request_id")
        if found.state == "pending" and found.expires_ms is not None and found.expires_ms <= self.clock():
            return dataclasses.replace(found, state="expired")
        return found

    def settlement(self, request_id: str) -> Settlement:
        """The settlement of request ``request_id``."""
        _check_request_id(request_id)
        with self.store.read() as conn:
            found = self._settlement_in(conn, request_id)
        if found is None:
            raise NotFound(f"request {request_id} has no settled fee", field="request_id")
        return found[0]

    # --- protocol fees -----------------------------------------------------------------------------------------

    def charge_publish_fee_in(self, conn: Connection, publisher_account_id: str, datanet_id: str,
                              version_number: int, contributions: int, *, actor: str | None) -> int:
        """Charge ``Params.publish_fee(contributions)`` for publishing version ``version_number`` of a datanet,
        publisher AVAILABLE → TREASURY, inside the publish transaction. Returns the fee (0: nothing charged).

        The transfer id is ``transfer_id("publish", datanet_id, str(version_number))``, so a version is charged at
        most once. Raises InsufficientFunds (rolling the publish back) when the publisher is short."""
        fee = self.params.current_in(conn).publish_fee(contributions)
        what = f"publishing version {version_number} of datanet {datanet_id} ({contributions} contributions)"
        if fee:
            _require_wallet_in(conn, publisher_account_id, fee, what)
            self.tokens.pay_in(
                conn, publisher_account_id, fee, code=TransferCode.PUBLISH_FEE,
                id=transfer_id("publish", datanet_id, str(version_number)), actor=actor,
                what=what,
                extra={"fee": "datanet.publish", "datanet": datanet_id, "version": version_number,
                       "contributions": contributions})
        return fee

    def charge_adapter_registration_in(self, conn: Connection, owner_account_id: str, adapter_id: str, *,
                                       actor: str | None) -> int:
        """Charge ``Params.adapter_registration_fee`` for registering adapter ``adapter_id``, owner AVAILABLE →
        TREASURY, inside the registration transaction. Returns the fee (0: nothing charged). Charged at most once
        per adapter id (``transfer_id("adapter", adapter_id, "registration")``); raises InsufficientFunds when the
        owner is short."""
        fee = self.params.current_in(conn).adapter_registration_fee
        if fee:
            _require_wallet_in(conn, owner_account_id, fee, f"registering adapter {adapter_id}")
            self.tokens.pay_in(
                conn, owner_account_id, fee, code=TransferCode.ADAPTER_FEE,
                id=transfer_id("adapter", adapter_id, "registration"), actor=actor,
                what=f"registering adapter {adapter_id}", extra={"fee": "adapter.register", "adapter": adapter_id})
        return fee

    # --- audit ---------------------------------------------------------------------------------------------------

    def audit(self) -> list[str]:
        """Problems found (empty when all hold): every settlement row matches its transfers (the post for the
        amount, each leg's amount and accounts), its legs sum to the amount, and FEE_ESCROW holds no posted OPEN
        (a posted fee is always split in the same chain)."""
        problems: list[str] = []
        with self.store.read() as conn:
            rows = conn.execute(select(fee_settlements).order_by(fee_settlements.c.event_seq)).all()
            legs: dict[str, list[Any]] = {}
            for leg in conn.execute(select(fee_settlement_legs)).all():
                legs.setdefault(leg.request_id, []).append(leg)
            transfers = {}
            for row in rows:
                for t in self._expected_transfers(row, legs.get(row.request_id, [])):
                    transfers[t[0]] = t
            found = {}
            wanted = [hex_id(t) for t in transfers]
            for lo in range(0, len(wanted), 500):
                for r in conn.execute(select(ledger_transfers).where(ledger_transfers.c.id.in_(wanted[lo:lo + 500]))):
                    found[int(r.id, 16)] = r
            escrow = conn.execute(select(ledger_accounts.c.credits_posted, ledger_accounts.c.debits_posted)
                                  .where(ledger_accounts.c.id == hex_id(_ESCROW))).one()
        for row in rows:
            total = int(row.treasury) + int(row.owner_amount) + int(row.stakers) + int(row.contributors) + int(row.dust)
            if total != int(row.amount):
                problems.append(f"settlement {row.request_id}: legs sum to {total}, not the fee {row.amount}")
            if not 0 < int(row.amount) <= int(row.reserved):
                problems.append(f"settlement {row.request_id}: fee {row.amount} outside (0, reserved {row.reserved}]")
            paid = sum(int(leg.amount) for leg in legs.get(row.request_id, []) if leg.role == "contributor")
            if paid != int(row.contributors):
                problems.append(f"settlement {row.request_id}: contributor rows sum to {paid}, not {row.contributors}")
        for tid, (_, debit, credit, amount, what) in transfers.items():
            r = found.get(tid)
            if r is None:
                problems.append(f"{what}: transfer {hex_id(tid)} is missing")
            elif (int(r.amount), r.credit_account_id) != (amount, hex_id(credit)) or (
                    debit is not None and r.debit_account_id != hex_id(debit)):
                problems.append(f"{what}: transfer {hex_id(tid)} does not match the settlement row")
        if int(escrow.credits_posted) != int(escrow.debits_posted):
            problems.append(f"FEE_ESCROW holds {int(escrow.credits_posted) - int(escrow.debits_posted)} posted base "
                            "units; every posted fee should have been split")
        return problems

    # --- internals -----------------------------------------------------------------------------------------------

    @staticmethod
    def _expected_transfers(row: Any, legs: list[Any]) -> Iterable[tuple[int, int | None, int, int, str]]:
        """(id, debit or None when implied, credit, amount, label) of each transfer a settlement row implies."""
        req = row.request_id
        label = f"settlement {req}"
        yield transfer_id("fee", req, "post"), None, _ESCROW, int(row.amount), f"{label} post"
        if int(row.treasury):
            yield transfer_id("fee", req, "treasury"), _ESCROW, _TREASURY, int(row.treasury), f"{label} treasury leg"
        if int(row.stakers):
            yield transfer_id("fee", req, "stakers"), _ESCROW, _STAKER_POOL, int(row.stakers), f"{label} stakers leg"
        if int(row.dust):
            yield transfer_id("fee", req, "dust"), _ESCROW, _DUST, int(row.dust), f"{label} dust leg"
        for leg in legs:
            if int(leg.amount):
                yield (transfer_id("fee", req, leg.role, leg.account_id), _ESCROW,
                       account_id(AccountCode.AVAILABLE, leg.account_id), int(leg.amount), f"{label} {leg.role} leg")

    @staticmethod
    def _chain(request_id: str, reserve_id: int, amount: int, owner_id: str, weights: dict[str, int],
               split: Split) -> tuple[list[SettlementLeg], list[TransferSpec]]:
        def leg(name: str, credit: int, value: int, code: TransferCode, *who: str) -> None:
            if value:
                specs.append(TransferSpec(transfer_id("fee", request_id, name, *who), _ESCROW, credit, value,
                                          ledger=_OPEN, code=int(code), flags=_LINKED))

        specs = [TransferSpec(transfer_id("fee", request_id, "post"), pending_id=reserve_id, amount=amount,
                              flags=int(TransferFlags.POST_PENDING_TRANSFER) | _LINKED)]
        leg("treasury", _TREASURY, split.treasury, TransferCode.FEE_TREASURY)
        leg("owner", account_id(AccountCode.AVAILABLE, owner_id), split.owner, TransferCode.FEE_OWNER, owner_id)
        leg("stakers", _STAKER_POOL, split.stakers, TransferCode.FEE_STAKERS)
        legs = [SettlementLeg("owner", owner_id, 0, split.owner,
                              transfer_id("fee", request_id, "owner", owner_id) if split.owner else None)]
        for a, w in sorted(weights.items()):
            share = split.contributors.get(a, 0)
            leg("contributor", account_id(AccountCode.AVAILABLE, a), share, TransferCode.FEE_CONTRIBUTOR, a)
            legs.append(SettlementLeg("contributor", a, w, share,
                                      transfer_id("fee", request_id, "contributor", a) if share else None))
        leg("dust", _DUST, split.dust, TransferCode.FEE_DUST)
        last = specs[-1]
        specs[-1] = TransferSpec(last.id, last.debit_account_id, last.credit_account_id, last.amount, last.pending_id,
                                 last.timeout, last.ledger, last.code, last.flags & ~_LINKED, last.user_data)
        return legs, specs

    @staticmethod
    def _reservation_in(conn: Connection, request_id: str) -> FeeReservation | None:
        tid = transfer_id("fee", request_id, "reserve")
        rows = _rows(conn, "SELECT t.amount, t.timeout, t.timestamp, t.event_seq, p.state, p.expires_ms, a.owner_id "
                           "FROM ledger_transfers t JOIN ledger_pending p ON p.id = t.id "
                           "JOIN ledger_accounts a ON a.id = t.debit_account_id WHERE t.id = ?", (hex_id(tid),))
        if not rows:
            return None
        amount, timeout, ts, seq, state, expires, payer = rows[0]
        return FeeReservation(request_id, payer, int(amount), tid, int(timeout), state, int(ts),
                              None if expires is None else int(expires), int(seq))

    @staticmethod
    def _settlement_in(conn: Connection, request_id: str) -> tuple[Settlement, str] | None:
        row = conn.execute(select(fee_settlements).where(fee_settlements.c.request_id == request_id)).one_or_none()
        if row is None:
            return None
        legs = conn.execute(select(fee_settlement_legs).where(fee_settlement_legs.c.request_id == request_id)).all()
        ordered = sorted(legs, key=lambda leg: (leg.role != "owner", leg.account_id))
        return settlement_from_rows(row, ordered), row.fingerprint


def settlement_from_rows(row: Any, legs: Iterable[Any]) -> Settlement:
    """A Settlement from its ``fee_settlements`` row and ``fee_settlement_legs`` rows."""
    return Settlement(
        row.request_id, row.receipt_id, row.adapter_id, row.payer_id, row.owner_id, int(row.reserved),
        int(row.amount), int(row.treasury), int(row.owner_amount), int(row.stakers), int(row.contributors),
        int(row.dust),
        tuple(SettlementLeg(leg.role, leg.account_id, int(leg.weight), int(leg.amount),
                            int(leg.transfer_id, 16) if leg.transfer_id else None) for leg in legs),
        int(row.params_seq), int(row.settled_ms), int(row.event_seq),
    )


_SETTLEMENT_COLUMNS = ("request_id", "receipt_id", "adapter_id", "payer_id", "owner_id", "reserved", "amount",
                       "treasury", "owner_amount", "stakers", "contributors", "dust", "params_seq", "fingerprint",
                       "settled_ms", "event_seq")


def _rows(conn: Connection, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Raw SQL with ``?`` placeholders on both backends, for the fee cycle's reads: SQLAlchemy's statement
    compilation cost more than the queries themselves there (profiled: about half of a cycle's own time)."""
    if conn.dialect.paramstyle != "qmark":
        sql = sql.replace("?", "%s")
    # The DB-API cursor of the transaction's own connection: even exec_driver_sql's execution context cost more
    # than these one-row lookups do in SQLite.
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall()
    finally:
        cursor.close()


class _OpenWallets(Exception):
    """Raised inside a settlement whose recipients have no ledger accounts yet (see ``settle_fee``)."""

    def __init__(self, owners: list[str], actor: str) -> None:
        super().__init__(owners)
        self.owners = owners
        self.actor = actor


def _missing_wallets_in(conn: Connection, owners: list[str]) -> list[str]:
    """The participants among ``owners`` whose AVAILABLE ledger account does not exist yet (one raw read)."""
    wanted = {hex_id(account_id(AccountCode.AVAILABLE, o)): o for o in owners}
    marks = ", ".join("?" * len(wanted))
    have = {r[0] for r in _rows(conn, f"SELECT id FROM ledger_accounts WHERE id IN ({marks})", tuple(wanted))}
    return sorted({o for h, o in wanted.items() if h not in have})


def _require_wallet_in(conn: Connection, payer: str, fee: int, what: str) -> None:
    """InsufficientFunds for a payer who has never held OPEN (no ledger account), without opening one: opening
    accounts inside the caller's transaction would lock the journal head before the ledger accounts."""
    if _missing_wallets_in(conn, [payer]):
        raise InsufficientFunds(
            f"{what} costs {format_amount(fee)} OPEN, more than the available balance; fund the account first "
            "(an admin can use: royalty ledger faucet ACCOUNT AMOUNT)", result=Result.exceeds_credits.value)


def _actor_in(conn: Connection, ref: str) -> tuple[str, bool]:
    """(account id, is admin) of the acting account, by id (``acct_…``) or name, in one query."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput(f"actor must be an account id or name, got {ref!r}", field="actor")
    column = "id" if ref.startswith("acct_") else "name"
    rows = _rows(conn, f"SELECT a.id, (SELECT COUNT(*) FROM account_roles r WHERE r.account_id = a.id AND "
                       f"r.role = 'admin' AND r.scope = '') FROM accounts a WHERE a.{column} = ?", (ref,))
    if not rows:
        raise NotFound(f"no account {ref!r}; list accounts with: royalty account list", field="actor")
    return rows[0][0], bool(rows[0][1])


def _params_in(conn: Connection) -> tuple[Params, int]:
    """The Params in force and their version (the ``ledger_params`` seq)."""
    (seq, text), = _rows(conn, "SELECT seq, values_json FROM ledger_params ORDER BY seq DESC LIMIT 1")
    return _params_from_json(text), int(seq)


_PARAMS_CACHE: dict[str, Params] = {}


def _params_from_json(text: str) -> Params:
    # Params are immutable and their JSON is the version's identity: parse each version once per process (the
    # settle path reads them on every call).
    params = _PARAMS_CACHE.get(text)
    if params is None:
        params = Params(**json.loads(text))
        if len(_PARAMS_CACHE) > 64:
            _PARAMS_CACHE.clear()
        _PARAMS_CACHE[text] = params
    return params


def participants_in(conn: Connection, refs: list[str], what: str = "account") -> dict[str, str]:
    """Node account ids of ``refs`` (ids or names), one query; system accounts and unknown refs refused."""
    for ref in refs:
        if not isinstance(ref, str) or not ref:
            raise InvalidInput(f"{what} must be an account id or name, got {ref!r}", field=what)
    wanted = sorted(set(refs))
    marks = ", ".join("?" * len(wanted))
    rows = _rows(conn, f"SELECT id, name, kind FROM accounts WHERE id IN ({marks}) OR name IN ({marks})",
                 (*wanted, *wanted))
    by_ref = {key: r for r in rows for key in (r[0], r[1]) if key in wanted}
    out = {}
    for ref in refs:
        r = by_ref.get(ref)
        if r is None:
            raise NotFound(f"{what} {ref!r} is not an account; list accounts with: royalty account list", field=what)
        if r[2] == "system":
            raise InvalidInput(f"{what} {r[1]} is a system account; it has no OPEN wallet of its own", field=what)
        out[ref] = r[0]
    return out


_PENDING_GONE = {Result.pending_transfer_already_voided: "voided", Result.pending_transfer_expired: "expired",
                 Result.pending_transfer_already_posted: "posted"}


def _not_pending(request_id: str, state: str) -> Conflict:
    what = {"voided": "was voided", "expired": "expired before it was settled",
            "posted": "was already posted outside settle_fee"}[state]
    return Conflict(f"the fee reserved for request {request_id} {what}; nothing to settle (reserve a new one)",
                    field="request_id")


def _check_request_id(request_id: Any) -> None:
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise InvalidInput(
            f"request_id {request_id!r} is not a request id: use 1-128 letters, digits and ._:@/+=- "
            "(starting with a letter or digit)", field="request_id")


def _check_amount(amount: Any, field_name: str) -> None:
    if type(amount) is not int or not 0 < amount <= AMOUNT_MAX:
        raise InvalidInput(f"{field_name} must be a positive integer number of base units, got {amount!r}",
                           field=field_name)


def _check_weights(weights: Any) -> dict[str, int]:
    if not isinstance(weights, Mapping):
        raise InvalidInput("contributors must map account ids to integer weights", field="contributors")
    out: dict[str, int] = {}
    for ref, w in weights.items():
        if not isinstance(ref, str) or not ref:
            raise InvalidInput(f"contributor {ref!r} is not an account id", field="contributors")
        if type(w) is not int or not 0 <= w <= AMOUNT_MAX:
            raise InvalidInput(f"the weight of contributor {ref} must be a non-negative integer, got {w!r}",
                               field="contributors")
        out[ref] = w
    if sum(out.values()) > AMOUNT_MAX:
        raise InvalidInput("the contributors' weights sum to more than 2^63 - 1; scale them down (e.g. to parts "
                           "per million)", field="contributors")
    return out


def _fingerprint(amount: int, owner: str, weights: Mapping[str, int], receipt_id: str | None,
                 adapter_id: str | None) -> str:
    body = {"amount": amount, "owner": owner, "weights": [[a, w] for a, w in sorted(weights.items())],
            "receipt_id": receipt_id, "adapter_id": adapter_id}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _raise_first_failure(results: list[Result], what: str) -> None:
    """Raise for the event that broke a chain (the others answer linked_event_failed)."""
    failures = [r for r in results if not r.succeeded]
    if failures:
        first = next((r for r in failures if r is not Result.linked_event_failed), failures[0])
        raise_for(first, what)


__all__ = [
    "FeeRecipients",
    "FeeReservation",
    "Fees",
    "Settlement",
    "SettlementLeg",
    "Split",
    "participants_in",
    "settlement_from_rows",
    "split_fee",
]
