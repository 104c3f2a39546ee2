"""Error bodies for the HTTP layer: the one shape ``{"error": {"type", "message", "field"}}`` for every failure,
whether it comes from the library (``RoyaltyError.to_dict()``), from request validation or from routing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from ..errors import AuthenticationError, InvalidInput, RoyaltyError

# Where FastAPI says a value came from; the field we report is the path inside it ("limits.max_file_bytes").
_SOURCES = ("body", "query", "path", "header", "cookie")


def error_body(type_: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def error_response(status: int, type_: str, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(type_, message, field), status_code=status, headers=headers)


def royalty_error_response(exc: RoyaltyError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationError) else None
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def field_of(loc: Sequence[Any]) -> str:
    """A validation location as a dotted field: ("body", "limits", "max_file_bytes") -> "limits.max_file_bytes"."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in _SOURCES:
        parts = parts[1:]
    return ".".join(parts)


def _describe(error: dict[str, Any]) -> str:
    field = field_of(error.get("loc", ()))
    kind = error.get("type", "")
    source = str(error["loc"][0]) if error.get("loc") else "request"
    where = "JSON body" if source == "body" else f"{source} parameter"
    if kind == "missing":
        return f"missing required field {field!r} ({where})"
    if kind == "extra_forbidden":
        return f"unknown field {field!r} ({where})"
    return f"{field}: {error.get('msg', 'invalid value')}" if field else str(error.get("msg", "invalid request"))


def validation_response(errors: Sequence[dict[str, Any]]) -> JSONResponse:
    """422 for pydantic/FastAPI validation errors (all problems in one message; ``field`` names the first),
    or 400 when the body is not JSON at all."""
    errors = list(errors)
    for error in errors:
        if error.get("type") == "json_invalid":
            ctx = error.get("ctx") or {}
            detail = f" ({ctx['error']})" if ctx.get("error") else ""
            return error_response(400, "bad_request", f"the request body is not valid JSON{detail}", "body")
    if not errors:
        return error_response(422, "invalid_input", "invalid request")
    message = "; ".join(dict.fromkeys(_describe(e) for e in errors))
    return error_response(InvalidInput.status, InvalidInput.type, message, field_of(errors[0].get("loc", ())) or None)

