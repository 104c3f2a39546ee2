"""What every command shares: the --home and --json options, opening the node, and printing results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from ..errors import InvalidInput
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


def read_bytes(path: Path) -> bytes:
    """A file's bytes, or one clear InvalidInput naming the path and what is wrong."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file", field="file") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: is a directory, not a file", field="file") from None
    except PermissionError:
        raise InvalidInput(f"{path}: cannot read the file (permission denied)", field="file") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the file ({exc.strerror or type(exc).__name__})", field="file") from None


def read_json_document(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path`` ('-' = stdin), e.g. a saved proof; clear errors for every way it can fail."""
    if str(path) == "-":
        # Bytes when stdin has them (a real process), so bad encodings get our message; text streams otherwise.
        stdin = sys.stdin
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8", "surrogatepass")
    else:
        data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not a text file (not valid UTF-8)", field="file") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{path}: not JSON ({exc})", field="file") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"{path}: not {what}", field="file")
    return document
