"""``/v1/datanets``: create, contribute (JSON or file upload), curate, withdraw, purge, publish, prove, export.

Authorization is the library's (``Datanets`` checks owner/curator/contributor); this layer only authenticates.
Reads are open except the review queue. Lists paginate with ``?limit=&after=`` and answer
``{"data": [...], "has_more": bool, "next_after": cursor|null}``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from ..datanet.export import EXPORT_FORMATS
from ..datanet.records import KINDS
from ..datanet.registry import POLICIES, STATUSES, DatanetLimits
from ..errors import InvalidInput, PayloadTooLarge
from .auth import CallerDep, NodeDep, OptionalCallerDep
from .errors import error_response, validation_response

router = APIRouter(prefix="/v1/datanets", tags=["datanets"])

MAX_PAGE = 1000
# The most one request may carry, whatever a datanet's max_file_bytes says (its owner chooses that, up to any
# size): a request body is held in memory, so without this any account could make the server read without end.
# Larger files go through the CLI on the node itself.
MAX_UPLOAD_BYTES = 100 * 2**20
# Room in an upload's body for the multipart framing and the form fields, beyond the file itself.
FORM_OVERHEAD = 64 * 1024
FORM_FIELDS = ("license", "source", "consent", "tags")
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}

Slug = Annotated[str, Path(description="The datanet's slug (or its id, dn_…)")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Page size, 1-{MAX_PAGE}")]
VersionNumber = Annotated[int, Path(ge=1, description="Version number (1, 2, …)")]


# --- request bodies --------------------------------------------------------------------------------------------


class CreateDatanet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(description="1-64 lowercase letters, digits and '-'")
    title: str
    kind: str = Field(json_schema_extra={"enum": list(KINDS)})
    licenses: list[str] = Field(description="SPDX identifiers contributions may carry, e.g. CC-BY-4.0")
    policy: str = Field(json_schema_extra={"enum": list(POLICIES)})
    description: str = ""
    tags: list[str] | str = Field(default_factory=list)
    limits: DatanetLimits | None = None


class AddCurator(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str = Field(description="Account id (acct_…) or name")


class ContributeRecords(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[Any] = Field(description="Record objects (the datanet kind's fields, optionally license/source/consent/tags)")
    license: str | None = None
    source: str | None = None
    consent: str | None = None
    tags: list[str] | str | None = None


class Review(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accept: list[str] = Field(default_factory=list)
    reject: list[str] = Field(default_factory=list)
    reason: str | None = None


def _page(items: list[Any], limit: int, cursor: Callable[[Any], Any]) -> dict[str, Any]:
    """``items`` holds up to limit+1 entries; the extra one only says there is more."""
    more = len(items) > limit
    items = items[:limit]
    return {
        "data": [i.to_dict() if hasattr(i, "to_dict") else i for i in items],
        "has_more": more,
        "next_after": cursor(items[-1]) if more and items else None,
    }


# --- datanets --------------------------------------------------------------------------------------------------


@router.post("", status_code=201, summary="Create a datanet (the caller becomes its owner)")
def create_datanet(body: CreateDatanet, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    dn = node.datanets.create(
        body.slug,
        title=body.title,
        kind=body.kind,
        licenses=body.licenses,
        policy=body.policy,
        owner=caller.id,
        description=body.description,
        tags=body.tags,
        limits=body.limits,
    )
    return dn.to_dict()


@router.get("", summary="List datanets")
def list_datanets(
    node: NodeDep,
    _reader: OptionalCallerDep,
    limit: Limit = 100,
    after: Annotated[str | None, Query(description="slug of the last datanet seen")] = None,
) -> dict[str, Any]:
    items = node.datanets.list()
    if after is not None:
        slugs = [d.slug for d in items]
        if after not in slugs:
            raise InvalidInput(f"after={after!r} is not a datanet slug; pass next_after from the previous page", field="after")
        items = items[slugs.index(after) + 1 :]
    return _page(items[: limit + 1], limit, lambda d: d.slug)


@router.get("/{slug}", summary="A datanet with its statistics: counts, acceptance rate, leaderboard, versions")
def show_datanet(slug: Slug, node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    stats = node.datanets.stats(slug)
    stats["curators"] = node.datanets.curators(slug)
    return stats


@router.post("/{slug}/curators", summary="Add a curator (owner only)")
def add_curator(slug: Slug, body: AddCurator, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    account = node.datanets.add_curator(slug, body.account, actor=caller.id)
    return {"datanet": node.datanets.get(slug).slug, "curator": account.to_dict()}


# --- contribute ------------------------------------------------------------------------------------------------


def _capped(request: Request, cap: int, what: str, field: str) -> Request:
    """The request, reading whose body refuses (413) once more than ``cap`` bytes have arrived; a declared
    Content-Length over the cap is refused before anything is read."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise PayloadTooLarge(f"the request body is {int(length):,} bytes; {what}", field=field)
    receive = request.receive
    seen = 0

    async def capped() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise PayloadTooLarge(f"the request body is over {cap:,} bytes; {what}", field=field)
        return message

    return Request(request.scope, capped)


