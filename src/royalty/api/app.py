"""The app factory and the error handlers. Every failure answers in one JSON shape,
``{"error": {"type", "message", "field"}}``: a RoyaltyError with its own status, a validation error 422 (400 for
a body that is not JSON), an unknown route 404, anything unexpected 500 without a traceback."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RoyaltyError
from ..node import Node
from . import adapters, attribution, datanets, governance, jobs, ledger, rewards, staking
from .auth import NodeDep, OptionalCallerDep
from .errors import error_response, royalty_error_response, validation_response

log = logging.getLogger("royalty.api")

_HTTP_TYPES = {400: "bad_request", 401: "authentication_error", 403: "permission_denied", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}  # fmt: skip


def _version() -> str:
    try:
        return version("royalty")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        return "0"


node_router = APIRouter(tags=["node"])


@node_router.get("/v1/node", summary="This node's identity and the key that verifies its proofs (no auth)")
def node_info(node: NodeDep, _reader: OptionalCallerDep) -> dict[str, Any]:
    info = node.info
    # Not the home directory or the database URL: those are the operator's business.
    return {"node_id": info.node_id, "origin": info.origin, "verifier_key": info.verifier_key, "version": _version()}


def create_app(node: Node) -> FastAPI:
    """The HTTP app for ``node``. Routers are modular: later the OpenAI-compatible API and the web app join here."""
    app = FastAPI(
        title="royalty",
        version=_version(),
        description="Datanets, LoRA adapters, proof of attribution and a verifiable ledger, on one node.",
    )
    app.state.node = node
    app.include_router(node_router)
    app.include_router(datanets.router)
    app.include_router(ledger.router)
    app.include_router(staking.router)
    app.include_router(governance.router)
    app.include_router(rewards.router)
    app.include_router(adapters.router)
    app.include_router(jobs.router)
    app.include_router(attribution.router)
    install_error_handlers(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RoyaltyError)
    async def _royalty(_request: Request, exc: RoyaltyError) -> JSONResponse:
        return royalty_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404 and exc.detail in (None, "Not Found"):
            message = f"no route {request.method} {request.url.path}; see /openapi.json for the API"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        headers = dict(exc.headers) if exc.headers else None
        return error_response(status, _HTTP_TYPES.get(status, "http_error"), message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; the node's log has the details")
