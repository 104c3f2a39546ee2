"""Inference fees (settlements and the participants they paid) and reward epochs (fundings, weights, payouts).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from royalty.store.migrations.guards import append_only, refuse

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APPEND_ONLY = (
    "fee_settlements",
    "fee_settlement_legs",
    "reward_epoch_fundings",
    "reward_epoch_weights",
    "reward_epoch_payouts",
)


def upgrade() -> None:
    op.create_table(
        "fee_settlements",
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("receipt_id", sa.String(128), nullable=True),
        sa.Column("adapter_id", sa.String(128), nullable=True),
        sa.Column("payer_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("owner_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("treasury", sa.BigInteger, nullable=False),
        sa.Column("owner_amount", sa.BigInteger, nullable=False),
        sa.Column("stakers", sa.BigInteger, nullable=False),
        sa.Column("contributors", sa.BigInteger, nullable=False),
        sa.Column("dust", sa.BigInteger, nullable=False),
        sa.Column("params_seq", sa.BigInteger, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("settled_ms", sa.BigInteger, nullable=False),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "fee_settlement_legs",
        sa.Column("request_id", sa.String(128), sa.ForeignKey("fee_settlements.request_id"), primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("weight", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("transfer_id", sa.String(32), nullable=True),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_fee_settlement_legs_account", "fee_settlement_legs", ["account_id", "event_seq"])
    op.create_table(
        "reward_epochs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("created_seq", sa.BigInteger, nullable=False),
        sa.Column("funded", sa.BigInteger, nullable=True),
        sa.Column("total_weight", sa.BigInteger, nullable=True),
        sa.Column("weights_root", sa.LargeBinary(32), nullable=True),
        sa.Column("frozen_ms", sa.BigInteger, nullable=True),
        sa.Column("frozen_seq", sa.BigInteger, nullable=True),
        sa.Column("paid", sa.BigInteger, nullable=True),
        sa.Column("dust", sa.BigInteger, nullable=True),
        sa.Column("distributed_ms", sa.BigInteger, nullable=True),
        sa.Column("distributed_seq", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "reward_epoch_fundings",
        sa.Column("transfer_id", sa.String(32), primary_key=True),
        sa.Column("epoch_id", sa.String(40), sa.ForeignKey("reward_epochs.id"), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_reward_epoch_fundings_epoch_id", "reward_epoch_fundings", ["epoch_id"])
    op.create_table(
        "reward_epoch_weights",
        sa.Column("epoch_id", sa.String(40), sa.ForeignKey("reward_epochs.id"), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("weight", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "reward_epoch_payouts",
        sa.Column("epoch_id", sa.String(40), sa.ForeignKey("reward_epochs.id"), primary_key=True),
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("weight", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("transfer_id", sa.String(32), nullable=True),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_reward_epoch_payouts_account", "reward_epoch_payouts", ["account_id", "event_seq"])

    # Settlements, fundings, weights and payouts are append-only (I7); an epoch row only moves forward and is never
    # deleted. royalty_append_only() was created by 0001.
    for table in APPEND_ONLY:
        append_only(table)
    refuse("reward_epochs", "DELETE")
    refuse("reward_epochs", "UPDATE", when="OLD.state = 'distributed'")


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
