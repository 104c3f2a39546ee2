"""The store: migrations, schema, SQLite discipline (WAL, FULL sync, BEGIN IMMEDIATE), append-only triggers, the
blob store, and how a node's home and database are bound together."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import RawDB
from sqlalchemy import text

import royalty
from royalty import Node
from royalty.errors import Conflict, DatabaseMissing, DatabaseTooNew, InvalidInput, NodeCorrupt, NotFound, StorageError
from royalty.store import BlobStore, Store
from royalty.store import migrations
from royalty.store.schema import APPEND_ONLY, metadata

# What genesis journals: the node, its four accounts (treasury, fees, rewards, operator), the genesis Params,
# the protocol's ledger accounts and the genesis supply.
GENESIS_TYPES = ["node.genesis"] + ["account.created"] * 4 + ["params.set", "ledger.accounts", "ledger.genesis"]

# --------------------------------------------------------------------------------------------------------------
# migrations and schema
# --------------------------------------------------------------------------------------------------------------


def _script_directory() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations.SCRIPT_LOCATION))
    return ScriptDirectory.from_config(cfg)


def test_revisions_match_the_scripts() -> None:
    script = _script_directory()
    in_order = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert in_order, "no migration scripts found"
    assert tuple(in_order) == migrations.REVISIONS
    assert script.get_heads() == [migrations.HEAD]
    assert script.get_current_head() == migrations.HEAD == migrations.REVISIONS[-1]
    # Each script revises the one before it: a straight line, no branches.
    for older, newer in zip(in_order, in_order[1:]):
        assert script.get_revision(newer).down_revision == older
    assert script.get_revision(in_order[0]).down_revision is None


def test_migrations_applied_on_open_and_schema_matches_metadata(node: Node, raw_db: RawDB) -> None:
    assert raw_db.one("SELECT version_num FROM alembic_version") == migrations.HEAD
    # Already current: opening again runs no migration.
    assert migrations.ensure_current(node.store) is False
    with node.store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diffs = compare_metadata(context, metadata)
        assert migrations.current_revision(conn) == migrations.HEAD
    assert diffs == []


def test_ensure_current_migrates_an_empty_database(tmp_path: Path, pg_schemas_or_sqlite: str) -> None:
    store = Store(pg_schemas_or_sqlite)
    try:
        with store.read() as conn:
            assert migrations.current_revision(conn) is None
        assert migrations.ensure_current(store) is True
        assert migrations.ensure_current(store) is False
        with store.read() as conn:
            assert migrations.current_revision(conn) == migrations.HEAD
            # The migration seeds the empty tree's head row.
            size, root = conn.execute(text("SELECT size, root FROM journal_head WHERE id = 1")).one()
            assert (size, bytes(root)) == (0, hashlib.sha256(b"").digest())
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def pg_schemas_or_sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A resolved URL of an empty database (for Store used without a node)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url = request.getfixturevalue("pg_schemas").new_url()
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def test_database_too_new_is_refused(node: Node, home: Path, raw_db: RawDB, database_url: str | None) -> None:
    node.close()
    raw_db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(DatabaseTooNew) as info:
        royalty.open_node(home, database_url=database_url)
    message = info.value.message
    assert "'9999'" in message and "upgrade royalty" in message and f"'{migrations.HEAD}'" in message
    assert "\n" not in message
    # Refused, not "repaired": the stamp is untouched.
    assert raw_db.one("SELECT version_num FROM alembic_version") == "9999"


def test_postgres_schema_isolation(pg_schemas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The fixtures' way of isolating tests works: every table, alembic_version and the trigger function
    included, lands in the test's schema and nowhere else."""
    import psycopg

    def objects_outside(conn: psycopg.Connection, schema: str) -> list[tuple[str, str]]:
        return conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname <> %s AND c.relname IN ('alembic_version', 'journal_events', 'meta') "
            "UNION ALL SELECT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname <> %s AND p.proname = 'royalty_append_only' ORDER BY 1, 2",
            (schema, schema),
        ).fetchall()

    url = pg_schemas.new_url()
    schema = url.rsplit("%3D", 1)[1]
    with psycopg.connect(pg_schemas.base, autocommit=True) as conn:
        before = objects_outside(conn, schema)
    node, _ = royalty.init_node(tmp_path / "home", database_url=url)
    node.close()
    with psycopg.connect(pg_schemas.base, autocommit=True) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
            ).fetchall()
        }
        functions = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
            (schema,),
        ).fetchall()
        after = objects_outside(conn, schema)
    assert tables == {t.name for t in metadata.sorted_tables} | {"alembic_version"}
    assert functions == [("royalty_append_only",)]
    assert after == before


