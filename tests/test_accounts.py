"""Accounts: creation and validation, API keys (stored as SHA-256 of the secret only), authentication, roles,
the genesis accounts, and the journal events every change leaves."""

from __future__ import annotations

import hashlib
import re

import pytest
from conftest import Clock, RawDB

from royalty import Node
from royalty.accounts import KINDS, Account
from royalty.errors import AuthenticationError, Conflict, InvalidInput, NotFound
from royalty.journal.audit import VerifierKey, verify_journal

KEY = re.compile(r"\Ark_([a-z0-9]{16})_([A-Za-z0-9_-]{43})\Z")


def _events_after(node: Node, seq: int) -> list[tuple[str, dict, str | None]]:  # type: ignore[type-arg]
    return [(e.type, e.data, e.actor) for e in node.journal.events(after=seq, limit=1000)]


def _verify(node: Node) -> None:
    with node.store.read() as conn:
        verify_journal(conn, [VerifierKey.parse(node.signer.verifier_key)], node.origin)


def test_genesis_accounts(node: Node) -> None:
    by_name = {a.name: a for a in node.accounts.list()}
    assert set(by_name) == {"treasury", "fees", "rewards", "operator"}
    for name in ("treasury", "fees", "rewards"):
        assert by_name[name].kind == "system" and by_name[name].roles == ()
        assert not by_name[name].is_admin
    operator = by_name["operator"]
    assert operator.is_admin and operator.has_role("admin") and [str(r) for r in operator.roles] == ["admin"]
    assert node.operator() == operator.id
    assert [a.name for a in node.accounts.list(kind="system")] == ["treasury", "fees", "rewards"]
    # No API keys at genesis.
    for account in by_name.values():
        assert node.accounts.keys(account.id) == []
    # Journaled as events 1..4, after node.genesis.
    created = [(e.seq, e.data["name"], e.data["kind"], e.data["roles"], e.data["id"]) for e in node.journal.events(type="account.created")]
    assert [(by_name[n].created_seq, n) for n in ("treasury", "fees", "rewards", "operator")] == [
        (1, "treasury"), (2, "fees"), (3, "rewards"), (4, "operator")
    ]
    assert created == [
        (1, "treasury", "system", [], by_name["treasury"].id),
        (2, "fees", "system", [], by_name["fees"].id),
        (3, "rewards", "system", [], by_name["rewards"].id),
        (4, "operator", "person", ["admin"], operator.id),
    ]


def test_create_returns_id_and_key_and_journals_both(node: Node, clock: Clock) -> None:
    before = node.journal.size() - 1
    clock.now = 1_800_000_000_000
    account, key = node.accounts.create("alice", actor="acct_someone")
    assert re.fullmatch(r"acct_[0-9a-f]{16}", account.id)
    assert key is not None
    match = KEY.match(key)
    assert match, key
    key_id = match.group(1)
    assert (account.name, account.kind, account.roles, account.created_ms) == ("alice", "person", (), 1_800_000_000_000)
    assert _events_after(node, before) == [
        ("account.created", {"id": account.id, "name": "alice", "kind": "person", "roles": []}, "acct_someone"),
        ("account.key_created", {"account": account.id, "key": key_id, "label": "default"}, "acct_someone"),
    ]
    assert node.accounts.authenticate(key) == account
    (stored,) = node.accounts.keys("alice")
    assert (stored.id, stored.account_id, stored.label, stored.revoked_ms) == (key_id, account.id, "default", None)
    _verify(node)


def test_create_without_key_and_with_roles(node: Node) -> None:
    account, key = node.accounts.create("acme", kind="organisation", roles=["admin", "admin"], with_key=False)
    assert key is None
    assert account.is_admin and len(account.roles) == 1
    assert node.accounts.get("acme") == account
    assert node.accounts.keys("acme") == []
    (event,) = node.journal.events(after=node.journal.size() - 2)
    assert (event.type, event.data["roles"], event.data["kind"]) == ("account.created", ["admin"], "organisation")


