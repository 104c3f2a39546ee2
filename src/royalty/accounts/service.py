"""Accounts: participants (people, organisations, services, the protocol's system accounts), their roles and
API keys.

An API key reads ``rk_<key id>_<secret>``. The key id is public (it is journaled and shown in listings); only
SHA-256 of the secret is stored, and the full key is shown once, when it is made. A fast hash is enough
because the secret is 256 random bits: there is nothing to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, insert, select, update

from ..errors import AuthenticationError, Conflict, InvalidInput, NotFound
from ..journal.log import Journal
from ..store import Store
from ..store.schema import account_roles, accounts, api_keys

Kind = Literal["person", "organisation", "service", "system"]
KINDS: tuple[str, ...] = ("person", "organisation", "service", "system")
# Node-wide roles. Per-datanet roles (owner, curator) use the same table with scope "datanet:<id>".
NODE_ROLES: tuple[str, ...] = ("admin",)
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
_KEY = re.compile(r"^rk_([a-z0-9]{16})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Role:
    role: str
    scope: str = ""

    def __str__(self) -> str:
        return self.role if not self.scope else f"{self.role}@{self.scope}"


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    kind: str
    created_ms: int
    created_seq: int  # the journal event that created it
    roles: tuple[Role, ...] = field(default=())

    def has_role(self, role: str, scope: str = "") -> bool:
        return Role(role, scope) in self.roles

    @property
    def is_admin(self) -> bool:
        return self.has_role("admin")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "roles": [str(r) for r in self.roles],
            "created_ms": self.created_ms,
            "created_seq": self.created_seq,
        }


@dataclass(frozen=True)
class ApiKey:
    id: str
    account_id: str
    label: str
    created_ms: int
    revoked_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "account_id": self.account_id,
            "label": self.label,
            "created_ms": self.created_ms,
            "revoked_ms": self.revoked_ms,
        }


class Accounts:
    """The accounts service (``node.accounts``)."""

    def __init__(self, store: Store, journal: Journal, clock: Callable[[], int]) -> None:
        self.store = store
        self.journal = journal
        self.clock = clock

    # --- create ------------------------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        kind: str = "person",
        roles: Iterable[str] = (),
        with_key: bool = True,
        actor: str | None = None,
    ) -> tuple[Account, str | None]:
        """Create an account; return it and its first API key (shown once), or None when ``with_key`` is False.

        Raises:
            InvalidInput: bad name, kind or role (all problems reported together).
            Conflict: the name is taken.
        """
        roles = tuple(dict.fromkeys(roles))
        problems: list[tuple[str, str]] = []  # (field, message)
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name.startswith("acct_"):
            problems.append((
                "name",
                f"name {name!r} is not allowed: use 1-64 lowercase letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit, and not starting with 'acct_'",
            ))
        if kind not in KINDS:
            problems.append(("kind", f"kind {kind!r} is unknown: choose one of {', '.join(KINDS)}"))
        for role in roles:
            if role not in NODE_ROLES:
                problems.append(("role", f"role {role!r} is unknown: node-wide roles are {', '.join(NODE_ROLES)}"))
        if problems:
            raise InvalidInput("; ".join(message for _, message in problems), field=problems[0][0])

        with self.store.write() as conn:
            return self.create_in(conn, name, kind=kind, roles=roles, with_key=with_key, actor=actor)

    def create_in(
        self, conn: Connection, name: str, *, kind: str, roles: tuple[str, ...], with_key: bool, actor: str | None
    ) -> tuple[Account, str | None]:
        """``create`` inside the caller's write transaction (genesis creates several accounts atomically).
        Arguments must already be validated."""
        if conn.execute(select(accounts.c.id).where(accounts.c.name == name)).first():
            raise Conflict(f"an account named {name!r} already exists", field="name")
        account_id = "acct_" + secrets.token_hex(8)
        now = self.clock()
        event = self.journal.append(
            conn, "account.created", {"id": account_id, "name": name, "kind": kind, "roles": list(roles)}, actor=actor
        )
        conn.execute(
            insert(accounts).values(id=account_id, name=name, kind=kind, created_ms=now, created_seq=event.seq)
        )
        if roles:
            conn.execute(insert(account_roles), [{"account_id": account_id, "role": r, "scope": ""} for r in roles])
        key = self._new_key(conn, account_id, "default", actor) if with_key else None
        account = Account(account_id, name, kind, now, event.seq, tuple(Role(r) for r in roles))
        return account, key

    # --- keys --------------------------------------------------------------------------------------------------

    def create_key(self, account: str, *, label: str = "default", actor: str | None = None) -> tuple[ApiKey, str]:
        """Issue another API key for ``account`` (id or name); the key string is returned once."""
        if not label or len(label) > 64:
            raise InvalidInput("key label must be 1-64 characters", field="label")
        acct = self.get(account)
        with self.store.write() as conn:
            key = self._new_key(conn, acct.id, label, actor)
        key_id = key.split("_")[1]
        return self._get_key(key_id), key

    def revoke_key(self, key_id: str, *, actor: str | None = None) -> ApiKey:
        with self.store.write() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
            if row is None:
                raise NotFound(f"no API key {key_id!r}; list keys with: royalty account keys ACCOUNT", field="key")
            if row.revoked_ms is None:
                conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_ms=self.clock()))
                self.journal.append(conn, "account.key_revoked", {"account": row.account_id, "key": key_id}, actor=actor)
        return self._get_key(key_id)

    def keys(self, account: str) -> list[ApiKey]:
        acct = self.get(account)
        with self.store.read() as conn:
            rows = conn.execute(select(api_keys).where(api_keys.c.account_id == acct.id).order_by(api_keys.c.created_ms, api_keys.c.id)).all()
        return [_key_from_row(r) for r in rows]

    def authenticate(self, api_key: str | None) -> Account:
        """The account an API key belongs to. Raises AuthenticationError for a missing, malformed, unknown
        or revoked key, with the same message for the last three (no oracle for which key ids exist)."""
        if not api_key:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        match = _KEY.fullmatch(api_key.strip())
        if match is None:
            raise AuthenticationError("invalid API key")
        key_id, secret = match.groups()
        with self.store.read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
        expected = bytes(row.secret_hash) if row is not None else b"\0" * 32
        valid = hmac.compare_digest(_hash_secret(secret), expected)
        if row is None or not valid or row.revoked_ms is not None:
            raise AuthenticationError("invalid API key")
        return self.get(row.account_id)

    # --- roles -------------------------------------------------------------------------------------------------

    def grant_role(self, account: str, role: str, *, scope: str = "", actor: str | None = None) -> Account:
        if not scope and role not in NODE_ROLES:
            raise InvalidInput(f"role {role!r} is unknown: node-wide roles are {', '.join(NODE_ROLES)}", field="role")
        acct = self.get(account)
        if acct.has_role(role, scope):
            return acct
        with self.store.write() as conn:
            conn.execute(insert(account_roles).values(account_id=acct.id, role=role, scope=scope))
            self.journal.append(conn, "account.role_granted", {"account": acct.id, "role": role, "scope": scope}, actor=actor)
        return self.get(acct.id)

    # --- read --------------------------------------------------------------------------------------------------

    def get(self, ref: str) -> Account:
        """An account by id (``acct_…``) or name."""
        with self.store.read() as conn:
            return self.get_in(conn, ref)

    def get_in(self, conn: Connection, ref: str) -> Account:
        column = accounts.c.id if ref.startswith("acct_") else accounts.c.name
        row = conn.execute(select(accounts).where(column == ref)).one_or_none()
        if row is None:
            raise NotFound(f"no account {ref!r}; list accounts with: royalty account list", field="account")
        roles = conn.execute(
            select(account_roles.c.role, account_roles.c.scope)
            .where(account_roles.c.account_id == row.id)
            .order_by(account_roles.c.scope, account_roles.c.role)
        ).all()
        return Account(row.id, row.name, row.kind, int(row.created_ms), int(row.created_seq), tuple(Role(r.role, r.scope) for r in roles))

    def list(self, *, kind: str | None = None) -> list[Account]:
        query = select(accounts.c.id).order_by(accounts.c.created_seq)
        if kind is not None:
            query = query.where(accounts.c.kind == kind)
        with self.store.read() as conn:
            return [self.get_in(conn, row.id) for row in conn.execute(query).all()]

    # --- internals ---------------------------------------------------------------------------------------------

    def _new_key(self, conn: Connection, account_id: str, label: str, actor: str | None) -> str:
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)  # 43 characters of base64url: 256 bits
        conn.execute(
            insert(api_keys).values(
                id=key_id, account_id=account_id, secret_hash=_hash_secret(secret), label=label, created_ms=self.clock()
            )
        )
        self.journal.append(conn, "account.key_created", {"account": account_id, "key": key_id, "label": label}, actor=actor)
        return f"rk_{key_id}_{secret}"

    def _get_key(self, key_id: str) -> ApiKey:
        with self.store.read() as conn:
            return _key_from_row(conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one())


def _hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _key_from_row(row: Any) -> ApiKey:
    return ApiKey(row.id, row.account_id, row.label, int(row.created_ms), None if row.revoked_ms is None else int(row.revoked_ms))
