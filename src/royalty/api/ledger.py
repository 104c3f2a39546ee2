"""``/v1/ledger``: OPEN balances, history, transfers, the faucet and the supply.

Authorization is the library's (``Tokens``: only the payer moves their funds, only an admin uses the faucet);
this layer authenticates, checks that a balance or history is read by its owner or an admin, and makes the
money-moving POSTs idempotent.

Idempotency (IETF draft-ietf-httpapi-idempotency-key-header). ``POST /transfers`` and ``POST /faucet`` require
an ``Idempotency-Key`` header (1-255 printable ASCII characters; a quoted structured-field string is accepted
too), else 400. The transfer id is SHA-256(caller account id ‖ key) truncated to 128 bits, so a key is the
caller's own, and the request's fingerprint (SHA-256 of its canonical form: method, path and the normalised
body) is stored with the transfer in the same transaction, as its user_data ``idem:<fingerprint>[;memo:<memo>]``.
- The same key and the same request again: the original transfer, status 201 as the first time, with
  ``"replayed": true`` and the header ``Idempotent-Replayed: true``.
- The same key with a different request: 422 (``idempotency_key_reused``).
- The same key while the first request is still being processed in this server process: 409
  (``idempotency_key_in_flight``). Across processes (several servers on one database) there is no shared
  in-flight registry, but the ledger's unique transfer id still lets only one of them take effect: the other
  sees ``exists`` (a replay) or ``exists_with_different_*`` (422).
- A key whose first request failed because of the ledger's state (e.g. insufficient funds) burnt its id: the
  same failure again, whatever the body (the failure's fingerprint is not stored). Use a new key to try again.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from ..accounts import Account
from ..errors import Conflict, InvalidInput, PermissionDenied, TransferRejected
from ..ledger import Result, Transfer, hex_id
from ..ledger.amounts import format_amount, parse_amount
from ..ledger.chart import TransferCode
from ..ledger.tokens import raise_for
from ..node import Node
from ..store.schema import ledger_failures
from .auth import CallerDep, NodeDep, OptionalCallerDep

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])

MAX_PAGE = 1000
MAX_MEMO = 500  # user_data holds 1,024 characters: the memo plus "idem:<64 hex digits>;memo:"
MAX_KEY = 255
REPLAY_HEADER = "Idempotent-Replayed"

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Page size, 1-{MAX_PAGE}")]
After = Annotated[str | None, Query(description="Only transfers after this transfer id (the page's next_after)")]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="Required: a unique key per intended payment; retry with the same key"),
]


# --- errors ------------------------------------------------------------------------------------------------------


class IdempotencyKeyMissing(InvalidInput):
    status = 400
    type = "idempotency_key_missing"


class IdempotencyKeyReused(InvalidInput):
    type = "idempotency_key_reused"  # 422


class IdempotencyKeyInFlight(Conflict):
    type = "idempotency_key_in_flight"  # 409


# --- request bodies ----------------------------------------------------------------------------------------------


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="The payee: account id (acct_…) or name")
    amount: Any = Field(description='OPEN as a decimal string with at most 6 decimals, e.g. "12.5"')
    memo: str | None = Field(default=None, max_length=MAX_MEMO, description="A note kept with the transfer")


class FaucetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str = Field(description="The participant to fund: account id (acct_…) or name")
    amount: Any = Field(description='OPEN as a decimal string, e.g. "100"')


# --- reads -------------------------------------------------------------------------------------------------------


@router.get("/balance", summary="The caller's OPEN: available, reserved, staked and gOPEN")
def my_balance(node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.tokens.balance(caller.id).to_dict()


@router.get("/accounts/{account}/balance", summary="A participant's OPEN (the participant or an admin)")
def balance(account: str, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.tokens.balance(_readable(node, caller, account)).to_dict()


@router.get("/history", summary="The caller's transfers, oldest first")
def my_history(node: NodeDep, caller: CallerDep, limit: Limit = 100, after: After = None) -> dict[str, Any]:
    return _history(node, caller.id, limit, after)


@router.get("/accounts/{account}/history", summary="A participant's transfers (the participant or an admin)")
def history(account: str, node: NodeDep, caller: CallerDep, limit: Limit = 100, after: After = None) -> dict[str, Any]:
    return _history(node, _readable(node, caller, account), limit, after)


@router.get("/supply", summary="OPEN issued, burnt, in circulation, and the cap (no auth)")
def supply(node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    return node.tokens.supply()


def _readable(node: Node, caller: Account, ref: str) -> str:
    who = node.tokens.participant(ref)
    if who.id != caller.id and not caller.is_admin:
        raise PermissionDenied(f"only {who.name} or an admin may read {who.name}'s OPEN", field="account")
    return who.id


def _history(node: Node, account: str, limit: int, after: str | None) -> dict[str, Any]:
    items, more = node.tokens.history_page(account, limit=limit, after=after)
    return {
        "data": [_with_memo(i.to_dict()) for i in items],
        "has_more": more,
        "next_after": hex_id(items[-1].transfer.id) if more else None,
    }


# --- money-moving POSTs ------------------------------------------------------------------------------------------


@router.post("/transfers", status_code=201, summary="Send OPEN from the caller to another participant (idempotent)")
def create_transfer(body: TransferRequest, request: Request, response: Response, node: NodeDep, caller: CallerDep,
                    idempotency_key_header: IdempotencyKey = None) -> dict[str, Any]:
    key = idempotency_key(idempotency_key_header)
    units = parse_amount(body.amount)
    canonical = {"to": body.to, "amount": units, "memo": body.memo}

    def submit(tid: int, user_data: str) -> tuple[Transfer, Result]:
        return node.tokens.transfer(caller.id, body.to, units, actor=caller.id, id=tid, memo=user_data)

    what = f"transfer of {format_amount(units)} OPEN"
    return _idempotent(request, response, node, caller, key, canonical, body.memo, submit, what)


@router.post("/faucet", status_code=201, summary="Grant OPEN from the treasury (admins only; idempotent)")
def faucet(body: FaucetRequest, request: Request, response: Response, node: NodeDep, caller: CallerDep,
           idempotency_key_header: IdempotencyKey = None) -> dict[str, Any]:
    key = idempotency_key(idempotency_key_header)
    units = parse_amount(body.amount)
    canonical = {"account": body.account, "amount": units}

    def submit(tid: int, user_data: str) -> tuple[Transfer, Result]:
        return node.tokens.faucet(body.account, units, actor=caller.id, id=tid, memo=user_data)

    what = f"faucet grant of {format_amount(units)} OPEN"
    return _idempotent(request, response, node, caller, key, canonical, None, submit, what)


# --- idempotency -------------------------------------------------------------------------------------------------


class InFlight:
    """The (caller, key) pairs being processed by this server process (one per app)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: set[tuple[str, str]] = set()

    @contextmanager
    def hold(self, caller: str, key: str) -> Iterator[None]:
        with self._lock:
            if (caller, key) in self._keys:
                raise IdempotencyKeyInFlight(
                    "a request with this Idempotency-Key is still being processed; retry it once that one is done",
                    field="Idempotency-Key",
                )
            self._keys.add((caller, key))
        try:
            yield
        finally:
            with self._lock:
                self._keys.discard((caller, key))

    def __contains__(self, item: tuple[str, str]) -> bool:
        with self._lock:
            return item in self._keys


