"""The Node: royalty's one entry point. It owns the settings, the store, the blob store, the journal, the node
signing key and every service; the CLI, the HTTP server and the tests all start from ``open_node``.

A node's home holds::

    node.json     identity: node id, journal origin, database URL when not the default, format version
    node.key      the Ed25519 signing key for journal checkpoints (PKCS#8 PEM, mode 0600)
    royalty.db    the SQLite database (absent when the node uses PostgreSQL)
    blobs/        the content-addressed blob store
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import make_url

from .accounts import Accounts
from .datanet import Datanets
from .attribution.service import Attribution
from .errors import Conflict, DatabaseMissing, NodeCorrupt, NodeNotFound
from .factory import Factory
from .factory.adapters import Adapters
from .factory.jobs import Jobs
from .journal.checkpoint import Signer, create_key_file, load_key_file
from .journal.log import Journal
from .ledger import Ledger
from .ledger.audit import AuditReport, audit_ledger
from .ledger.fees import Fees
from .ledger.governance import Governance
from .ledger.params import ParamsRegistry, build_params
from .ledger.rewards import Rewards
from .ledger.staking import Staking
from .ledger.tokens import DEFAULT_GENESIS_SUPPLY, Tokens, check_genesis_supply
from .settings import Settings, load_settings
from .store import BlobStore, Store
from .store.migrations import ensure_current
from .store.schema import meta

NODE_FORMAT = 1
NODE_FILE = "node.json"
KEY_FILE = "node.key"

# The protocol's own accounts, made at genesis. The ledger (issue 4) gives each its token accounts.
SYSTEM_ACCOUNTS: tuple[tuple[str, str], ...] = (
    ("treasury", "the protocol treasury: genesis supply, protocol fees, governance-controlled"),
    ("fees", "escrow for inference fees between reservation and settlement"),
    ("rewards", "the pool that pays gOPEN stakers and data contributors"),
)
OPERATOR = "operator"  # the admin account of whoever runs this node's CLI


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    origin: str
    verifier_key: str
    database: str
    home: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "origin": self.origin,
            "verifier_key": self.verifier_key,
            "database": self.database,
            "home": str(self.home),
        }


class Node:
    """The hub object. Use ``open_node(home)`` or ``init_node(home)`` rather than constructing it."""

    def __init__(self, settings: Settings, identity: dict[str, Any], signer: Signer, store: Store, clock: Callable[[], int]):
        self.settings = settings
        self.home = settings.home
        self.node_id: str = identity["node_id"]
        self.origin: str = identity["origin"]
        self.signer = signer
        self.store = store
        self.clock = clock
        self.blobs = BlobStore(self.home / "blobs")
        self.journal = Journal(store, signer, self.origin, clock)
        self.accounts = Accounts(store, self.journal, clock)
        self.datanets = Datanets(store, self.journal, self.accounts, clock)
        self.ledger = Ledger(store, self.journal, clock)
        self.params = ParamsRegistry(store, self.journal, clock)
        self.tokens = Tokens(store, self.ledger, self.accounts, self.params, clock)
        self.staking = Staking(store, self.ledger, self.tokens, self.accounts, self.params, clock)
        self.governance = Governance(store, self.ledger, self.tokens, self.staking, self.accounts, self.params, clock)
        self.fees = Fees(store, self.ledger, self.tokens, self.staking, self.accounts, self.params, clock)
        self.rewards = Rewards(store, self.ledger, self.tokens, self.accounts, self.params, clock)
        self.datanets.fees = self.fees  # publishing a datanet version charges the publishing fee
        self.adapters = Adapters(store, self.journal, self.accounts, self.fees, self.home, clock)
        self.jobs = Jobs(store, self.accounts, clock)
        self.factory = Factory(self)
        self.attribution = Attribution(self)

    @property
    def info(self) -> NodeInfo:
        return NodeInfo(self.node_id, self.origin, self.signer.verifier_key, _redact(self.store.url), self.home)

    def operator(self) -> str:
        """The id of the operator account (admin), the actor for CLI commands run on this home."""
        return self.accounts.get(OPERATOR).id

    def ledger_audit(self) -> AuditReport:
        """Replay the journal into an independent ledger and check it against the database (``ledger/audit.py``)."""
        return audit_ledger(self)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def init_node(
    home: str | Path | None = None,
    *,
    database_url: str | None = None,
    origin: str | None = None,
    clock: Callable[[], int] = now_ms,
    supply: int = DEFAULT_GENESIS_SUPPLY,
    params: dict[str, Any] | None = None,
) -> tuple[Node, bool]:
    """Create a node's home (or finish one whose creation was interrupted). Returns (node, created).

    Safe to run twice: an initialised home is opened and returned with ``created=False``. Each step is
    idempotent: the key is kept if present, migrations are applied, genesis runs once (one transaction), and
    ``node.json`` is written last, so its presence means the node is complete.

    ``supply`` (base units) is the OPEN issued to the treasury at genesis; ``params`` overrides the default
    governed Params at genesis (afterwards only governance changes them). Both are validated before anything
    is written.
    """
    genesis_params = build_params(params or {})
    check_genesis_supply(supply, genesis_params.supply_cap)
    settings = load_settings(home, database_url)
    root = settings.home
    if (root / NODE_FILE).exists():
        if database_url or origin:
            existing = _read_identity(root)
            if origin and origin != existing["origin"]:
                raise Conflict(f"{root} is already a node with origin {existing['origin']!r}; not changing it", field="origin")
        return open_node(root, database_url=database_url, clock=clock), False

    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = root / KEY_FILE
    key = load_key_file(key_path) if key_path.exists() else create_key_file(key_path)

    store = Store(settings.resolved_database_url(), busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    try:
        ensure_current(store)
        with store.read() as conn:
            recorded = dict(conn.execute(select(meta.c.key, meta.c.value)).all())
        if recorded:
            identity = {"node_id": recorded["node_id"], "origin": recorded["origin"]}
            signer = Signer(identity["origin"], key)
            if recorded.get("verifier_key") != signer.verifier_key:
                raise Conflict(
                    f"the database already belongs to node {recorded['node_id']} with a different signing key; "
                    "use an empty database for a new node",
                    field="database_url",
                )
            node = Node(settings, identity, signer, store, clock)
        else:
            node_id = "node_" + secrets.token_hex(8)
            identity = {"node_id": node_id, "origin": origin or f"royalty.local/{node_id}"}
            signer = _make_signer(identity["origin"], key)
            node = Node(settings, identity, signer, store, clock)
            _genesis(node, supply, dict(params or {}))
        identity_file: dict[str, Any] = {"format": NODE_FORMAT, **identity}
        if settings.database_url:
            identity_file["database_url"] = settings.database_url
        node.blobs.root.mkdir(exist_ok=True)
        node.journal.checkpoint()
        _write_json_atomic(root / NODE_FILE, identity_file)
    except BaseException:
        store.close()
        raise
    return node, True


def open_node(
    home: str | Path | None = None, *, database_url: str | None = None, clock: Callable[[], int] = now_ms
) -> Node:
    """Open an initialised node: checks the home, key and database, applies pending migrations.

    Raises:
        NodeNotFound: no node at ``home``.
        NodeCorrupt / InsecurePermissions: a damaged or exposed file in the home.
        DatabaseMissing / DatabaseTooNew / StorageError: the database cannot be used.
    """
    settings = load_settings(home, database_url)
    root = settings.home
    identity = _read_identity(root)
    if database_url is None and "ROYALTY_DATABASE_URL" not in os.environ and identity.get("database_url"):
        settings = load_settings(root, identity["database_url"])
    signer = _make_signer(identity["origin"], load_key_file(root / KEY_FILE))

    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        db_path = make_url(url).database
        if db_path and not Path(db_path).exists():
            raise DatabaseMissing(f"the node's database {db_path} is missing; restore it from backup")
    store = Store(url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    try:
        ensure_current(store)
        with store.read() as conn:
            recorded = dict(conn.execute(select(meta.c.key, meta.c.value)).all())
        if recorded.get("node_id") != identity["node_id"]:
            raise NodeCorrupt(
                f"the database belongs to node {recorded.get('node_id')!r}, but {root / NODE_FILE} says "
                f"{identity['node_id']!r}; check ROYALTY_DATABASE_URL"
            )
        if recorded.get("verifier_key") != signer.verifier_key:
            raise NodeCorrupt(f"{root / KEY_FILE} is not the key this node was created with; restore the original key")
    except BaseException:
        store.close()
        raise
    return Node(settings, identity, signer, store, clock)


def _genesis(node: Node, supply: int, params: dict[str, Any]) -> None:
    """Record the node's identity, create the protocol's accounts, set the genesis Params (``params``: overrides of the defaults) and issue the genesis
    supply to the treasury, in one transaction; journal event 0 is ``node.genesis``."""
    with node.store.write() as conn:
        conn.execute(
            insert(meta),
            [
                {"key": "node_id", "value": node.node_id},
                {"key": "origin", "value": node.origin},
                {"key": "verifier_key", "value": node.signer.verifier_key},
            ],
        )
        node.journal.append(
            conn,
            "node.genesis",
            {"node_id": node.node_id, "origin": node.origin, "verifier_key": node.signer.verifier_key, "format": NODE_FORMAT},
        )
        for name, _purpose in SYSTEM_ACCOUNTS:
            node.accounts.create_in(conn, name, kind="system", roles=(), with_key=False, actor=None)
        node.accounts.create_in(conn, OPERATOR, kind="person", roles=("admin",), with_key=False, actor=None)
        node.params.set_in(conn, params, reason="genesis")
        node.tokens.genesis_in(conn, supply)


def _make_signer(origin: str, key: Any) -> Signer:
    try:
        return Signer(origin, key)
    except ValueError as exc:
        raise NodeCorrupt(f"invalid journal origin in {NODE_FILE}: {exc}") from None


def _read_identity(root: Path) -> dict[str, Any]:
    path = root / NODE_FILE
    if not root.is_dir():
        raise NodeNotFound(f"no royalty node at {root}: the directory does not exist; create one with: royalty init --home {root}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NodeNotFound(f"no royalty node at {root} (no {NODE_FILE}); create one with: royalty init --home {root}") from None
    except UnicodeDecodeError:
        raise NodeCorrupt(f"{path} is not UTF-8 text; restore it from backup") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("node_id"), str) or not isinstance(data.get("origin"), str):
            raise ValueError("missing node_id or origin")
    except ValueError as exc:
        raise NodeCorrupt(f"{path} is damaged ({exc}); restore it from backup") from None
    if data.get("format", 0) > NODE_FORMAT:
        raise NodeCorrupt(f"{path} has format {data['format']}, newer than this royalty supports; upgrade royalty")
    return data


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # 0600: the database URL may carry a password.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