# --------------------------------------------------------------------------------------------------------------
# SQLite discipline
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_node(tmp_path: Path) -> Iterator[Node]:
    node, _ = royalty.init_node(tmp_path / "home")
    try:
        yield node
    finally:
        node.close()


def test_sqlite_pragmas_on_every_connection(sqlite_node: Node) -> None:
    store = sqlite_node.store
    assert store.backend == "sqlite"
    # Several connections open at once: each was set up by the pool's connect hook.
    conns = [store.engine.connect() for _ in range(3)]
    try:
        for conn in conns:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    finally:
        for conn in conns:
            conn.close()
    with store.write() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def _other_writer(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("PRAGMA busy_timeout = 0")
    return other


def test_write_transaction_holds_the_write_lock_from_its_start(sqlite_node: Node, home: Path) -> None:
    db = home / "royalty.db"
    other = _other_writer(db)
    try:
        with sqlite_node.store.write():
            # Nothing executed yet in this transaction: BEGIN IMMEDIATE alone must hold the lock.
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("BEGIN IMMEDIATE")
        # Released at commit.
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        # A read transaction takes no write lock.
        with sqlite_node.store.read() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM journal_events").scalar()
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        # And after a rolled-back write, the lock is released too.
        with pytest.raises(RuntimeError), sqlite_node.store.write():
            raise RuntimeError("boom")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_foreign_keys_are_enforced(sqlite_node: Node) -> None:
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), sqlite_node.store.write() as conn:
        conn.exec_driver_sql(
            "INSERT INTO api_keys (id, account_id, secret_hash, label, created_ms) VALUES ('k', 'acct_nobody', x'00', 'l', 1)"
        )


def test_missing_sqlite_database_is_reported(sqlite_node: Node, home: Path) -> None:
    sqlite_node.close()
    for suffix in ("", "-wal", "-shm"):
        path = home / f"royalty.db{suffix}"
        if path.exists():
            path.unlink()
    with pytest.raises(DatabaseMissing, match="missing"):
        royalty.open_node(home)
    assert not (home / "royalty.db").exists(), "open_node must not create an empty database in place of a lost one"


# --------------------------------------------------------------------------------------------------------------
# append-only tables
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", [t for t in APPEND_ONLY if t.startswith("journal_")])
def test_append_only_tables_refuse_update_and_delete(node: Node, raw_db: RawDB, table: str) -> None:
    before = raw_db.all(f"SELECT * FROM {table} ORDER BY 1, 2")
    assert before, f"genesis should have written rows to {table}"
    column = {"journal_events": "type", "journal_nodes": "level", "journal_checkpoints": "note"}[table]
    value = 7 if column == "level" else "forged"
    for statement, params in ((f"UPDATE {table} SET {column} = ?", (value,)), (f"DELETE FROM {table}", ())):
        with pytest.raises(Exception, match="append-only") as info:
            raw_db.execute(statement, params)
        assert type(info.value).__module__.split(".")[0] in ("sqlite3", "psycopg"), info.value
    assert raw_db.all(f"SELECT * FROM {table} ORDER BY 1, 2") == before
    # Inserting is still allowed (that is what append-only means): the node keeps working.
    size = node.journal.size()
    with node.store.write() as conn:
        node.journal.append(conn, "test.after_refusal", {"n": 1})
    assert node.journal.size() == size + 1


def test_append_only_through_sqlalchemy(node: Node) -> None:
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError, match="append-only"), node.store.write() as conn:
        conn.exec_driver_sql("DELETE FROM journal_events WHERE seq = 0")
    assert node.journal.event(0).type == "node.genesis"


