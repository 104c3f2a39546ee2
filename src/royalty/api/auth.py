"""Who is calling: ``Authorization: Bearer <api key>`` -> ``node.accounts.authenticate(key)`` -> Account."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from ..accounts import Account
from ..errors import AuthenticationError
from ..node import Node

# Only for the OpenAPI schema (the "Authorize" button); parsing is done below so errors keep our shape.
_bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer rk_…`")


def get_node(request: Request) -> Node:
    return request.app.state.node


NodeDep = Annotated[Node, Depends(get_node)]


def current_account(request: Request, node: NodeDep, _doc: Annotated[object, Depends(_bearer_scheme)] = None) -> Account:
    """The authenticated caller; 401 (AuthenticationError) when the key is missing, malformed, unknown or revoked."""
    header = request.headers.get("authorization")
    if not header:
        return node.accounts.authenticate(None)  # raises: missing API key
    scheme, _, key = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError("the Authorization header must be 'Bearer <API key>'")
    return node.accounts.authenticate(key.strip())


CallerDep = Annotated[Account, Depends(current_account)]


def optional_account(request: Request, node: NodeDep) -> Account | None:
    """For open routes: no Authorization header is fine (anonymous), but a key that is sent must be valid, so a
    misconfigured client hears 401 at once rather than reading as anonymous."""
    if request.headers.get("authorization") is None:
        return None
    return current_account(request, node)


OptionalCallerDep = Annotated[Account | None, Depends(optional_account)]