def _limit_text(max_file_bytes: int) -> str:
    if max_file_bytes > MAX_UPLOAD_BYTES:
        return f"this server accepts uploads up to {MAX_UPLOAD_BYTES:,} bytes; contribute larger files with the CLI"
    return f"this datanet accepts files up to {max_file_bytes:,} bytes (max_file_bytes)"


_CONTRIBUTE_SCHEMA = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": ContributeRecords.model_json_schema()}}}
}


@router.post(
    "/{slug}/contributions",
    summary="Contribute records as JSON; the report lists what was accepted, pending, duplicate or rejected (by line)",
    openapi_extra=_CONTRIBUTE_SCHEMA,
)
async def contribute(slug: Slug, request: Request, node: NodeDep, caller: CallerDep) -> Any:
    dn = await run_in_threadpool(node.datanets.get, slug)
    cap = min(dn.limits.max_file_bytes, MAX_UPLOAD_BYTES)
    raw = await _capped(request, cap, _limit_text(dn.limits.max_file_bytes), "records").body()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        detail = f" ({exc.msg} at line {exc.lineno} column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        return error_response(400, "bad_request", f"the request body is not valid JSON{detail}", "body")
    except RecursionError:
        return error_response(400, "bad_request", "the request body is not valid JSON (nested too deeply)", "body")
    try:
        body = ContributeRecords.model_validate(data)
    except ValidationError as exc:
        return validation_response([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
    if not body.records:
        raise InvalidInput("records is empty: send at least one record", field="records")
    report = await run_in_threadpool(
        lambda: node.datanets.contribute_records(
            dn.id,
            body.records,
            contributor=caller.id,
            license=body.license,
            source=body.source,
            consent=body.consent,
            tags=body.tags,
        )
    )
    return report.to_dict()


_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": ".jsonl, .ndjson, .csv, .parquet, .txt or .md"},
                        **{name: {"type": "string"} for name in FORM_FIELDS},
                    },
                }
            }
        },
    }
}


@router.post(
    "/{slug}/contributions/upload",
    summary="Contribute a file (multipart field `file`, optional form fields license, source, consent, tags)",
    openapi_extra=_UPLOAD_SCHEMA,
)
async def upload(slug: Slug, request: Request, node: NodeDep, caller: CallerDep) -> Any:
    dn = await run_in_threadpool(node.datanets.get, slug)
    cap = min(dn.limits.max_file_bytes, MAX_UPLOAD_BYTES)
    # The body may exceed the file by the multipart framing; the library checks the file's exact size.
    capped = _capped(request, cap + FORM_OVERHEAD, _limit_text(dn.limits.max_file_bytes), "file")
    form = await capped.form(max_files=1, max_fields=len(FORM_FIELDS) + 1, max_part_size=64 * 1024)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("send the file as a multipart/form-data upload in the field 'file' (with a filename)", field="file")
        unknown = sorted(set(form.keys()) - {"file", *FORM_FIELDS})
        if unknown:
            raise InvalidInput(f"unknown form field {unknown[0]!r}: send file, {', '.join(FORM_FIELDS)}", field=unknown[0])
        fields: dict[str, str | None] = {}
        for name in FORM_FIELDS:
            value = form.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"form field {name!r} must be text, not a file", field=name)
            fields[name] = value or None
        data = await upload.read()  # bounded: the body was capped above
        name = PurePosixPath((upload.filename or "upload").replace("\\", "/")).name or "upload"
    finally:
        await form.close()
    report = await run_in_threadpool(
        lambda: node.datanets.contribute_file(dn.id, data, name, contributor=caller.id, **fields)
    )
    return report.to_dict()


# --- contributions, queue, review, withdraw, purge -------------------------------------------------------------


