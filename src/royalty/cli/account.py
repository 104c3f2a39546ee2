"""``royalty account …``: participants, roles and API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from ..accounts import KINDS, NODE_ROLES
from ._common import HomeOption, JsonOption, emit, node_at, table

app = typer.Typer(help="Accounts: create participants, grant roles, issue and revoke API keys.", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Lowercase name people type, e.g. 'alice'.")],
    role: Annotated[list[str] | None, typer.Option("--role", help=f"Node-wide role ({', '.join(NODE_ROLES)}); repeatable.")] = None,
    kind: Annotated[str, typer.Option("--kind", help=f"One of: {', '.join(KINDS)}.")] = "person",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an account and print its id and API key. The key is shown once; only its hash is stored."""
    with node_at(home) as node:
        account, key = node.accounts.create(name, kind=kind, roles=role or (), actor=node.operator())
        emit(
            as_json,
            account.to_dict() | {"api_key": key},
            f"created account {account.name} ({account.id})\n"
            f"API key (shown once, store it now): {key}",
        )


@app.command("list")
def list_(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List accounts."""
    with node_at(home) as node:
        accounts = node.accounts.list()
        rows = [[a.id, a.name, a.kind, ",".join(str(r) for r in a.roles) or "-"] for a in accounts]
        emit(as_json, {"accounts": [a.to_dict() for a in accounts]}, table(rows, ["ID", "NAME", "KIND", "ROLES"]))


@app.command("show")
def show(
    account: Annotated[str, typer.Argument(help="Account name or id.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one account and its API keys (ids only)."""
    with node_at(home) as node:
        acct = node.accounts.get(account)
        keys = node.accounts.keys(acct.id)
        lines = [
            f"id       {acct.id}",
            f"name     {acct.name}",
            f"kind     {acct.kind}",
            f"roles    {', '.join(str(r) for r in acct.roles) or '-'}",
            "keys     " + (", ".join(f"{k.id} ({k.label}{', revoked' if k.revoked_ms else ''})" for k in keys) or "-"),
        ]
        emit(as_json, acct.to_dict() | {"keys": [k.to_dict() for k in keys]}, "\n".join(lines))


@app.command("new-key")
def new_key(
    account: Annotated[str, typer.Argument(help="Account name or id.")],
    label: Annotated[str, typer.Option("--label", help="A name for the key, e.g. the app using it.")] = "default",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Issue another API key for an account (shown once)."""
    with node_at(home) as node:
        key, secret = node.accounts.create_key(account, label=label, actor=node.operator())
        emit(as_json, key.to_dict() | {"api_key": secret}, f"API key {key.id} (shown once, store it now): {secret}")


@app.command("revoke-key")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after 'rk_').")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke an API key; requests using it are refused from now on."""
    with node_at(home) as node:
        key = node.accounts.revoke_key(key_id, actor=node.operator())
        emit(as_json, key.to_dict(), f"revoked API key {key.id}")


@app.command("grant")
def grant(
    account: Annotated[str, typer.Argument(help="Account name or id.")],
    role: Annotated[str, typer.Argument(help=f"Node-wide role: {', '.join(NODE_ROLES)}.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Grant a node-wide role."""
    with node_at(home) as node:
        acct = node.accounts.grant_role(account, role, actor=node.operator())
        emit(as_json, acct.to_dict(), f"{acct.name} now has roles: {', '.join(str(r) for r in acct.roles)}")
