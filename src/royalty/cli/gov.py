"""``royalty gov …``: proposals, votes, the timelock."""

from __future__ import annotations

import typer

app = typer.Typer(help="Governance: propose, vote, queue, execute, cancel, show, list.", no_args_is_help=True)
