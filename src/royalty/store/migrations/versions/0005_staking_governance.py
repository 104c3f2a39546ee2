"""Staking (stakes, cooldowns, delegation, voting checkpoints, staker rewards) and governance (proposals, votes, timelock).

Revision ID: 0005
Revises: 0004
"""

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the work that owns this revision


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
