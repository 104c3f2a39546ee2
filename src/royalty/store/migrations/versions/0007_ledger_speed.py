"""Ledger write path: indexes and tables for group commit.

Revision ID: 0007
Revises: 0006
"""

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the work that owns this revision


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
