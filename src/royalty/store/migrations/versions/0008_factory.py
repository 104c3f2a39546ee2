"""ModelFactory: the adapter registry and the background jobs table with its append-only progress events.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from royalty.store.migrations.guards import append_only, refuse

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("owner_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("base_weights_sha256", sa.String(64), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("price_in_per_1k", sa.BigInteger, nullable=False),
        sa.Column("price_out_per_1k", sa.BigInteger, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("event_seq", sa.BigInteger, nullable=False),
        sa.Column("parent_id", sa.String(40), sa.ForeignKey("adapters.id"), nullable=True),
    )
    op.create_index("ix_adapters_name_version", "adapters", ["name", "version"], unique=True)
    # An adapter's row is never deleted (its id is in the journal and in fee settlements) and a deprecated one is
    # final.
    refuse("adapters", "DELETE")
    refuse("adapters", "UPDATE", when="OLD.status = 'deprecated'")

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("actor", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("started_ms", sa.BigInteger, nullable=True),
        sa.Column("finished_ms", sa.BigInteger, nullable=True),
        sa.Column("heartbeat_ms", sa.BigInteger, nullable=True),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_jobs_queue", "jobs", ["status", "created_ms"])
    op.create_table(
        "job_events",
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("time_ms", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    # A client replays a job's events from any seq after reconnecting: what it saw must not change under it.
    append_only("job_events")


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