# --------------------------------------------------------------------------------------------------------------
# blob store
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_blob_round_trip(blobs: BlobStore) -> None:
    data = b"hello royalty\x00\xff"
    name = blobs.put(data)
    assert name == hashlib.sha256(data).hexdigest()
    assert blobs.get(name) == data
    assert blobs.exists(name)
    path = blobs.path(name)
    assert path == blobs.root / name[:2] / name[2:4] / name
    assert path.read_bytes() == data
    assert _all_files(blobs.root) == [path]
    empty = blobs.put(b"")
    assert empty == hashlib.sha256(b"").hexdigest() and blobs.get(empty) == b""


def test_blob_same_content_twice_is_a_no_op(blobs: BlobStore) -> None:
    name = blobs.put(b"same bytes")
    before = blobs.path(name).stat()
    assert blobs.put(b"same bytes") == name
    assert blobs.put_stream(io.BytesIO(b"same bytes")) == name
    after = blobs.path(name).stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert _all_files(blobs.root) == [blobs.path(name)]


def test_blob_put_stream_of_several_megabytes(blobs: BlobStore) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)  # spans several 1 MiB chunks, with a partial last one

    class Trickle(io.RawIOBase):
        """Returns at most 300 KiB per read, so chunk boundaries fall anywhere."""

        def __init__(self) -> None:
            self.pos = 0
            self.reads = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.reads += 1
            n = min(n if n >= 0 else len(data), 300 * 1024)
            chunk = data[self.pos : self.pos + n]
            self.pos += len(chunk)
            return chunk

    stream = Trickle()
    name = blobs.put_stream(stream)  # type: ignore[arg-type]
    assert name == hashlib.sha256(data).hexdigest()
    assert stream.reads > 5, "the stream must be read in pieces"
    assert blobs.get(name) == data
    assert blobs.put_stream(io.BytesIO(data)) == name


def test_blob_tampered_file_is_detected(blobs: BlobStore) -> None:
    name = blobs.put(b"original content")
    path = blobs.path(name)
    path.chmod(0o644)
    path.write_bytes(b"original contenT")
    with pytest.raises(StorageError, match="corrupt"):
        blobs.get(name)
    assert blobs.get(name, verify=False) == b"original contenT"


def test_blob_purge(blobs: BlobStore) -> None:
    name = blobs.put(b"to be withdrawn")
    keep = blobs.put(b"to be kept")
    assert blobs.purge(name) is True
    assert not blobs.exists(name)
    with pytest.raises(NotFound, match=name):
        blobs.get(name)
    assert blobs.purge(name) is False
    assert blobs.get(keep) == b"to be kept"
    with pytest.raises(NotFound):
        blobs.get(hashlib.sha256(b"never stored").hexdigest())


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "0" * 63,
        "0" * 65,
        "A" * 64,
        "g" * 64,
        "../" + "0" * 61,
        "0" * 62 + "/x",
        " " + "0" * 63,
        "0" * 64 + "\n",  # a trailing newline must not slip past the pattern
    ],
    ids=["empty", "short", "63", "65", "upper", "non-hex", "dotdot", "slash", "space", "trailing-newline"],
)
def test_blob_invalid_names(blobs: BlobStore, bad: str) -> None:
    for call in (blobs.get, blobs.purge, blobs.exists, blobs.path):
        with pytest.raises(InvalidInput) as info:
            call(bad)
        assert info.value.field == "blob"
    assert _all_files(blobs.root) == []


def test_blob_failed_write_leaves_nothing_behind(blobs: BlobStore) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.reads = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.reads += 1
            if self.reads == 3:
                raise OSError("connection reset while uploading")
            return b"x" * 1000

    with pytest.raises(OSError, match="connection reset"):
        blobs.put_stream(Broken())  # type: ignore[arg-type]
    assert _all_files(blobs.root) == []

    def chunks() -> Iterator[bytes]:
        yield b"part one"
        raise KeyboardInterrupt  # even a BaseException cleans up

    with pytest.raises(KeyboardInterrupt):
        blobs.put_chunks(chunks())
    assert _all_files(blobs.root) == []
    # The store still works afterwards.
    name = blobs.put(b"ok")
    assert _all_files(blobs.root) == [blobs.path(name)]


