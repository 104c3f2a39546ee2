"""``royalty stake|cooldown|redeem|delegate|claim``: staking OPEN for gOPEN and voting power."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the staking commands at the top level."""
