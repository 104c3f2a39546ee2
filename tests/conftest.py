"""Shared fixtures: one node per test on SQLite (HOME/royalty.db) and, when ROYALTY_TEST_POSTGRES_URL is set, on
PostgreSQL in a schema of its own.

PostgreSQL isolation: each test gets ``CREATE SCHEMA t_<random>``, and the node's URL carries
``?options=-csearch_path%3Dt_<random>`` so alembic_version and every table land in that schema
(``test_store.py::test_postgres_schema_isolation`` checks it). The schema is dropped (CASCADE) afterwards.

``RawDB`` is a plain DB-API connection (sqlite3 / psycopg) to a node's database, outside SQLAlchemy and outside
royalty: what an attacker or an operator with a SQL shell has. Tamper tests use it.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

import royalty
from royalty import Node
from royalty.cli import main as cli_main

PG_ENV = "ROYALTY_TEST_POSTGRES_URL"
PG_SKIP_REASON = "set ROYALTY_TEST_POSTGRES_URL to run PostgreSQL tests"


# --------------------------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's ROYALTY_* variables must not leak into tests (they override node.json)."""
    for name in list(os.environ):
        if name.startswith("ROYALTY_") and name != PG_ENV:
            monkeypatch.delenv(name)


class Clock:
    """A test clock for ``init_node(clock=...)``: returns ``now`` and then advances it by ``step`` ms."""

    def __init__(self, start: int = 1_700_000_000_000, step: int = 1) -> None:
        self.now = start
        self.step = step
        self.calls = 0

    def __call__(self) -> int:
        value = self.now
        self.now += self.step
        self.calls += 1
        return value


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL schemas
# --------------------------------------------------------------------------------------------------------------


def pg_base_url() -> str | None:
    return os.environ.get(PG_ENV) or None


def with_search_path(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


class PgSchemas:
    """Creates throw-away schemas on the test server and drops them (CASCADE) at teardown."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.created: list[str] = []

    def new_url(self) -> str:
        import psycopg

        schema = "t_" + secrets.token_hex(8)
        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self.created.append(schema)
        return with_search_path(self.base, schema)

    def drop_all(self) -> None:
        import psycopg

        if not self.created:
            return
        with psycopg.connect(self.base, autocommit=True) as conn:
            for schema in self.created:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.created.clear()


@pytest.fixture
def pg_schemas() -> Iterator[PgSchemas]:
    base = pg_base_url()
    if base is None:
        pytest.skip(PG_SKIP_REASON)
    schemas = PgSchemas(base)
    try:
        yield schemas
    finally:
        schemas.drop_all()


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for SQLite (the node uses HOME/royalty.db), else a PostgreSQL URL whose search_path is a fresh schema."""
    if request.param == "sqlite":
        yield None
        return
    schemas: PgSchemas = request.getfixturevalue("pg_schemas")
    yield schemas.new_url()


@pytest.fixture
def backend(database_url: str | None) -> str:
    return "sqlite" if database_url is None else "postgresql"


# --------------------------------------------------------------------------------------------------------------
# nodes
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def closing() -> Iterator[Callable[[Node], Node]]:
    """Register extra nodes a test opens so they are closed before its database is dropped."""
    opened: list[Node] = []

    def register(node: Node) -> Node:
        opened.append(node)
        return node

    yield register
    for node in reversed(opened):
        node.close()


# Genesis Params that make publishing a datanet version free, for tests about datanets rather than fees.
FREE_PUBLISHING = {"publish_fee_base": 0, "publish_fee_per_1k": 0}


@pytest.fixture
def genesis_params() -> dict[str, Any]:
    """Params overrides for the ``node`` fixture's genesis; a test module overrides this fixture to change them
    (e.g. to ``FREE_PUBLISHING``)."""
    return {}


@pytest.fixture
def node(home: Path, database_url: str | None, clock: Clock, genesis_params: dict[str, Any]) -> Iterator[Node]:
    node, created = royalty.init_node(home, database_url=database_url, clock=clock, params=genesis_params)
    assert created
    try:
        yield node
    finally:
        node.close()


# --------------------------------------------------------------------------------------------------------------
# raw database access (no SQLAlchemy, no royalty)
# --------------------------------------------------------------------------------------------------------------


class RawDB:
    """A DB-API connection in autocommit mode; ``?`` placeholders work on both backends."""

    def __init__(self, url: str) -> None:
        self.backend = "sqlite" if url.startswith("sqlite") else "postgresql"
        if self.backend == "sqlite":
            path = make_url(url).database
            assert path
            self.path = Path(path)
            self.conn: Any = sqlite3.connect(path, isolation_level=None)
        else:
            import psycopg

            self.path = None  # type: ignore[assignment]
            self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if self.backend == "postgresql":
            sql = sql.replace("?", "%s")
        return self.conn.execute(sql, params)

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in self.execute(sql, params).fetchall()]

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.all(sql, params)
        assert len(rows) == 1, rows
        return rows[0][0] if len(rows[0]) == 1 else rows[0]

    def drop_trigger(self, table: str, action: str) -> None:
        """What an attacker with SQL access does first: remove the append-only guard."""
        name = f"{table}_no_{action.lower()}"
        if self.backend == "sqlite":
            self.execute(f"DROP TRIGGER {name}")
        else:
            self.execute(f"DROP TRIGGER {name} ON {table}")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def raw_db(node: Node) -> Iterator[RawDB]:
    db = RawDB(node.store.url)
    try:
        yield db
    finally:
        db.close()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process as ``royalty ARGS``; return (exit code, stdout, stderr). A user's mistake must never
    print a traceback, so none may appear in either stream."""
    try:
        cli_main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


def load_benchmark(relative: str) -> Any:
    """The module ``benchmarks/<relative>`` (benchmarks/ is not a package), for tests that run a reduced version
    of a benchmark's setup."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / relative
    spec = importlib.util.spec_from_file_location("benchmark_" + relative.removesuffix(".py").replace("/", "_"), path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module
