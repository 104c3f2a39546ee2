"""Schema migrations (Alembic), applied automatically when a node opens its store.

``REVISIONS`` lists every revision this code knows, oldest first; a test keeps it equal to the scripts in
``versions/``. Opening a database at the head revision costs one query and never imports Alembic; a database
at an older revision is upgraded in one transaction; a database at a revision this code does not know was
written by a newer royalty and is refused rather than guessed at.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError

from ...errors import DatabaseTooNew, StorageError
from ..engine import Store

REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008")
HEAD = REVISIONS[-1]
SCRIPT_LOCATION = Path(__file__).parent


def current_revision(conn: Connection) -> str | None:
    """The revision stamped in the database, or None for an empty database."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def ensure_current(store: Store) -> bool:
    """Bring the database to ``HEAD``. Returns True if a migration ran.

    Raises:
        DatabaseTooNew: the database carries a revision this code does not know.
    """
    with store.read() as conn:
        revision = current_revision(conn)
    if revision == HEAD:
        return False
    if revision is not None and revision not in REVISIONS:
        raise DatabaseTooNew(
            f"the database is at schema revision {revision!r}, newer than this royalty understands "
            f"(latest known {HEAD!r}); upgrade royalty"
        )
    _upgrade(store)
    return True


def _upgrade(store: Store) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    # IMMEDIATE on SQLite: a second process opening the same new database waits instead of racing us.
    try:
        with store.write() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, HEAD)
    except DBAPIError as exc:
        raise StorageError(f"migrating the database to revision {HEAD} failed: {str(exc.orig).strip().splitlines()[0]}") from exc