_REGISTRY_LOCK = threading.Lock()


def in_flight_registry(app: FastAPI) -> InFlight:
    """The app's in-flight registry (made on first use)."""
    state = app.state
    with _REGISTRY_LOCK:
        registry = getattr(state, "ledger_in_flight", None)
        if registry is None:
            registry = state.ledger_in_flight = InFlight()
    return registry


def idempotency_key(header: str | None) -> str:
    """The header's key, or IdempotencyKeyMissing (400) naming what is wrong."""
    if header is None or not header.strip():
        raise IdempotencyKeyMissing(
            "this request moves money: send an Idempotency-Key header with a unique value (e.g. a UUID) and reuse "
            "it when you retry", field="Idempotency-Key")
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':  # a structured-field string, as the draft writes it
        key = key[1:-1]
    if not 1 <= len(key) <= MAX_KEY or not all(" " <= c <= "~" for c in key):
        raise IdempotencyKeyMissing(f"the Idempotency-Key must be 1-{MAX_KEY} printable ASCII characters",
                                    field="Idempotency-Key")
    return key


def idempotent_transfer_id(caller: str, key: str) -> int:
    """SHA-256(caller account id ‖ key), first 128 bits. Account ids have a fixed form (acct_ + 16 hex digits),
    so the concatenation is unambiguous."""
    value = int.from_bytes(hashlib.sha256(caller.encode() + key.encode()).digest()[:16], "big")
    return value if 0 < value < 2**128 - 1 else 1  # 0 and 2^128 - 1 are reserved ids


