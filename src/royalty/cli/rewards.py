"""``royalty rewards …``: reward epochs and what contributors earned."""

from __future__ import annotations

import typer

app = typer.Typer(help="Rewards: reward epochs and contributors' earnings.", no_args_is_help=True)
