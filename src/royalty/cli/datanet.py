"""``royalty datanet …``: create datanets, contribute, curate, publish versions, prove membership, export."""

from __future__ import annotations

import typer

app = typer.Typer(help="Datanets: attributed data collections with provenance, curation, versions and proofs.", no_args_is_help=True)
