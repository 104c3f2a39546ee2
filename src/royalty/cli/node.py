"""Top-level commands: ``royalty init``, ``royalty info``, ``royalty demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..demo import run_demo
from ..ledger.amounts import format_amount, parse_amount
from ..ledger.params import Params, parse_param_assignments
from ..ledger.tokens import DEFAULT_GENESIS_SUPPLY
from ..node import init_node
from ._common import HomeOption, JsonOption, emit, node_at


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("info")(info)
    app.command("demo")(demo)


def init(
    home: HomeOption = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="Use this database instead of HOME/royalty.db (postgresql://...).", show_default=False),
    ] = None,
    origin: Annotated[
        str | None, typer.Option("--origin", help="The journal's origin line (default royalty.local/NODE_ID).", show_default=False)
    ] = None,
    supply: Annotated[
        str,
        typer.Option("--supply", help="OPEN issued to the treasury at genesis (decimal, e.g. 1000000000)."),
    ] = format_amount(DEFAULT_GENESIS_SUPPLY),
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help=f"A governed parameter at genesis, KEY=VALUE (integers); repeatable. Keys: {', '.join(Params.model_fields)}.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a node: database, blob store, signing key and genesis. Safe to run twice.

    Genesis issues --supply OPEN to the treasury and sets the governed Params (defaults, changed by --param);
    afterwards only governance changes either. On a node that exists already, nothing changes.
    """
    units = parse_amount(supply, "supply", allow_zero=True)
    overrides = parse_param_assignments(param or [])
    node, created = init_node(home, database_url=database_url, origin=origin, supply=units, params=overrides)
    with node:
        info = node.info.to_dict() | {"created": created}
        verb = "initialised" if created else "already initialised; nothing changed"
        emit(
            as_json,
            info,
            f"royalty node {node.node_id} {verb}\n"
            f"  home      {node.home}\n"
            f"  database  {info['database']}\n"
            f"  origin    {node.origin}\n"
            f"  verifier  {node.signer.verifier_key}",
        )


def info(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show the node's identity, database and journal head."""
    with node_at(home) as node:
        size, root = node.journal.head()
        latest = node.journal.latest_checkpoint()
        data = node.info.to_dict() | {
            "journal": {"size": size, "root": root.hex(), "latest_checkpoint": latest.size if latest else None}
        }
        emit(
            as_json,
            data,
            f"node      {node.node_id}\nhome      {node.home}\ndatabase  {data['database']}\n"
            f"origin    {node.origin}\nverifier  {node.signer.verifier_key}\n"
            f"journal   {size} events, root {root.hex()}, latest checkpoint at "
            f"{latest.size if latest else 'none'}",
        )


def demo(
    home: Annotated[
        Path | None,
        typer.Option("--home", help="Run the story in this (new) directory and keep it. Default: a throwaway one.", show_default=False),
    ] = None,
    pretrain_minutes: Annotated[
        float, typer.Option("--pretrain-minutes", min=0.0, max=600.0,
                            help="How long the demo pretrains its tiny base model (more gives more readable answers).")
    ] = 1.0,
) -> None:
    """Run the end-to-end story on a throwaway node and verify everything it did."""
    run_demo(home, typer.echo, pretrain_minutes=pretrain_minutes)
