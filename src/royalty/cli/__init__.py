"""The ``royalty`` command line: ``royalty GROUP VERB [ARGS]``.

Thin by design: each command opens the node, calls one service method and prints the result. Errors are
translated once, here: a RoyaltyError prints ``royalty: error: <message>`` on stderr and exits 1; a usage
error exits 2 with click's message. Exit 0 means done.
"""

from __future__ import annotations

import json
import sys

import typer

from ..errors import RoyaltyError
from . import account, adapter, attribution, datanet, gov, jobs, journal, ledger, model, node, rewards, serve, stake, train

app = typer.Typer(
    name="royalty",
    help="royalty: datanets, LoRA adapters, proof of attribution and a verifiable ledger, on one node.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)
node.register(app)
app.add_typer(account.app, name="account")
app.add_typer(journal.app, name="journal")
app.add_typer(datanet.app, name="datanet")
app.add_typer(ledger.app, name="ledger")
stake.register(app)
app.add_typer(gov.app, name="gov")
app.add_typer(rewards.app, name="rewards")
app.add_typer(model.app, name="model")
app.add_typer(adapter.app, name="adapter")
app.add_typer(jobs.app, name="jobs")
app.add_typer(attribution.app, name="attribution")
attribution.register(app)
train.register(app)
serve.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Usage errors are Typer's own (exit 2); RoyaltyErrors become one line (exit 1)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        app(args=args, prog_name="royalty")
    except RoyaltyError as exc:
        if "--json" in args:
            typer.echo(json.dumps(exc.to_dict(), sort_keys=True))
        typer.echo(f"royalty: error: {exc.message}", err=True)
        sys.exit(1)
