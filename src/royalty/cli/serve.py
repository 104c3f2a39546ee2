"""``royalty serve``: the HTTP server (REST API; later the OpenAI-compatible API and the web app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
