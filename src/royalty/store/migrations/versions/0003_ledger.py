"""Ledger: double-entry accounts, immutable transfers, pending-transfer states and failed ids.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APPEND_ONLY = ("ledger_transfers", "ledger_failures")


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("ledger", sa.BigInteger, nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("owner_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=True),
        sa.Column("user_data", sa.Text, nullable=True),
        sa.Column("debits_pending", sa.BigInteger, nullable=False),
        sa.Column("debits_posted", sa.BigInteger, nullable=False),
        sa.Column("credits_pending", sa.BigInteger, nullable=False),
        sa.Column("credits_posted", sa.BigInteger, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("created_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_ledger_accounts_owner_id", "ledger_accounts", ["owner_id"])
    op.create_table(
        "ledger_transfers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("debit_account_id", sa.String(32), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("credit_account_id", sa.String(32), sa.ForeignKey("ledger_accounts.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("pending_id", sa.String(32), nullable=True),
        sa.Column("timeout", sa.BigInteger, nullable=False),
        sa.Column("ledger", sa.BigInteger, nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("user_data", sa.Text, nullable=True),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
        sa.Column("event_index", sa.Integer, nullable=False),
    )
    op.create_index("ix_ledger_transfers_order", "ledger_transfers", ["event_seq", "event_index"], unique=True)
    op.create_index("ix_ledger_transfers_debit", "ledger_transfers", ["debit_account_id", "event_seq", "event_index"])
    op.create_index("ix_ledger_transfers_credit", "ledger_transfers", ["credit_account_id", "event_seq", "event_index"])
    op.create_table(
        "ledger_pending",
        sa.Column("id", sa.String(32), sa.ForeignKey("ledger_transfers.id"), primary_key=True),
        sa.Column("debit_account_id", sa.String(32), nullable=False),
        sa.Column("credit_account_id", sa.String(32), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("resolved_by", sa.String(32), nullable=True),
        sa.Column("resolved_ms", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_ledger_pending_expiry", "ledger_pending", ["state", "expires_ms"])
    op.create_table(
        "ledger_failures",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
    )

    dialect = op.get_bind().dialect.name
    # Transfers and failed ids: append-only (I7). Ledger accounts are never deleted. A pending transfer's state
    # changes once, from 'pending', and is never deleted (I6). royalty_append_only() was created by 0001.
    guards = [(f"{t}_no_{a.lower()}", t, a, None) for t in APPEND_ONLY for a in ("UPDATE", "DELETE")]
    guards += [
        ("ledger_accounts_no_delete", "ledger_accounts", "DELETE", None),
        ("ledger_pending_no_delete", "ledger_pending", "DELETE", None),
        ("ledger_pending_no_update", "ledger_pending", "UPDATE", "OLD.state <> 'pending'"),
    ]
    for name, table, action, when in guards:
        if dialect == "sqlite":
            cond = f"WHEN {when} " if when else ""
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {action} ON {table} FOR EACH ROW {cond}"
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )
        else:
            cond = f"WHEN ({when}) " if when else ""
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {action} ON {table} FOR EACH ROW {cond}"
                "EXECUTE FUNCTION royalty_append_only()"
            )


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