@router.get("/{slug}/contributions", summary="Contributions in arrival order")
def list_contributions(
    slug: Slug,
    node: NodeDep,
    _reader: OptionalCallerDep,
    status: Annotated[str | None, Query(json_schema_extra={"enum": list(STATUSES)})] = None,
    limit: Limit = 100,
    after: Annotated[int, Query(description="ordinal of the last contribution seen")] = -1,
) -> dict[str, Any]:
    items = node.datanets.contributions(slug, status=status, after=after, limit=limit + 1)
    return _page(items, limit, lambda c: c.ordinal)


@router.get("/{slug}/contributions/{contribution_id}", summary="One contribution")
def show_contribution(slug: Slug, contribution_id: str, node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    return node.datanets.contribution(slug, contribution_id).to_dict()


@router.get("/{slug}/queue", summary="Pending contributions awaiting review (owner and curators)")
def review_queue(
    slug: Slug, node: NodeDep, caller: CallerDep, limit: Limit = 100, after: Annotated[int, Query()] = -1
) -> dict[str, Any]:
    items = node.datanets.queue(slug, actor=caller.id, limit=limit + 1, after=after)
    return _page(items, limit, lambda c: c.ordinal)


@router.post("/{slug}/review", summary="Accept or reject pending contributions (owner and curators)")
def review(slug: Slug, body: Review, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.datanets.review(slug, actor=caller.id, accept=body.accept, reject=body.reject, reason=body.reason)


@router.post("/{slug}/contributions/{contribution_id}/withdraw", summary="Withdraw a contribution (its contributor)")
def withdraw(slug: Slug, contribution_id: str, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.datanets.withdraw(slug, contribution_id, actor=caller.id).to_dict()


@router.post("/{slug}/contributions/{contribution_id}/purge", summary="Erase a withdrawn contribution's content (its contributor)")
def purge(slug: Slug, contribution_id: str, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.datanets.purge(slug, contribution_id, actor=caller.id).to_dict()


# --- versions, proofs, export ----------------------------------------------------------------------------------


@router.post("/{slug}/versions", status_code=201, summary="Publish the next version (owner)")
def publish(slug: Slug, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return node.datanets.publish(slug, actor=caller.id).to_dict()


@router.get("/{slug}/versions", summary="Published versions")
def list_versions(
    slug: Slug,
    node: NodeDep,
    _reader: OptionalCallerDep,
    limit: Limit = 100,
    after: Annotated[int, Query(description="last version number seen")] = 0,
) -> dict[str, Any]:
    items = [v for v in node.datanets.versions(slug) if v.number > after]
    return _page(items[: limit + 1], limit, lambda v: v.number)


@router.get("/{slug}/versions/{number}", summary="One version")
def show_version(slug: Slug, number: VersionNumber, node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    return node.datanets.version(slug, number).to_dict()


@router.get(
    "/{slug}/versions/{number}/proof/{contribution_id}",
    summary="A self-contained inclusion proof, verifiable offline with the node's verifier key (GET /v1/node)",
)
def proof(slug: Slug, number: VersionNumber, contribution_id: str, node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    return node.datanets.proof(slug, contribution_id, version=number)


def _chunks(file: BinaryIO, size: int = 256 * 1024) -> Iterator[bytes]:
    while chunk := file.read(size):
        yield chunk


@router.get(
    "/{slug}/versions/{number}/export",
    summary="Download a version as JSONL or Parquet, each row with its lineage",
    response_class=StreamingResponse,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}},
)
def export(
    slug: Slug,
    number: VersionNumber,
    node: NodeDep,
    _reader: OptionalCallerDep,
    format: Annotated[str, Query(json_schema_extra={"enum": list(EXPORT_FORMATS)})] = "jsonl",
) -> StreamingResponse:
    # Written to a spooled file first (memory up to 8 MiB, then disk), so every error is a proper JSON error and
    # the response streams from a finished export.
    out = tempfile.SpooledTemporaryFile(max_size=8 * 2**20)
    try:
        dn = node.datanets.get(slug)
        count = node.datanets.export(dn.id, version=number, format=format, out=out)  # type: ignore[arg-type]
        out.seek(0)
    except BaseException:
        out.close()
        raise
    filename = f"{dn.slug}-v{number}.{format}"
    return StreamingResponse(
        _chunks(out),  # type: ignore[arg-type]
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "X-Royalty-Rows": str(count)},
        background=BackgroundTask(out.close),
    )

