"""Storage: the relational store (SQLite/PostgreSQL), its schema and migrations, and the blob store."""

from .blobs import BlobStore
from .engine import Store

__all__ = ["BlobStore", "Store"]
