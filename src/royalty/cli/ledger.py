"""``royalty ledger …``: OPEN balances, transfers, history, the faucet, supply, params and the audit."""

from __future__ import annotations

import typer

app = typer.Typer(help="The ledger: OPEN balances, transfers, history, faucet, supply and audit.", no_args_is_help=True)
