"""Ledger write path: history chains instead of two per-account indexes on ledger_transfers.

Each transfer row points to the previous transfer of its debit and of its credit account (``debit_prev`` /
``credit_prev``, positions ``event_seq << 20 | event_index``), each account row keeps its ``version`` (transfers
that touched it) and ``last_pos`` (its newest), and every 32nd transfer of an account is a row of
``ledger_history_marks``. The indexes ix_ledger_transfers_debit / _credit go: two random B-tree inserts per
transfer were about half of SQLite's write cost at 100,000 accounts. Existing transfers are linked here.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEX_BITS = 20  # royalty.ledger.core.INDEX_BITS
MARK_EVERY = 32  # royalty.ledger.core.HISTORY_MARK_EVERY
_PAGE = 10_000


def upgrade() -> None:
    op.add_column("ledger_accounts", sa.Column("version", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("ledger_accounts", sa.Column("last_pos", sa.BigInteger, nullable=True))
    op.add_column("ledger_transfers", sa.Column("debit_prev", sa.BigInteger, nullable=True))
    op.add_column("ledger_transfers", sa.Column("credit_prev", sa.BigInteger, nullable=True))
    op.drop_index("ix_ledger_transfers_debit", table_name="ledger_transfers")
    op.drop_index("ix_ledger_transfers_credit", table_name="ledger_transfers")
    op.create_table(
        "ledger_history_marks",
        sa.Column("account_id", sa.String(32), primary_key=True),
        sa.Column("pos", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )
    _link_existing_transfers()


def _link_existing_transfers() -> None:
    """Build the chains of the transfers written before this revision, oldest first."""
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT 1 FROM ledger_transfers LIMIT 1")).first() is None:
        return
    dialect = conn.dialect.name
    # ledger_transfers refuses UPDATE (I7); these columns are new and derived, so the guard steps aside here only.
    if dialect == "sqlite":
        op.execute("DROP TRIGGER ledger_transfers_no_update")
    else:
        op.execute("ALTER TABLE ledger_transfers DISABLE TRIGGER ledger_transfers_no_update")
    heads: dict[str, list[int | None]] = {}  # account -> [version, last_pos]
    after = (-1, -1)
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT id, debit_account_id, credit_account_id, event_seq, event_index FROM ledger_transfers "
                "WHERE event_seq > :s OR (event_seq = :s AND event_index > :i) ORDER BY event_seq, event_index "
                "LIMIT :n"
            ),
            {"s": after[0], "i": after[1], "n": _PAGE},
        ).all()
        if not rows:
            break
        links, marks = [], []
        for tid, dr, cr, seq, index in rows:
            pos = int(seq) << INDEX_BITS | int(index)
            prev = []
            for account in (dr, cr):
                head = heads.setdefault(account, [0, None])
                prev.append(head[1])
                head[0] = int(head[0] or 0) + 1
                head[1] = pos
                if head[0] % MARK_EVERY == 0:
                    marks.append({"a": account, "p": pos, "v": head[0]})
            links.append({"id": tid, "d": prev[0], "c": prev[1]})
        conn.execute(sa.text("UPDATE ledger_transfers SET debit_prev = :d, credit_prev = :c WHERE id = :id"), links)
        if marks:
            conn.execute(sa.text("INSERT INTO ledger_history_marks (account_id, pos, version) VALUES (:a, :p, :v)"), marks)
        after = (int(rows[-1][3]), int(rows[-1][4]))
    conn.execute(
        sa.text("UPDATE ledger_accounts SET version = :v, last_pos = :p WHERE id = :id"),
        [{"v": v, "p": p, "id": account} for account, (v, p) in heads.items()],
    )
    if dialect == "sqlite":
        op.execute(
            "CREATE TRIGGER ledger_transfers_no_update BEFORE UPDATE ON ledger_transfers FOR EACH ROW "
            "BEGIN SELECT RAISE(ABORT, 'ledger_transfers is append-only'); END"
        )
    else:
        op.execute("ALTER TABLE ledger_transfers ENABLE TRIGGER ledger_transfers_no_update")


def downgrade() -> None:
    raise NotImplementedError("royalty migrations only go forward")
