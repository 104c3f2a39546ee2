"""``/v1/attribution`` and ``/v1/attribute``: Proof of Attribution over HTTP (``node.attribution``).

Routes:

- ``POST /v1/attribution/indexes`` ``{adapter, dim?, seed?, method?, rebuild?}``: queue an ``attribution_index`` job (the
  build runs in the node's detached worker: it can take long) and answer 202 with the job; follow it on
  ``/v1/jobs/{id}``. The job's result is the build record, without the projection seed.
- ``GET /v1/attribution/indexes/{adapter}``: the index's parameters (never the seed), rows, checksums, sizes.
- ``POST /v1/attribute`` ``{adapter, prompt, response?, request_id?, top?, max_new_tokens?}``: attribute the
  response (none: the adapter answers first, greedily) to the adapter's training data; 201 with the stored
  receipt, its request (the prompt and the response, generated or given), its SHA-256 and journal event.
- ``GET /v1/attribution/receipts/{id}``: the same for a stored receipt.
- ``POST /v1/attribution/receipts/{id}/verify``: the appeal: recompute the stored receipt from the index; 200
  ``{"ok": true, "receipt_id", "sha256", "event_seq"}``, or 409 ``verification_failed`` whose ``field`` names the
  first field that differs.
- ``POST /v1/attribution/verify`` with a receipt's JSON object as the body: verify a receipt someone holds (its
  request must be stored on this node).

Who may do what (the library enforces none of it):

- Build or rebuild an adapter's index: its owner or an admin. Building costs the node a long gradient pass and a
  rebuild makes every earlier receipt of the adapter unverifiable, so it is the owner's decision.
- Attribute: any authenticated account that can see the adapter (published or deprecated: anyone; registered
  only: its owner and admins, as on ``/v1/adapters``). A key is required because a receipt is stored and
  journaled.
- Read and verify receipts, read index info: anyone who can see the receipt's adapter, with or without a key:
  contributors must be able to check what they were paid, and a receipt names no one's secret but its request's
  prompt and response, which its id (a content hash) stands for.

Attribution runs one computation at a time per server process: ``attribute`` and ``verify`` put hooks on the
adapter's shared model and fix torch's process-wide thread count.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from ..accounts import Account
from ..attribution.receipts import AttributionReceipt
from ..attribution.service import BUILD_FILE, DEFAULT_DIM, DEFAULT_MAX_NEW_TOKENS, DEFAULT_TOP
from ..errors import Conflict, NotFound, PermissionDenied
from ..factory.adapters import Adapter
from ..factory.jobs import ensure_worker
from ..node import Node
from .adapters import _readable as readable_adapter
from .auth import CallerDep, NodeDep, OptionalCallerDep

router = APIRouter(tags=["attribution"])

JOB_KIND = "attribution_index"
# Bounds on what one request can make the node compute or allocate (the library takes any positive value).
MAX_DIM = 65_536
MAX_TOP = 1000
MAX_NEW_TOKENS = 2048
MAX_TEXT = 100_000  # characters of a prompt or a response

_compute = threading.Lock()

AdapterRef = Annotated[str, Path(description="The adapter: name (its latest version), name@N, or id (ad_…)")]
ReceiptId = Annotated[str, Path(description="The receipt id (rcpt_ and 24 hex digits)")]


class BuildIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(min_length=1, description="The adapter: name (its latest version), name@N, or id (ad_…)")
    dim: int = Field(default=DEFAULT_DIM, ge=1, le=MAX_DIM, description="Projected gradient dimension")
    seed: int | None = Field(default=None, ge=0, lt=2**63,
                             description="Projection seed (default: a random secret kept in the index)")
    method: Literal["inrun", "final"] = Field(
        default="inrun", description="inrun: replay the training and keep each example's share of the updates; final: "
                                     "gradients at the adapter's weights with a damped Fisher preconditioner")
    rebuild: bool = Field(default=False, description="Replace an index built with other parameters")


class Attribute(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(min_length=1, description="The adapter: name (its latest version), name@N, or id (ad_…)")
    prompt: str = Field(min_length=1, max_length=MAX_TEXT, description="The question the adapter was asked")
    response: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT,
                                 description="The answer to attribute (default: the adapter answers first, greedily)")
    request_id: str | None = Field(default=None, min_length=1, max_length=128,
                                   description="The serving request this answers")
    top: int = Field(default=DEFAULT_TOP, ge=1, le=MAX_TOP, description="How many top examples the receipt lists")
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS,
                                description="Longest generated answer, in tokens (when no response is given)")


def _has_index(node: Node, adapter: Adapter) -> bool:
    # index.json is written last, inside the directory that is renamed into place: present means complete.
    return (node.attribution.index_dir(adapter) / BUILD_FILE).is_file()


def _require_index(node: Node, adapter: Adapter) -> None:
    if not _has_index(node, adapter):
        raise NotFound(f"adapter {adapter.ref} has no attribution index yet; its owner builds one with POST "
                       f'/v1/attribution/indexes {{"adapter": "{adapter.ref}"}} (or: royalty attribution index build '
                       f"{adapter.ref})", field="adapter")


def _receipt_adapter(node: Node, caller: Account | None, receipt_id: str) -> dict[str, Any]:
    """The stored receipt ``receipt_id`` (``show``), when the caller can see its adapter. The prompt and answer
    (``request``) are shown only to the adapter's owner and admins: the receipt itself holds only their hashes, so
    contributors check their pay (and have it recomputed here) without reading other people's questions."""
    shown = node.attribution.show(receipt_id)
    adapter = readable_adapter(node, caller, shown["receipt"]["adapter"]["id"])
    if caller is None or (caller.id != adapter.owner and not caller.is_admin):
        shown = {**shown, "request": None}
    return shown


