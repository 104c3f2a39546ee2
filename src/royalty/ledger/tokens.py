"""OPEN: the token participants hold, send and pay fees with (``node.tokens``), on top of the double-entry core.

Each participant (a node account) has the ledger accounts of ``chart.PARTICIPANT_LEDGER_ACCOUNTS``, created on
first use; the protocol's own accounts are made at genesis, when the whole genesis supply is issued to the
treasury (``ISSUANCE → TREASURY``). After genesis the supply changes only through ``mint_in``/``burn_in``, which
only an executed governance proposal calls (I4).

Authorization lives here, not in the CLI or HTTP layer: only a participant moves their own funds (an admin
cannot move someone else's); the faucet is a grant from the treasury that only an admin may make.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from ..accounts import Accounts
from ..accounts.service import Account
from ..errors import InsufficientFunds, InvalidInput, PermissionDenied, TransferRejected
from ..store import Store
from ..store.schema import ledger_accounts
from .amounts import amount_json, format_amount
from .chart import (
    PARTICIPANT_LEDGER_ACCOUNTS,
    SYSTEM_LEDGER_ACCOUNTS,
    AccountCode,
    TransferCode,
    account_id,
    system_account_id,
    transfer_id,
)
from .codes import Asset, Result
from .core import AccountSpec, Ledger, Transfer, TransferSpec, hex_id, parse_id
from .params import ParamsRegistry

DEFAULT_GENESIS_SUPPLY = 1_000_000_000 * 10**6  # 1e9 OPEN in base units


@dataclass(frozen=True)
class TokenBalance:
    """What one participant holds. ``available`` can be sent or staked; ``reserved`` is held by pending
    transfers (inference fees awaiting settlement); ``staked`` backs ``gopen`` one to one."""

    account: str
    name: str
    available: int
    reserved: int
    staked: int
    gopen: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "name": self.name,
            "available": amount_json(self.available),
            "reserved": amount_json(self.reserved),
            "staked": amount_json(self.staked),
            "gopen": amount_json(self.gopen),
        }


@dataclass(frozen=True)
class HistoryItem:
    """One transfer seen from a participant's side: ``amount`` is signed (+ received, - sent)."""

    transfer: Transfer
    direction: str  # "in" | "out"
    counterparty: str  # the other side's ledger account id (hex)
    account_code: int  # which of the participant's accounts (AVAILABLE, STAKED, GOPEN)

    def to_dict(self) -> dict[str, Any]:
        t = self.transfer
        signed = t.amount if self.direction == "in" else -t.amount
        return {
            **t.to_dict(),
            "direction": self.direction,
            "signed": {"amount": format_amount(signed), "units": signed},
            "reason": _reason(t.code),
            "account_kind": AccountCode(self.account_code).name.lower(),
        }


def _reason(code: int) -> str:
    try:
        return TransferCode(code).name.lower()
    except ValueError:
        return str(code)


def new_transfer_id() -> int:
    """A fresh client-side transfer id: 48-bit ms time << 80 | 80 random bits (TigerBeetle's advice: ids that
    sort by time keep the index append-mostly)."""
    return uuid.uuid7().int if hasattr(uuid, "uuid7") else _uuid7_int()


