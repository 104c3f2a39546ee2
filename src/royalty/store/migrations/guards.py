"""Append-only guards for migrations: triggers that refuse UPDATE/DELETE on a table (I7).

Kept stable on purpose: migrations that call it must create the same triggers forever. ``royalty_append_only()``
(PostgreSQL) was created by revision 0001.
"""

from __future__ import annotations

from alembic import op


def refuse(table: str, action: str, *, when: str | None = None, name: str | None = None) -> None:
    """A trigger refusing ``action`` ("UPDATE" or "DELETE") on ``table``, only for rows matching the SQL condition
    ``when`` if given (e.g. ``"OLD.state <> 'pending'"``). Named ``<table>_no_<action>`` unless ``name`` is given."""
    name = name or f"{table}_no_{action.lower()}"
    if op.get_bind().dialect.name == "sqlite":
        cond = f"WHEN {when} " if when else ""
        op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON {table} FOR EACH ROW {cond}"
                   f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END")
    else:
        cond = f"WHEN ({when}) " if when else ""
        op.execute(f"CREATE TRIGGER {name} BEFORE {action} ON {table} FOR EACH ROW {cond}"
                   "EXECUTE FUNCTION royalty_append_only()")


def append_only(table: str, actions: tuple[str, ...] = ("UPDATE", "DELETE")) -> None:
    """Refuse every ``action`` on ``table``."""
    for action in actions:
        refuse(table, action)