def test_only_the_hash_of_the_secret_is_stored(node: Node, raw_db: RawDB) -> None:
    _, key = node.accounts.create("bob")
    assert key is not None
    _, second = node.accounts.create_key("bob", label="ci")
    for k in (key, second):
        key_id, secret = KEY.match(k).groups()  # type: ignore[union-attr]
        secret_hash = raw_db.one("SELECT secret_hash FROM api_keys WHERE id = ?", (key_id,))
        assert bytes(secret_hash) == hashlib.sha256(secret.encode()).digest()
        # Neither the key nor its secret appears anywhere: any column of any table, as text or as bytes.
        for table in ("api_keys", "accounts", "account_roles", "journal_events", "meta", "journal_checkpoints"):
            for row in raw_db.all(f"SELECT * FROM {table}"):
                for value in row:
                    if isinstance(value, str):
                        assert secret not in value and k not in value, (table, row)
                    elif isinstance(value, bytes):
                        assert secret.encode() not in value and k.encode() not in value, (table, row)


def test_authentication_failures(node: Node) -> None:
    account, key = node.accounts.create("carol")
    assert key is not None
    key_id, secret = KEY.match(key).groups()  # type: ignore[union-attr]
    assert node.accounts.authenticate(f"  {key}\n") == account
    other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    unknown_id = ("0" if key_id[0] != "0" else "1") + key_id[1:]
    with pytest.raises(AuthenticationError, match="missing"):
        node.accounts.authenticate(None)
    with pytest.raises(AuthenticationError, match="missing"):
        node.accounts.authenticate("")
    messages = set()
    for bad in (
        f"rk_{key_id}_{other_secret}",  # wrong secret
        f"rk_{unknown_id}_{secret}",  # unknown key id
        key[:-1],  # malformed: too short
        key + "x",  # malformed: too long
        key.replace("rk_", "sk_"),  # malformed: prefix
        "Bearer " + key,  # malformed: header pasted whole
        secret,  # malformed: secret alone
        key.upper(),
    ):
        with pytest.raises(AuthenticationError) as info:
            node.accounts.authenticate(bad)
        messages.add(info.value.message)
        assert info.value.status == 401
    assert messages == {"invalid API key"}  # no oracle for which ids exist
    # Revoked.
    revoked = node.accounts.revoke_key(key_id, actor=account.id)
    assert revoked.revoked_ms is not None
    with pytest.raises(AuthenticationError, match="invalid API key"):
        node.accounts.authenticate(key)


def test_revoke_and_create_keys_are_journaled(node: Node) -> None:
    account, first = node.accounts.create("dave")
    assert first is not None
    start = node.journal.size() - 1
    api_key, second = node.accounts.create_key("dave", label="laptop", actor=account.id)
    assert api_key.label == "laptop" and api_key.account_id == account.id and api_key.revoked_ms is None
    assert node.accounts.authenticate(second) == account
    assert node.accounts.authenticate(first) == account  # the first keeps working
    node.accounts.revoke_key(api_key.id, actor="acct_admin")
    again = node.accounts.revoke_key(api_key.id)  # idempotent: no second event
    assert again.revoked_ms is not None
    assert _events_after(node, start) == [
        ("account.key_created", {"account": account.id, "key": api_key.id, "label": "laptop"}, account.id),
        ("account.key_revoked", {"account": account.id, "key": api_key.id}, "acct_admin"),
    ]
    assert [(k.label, k.revoked_ms is None) for k in node.accounts.keys(account.id)] == [("default", True), ("laptop", False)]
    assert node.accounts.authenticate(first) == account
    with pytest.raises(AuthenticationError):
        node.accounts.authenticate(second)
    with pytest.raises(NotFound, match="no API key 'nokey'"):
        node.accounts.revoke_key("nokey")
    for label in ("", "x" * 65):
        with pytest.raises(InvalidInput) as info:
            node.accounts.create_key("dave", label=label)
        assert info.value.field == "label"
    with pytest.raises(NotFound):
        node.accounts.create_key("nobody")
    _verify(node)