def _uuid7_int() -> int:
    import os
    import time

    return (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")


def check_genesis_supply(supply: int, cap: int) -> None:
    """Raise InvalidInput unless ``supply`` (base units) is a valid genesis supply under ``cap``."""
    if type(supply) is not int or supply < 0:
        raise InvalidInput("the genesis supply must be a non-negative number of base units", field="supply")
    if supply > cap:
        raise InvalidInput(f"the genesis supply {format_amount(supply)} OPEN exceeds the supply cap "
                           f"{format_amount(cap)} OPEN; lower --supply or raise --param supply_cap", field="supply")


def raise_for(result: Result, what: str, *, field: str | None = None) -> None:
    """Turn a failed result into the matching error (InsufficientFunds for exceeds_credits)."""
    if result.succeeded:
        return
    if result is Result.exceeds_credits:
        raise InsufficientFunds(f"{what}: not enough available funds", result=result.value, field=field)
    raise TransferRejected(f"{what}: the ledger refused it ({result.value})", result=result.value, field=field)


class Tokens:
    """OPEN balances, transfers, the faucet, supply, mint and burn (``node.tokens``)."""

    def __init__(
        self, store: Store, ledger: Ledger, accounts: Accounts, params: ParamsRegistry, clock: Callable[[], int]
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.accounts = accounts
        self.params = params
        self.clock = clock

    # --- accounts ----------------------------------------------------------------------------------------------

    def genesis_in(self, conn: Connection, supply: int) -> None:
        """Create the protocol's ledger accounts and issue ``supply`` to the treasury. Part of node genesis."""
        check_genesis_supply(supply, self.params.current_in(conn).supply_cap)
        specs = []
        for code, (asset, flags, owner_name) in SYSTEM_LEDGER_ACCOUNTS.items():
            owner = self.accounts.get_in(conn, owner_name).id
            specs.append(AccountSpec(system_account_id(code), int(asset), int(code), flags, owner=owner))
        results = self.ledger.create_accounts_in(conn, specs)
        assert all(r.succeeded for r in results), results
        if supply:
            res = self.ledger.create_transfers_in(conn, [TransferSpec(
                transfer_id("genesis"), system_account_id(AccountCode.ISSUANCE), system_account_id(AccountCode.TREASURY),
                supply, ledger=int(Asset.OPEN), code=int(TransferCode.GENESIS))], event_type="ledger.genesis")
            assert res == [Result.ok], res

    def ensure_accounts_in(self, conn: Connection, owners: Iterable[str], *, actor: str | None = None) -> None:
        """Create the participant ledger accounts that ``owners`` (node account ids) do not have yet."""
        wanted = {account_id(code, o): (code, o) for o in set(owners) for code in PARTICIPANT_LEDGER_ACCOUNTS}
        if not wanted:
            return
        have = set(conn.execute(
            select(ledger_accounts.c.id).where(ledger_accounts.c.id.in_([hex_id(i) for i in wanted]))
        ).scalars())
        missing = [i for i in wanted if hex_id(i) not in have]
        if not missing:
            return
        specs = []
        for i in sorted(missing):
            code, owner = wanted[i]
            asset, flags = PARTICIPANT_LEDGER_ACCOUNTS[code]
            specs.append(AccountSpec(i, int(asset), int(code), flags, owner=owner))
        results = self.ledger.create_accounts_in(conn, specs, actor=actor)
        bad = [r for r in results if not r.succeeded]
        if bad:
            raise TransferRejected(f"could not open ledger accounts: {bad[0].value}", result=bad[0].value)

    def participant(self, ref: str) -> Account:
        """A participant by name or id; system accounts (treasury, fees, rewards) are not participants."""
        who = self.accounts.get(ref)
        if who.kind == "system":
            raise InvalidInput(f"{who.name} is a system account; it has no OPEN wallet of its own", field="account")
        return who

    # --- reads -------------------------------------------------------------------------------------------------

    def balance(self, ref: str) -> TokenBalance:
        who = self.participant(ref)
        found = {a.code: a for a in self.ledger.lookup_accounts(
            [account_id(code, who.id) for code in PARTICIPANT_LEDGER_ACCOUNTS])}
        avail = found.get(int(AccountCode.AVAILABLE))
        staked = found.get(int(AccountCode.STAKED))
        gopen = found.get(int(AccountCode.GOPEN))
        return TokenBalance(
            account=who.id,
            name=who.name,
            available=avail.balance.available if avail else 0,
            reserved=avail.debits_pending if avail else 0,
            staked=staked.balance.available if staked else 0,
            gopen=gopen.balance.available if gopen else 0,
        )

    def system_balance(self, code: AccountCode) -> int:
        """The posted balance of a system account, signed the natural way (issuance counts what it issued)."""
        acct = self.ledger.lookup_accounts([system_account_id(code)])[0]
        b = acct.balance
        return b.debits_posted - b.credits_posted if code in (AccountCode.ISSUANCE, AccountCode.GOPEN_ISSUANCE) else b.posted

    def supply(self) -> dict[str, Any]:
        """Total OPEN supply = issued − burnt (I4), and the cap."""
        issued = self.system_balance(AccountCode.ISSUANCE)
        burnt = self.system_balance(AccountCode.BURN)
        cap = self.params.current().supply_cap
        return {"issued": amount_json(issued), "burnt": amount_json(burnt), "supply": amount_json(issued - burnt),
                "cap": amount_json(cap)}

    def history(self, ref: str, *, limit: int = 100, after: Any = None) -> list[HistoryItem]:
        """The participant's transfers over all their accounts, oldest first, paginated by transfer id."""
        who = self.participant(ref)
        mine = {account_id(code, who.id): int(code) for code in PARTICIPANT_LEDGER_ACCOUNTS}
        existing = [a.id for a in self.ledger.lookup_accounts(list(mine))]
        items: list[HistoryItem] = []
        for acct in existing:
            for t in self.ledger.history(acct, limit=limit, after=after):
                if t.credit_account_id == acct:
                    items.append(HistoryItem(t, "in", hex_id(t.debit_account_id), mine[acct]))
                else:
                    items.append(HistoryItem(t, "out", hex_id(t.credit_account_id), mine[acct]))
        items.sort(key=lambda h: (h.transfer.event_seq, h.transfer.event_index, h.direction))
        return items[:limit]

    def history_page(self, ref: str, *, limit: int = 100, after: Any = None) -> tuple[list[HistoryItem], bool]:
        """One page of ``history`` and whether more follows. A transfer between two of the participant's own
        accounts (a stake) is two items; a page never ends between them, so paging on with ``after`` = the last
        item's transfer id loses nothing (such a page holds limit + 1 items)."""
        items = self.history(ref, limit=limit + 2, after=after)
        page = items[:limit]
        if len(items) > limit and page and items[limit].transfer.id == page[-1].transfer.id:
            page = items[: limit + 1]
        return page, len(items) > len(page)

    # --- moving OPEN -------------------------------------------------------------------------------------------

    def transfer(self, payer: str, payee: str, amount: int, *, actor: str, id: Any = None,
                 memo: str | None = None) -> tuple[Transfer, Result]:
        """Send ``amount`` base units of available OPEN from ``payer`` to ``payee``. Only the payer may do this.

        ``id`` (a UUID or 128-bit int) makes it idempotent: the same id again answers ``exists`` with the
        original transfer, a different request under the same id raises TransferRejected
        (``exists_with_different_*``). Raises InsufficientFunds when the payer's available balance is short."""
        src, dst = self.participant(payer), self.participant(payee)
        who = self.accounts.get(actor)
        if who.id != src.id:
            raise PermissionDenied(f"only {src.name} may send {src.name}'s OPEN", field="from")
        if src.id == dst.id:
            raise InvalidInput("the payer and the payee are the same account", field="to")
        tid = new_transfer_id() if id is None else parse_id(id, "id")
        spec = TransferSpec(tid, account_id(AccountCode.AVAILABLE, src.id), account_id(AccountCode.AVAILABLE, dst.id),
                            amount, ledger=int(Asset.OPEN), code=int(TransferCode.TRANSFER), user_data=memo)
        return self._one(spec, [src.id, dst.id], who.id, f"transfer of {format_amount(amount)} OPEN")

    def faucet(self, ref: str, amount: int, *, actor: str, id: Any = None,
               memo: str | None = None) -> tuple[Transfer, Result]:
        """An admin-only grant of ``amount`` from the treasury to ``ref`` (for demos and tests); ``id`` makes it
        idempotent as in ``transfer``; ``memo`` is kept as the transfer's user_data."""
        who = self.accounts.get(actor)
        if not who.is_admin:
            raise PermissionDenied("only an admin may use the faucet", field="actor")
        dst = self.participant(ref)
        tid = new_transfer_id() if id is None else parse_id(id, "id")
        spec = TransferSpec(tid, system_account_id(AccountCode.TREASURY), account_id(AccountCode.AVAILABLE, dst.id),
                            amount, ledger=int(Asset.OPEN), code=int(TransferCode.FAUCET), user_data=memo)
        return self._one(spec, [dst.id], who.id, f"faucet grant of {format_amount(amount)} OPEN")

    def pay_in(self, conn: Connection, payer: str, amount: int, *, code: TransferCode, id: int, actor: str | None,
               what: str, extra: dict[str, Any] | None = None) -> Result:
        """Charge a protocol fee (``payer``'s available → treasury) inside the caller's transaction, e.g. the
        datanet publishing fee. Raises InsufficientFunds (which rolls the caller back) when the payer is short."""
        self.ledger.lock_accounts_in(conn, [account_id(AccountCode.AVAILABLE, payer), system_account_id(AccountCode.TREASURY)])
        self.ensure_accounts_in(conn, [payer], actor=actor)
        result = self.ledger.create_transfers_in(conn, [TransferSpec(
            id, account_id(AccountCode.AVAILABLE, payer), system_account_id(AccountCode.TREASURY), amount,
            ledger=int(Asset.OPEN), code=int(code))], actor=actor, event_type="ledger.fee", extra=extra)[0]
        if result is Result.exceeds_credits:
            raise InsufficientFunds(
                f"{what} costs {format_amount(amount)} OPEN, more than the available balance; "
                "fund the account first (an admin can use: royalty ledger faucet ACCOUNT AMOUNT)",
                result=result.value,
            )
        raise_for(result, what)
        return result

    def mint_in(self, conn: Connection, to: str, amount: int, *, id: int, actor: str | None,
                extra: dict[str, Any] | None = None) -> Result:
        """Issue new OPEN to participant ``to`` (or the treasury when ``to`` is "treasury"), within the supply
        cap. Only governance's execute calls this."""
        supply = self._supply_in(conn)
        cap = self.params.current_in(conn).supply_cap
        if supply + amount > cap:
            raise TransferRejected(
                f"minting {format_amount(amount)} OPEN would exceed the supply cap of {format_amount(cap)}",
                result="exceeds_supply_cap", field="amount")
        dst = self._wallet_in(conn, to, actor)
        result = self.ledger.create_transfers_in(conn, [TransferSpec(
            id, system_account_id(AccountCode.ISSUANCE), dst, amount, ledger=int(Asset.OPEN), code=int(TransferCode.MINT))],
            actor=actor, event_type="ledger.mint", extra=extra)[0]
        raise_for(result, "mint")
        return result

    def burn_in(self, conn: Connection, source: str, amount: int, *, id: int, actor: str | None,
                extra: dict[str, Any] | None = None) -> Result:
        """Destroy OPEN held by ``source`` (a participant, or "treasury"). Only governance's execute calls this."""
        src = self._wallet_in(conn, source, actor)
        result = self.ledger.create_transfers_in(conn, [TransferSpec(
            id, src, system_account_id(AccountCode.BURN), amount, ledger=int(Asset.OPEN), code=int(TransferCode.BURN))],
            actor=actor, event_type="ledger.burn", extra=extra)[0]
        raise_for(result, "burn")
        return result

    def grant_in(self, conn: Connection, to: str, amount: int, *, id: int, actor: str | None,
                 extra: dict[str, Any] | None = None) -> Result:
        """Move ``amount`` from the treasury to participant ``to``: a treasury transfer executed by governance."""
        dst = self._wallet_in(conn, to, actor)
        result = self.ledger.create_transfers_in(conn, [TransferSpec(
            id, system_account_id(AccountCode.TREASURY), dst, amount, ledger=int(Asset.OPEN),
            code=int(TransferCode.TREASURY_GRANT))], actor=actor, event_type="ledger.grant", extra=extra)[0]
        raise_for(result, "treasury grant")
        return result

    def _wallet_in(self, conn: Connection, ref: str, actor: str | None) -> int:
        if ref == "treasury":
            return system_account_id(AccountCode.TREASURY)
        who = self.accounts.get_in(conn, ref)
        if who.kind == "system":
            raise InvalidInput(f"{who.name} is a system account; use 'treasury' or a participant", field="account")
        self.ensure_accounts_in(conn, [who.id], actor=actor)
        return account_id(AccountCode.AVAILABLE, who.id)

    def _supply_in(self, conn: Connection) -> int:
        row = conn.execute(select(ledger_accounts.c.debits_posted, ledger_accounts.c.credits_posted).where(
            ledger_accounts.c.id == hex_id(system_account_id(AccountCode.ISSUANCE)))).one()
        burnt = conn.execute(select(ledger_accounts.c.credits_posted, ledger_accounts.c.debits_posted).where(
            ledger_accounts.c.id == hex_id(system_account_id(AccountCode.BURN)))).one()
        return int(row[0]) - int(row[1]) - (int(burnt[0]) - int(burnt[1]))

    def _one(self, spec: TransferSpec, owners: list[str], actor: str, what: str) -> tuple[Transfer, Result]:
        def body(conn: Connection) -> Result:
            # Lock first: opening new accounts journals an event (the journal head) before the transfer locks.
            self.ledger.lock_accounts_in(conn, [spec.debit_account_id, spec.credit_account_id])
            self.ensure_accounts_in(conn, owners, actor=actor)
            return self.ledger.create_transfers_in(conn, [spec], actor=actor)[0]

        result = self.ledger.transaction(body)
        raise_for(result, what)
        return self.ledger.lookup_transfers([spec.id])[0], result
