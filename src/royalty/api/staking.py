"""``/v1/staking``: stake, cooldown, redeem, delegate and claim for the authenticated caller; a participant's state
and votes are open reads. Rules and authorization are the library's (``node.staking``).

The money-moving POSTs (stake, redeem, claim) take an ``Idempotency-Key`` header exactly as ``/v1/ledger``'s do
(``api/ledger.py``): 400 without one; the ledger transfer id is SHA-256(caller id ‖ key) truncated to 128 bits,
so a retry answers 200 with the first outcome (``"replayed": true``, header ``Idempotent-Replayed: true``); a
reuse of the key for another request answers 422; the same key while the first is in flight, 409.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import TransferRejected
from ..ledger.amounts import amount_json, parse_amount
from ..ledger.staking import StakingReceipt
from .auth import CallerDep, NodeDep, OptionalCallerDep
from .ledger import (
    REPLAY_HEADER,
    IdempotencyKey,
    IdempotencyKeyReused,
    idempotency_key,
    idempotent_transfer_id,
    in_flight_registry,
)

router = APIRouter(tags=["staking"])

_StakingAccount = Annotated[str, Path(description="A participant (acct_… id or name)")]


class StakingAmount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Any: royalty.ledger.amounts.parse_amount checks it, with one message naming "amount" for every bad form.
    amount: Any = Field(description="OPEN as a decimal string with at most 6 decimals, e.g. \"12.5\"",
                        json_schema_extra={"type": "string", "examples": ["12.5"]})


class StakingDelegate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delegatee: str = Field(description="Who gets the caller's voting power (acct_… id or name; the caller included)")


def _idempotent(request: Request, caller_id: str, header: str | None,
                run: Callable[[int], StakingReceipt]) -> Any:
    """Run a money-moving staking operation under the request's Idempotency-Key (see the module docstring)."""
    key = idempotency_key(header)
    with in_flight_registry(request.app).hold(caller_id, key):
        try:
            receipt = run(idempotent_transfer_id(caller_id, key))
        except TransferRejected as exc:
            if exc.result.startswith("exists_with_different_"):
                raise IdempotencyKeyReused(f"this Idempotency-Key was already used for a different request "
                                           f"({exc.result}); use a new key", field="Idempotency-Key") from None
            raise
    if receipt.replayed:
        return JSONResponse(receipt.to_dict(), headers={REPLAY_HEADER: "true"})
    return receipt.to_dict()


@router.post("/v1/staking/stake", summary="Stake OPEN for gOPEN 1:1 (Idempotency-Key required)")
def staking_stake(body: StakingAmount, request: Request, node: NodeDep, caller: CallerDep,
                  idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    amount = parse_amount(body.amount)
    return _idempotent(request, caller.id, idempotency_key, lambda tid: node.staking.stake(caller.id, amount, actor=caller.id, id=tid))


@router.post("/v1/staking/cooldown", summary="Start the cooldown before a redeem")
def staking_cooldown(node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.staking.cooldown(caller.id, actor=caller.id).to_dict()


@router.post("/v1/staking/redeem", summary="Redeem staked OPEN within the unstake window (Idempotency-Key required)")
def staking_redeem(body: StakingAmount, request: Request, node: NodeDep, caller: CallerDep,
                   idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    amount = parse_amount(body.amount)
    return _idempotent(request, caller.id, idempotency_key, lambda tid: node.staking.redeem(caller.id, amount, actor=caller.id, id=tid))


@router.post("/v1/staking/delegate", summary="Delegate the caller's voting power")
def staking_delegate(body: StakingDelegate, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.staking.delegate(caller.id, body.delegatee, actor=caller.id).to_dict()


@router.post("/v1/staking/claim", summary="Claim the caller's staker rewards (Idempotency-Key required)")
def staking_claim(request: Request, node: NodeDep, caller: CallerDep, idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    return _idempotent(request, caller.id, idempotency_key, lambda tid: node.staking.claim(caller.id, actor=caller.id, id=tid))


@router.get("/v1/staking/{account}", summary="A participant's staking state: stake, delegation, votes, cooldown, rewards")
def staking_state(account: _StakingAccount, node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    return node.staking.state(account).to_dict()


@router.get("/v1/staking/{account}/votes", summary="Votes delegated to a participant, now or at a past time")
def staking_votes(
    account: _StakingAccount,
    node: NodeDep,
    _reader: OptionalCallerDep,
    at: Annotated[int | None, Query(ge=0, description="A past time in Unix ms (must be before now)")] = None,
) -> dict[str, Any]:
    who = node.accounts.get(account)
    if at is None:
        return {"account": who.id, "name": who.name, "at_ms": None, "votes": amount_json(node.staking.get_votes(who.id))}
    return {"account": who.id, "name": who.name, "at_ms": at,
            "votes": amount_json(node.staking.get_past_votes(who.id, at)),
            "total_supply": amount_json(node.staking.get_past_total_supply(at))}
