"""The relational schema (SQLAlchemy Core). Alembic migrations create it; ``tests/test_store.py`` checks that
the migrated database and these definitions agree.

Conventions: ids are text; times are integer Unix milliseconds (``*_ms``) so SQLite and PostgreSQL agree bit
for bit; hashes are raw 32-byte blobs; amounts (later) are integers in base units.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Node identity and other singletons: node_id, origin, public_key, genesis parameters.
meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# --- journal -------------------------------------------------------------------------------------------------
# One row per event; leaf index in the Merkle tree = seq. body = canonical JSON bytes; leaf_hash = SHA-256(0x00||body).
journal_events = Table(
    "journal_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(64), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
)

# Hashes of complete perfect subtrees above the leaves: (level, idx) covers leaves [idx << level, (idx+1) << level).
# Immutable once written; they make inclusion and consistency proofs O(log n) lookups.
journal_nodes = Table(
    "journal_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    sqlite_with_rowid=False,
)

# A single row: the tree size and root. Writers lock it (FOR UPDATE on PostgreSQL) so sequence numbers are contiguous
# and never reused, whichever replica writes.
journal_head = Table(
    "journal_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
)

journal_checkpoints = Table(
    "journal_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

# --- accounts ------------------------------------------------------------------------------------------------
accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # The journal event that created it: the provenance link, and a total creation order.
    Column("created_seq", BigInteger, nullable=False, unique=True),
)

# scope '' = node-wide (admin); later 'datanet:<id>' for owner/curator.
account_roles = Table(
    "account_roles",
    metadata,
    Column("account_id", String(40), ForeignKey("accounts.id"), primary_key=True),
    Column("role", String(32), primary_key=True),
    Column("scope", String(80), primary_key=True),
)

# Only SHA-256 of the secret is stored; the key id is the public half of the key string.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("secret_hash", LargeBinary(32), nullable=False),
    Column("label", String(64), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
)

# Tables whose rows may never change or disappear (enforced by triggers in the migrations).
APPEND_ONLY = ("journal_events", "journal_nodes", "journal_checkpoints")
