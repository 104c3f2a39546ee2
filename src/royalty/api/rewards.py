"""HTTP routes: rewards. ``GET /v1/rewards/earnings`` (the caller's earnings and why), ``GET /v1/rewards/epochs``
(every reward epoch), ``GET /v1/rewards/epochs/{epoch}`` (one epoch with its fundings, weights and payouts) and
``GET /v1/rewards/epochs/{epoch}/proof/{account}`` (an inclusion proof of an account's frozen weight).

Epochs are created, funded, frozen and distributed by the operator (``royalty rewards epoch …``), not over HTTP.
Reads of epochs are open (the journal already is); earnings need an API key and show the caller's own.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from .auth import CallerDep, NodeDep, OptionalCallerDep

router = APIRouter(prefix="/v1/rewards", tags=["rewards"])

EpochId = Annotated[str, Path(description="The epoch id (ep_…)")]


@router.get("/earnings", summary="What the caller earned from inference fees and reward epochs, and why")
def my_earnings(
    node: NodeDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100_000, description="At most this many items of each kind")] = 1000,
) -> dict[str, Any]:
    return node.rewards.earnings(caller.id, limit=limit).to_dict()


@router.get("/epochs", summary="List reward epochs, oldest first")
def list_epochs(node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    return {"data": [e.to_dict() for e in node.rewards.epochs()]}


@router.get("/epochs/{epoch}", summary="One reward epoch with its fundings, weights and payouts")
def get_epoch(epoch: EpochId, node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    return node.rewards.detail(epoch).to_dict()


@router.get("/epochs/{epoch}/proof/{account}", summary="Prove an account's weight in a frozen epoch's weights tree")
def weight_proof(
    epoch: EpochId,
    account: Annotated[str, Path(description="Account id (acct_…) or name")],
    node: NodeDep,
    _reader: OptionalCallerDep,
) -> dict[str, Any]:
    return node.rewards.weight_proof(epoch, account)
