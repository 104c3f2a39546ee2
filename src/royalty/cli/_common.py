"""What every command shares: the --home and --json options, opening the node, and printing results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from ..node import Node, open_node

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="The node's home directory. Default: $ROYALTY_HOME, then ./.royalty", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]


def node_at(home: Path | None) -> Node:
    return open_node(home)


def emit(as_json: bool, data: Any, human: Callable[[], None] | str | None = None) -> None:
    """Print ``data`` as one JSON document with --json; otherwise the human form (text or a printer)."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    elif callable(human):
        human()
    elif human is not None:
        typer.echo(human)


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