def test_grant_role(node: Node) -> None:
    account, _ = node.accounts.create("erin", with_key=False)
    start = node.journal.size() - 1
    granted = node.accounts.grant_role("erin", "admin", actor="acct_op")
    assert granted.is_admin and granted.id == account.id
    assert node.accounts.grant_role(account.id, "admin") == granted  # already: no new event
    scoped = node.accounts.grant_role("erin", "curator", scope="datanet:dn_1")
    assert scoped.has_role("curator", "datanet:dn_1") and not scoped.has_role("curator")
    assert _events_after(node, start) == [
        ("account.role_granted", {"account": account.id, "role": "admin", "scope": ""}, "acct_op"),
        ("account.role_granted", {"account": account.id, "role": "curator", "scope": "datanet:dn_1"}, None),
    ]
    with pytest.raises(InvalidInput) as info:
        node.accounts.grant_role("erin", "superuser")
    assert info.value.field == "role"
    with pytest.raises(NotFound):
        node.accounts.grant_role("nobody", "admin")


def test_duplicate_name_is_a_conflict(node: Node) -> None:
    node.accounts.create("frank")
    size = node.journal.size()
    for name in ("frank", "treasury", "operator"):
        with pytest.raises(Conflict, match=f"'{name}' already exists") as info:
            node.accounts.create(name)
        assert info.value.field == "name" and info.value.status == 409
    assert node.journal.size() == size
    assert [a.name for a in node.accounts.list()].count("frank") == 1


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Alice",
        "-alice",
        "alice-",
        "al ice",
        "alice!",
        "a" * 65,
        "acct_1234",
        "élise",
        "alice\n",  # a trailing newline must not pass the name pattern
    ],
    ids=["empty", "upper", "leading-dash", "trailing-dash", "space", "bang", "too-long", "acct-prefix", "non-ascii", "trailing-newline"],
)
def test_bad_names_are_rejected(node: Node, name: str) -> None:
    size = node.journal.size()
    with pytest.raises(InvalidInput) as info:
        node.accounts.create(name)
    assert info.value.field == "name"
    assert node.journal.size() == size
    assert len(node.accounts.list()) == 4


@pytest.mark.parametrize("name", ["a", "0", "a.b_c-d", "x" * 64, "9lives"])
def test_good_names_are_accepted(node: Node, name: str) -> None:
    account, _ = node.accounts.create(name, with_key=False)
    assert node.accounts.get(name) == account


def test_all_problems_are_reported_together(node: Node) -> None:
    size = node.journal.size()
    with pytest.raises(InvalidInput) as info:
        node.accounts.create("Bad Name", kind="robot", roles=["admin", "owner", "god"])
    message = info.value.message
    assert "'Bad Name'" in message and "'robot'" in message and "'owner'" in message and "'god'" in message
    assert "'admin'" not in message.split("node-wide roles are")[0]
    for kind in KINDS:
        assert kind in message
    assert info.value.field == "name"
    assert node.journal.size() == size


def test_bad_kind_alone_names_the_kind_field(node: Node) -> None:
    with pytest.raises(InvalidInput, match="kind 'robot' is unknown") as info:
        node.accounts.create("gina", kind="robot")
    assert info.value.field == "kind"
    with pytest.raises(InvalidInput, match="role 'owner' is unknown") as info:
        node.accounts.create("gina", roles=["owner"])
    assert info.value.field == "role"
    with pytest.raises(NotFound):
        node.accounts.get("gina")


def test_get_by_name_or_id_and_not_found(node: Node) -> None:
    account, _ = node.accounts.create("hana", kind="service", with_key=False)
    assert node.accounts.get("hana") == node.accounts.get(account.id) == account
    assert isinstance(account, Account)
    (created,) = node.journal.events(type="account.created", after=4)
    assert created.data["id"] == account.id
    assert account.to_dict() == {
        "id": account.id,
        "name": "hana",
        "kind": "service",
        "roles": [],
        "created_ms": account.created_ms,
        "created_seq": created.seq,
    }
    for ref in ("nobody", "acct_0000000000000000"):
        with pytest.raises(NotFound) as info:
            node.accounts.get(ref)
        assert f"no account '{ref}'" in info.value.message and "royalty account list" in info.value.message
        assert info.value.field == "account" and info.value.status == 404
        with pytest.raises(NotFound):
            node.accounts.keys(ref)


def test_list_is_ordered_by_creation(node: Node) -> None:
    for name in ("zed", "amy", "kim"):
        node.accounts.create(name, with_key=False)
    assert [a.name for a in node.accounts.list()] == ["treasury", "fees", "rewards", "operator", "zed", "amy", "kim"]
    assert [a.name for a in node.accounts.list(kind="person")] == ["operator", "zed", "amy", "kim"]
