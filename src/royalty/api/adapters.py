"""``/v1/adapters``: the node's registered LoRA adapters: list, show (with the manifest), verify, publish,
deprecate, and download an adapter's files.

Visibility. Registering stores an adapter; publishing makes it public (``Adapters.publish``). So a published or
deprecated adapter is readable by anyone (no key needed), while a merely registered one is readable only by its
owner and admins: others do not see it in lists and get 403 on it. Publish and deprecate are the owner's or an
admin's; the library enforces that, this layer only authenticates.

Files. ``GET /{ref}/files/{name}`` streams one file of the stored artifact: only the names listed in the
manifest's ``files`` and ``royalty.json`` itself. ``ETag`` is the SHA-256 (hex) the file was registered with and
``Repr-Digest`` the same digest in RFC 9530 form, so a serving node checks what it received against the
registered hash (a file changed on disk since registration shows up as a mismatch; ``verify`` names it), and a
conditional ``If-None-Match`` answers 304. Byte ranges are served too.
"""

from __future__ import annotations

import base64
import mimetypes
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from ..accounts import Account
from ..errors import InvalidInput, NotFound, PermissionDenied
from ..factory.adapters import MANIFEST, STATUSES, Adapter
from ..node import Node
from .auth import CallerDep, NodeDep, OptionalCallerDep

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

MAX_PAGE = 1000

Ref = Annotated[str, Path(description="The adapter: name (its latest version), name@N, or id (ad_…)")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Page size, 1-{MAX_PAGE}")]


class Deprecate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(description="Why the adapter is retired, in one line (at most 500 characters)")


def adapter_out(adapter: Adapter) -> dict[str, Any]:
    """An adapter as the API shows it: without ``path``, where the node keeps its files (the operator's business)."""
    out = adapter.to_dict()
    del out["path"]
    return out


def _visible(adapter: Adapter, caller: Account | None) -> bool:
    return adapter.status != "registered" or (caller is not None and (caller.id == adapter.owner or caller.is_admin))


def _readable(node: Node, caller: Account | None, ref: str) -> Adapter:
    adapter = node.adapters.get(ref)
    if not _visible(adapter, caller):
        raise PermissionDenied(f"{adapter.ref} is not published; only its owner or an admin may read it until it is",
                               field="adapter")
    return adapter


# --- reads -------------------------------------------------------------------------------------------------------


@router.get("", summary="List adapters by name and version (unpublished ones only for their owner and admins)")
def list_adapters(
    node: NodeDep,
    caller: OptionalCallerDep,
    owner: Annotated[str | None, Query(description="Only this owner's: account id (acct_…) or name")] = None,
    status: Annotated[str | None, Query(json_schema_extra={"enum": list(STATUSES)})] = None,
    limit: Limit = 100,
    after: Annotated[str | None, Query(description="name@N of the last adapter seen (the page's next_after)")] = None,
) -> dict[str, Any]:
    items = [a for a in node.adapters.list(owner=owner, status=status) if _visible(a, caller)]
    if after is not None:
        refs = [a.ref for a in items]
        if after not in refs:
            raise InvalidInput(f"after={after!r} is not an adapter in this list; pass next_after from the previous page",
                               field="after")
        items = items[refs.index(after) + 1 :]
    more = len(items) > limit
    items = items[:limit]
    return {"data": [adapter_out(a) for a in items], "has_more": more, "next_after": items[-1].ref if more else None}


@router.get("/{ref}", summary="One adapter with its manifest (royalty.json)")
def show_adapter(ref: Ref, node: NodeDep, caller: OptionalCallerDep) -> dict[str, Any]:
    adapter = _readable(node, caller, ref)
    return {**adapter_out(adapter), "manifest": adapter.manifest}


@router.get("/{ref}/verify", summary="Recompute every file hash and check the datanet roots against the journal")
def verify_adapter(ref: Ref, node: NodeDep, caller: OptionalCallerDep) -> dict[str, Any]:
    return node.adapters.verify(_readable(node, caller, ref).id)


@router.get(
    "/{ref}/files/{name:path}",
    summary="Download one file of the adapter (ETag: its registered SHA-256)",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 304: {"description": "Not modified"}},
)
def download_file(
    ref: Ref,
    name: Annotated[str, Path(description="A file name from the manifest's files, or royalty.json")],
    node: NodeDep,
    caller: OptionalCallerDep,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    adapter = _readable(node, caller, ref)
    files: dict[str, str] = adapter.manifest.get("files", {})
    # Only names from the registered manifest are served; they were checked to be plain relative names when the
    # adapter was registered, so nothing outside the adapter's directory can be reached.
    digest = adapter.manifest_sha256 if name == MANIFEST else files.get(name)
    if digest is None:
        raise NotFound(f"{adapter.ref} has no file {name!r}; its files: {', '.join(sorted([*files, MANIFEST]))}",
                       field="name")
    path = adapter.path / name
    if path.is_symlink() or not path.is_file():
        raise NotFound(f"{name} of {adapter.ref} is missing from this node's store; see GET .../verify", field="name")
    etag = f'"{digest}"'
    headers = {"ETag": etag, "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"}
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=headers, filename=name.rsplit("/", 1)[-1])


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 13.1.2: weak comparison against a list of entity tags, or ``*``."""
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


# --- status --------------------------------------------------------------------------------------------------------


@router.post("/{ref}/publish", summary="Make a registered adapter public (its owner or an admin)")
def publish_adapter(ref: Ref, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return adapter_out(node.adapters.publish(ref, actor=caller.id))


@router.post("/{ref}/deprecate", summary="Retire an adapter for good, saying why (its owner or an admin)")
def deprecate_adapter(ref: Ref, body: Deprecate, node: NodeDep, caller: CallerDep) -> dict[str, Any]:
    return adapter_out(node.adapters.deprecate(ref, actor=caller.id, reason=body.reason))
