"""Params: the history of the governed parameters.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from royalty.store.migrations.guards import append_only

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_params",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("effective_ms", sa.BigInteger, nullable=False),
        sa.Column("values_json", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    append_only("ledger_params")


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
