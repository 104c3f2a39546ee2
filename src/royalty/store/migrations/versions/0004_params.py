"""Params: the history of the governed parameters.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

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
    dialect = op.get_bind().dialect.name
    for action in ("UPDATE", "DELETE"):
        name = f"ledger_params_no_{action.lower()}"
        if dialect == "sqlite":
            op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON ledger_params FOR EACH ROW "
                       "BEGIN SELECT RAISE(ABORT, 'ledger_params is append-only'); END")
        else:
            op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON ledger_params FOR EACH ROW "
                       "EXECUTE FUNCTION royalty_append_only()")


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
