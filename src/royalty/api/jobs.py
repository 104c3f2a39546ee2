"""``/v1/jobs``: submit training runs as background jobs, follow their progress, cancel them.

A job runs in the node's detached worker process (``royalty.factory.jobs``): submitting queues it and makes sure
a worker runs (``ensure_worker``), so the job outlives the request and the client. A job is readable and
cancelable by the account that submitted it (its ``actor``, who owns the adapter and pays its registration fee)
and by admins; lists show a caller their own jobs (admins: everyone's).

Submitting. ``POST /v1/jobs`` takes ``{"kind": "train", "config": {...}, "resume": false}``: ``config`` is a
TrainConfig as JSON (the YAML file's structure), checked with ``load_config`` before anything is queued, so a bad
config is a 422 ``config_invalid`` whose ``problems`` lists every problem (``[{field, message}]``). Over HTTP
the run directory is the node's (``<home>/runs/<name>/…``): ``output.dir`` is refused, since any account could
otherwise make the worker write anywhere the node can. Only ``train`` jobs are submitted over HTTP; the
``sleep`` kind is an operator's check of the worker (``royalty jobs submit sleep``).

An optional ``Idempotency-Key`` header makes a retried submission return the job the first one made (201, with
``Idempotent-Replayed: true``), and the same key with a different request 422 (``idempotency_key_reused``), as
on the ledger routes. The key's SHA-256 and the request's fingerprint are kept in the job's payload under
``idempotency``. Two requests with one key in this server process at once: the second is 409; across server
processes there is no shared lock, so two simultaneous first requests on different servers may make two jobs.

Progress. Every job event has a ``seq`` (0, 1, 2, … per job). ``GET /{id}/events?after=SEQ`` is a JSON page;
``GET /{id}/events/stream`` is Server-Sent Events: each event as ``id: <seq>``, ``event: <type>``,
``data: <the event as JSON>``; it starts after ``Last-Event-ID`` (sent by a reconnecting client) or else
``?after=``, so a client that reconnects gets exactly what it missed; a comment line every ``HEARTBEAT_S``
without events keeps proxies from closing it; once the job has ended and its last event was sent, a final
``event: end`` (no id, ``data``: the job) closes the stream, and a client should then stop reconnecting.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..accounts import Account
from ..errors import ConfigInvalid, InvalidInput, NotFound, PermissionDenied
from ..factory.config import load_config
from ..factory.jobs import STATUSES, Job, JobEvent, ensure_worker
from ..factory.service import check_attribution_capture
from ..node import Node
from .auth import CallerDep, NodeDep
from .ledger import (
    REPLAY_HEADER,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    fingerprint,
    idempotency_key,
    in_flight_registry,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_PAGE = 1000
POLL_S = 0.5  # how often a stream looks for new events (a DB read; no connection is held in between)
HEARTBEAT_S = 15.0  # a comment line after this long without events
RETRY_MS = 2000  # how long an EventSource waits before reconnecting

JobId = Annotated[str, Path(description="The job id (job_…)")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Page size, 1-{MAX_PAGE}")]
AfterSeq = Annotated[int, Query(ge=-1, description="Only events after this seq (the last one seen); -1: from the start")]


class SubmitJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"] = Field(description="The job kind; over HTTP: train")
    config: dict[str, Any] = Field(description="The training config as JSON: the sections of a TrainConfig YAML file")
    resume: bool = Field(default=False, description="Continue this config's interrupted (or canceled) run")
    attribution_dim: int | None = Field(
        default=None, ge=1, description="Also record the adapter's attribution index during the run, rows of this "
        "size (not with resume: an index is recorded from the first step)")


# --- submit --------------------------------------------------------------------------------------------------------


@router.post("", status_code=201, summary="Queue a training run (config checked first) and make sure a worker runs it")
def submit_job(
    body: SubmitJob,
    request: Request,
    response: Response,
    node: NodeDep,
    caller: CallerDep,
    idempotency_key_header: Annotated[str | None, Header(
        alias="Idempotency-Key", description="Optional: retry with the same key to get the same job back")] = None,
) -> Any:
    try:
        config = _train_config(body.config)
    except ConfigInvalid as exc:
        return _config_invalid(exc)
    check_attribution_capture(body.attribution_dim, body.resume)
    node.factory.check_registration_fee(caller.id)  # 402 now, not a failed job later
    canonical = {"kind": body.kind, "config": config, "resume": body.resume,
                 **({} if body.attribution_dim is None else {"attribution_dim": body.attribution_dim})}
    payload: dict[str, Any] = {"config": config, "resume": body.resume, "attribution_dim": body.attribution_dim}
    if idempotency_key_header is None:
        job = node.jobs.submit(body.kind, payload, actor=caller.id)
    else:
        key = _key(idempotency_key_header)
        # The job's id is derived from the caller and the key, so a retry (on any server) finds the same job.
        job_id = "job_" + hashlib.sha256(f"{caller.id}:{key}".encode()).hexdigest()[:16]
        fp = fingerprint(request.method, request.url.path, canonical)
        with in_flight_registry(request.app).hold(caller.id, "jobs:" + key):
            try:
                job = node.jobs.get(job_id)
                response.headers[REPLAY_HEADER] = "true"
            except NotFound:
                job = node.jobs.submit(body.kind, {**payload, "idempotency": {"fingerprint": fp}}, actor=caller.id,
                                       id=job_id)
            if (job.payload.get("idempotency") or {}).get("fingerprint") != fp:
                raise IdempotencyKeyReused(f"Idempotency-Key {key!r} was already used for a different job; use a new "
                                           "key for a new job", field="Idempotency-Key")
    if not job.finished:
        ensure_worker(node.home)
    return job.to_dict()


def _train_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as the job's payload carries it: checked by ``load_config`` with the HTTP-only rule on
    ``output.dir`` (every problem at once), then resolved: defaults filled in and a local model path made
    absolute, as ``royalty jobs submit train`` does, so any worker reads the same directory."""
    problems: list[tuple[str, str]] = []
    output = config.get("output")
    if isinstance(output, dict) and output.get("dir") is not None:  # "" would be "." (the server's directory)
        problems.append(("output.dir", ("cannot be chosen over HTTP: runs are written under the node's home "
                                        "(<home>/runs/<output.name>/); leave it out")))
    try:
        cfg = load_config(config)
    except ConfigInvalid as exc:
        raise ConfigInvalid(exc.problems + problems) from None
    if problems:
        raise ConfigInvalid(problems)
    return cfg.model_dump(mode="json")  # load_config made a local model path absolute


