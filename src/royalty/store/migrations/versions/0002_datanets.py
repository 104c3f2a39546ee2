"""Datanets: datanets, contributions, versions, version members and version tree nodes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APPEND_ONLY = ("datanet_versions", "datanet_version_members", "datanet_version_blocks", "datanet_version_nodes")


def upgrade() -> None:
    op.create_table(
        "datanets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("slug", sa.String(64), nullable=False, unique=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("licenses", sa.Text, nullable=False),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("owner_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("limits", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("created_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "contributions",
        sa.Column("datanet_id", sa.String(40), sa.ForeignKey("datanets.id"), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("ordinal", sa.BigInteger, nullable=False),
        sa.Column("contributor_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("license", sa.String(64), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("consent", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=True),
        sa.Column("minhash", sa.LargeBinary, nullable=True),
        sa.Column("near_duplicate_of", sa.String(64), nullable=True),
        sa.Column("near_duplicate_score", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("reviewed_by", sa.String(40), nullable=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("created_seq", sa.BigInteger, nullable=False),
        sa.Column("updated_seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_contributions_order", "contributions", ["datanet_id", "ordinal"], unique=True)
    op.create_index("ix_contributions_quota", "contributions", ["datanet_id", "contributor_id", "created_ms"])
    op.create_index("ix_contributions_status", "contributions", ["datanet_id", "status", "ordinal"])
    op.create_table(
        "datanet_versions",
        sa.Column("datanet_id", sa.String(40), sa.ForeignKey("datanets.id"), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("stats", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("created_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "datanet_version_members",
        sa.Column("datanet_id", sa.String(40), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("contribution_id", sa.String(64), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "datanet_version_blocks",
        sa.Column("datanet_id", sa.String(40), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("block", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("first_ordinal", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_version_blocks_ordinal", "datanet_version_blocks", ["datanet_id", "version", "first_ordinal"], unique=True
    )
    op.create_table(
        "datanet_version_nodes",
        sa.Column("datanet_id", sa.String(40), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sqlite_with_rowid=False,
    )

    dialect = op.get_bind().dialect.name
    for table in APPEND_ONLY:
        for action in ("UPDATE", "DELETE"):
            name = f"{table}_no_{action.lower()}"
            if dialect == "sqlite":
                op.execute(
                    f"CREATE TRIGGER {name} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
            else:  # royalty_append_only() was created by 0001
                op.execute(
                    f"CREATE TRIGGER {name} BEFORE {action} ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION royalty_append_only()"
                )


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