def fingerprint(method: str, path: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({"method": method, "path": path, "body": body}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _user_data(fp: str, memo: str | None) -> str:
    return f"idem:{fp}" if memo is None else f"idem:{fp};memo:{memo}"


def _fingerprint_of(user_data: str | None) -> str | None:
    if not user_data or not user_data.startswith("idem:"):
        return None
    return user_data[5:].split(";", 1)[0]


def _memo_of(user_data: str | None) -> str | None:
    """The memo inside an HTTP transfer's user_data; other user_data is the memo itself (CLI transfers)."""
    if user_data is None or not user_data.startswith("idem:"):
        return user_data
    _, sep, memo = user_data.partition(";memo:")
    return memo if sep else None


def _with_memo(d: dict[str, Any]) -> dict[str, Any]:
    """A transfer's dict as the API shows it: the amount in both forms and the memo out of user_data."""
    return {**d, "amount": format_amount(d["amount"]), "units": d["amount"], "memo": _memo_of(d.get("user_data"))}


def _idempotent(
    request: Request,
    response: Response,
    node: Node,
    caller: Account,
    key: str,
    canonical: dict[str, Any],
    memo: str | None,
    submit: Callable[[int, str], tuple[Transfer, Result]],
    what: str,
) -> dict[str, Any]:
    """Run ``submit(transfer id, user_data)`` once per (caller, key); see the module docstring."""
    tid = idempotent_transfer_id(caller.id, key)
    fp = fingerprint(request.method, request.url.path, canonical)
    with in_flight_registry(request.app).hold(caller.id, key):
        found = node.ledger.lookup_transfers([tid])
        if found:
            return _replay(node, response, found[0], fp, key)
        try:
            transfer, result = submit(tid, _user_data(fp, memo))
        except TransferRejected as exc:
            if exc.result.startswith("exists_with_different"):  # another process used the key first
                raise _reused(key) from None
            if exc.result == Result.id_already_failed.value:
                _raise_original_failure(node, tid, what)
            raise
        if result is Result.exists:
            return _replay(node, response, transfer, fp, key)
        return {"transfer": _transfer_out(node, transfer), "replayed": False}


def _replay(node: Node, response: Response, transfer: Transfer, fp: str, key: str) -> dict[str, Any]:
    if _fingerprint_of(transfer.user_data) != fp:
        raise _reused(key)
    response.headers[REPLAY_HEADER] = "true"
    return {"transfer": _transfer_out(node, transfer), "replayed": True}


def _reused(key: str) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"Idempotency-Key {key!r} was already used for a different request; use a new key for a new payment",
        field="Idempotency-Key")


def _raise_original_failure(node: Node, tid: int, what: str) -> None:
    """The key's first request failed and burnt the id: answer with that failure again."""
    with node.store.read() as conn:
        code = conn.execute(select(ledger_failures.c.code).where(ledger_failures.c.id == hex_id(tid))).scalar_one_or_none()
    if code is not None:
        raise_for(Result(code), what)


def _transfer_out(node: Node, t: Transfer) -> dict[str, Any]:
    """A transfer as the API shows it: node accounts on both sides, the amount in both forms, the memo."""
    owners = {a.id: a.owner for a in node.ledger.lookup_accounts([t.debit_account_id, t.credit_account_id])}
    return {**_with_memo(t.to_dict()), "from": owners.get(t.debit_account_id), "to": owners.get(t.credit_account_id),
            "reason": TransferCode(t.code).name.lower()}
