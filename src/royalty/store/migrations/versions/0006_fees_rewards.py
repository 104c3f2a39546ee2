"""Inference fees (reservations and settlements) and reward epochs.

Revision ID: 0006
Revises: 0005
"""

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the work that owns this revision


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