# --------------------------------------------------------------------------------------------------------------
# a node's home and its database
# --------------------------------------------------------------------------------------------------------------


def test_init_twice_does_not_duplicate_genesis(node: Node, home: Path, database_url: str | None, closing) -> None:  # type: ignore[no-untyped-def]
    size = node.journal.size()
    accounts = [a.name for a in node.accounts.list()]
    again, created = royalty.init_node(home, database_url=database_url)
    closing(again)
    assert created is False
    assert again.node_id == node.node_id and again.signer.verifier_key == node.signer.verifier_key
    assert again.journal.size() == size == len(GENESIS_TYPES)
    assert [e.type for e in again.journal.events()] == GENESIS_TYPES
    assert [a.name for a in again.accounts.list()] == accounts
    assert len(again.journal.events(type="node.genesis")) == 1
    # Without repeating the URL: node.json remembers it.
    third, created = royalty.init_node(home)
    closing(third)
    assert created is False and third.journal.size() == size


def test_init_with_another_origin_is_refused(node: Node, home: Path, database_url: str | None) -> None:
    with pytest.raises(Conflict) as info:
        royalty.init_node(home, database_url=database_url, origin="example.org/other")
    assert info.value.field == "origin"


def test_interrupted_init_is_finished(node: Node, home: Path, database_url: str | None, closing) -> None:  # type: ignore[no-untyped-def]
    """Genesis committed but node.json not written yet: init again finishes the same node."""
    node.close()
    (home / "node.json").unlink()
    again, created = royalty.init_node(home, database_url=database_url)
    closing(again)
    assert created is True
    assert again.node_id == node.node_id
    assert [e.type for e in again.journal.events()] == GENESIS_TYPES
    assert len(again.journal.events(type="node.genesis")) == 1


def test_init_on_another_nodes_database_is_refused(
    node: Node, tmp_path: Path, database_url: str | None, raw_db: RawDB
) -> None:
    url = database_url or f"sqlite:///{node.home / 'royalty.db'}"
    before = raw_db.one("SELECT count(*) FROM journal_events")
    with pytest.raises(Conflict, match=node.node_id) as info:
        royalty.init_node(tmp_path / "intruder", database_url=url)
    assert info.value.field == "database_url"
    assert not (tmp_path / "intruder" / "node.json").exists()
    assert raw_db.one("SELECT count(*) FROM journal_events") == before
    assert raw_db.one("SELECT value FROM meta WHERE key = 'node_id'") == node.node_id


def test_open_with_another_nodes_database_is_refused(
    node: Node, tmp_path: Path, database_url: str | None, closing, request: pytest.FixtureRequest
) -> None:  # type: ignore[no-untyped-def]
    other_home = tmp_path / "other"
    other_url = None if database_url is None else request.getfixturevalue("pg_schemas").new_url()
    other, _ = royalty.init_node(other_home, database_url=other_url)
    closing(other)
    assert other.node_id != node.node_id
    this_url = database_url or f"sqlite:///{node.home / 'royalty.db'}"
    with pytest.raises(NodeCorrupt, match=node.node_id):
        royalty.open_node(other_home, database_url=this_url)
    # The other way round too.
    with pytest.raises(NodeCorrupt, match=other.node_id):
        royalty.open_node(node.home, database_url=other_url or f"sqlite:///{other_home / 'royalty.db'}")
    # Both still open normally with their own databases.
    closing(royalty.open_node(other_home))
    closing(royalty.open_node(node.home))


def test_a_writer_that_waits_too_long_gets_a_storage_error_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "busy"
    royalty.init_node(home)[0].close()
    monkeypatch.setenv("ROYALTY_SQLITE_BUSY_TIMEOUT_MS", "100")
    node = royalty.open_node(home)
    size = node.journal.size()
    blocker = sqlite3.connect(home / "royalty.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StorageError, match="database error: database is locked"):
            node.accounts.create("waiting")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert node.journal.size() == size
    assert [a.name for a in node.accounts.list()] == ["treasury", "fees", "rewards", "operator"]
    node.accounts.create("waiting")  # and the node works once the lock is gone
    node.close()
