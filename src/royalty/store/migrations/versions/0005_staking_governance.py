"""Staking (stakes, cooldowns, delegation, voting checkpoints, staker rewards) and governance (proposals, votes, timelock).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from royalty.store.migrations.guards import append_only

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _upgrade_staking()
    _upgrade_governance()


# --- staking ---
def _upgrade_staking() -> None:
    state = op.create_table(
        "staking_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("total_staked", sa.BigInteger, nullable=False),
        sa.Column("reward_per_token", sa.Text, nullable=False),
        sa.Column("distributed", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "total_staked": 0, "reward_per_token": "0", "distributed": 0}])
    op.create_table(
        "staking_stakers",
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("staked", sa.BigInteger, nullable=False),
        sa.Column("delegatee_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=True),
        sa.Column("cooldown_start_ms", sa.BigInteger, nullable=True),
        sa.Column("cooldown_budget", sa.BigInteger, nullable=False),
        sa.Column("reward_paid_rpt", sa.Text, nullable=False),
        sa.Column("rewards_stored", sa.BigInteger, nullable=False),
        sa.Column("claims", sa.BigInteger, nullable=False),
        sa.Column("updated_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_staking_stakers_delegatee_id", "staking_stakers", ["delegatee_id"])
    op.create_table(
        "staking_delegates",
        sa.Column("delegatee_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("votes", sa.BigInteger, nullable=False),
        sa.Column("updated_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "staking_vote_checkpoints",
        sa.Column("delegatee_id", sa.String(40), primary_key=True),
        sa.Column("timepoint_ms", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("votes", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "staking_supply_checkpoints",
        sa.Column("timepoint_ms", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("supply", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    for table in ("staking_vote_checkpoints", "staking_supply_checkpoints"):
        append_only(table)
    # The mutable staking rows are never deleted (a participant's history stays reconstructible).
    for table in ("staking_state", "staking_stakers", "staking_delegates"):
        append_only(table, ("DELETE",))
# --- end staking ---


# --- governance ---
def _upgrade_governance() -> None:
    # Proposals, votes and lifecycle marks (queued / executed / canceled): all append-only (I7, I10); state is
    # derived from the clock and these rows.
    op.create_table(
        "gov_proposals",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("proposer_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("description_hash", sa.String(64), nullable=False),
        sa.Column("actions_json", sa.Text, nullable=False),
        sa.Column("threshold", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("snapshot_ms", sa.BigInteger, nullable=False),
        sa.Column("deadline_ms", sa.BigInteger, nullable=False),
        sa.Column("created_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_gov_proposals_order", "gov_proposals", ["created_seq"], unique=True)
    op.create_table(
        "gov_votes",
        sa.Column("proposal_id", sa.String(24), sa.ForeignKey("gov_proposals.id"), primary_key=True),
        sa.Column("voter_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("support", sa.SmallInteger, nullable=False),
        sa.Column("weight", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("cast_ms", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "gov_transitions",
        sa.Column("proposal_id", sa.String(24), sa.ForeignKey("gov_proposals.id"), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("actor_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("eta_ms", sa.BigInteger, nullable=True),
        sa.Column("expires_ms", sa.BigInteger, nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    for table in ("gov_proposals", "gov_votes", "gov_transitions"):
        append_only(table)
# --- end governance ---


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
