"""The one exception hierarchy of royalty.

Every error a user can cause is a :class:`RoyaltyError`. Each class carries the HTTP status the API answers
with and a stable ``type`` string used in the JSON error body; the message is one line a person can act on.
The CLI prints ``royalty: error: <message>`` and exits 1; the HTTP layer renders
``{"error": {"type", "message", "field"}}``. Anything that is not a RoyaltyError is a bug.

    RoyaltyError
    ├── InvalidInput (422)            a field or argument is wrong; ``field`` names it
    │   ├── PayloadTooLarge (413)
    │   └── ConfigInvalid (422)       a training config has problems; ``problems`` lists all of them
    ├── AuthenticationError (401)     missing or unknown API key
    ├── PermissionDenied (403)        authenticated, but not allowed
    ├── NotFound (404)
    ├── Conflict (409)                already exists / state does not allow it
    │   └── TransferRejected (409)    the ledger refused a transfer; ``result`` is its result code
    │       └── InsufficientFunds (402)
    ├── QuotaExceeded (429)
    ├── NodeError (500)               the node's home or store cannot be used as it is
    │   ├── NodeNotFound
    │   ├── NodeCorrupt               a file in the home is damaged (key, metadata)
    │   ├── InsecurePermissions       the signing key is readable by others
    │   ├── DatabaseMissing
    │   ├── DatabaseTooNew            the database was migrated by a newer royalty
    │   └── StorageError
    └── VerificationFailed (409)      a journal, proof or signature does not verify; ``seq`` names where
"""

from __future__ import annotations

from typing import Any


class RoyaltyError(Exception):
    """Base class. ``message`` is one line; ``field`` optionally names the offending input."""

    status: int = 500
    type: str = "royalty_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        """The body of an HTTP error response (and of ``--json`` errors)."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class InvalidInput(RoyaltyError):
    status = 422
    type = "invalid_input"


class PayloadTooLarge(InvalidInput):
    status = 413
    type = "payload_too_large"


class ConfigInvalid(InvalidInput):
    """A training config (``royalty.factory.config``) has problems. ``problems`` is every (field path, message)
    found, all at once; the message is one line per problem (``lora.r: must be >= 1 (got 0)``) and ``field`` is
    the first problem's field."""

    type = "config_invalid"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("\n".join(f"{field}: {message}" for field, message in problems), field=problems[0][0])
        self.problems = list(problems)

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["problems"] = [{"field": field, "message": message} for field, message in self.problems]
        return body


class AuthenticationError(RoyaltyError):
    status = 401
    type = "authentication_error"


class PermissionDenied(RoyaltyError):
    status = 403
    type = "permission_denied"


class NotFound(RoyaltyError):
    status = 404
    type = "not_found"


class Conflict(RoyaltyError):
    status = 409
    type = "conflict"


class TransferRejected(Conflict):
    """The ledger refused a transfer; ``result`` is its result code (``royalty.ledger.Result`` value)."""

    type = "transfer_rejected"

    def __init__(self, message: str, *, result: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.result = result

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["result"] = self.result
        return body


class InsufficientFunds(TransferRejected):
    """Not enough available OPEN (or gOPEN) for the operation: 402 Payment Required."""

    status = 402
    type = "insufficient_funds"


class QuotaExceeded(RoyaltyError):
    status = 429
    type = "quota_exceeded"


class NodeError(RoyaltyError):
    status = 500
    type = "node_error"


class NodeNotFound(NodeError):
    type = "node_not_found"


class NodeCorrupt(NodeError):
    type = "node_corrupt"


class InsecurePermissions(NodeError):
    type = "insecure_permissions"


class DatabaseMissing(NodeError):
    type = "database_missing"


class DatabaseTooNew(NodeError):
    type = "database_too_new"


class StorageError(NodeError):
    type = "storage_error"


class VerificationFailed(RoyaltyError):
    """Something that should verify does not. ``seq`` is the first bad journal sequence number, if known."""

    status = 409
    type = "verification_failed"

    def __init__(self, message: str, *, seq: int | None = None, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.seq = seq

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.seq is not None:
            body["error"]["seq"] = self.seq
        return body
