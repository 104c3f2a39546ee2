"""The HTTP API (FastAPI). ``create_app(node)`` builds the one ASGI app; routes only translate HTTP to service
calls on the Node and RoyaltyErrors to JSON error responses (``{"error": {"type", "message", "field"}}``)."""

from .app import create_app

__all__ = ["create_app"]