# --- indexes -------------------------------------------------------------------------------------------------------


@router.post("/v1/attribution/indexes", status_code=202,
             summary="Queue a build of an adapter's attribution index (its owner or an admin); follow the job")
def build_index(body: BuildIndex, response: Response, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    adapter = readable_adapter(node, caller, body.adapter)
    if caller.id != adapter.owner and not caller.is_admin:
        raise PermissionDenied(f"only the owner of {adapter.ref} or an admin may build its attribution index",
                               field="adapter")
    for status in ("queued", "running"):
        for job in node.jobs.list(status=status, limit=1000):
            if job.kind == JOB_KIND and job.payload.get("adapter") == adapter.id:
                raise Conflict(f"the attribution index of {adapter.ref} is already being built by job {job.id}; "
                               f"follow it on /v1/jobs/{job.id}", field="adapter")
    if _has_index(node, adapter) and not body.rebuild:
        # With an index in place and no rebuild, build_index only compares parameters (it never builds): other
        # parameters are refused here (409) rather than by a failed job.
        node.attribution.build_index(adapter.id, dim=body.dim, seed=body.seed, method=body.method)
    payload: dict[str, Any] = {"adapter": adapter.id, "dim": body.dim, "method": body.method, "rebuild": body.rebuild}
    if body.seed is not None:
        payload["seed"] = body.seed
    job = node.jobs.submit(JOB_KIND, payload, actor=caller.id)
    if not job.finished:
        ensure_worker(node.home)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job.to_dict()


@router.get("/v1/attribution/indexes/{adapter}", summary="An adapter's attribution index: parameters, rows, checksums")
def index_info(adapter: AdapterRef, node: NodeDep, caller: OptionalCallerDep) -> dict[str, Any]:
    found = readable_adapter(node, caller, adapter)
    _require_index(node, found)
    info = node.attribution.info(found.id)
    del info["path"]  # where the node keeps its files is the operator's business
    return info


# --- receipts ------------------------------------------------------------------------------------------------------


@router.post("/v1/attribute", status_code=201,
             summary="Attribute an answer to the adapter's training data; the stored, journaled receipt")
def attribute(body: Attribute, response: Response, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    adapter = readable_adapter(node, caller, body.adapter)
    _require_index(node, adapter)
    with _compute:
        receipt = node.attribution.attribute(adapter.id, prompt=body.prompt, response=body.response,
                                             request_id=body.request_id, top=body.top,
                                             max_new_tokens=body.max_new_tokens)
    response.headers["Location"] = f"/v1/attribution/receipts/{receipt.receipt_id}"
    return node.attribution.show(receipt.receipt_id)


@router.get("/v1/attribution/receipts/{receipt_id}",
            summary="A stored receipt, its SHA-256 and journal event; the request (prompt, response) for the adapter's owner and admins")
def show_receipt(receipt_id: ReceiptId, node: NodeDep, caller: OptionalCallerDep) -> dict[str, Any]:
    return _receipt_adapter(node, caller, receipt_id)


@router.post("/v1/attribution/receipts/{receipt_id}/verify",
             summary="Appeal: recompute a stored receipt from the index; 409 names the first field that differs")
def verify_receipt(receipt_id: ReceiptId, node: NodeDep, caller: OptionalCallerDep) -> dict[str, Any]:
    _receipt_adapter(node, caller, receipt_id)
    with _compute:
        return node.attribution.verify(receipt_id)


@router.post("/v1/attribution/verify",
             summary="Verify a receipt you hold (its JSON object as the body) against this node's index and journal")
def verify_held_receipt(
    receipt: Annotated[dict[str, Any], Body(description="A receipt's JSON object, as /v1/attribute returned it")],
    node: NodeDep,
    caller: OptionalCallerDep,
) -> dict[str, Any]:
    parsed = AttributionReceipt.parse(receipt)  # 409 naming the field when it is not a receipt at all
    readable_adapter(node, caller, parsed.adapter.id)
    with _compute:
        return node.attribution.verify(receipt)
