"""``/v1/governance``: proposals, votes, the timelock, Params. Authorization and every rule are the library's
(``node.governance``); reads are open, writes need an API key and act as its account."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from ..ledger.governance import STATES, parse_edge_actions
from .auth import CallerDep, NodeDep, OptionalCallerDep

router = APIRouter(tags=["governance"])

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
