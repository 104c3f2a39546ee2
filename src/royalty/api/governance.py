"""HTTP routes: governance."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["governance"])

# --- staking ---
# /v1/staking: stake, cooldown, redeem, delegate and claim for the authenticated caller; a participant's state and
# votes are open reads. Rules and authorization are the library's (node.staking). Money-moving POSTs (stake,
# redeem, claim) need an Idempotency-Key header (draft-ietf-httpapi-idempotency-key-header): the ledger transfer
# id is SHA-256(caller id ‖ key) truncated to 128 bits, so a retry answers 200 with the first outcome
# (``"replayed": true``) and a reuse of the key for another request answers 422.
import hashlib  # noqa: E402
from typing import Annotated, Any  # noqa: E402

from fastapi import Header, Path, Query  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from ..errors import TransferRejected  # noqa: E402
from ..ledger.amounts import amount_json, parse_amount  # noqa: E402
from ..ledger.codes import ID_MAX  # noqa: E402
from ..ledger.staking import StakingReceipt  # noqa: E402
from .auth import CallerDep, NodeDep, OptionalCallerDep  # noqa: E402
from .errors import error_response  # noqa: E402

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IdempotencyKey = Annotated[str | None, Header(
    alias=IDEMPOTENCY_HEADER, description="Required: a unique key per request (1-255 printable ASCII characters); "
    "a retry with the same key and body answers the first outcome")]
_StakingAccount = Annotated[str, Path(description="A participant (acct_… id or name)")]


class StakingAmount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Any: royalty.ledger.amounts.parse_amount checks it, with one message naming "amount" for every bad form.
    amount: Any = Field(description="OPEN as a decimal string with at most 6 decimals, e.g. \"12.5\"",
                        json_schema_extra={"type": "string", "examples": ["12.5"]})


class StakingDelegate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delegatee: str = Field(description="Who gets the caller's voting power (acct_… id or name; the caller included)")


def idempotency_id(caller_id: str, key: str) -> int:
    """The ledger transfer id of an HTTP request: SHA-256(caller id ‖ key), first 128 bits."""
    value = int.from_bytes(hashlib.sha256(caller_id.encode() + key.encode()).digest()[:16], "big")
    return value if 0 < value < ID_MAX else 1  # 0 and 2^128-1 are reserved ids


def _idempotent(caller_id: str, key: str | None, run: Any) -> Any:
    """Run a money-moving operation under the request's Idempotency-Key: 400 without one, 422 when the key was
    used for a different request, 200 with ``replayed`` on a retry."""
    if key is None or not key.strip():
        return error_response(400, "bad_request", f"missing {IDEMPOTENCY_HEADER} header: send a unique key per "
                              "request (e.g. a UUID) and reuse it only to retry that request", IDEMPOTENCY_HEADER)
    if len(key) > 255 or not key.isascii() or not key.isprintable():
        return error_response(400, "bad_request", f"{IDEMPOTENCY_HEADER} must be 1-255 printable ASCII characters",
                              IDEMPOTENCY_HEADER)
    try:
        receipt: StakingReceipt = run(idempotency_id(caller_id, key))
    except TransferRejected as exc:
        if exc.result.startswith("exists_with_different_"):
            return error_response(422, "idempotency_key_reused", f"this {IDEMPOTENCY_HEADER} was already used for "
                                  f"a different request ({exc.result}); use a new key", IDEMPOTENCY_HEADER)
        raise
    if receipt.replayed:
        return JSONResponse(receipt.to_dict(), headers={"Idempotent-Replayed": "true"})
    return receipt.to_dict()


@router.post("/v1/staking/stake", summary="Stake OPEN for gOPEN 1:1 (Idempotency-Key required)")
def staking_stake(body: StakingAmount, node: NodeDep, caller: CallerDep,
                  idempotency_key: _IdempotencyKey = None) -> dict[str, Any]:
    amount = parse_amount(body.amount)
    return _idempotent(caller.id, idempotency_key, lambda tid: node.staking.stake(caller.id, amount, actor=caller.id, id=tid))


@router.post("/v1/staking/cooldown", summary="Start the cooldown before a redeem")
def staking_cooldown(node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.staking.cooldown(caller.id, actor=caller.id).to_dict()


@router.post("/v1/staking/redeem", summary="Redeem staked OPEN within the unstake window (Idempotency-Key required)")
def staking_redeem(body: StakingAmount, node: NodeDep, caller: CallerDep,
                   idempotency_key: _IdempotencyKey = None) -> dict[str, Any]:
    amount = parse_amount(body.amount)
    return _idempotent(caller.id, idempotency_key, lambda tid: node.staking.redeem(caller.id, amount, actor=caller.id, id=tid))


@router.post("/v1/staking/delegate", summary="Delegate the caller's voting power")
def staking_delegate(body: StakingDelegate, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.staking.delegate(caller.id, body.delegatee, actor=caller.id).to_dict()


@router.post("/v1/staking/claim", summary="Claim the caller's staker rewards (Idempotency-Key required)")
def staking_claim(node: NodeDep, caller: CallerDep, idempotency_key: _IdempotencyKey = None) -> dict[str, Any]:
    return _idempotent(caller.id, idempotency_key, lambda tid: node.staking.claim(caller.id, actor=caller.id, id=tid))


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
# --- end staking ---

# --- governance ---
# /v1/governance: proposals, votes, the timelock, Params. Authorization and every rule are the library's
# (node.governance); reads are open, writes need an API key and act as its account.
from typing import Annotated, Any  # noqa: E402

from fastapi import Path, Query  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from ..ledger.governance import STATES, parse_edge_actions  # noqa: E402
from .auth import CallerDep, NodeDep, OptionalCallerDep  # noqa: E402

ProposalId = Annotated[str, Path(description="The proposal id (prop_…)")]


class ProposeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(description="What the proposal does and why")
    actions: list[Any] = Field(description=(
        "Actions, run in order: {type: set_params, changes: {name: int}}, {type: treasury_transfer, to, amount}, "
        "{type: mint, to, amount}, {type: burn, from: \"treasury\", amount}; amounts are decimal strings (\"12.5\")"))


class VoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    support: str | int = Field(description="for, against or abstain (or 1, 0, 2)")
    reason: str | None = None


@router.get("/v1/governance/proposals", summary="List proposals, oldest first")
def list_proposals(
    node: NodeDep,
    _reader: OptionalCallerDep,
    state: Annotated[str | None, Query(description=f"Only this state: {', '.join(STATES)}")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(description="id of the last proposal seen")] = None,
) -> dict[str, Any]:
    items = node.governance.list(state=state, limit=limit + 1, after=after)  # one more: is there a next page?
    more = len(items) > limit
    items = items[:limit]
    return {"data": [p.to_dict() for p in items], "has_more": more, "next_after": items[-1].id if more else None}


@router.get("/v1/governance/proposals/{proposal_id}", summary="A proposal: state, actions, times, tally, quorum, votes")
def show_proposal(proposal_id: ProposalId, node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    prop = node.governance.get(proposal_id)
    return prop.to_dict() | {"vote_list": [v.to_dict() for v in node.governance.votes(proposal_id)]}


@router.post("/v1/governance/proposals", status_code=201, summary="Propose (needs the proposal threshold of votes)")
def propose(body: ProposeBody, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.governance.propose(parse_edge_actions(body.actions), body.description, actor=caller.id).to_dict()


@router.post("/v1/governance/proposals/{proposal_id}/votes", status_code=201, summary="Vote on an active proposal")
def vote(proposal_id: ProposalId, body: VoteBody, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.governance.vote(proposal_id, body.support, actor=caller.id, reason=body.reason).to_dict()


@router.post("/v1/governance/proposals/{proposal_id}/queue", summary="Queue a succeeded proposal in the timelock")
def queue(proposal_id: ProposalId, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.governance.queue(proposal_id, actor=caller.id).to_dict()


@router.post("/v1/governance/proposals/{proposal_id}/execute", summary="Execute a queued proposal after its eta")
def execute(proposal_id: ProposalId, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.governance.execute(proposal_id, actor=caller.id).to_dict()


@router.post("/v1/governance/proposals/{proposal_id}/cancel", summary="Cancel a pending proposal (proposer only)")
def cancel(proposal_id: ProposalId, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.governance.cancel(proposal_id, actor=caller.id).to_dict()


@router.get("/v1/governance/params", summary="The governed Params in force, and every version")
def params(node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    return {"params": node.params.current().model_dump(), "history": node.params.history()}
# --- end governance ---
