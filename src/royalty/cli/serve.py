"""``royalty serve``: the HTTP server (REST API; later the OpenAI-compatible API and the web app)."""

from __future__ import annotations

import gc
from typing import Annotated

import typer

from ._common import HomeOption, node_at


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        home: HomeOption = None,
        host: Annotated[str, typer.Option("--host", help="Address to bind. Use 0.0.0.0 to listen on every interface.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
        log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
    ) -> None:
        """Serve the node's HTTP API (OpenAPI schema at /openapi.json) until interrupted."""
        import uvicorn

        from ..api import create_app

        node = node_at(home)
        try:
            typer.echo(f"royalty: serving node {node.node_id} on http://{host}:{port} (API schema: /openapi.json)", err=True)
            app = create_app(node)
            # Move everything imported so far out of the collector's view: full collections otherwise scan
            # ~100,000 long-lived library objects and pause every request 30-70 ms (the ledger benchmark's p99).
            gc.freeze()
            # Open event streams (job progress) would otherwise hold Ctrl-C; clients reconnect with Last-Event-ID.
            uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
        finally:
            node.close()