def _config_invalid(exc: ConfigInvalid) -> JSONResponse:
    """ConfigInvalid as a 422 whose message is one line (the library's has one line per problem)."""
    body = exc.to_dict()
    body["error"]["message"] = "; ".join(f"{field}: {message}" for field, message in exc.problems)
    return JSONResponse(body, status_code=exc.status)


def _key(header: str) -> str:
    if not header.strip():
        raise IdempotencyKeyMissing("the Idempotency-Key header is empty: send a unique value (e.g. a UUID), or no "
                                    "header at all", field="Idempotency-Key")
    return idempotency_key(header)


# --- read, cancel --------------------------------------------------------------------------------------------------


def _readable(node: Node, caller: Account, job_id: str) -> Job:
    job = node.jobs.get(job_id)
    if job.actor != caller.id and not caller.is_admin:
        raise PermissionDenied(f"only the submitter of {job.id} (or an admin) may read it", field="job")
    return job


@router.get("", summary="Jobs, newest first: the caller's own (admins: everyone's)")
def list_jobs(
    node: NodeDep,
    caller: CallerDep,
    status: Annotated[str | None, Query(json_schema_extra={"enum": list(STATUSES)})] = None,
    limit: Limit = 100,
    after: Annotated[str | None, Query(description="id of the last job seen (the page's next_after)")] = None,
) -> dict[str, Any]:
    if after is not None:
        try:
            _readable(node, caller, after)
        except (NotFound, PermissionDenied):
            raise InvalidInput(f"after={after!r} is not one of your jobs; pass next_after from the previous page",
                               field="after") from None
    page = node.jobs.list(status=status, actor=None if caller.is_admin else caller.id, after=after, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return {"data": [job.to_dict() for job in page], "has_more": more, "next_after": page[-1].id if more else None}


@router.get("/{job_id}", summary="One job: status, times, worker, result or error")
def show_job(job_id: JobId, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return _readable(node, caller, job_id).to_dict()


@router.post("/{job_id}/cancel", summary="Cancel a job: a queued one at once, a running one at its next step")
def cancel_job(job_id: JobId, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.jobs.cancel(job_id, actor=caller.id).to_dict()


# --- progress ------------------------------------------------------------------------------------------------------


@router.get("/{job_id}/events", summary="A page of the job's events after a seq, oldest first")
def list_events(job_id: JobId, node: NodeDep, caller: CallerDep, after: AfterSeq = -1, limit: Limit = MAX_PAGE) -> dict[str, Any]:
    """``status`` is the job's status when the page was read, read before the events: when it is a finished
    status, the page (with the pages after it) holds every event the job will ever have."""
    job = _readable(node, caller, job_id)
    items = node.jobs.events(job.id, after=after, limit=limit + 1)
    more = len(items) > limit
    items = items[:limit]
    return {"data": [e.to_dict() for e in items], "has_more": more, "next_after": items[-1].seq if more else None,
            "status": job.status}


@router.get(
    "/{job_id}/events/stream",
    summary="Follow the job's events as Server-Sent Events; reconnect with Last-Event-ID to get what you missed",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_events(
    job_id: JobId,
    node: NodeDep,
    caller: CallerDep,
    after: AfterSeq = -1,
    last_event_id: Annotated[str | None, Header(
        alias="Last-Event-ID", description="The id of the last event received; wins over ?after=")] = None,
) -> StreamingResponse:
    job = await run_in_threadpool(_readable, node, caller, job_id)
    if last_event_id is not None:
        value = last_event_id.strip()
        if not value.lstrip("-").isdigit() or int(value) < -1:
            raise InvalidInput(f"Last-Event-ID {last_event_id!r} is not an event seq of this stream (a number >= -1)",
                               field="Last-Event-ID")
        after = int(value)
    return StreamingResponse(_sse(node, job.id, after), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(node: Node, job_id: str, after: int) -> AsyncIterator[str]:
    """The stream's body. Each round reads the job's status, then its new events (in pages): the terminal event
    is written in the transaction that ends the job, so a finished status read first means every event is in."""
    yield f"retry: {RETRY_MS}\n\n"
    last, quiet_since = after, time.monotonic()
    while True:
        job = await run_in_threadpool(node.jobs.get, job_id)
        while events := await run_in_threadpool(node.jobs.events, job_id, after=last, limit=MAX_PAGE):
            yield "".join(_frame(e) for e in events)
            last, quiet_since = events[-1].seq, time.monotonic()
            if len(events) < MAX_PAGE:
                break
        if job.finished:
            yield f"event: end\ndata: {_dumps(job.to_dict())}\n\n"
            return
        if time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)


def _frame(event: JobEvent) -> str:
    return f"id: {event.seq}\nevent: {event.type}\ndata: {_dumps(event.to_dict())}\n\n"


def _dumps(value: dict[str, Any]) -> str:
    # One line: json.dumps escapes newlines inside strings, and SSE data ends at a newline.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
