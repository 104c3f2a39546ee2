"""``/v1/ledger`` over real HTTP (uvicorn on a loopback port, httpx), on SQLite and PostgreSQL: reads with
their owner-or-admin rule, transfers and the faucet with the Idempotency-Key protocol (400 missing, replay,
422 reuse with another body, 409 while in flight), and bad input in the one error shape.

One node and server per backend (module scope); every test makes its own participants, so tests do not depend
on each other's order.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from api_server import LiveServer
from conftest import PG_SKIP_REASON, PgSchemas, pg_base_url
from sqlalchemy import select

import royalty
from royalty import Node
from royalty.api import create_app
from royalty.api.ledger import fingerprint, idempotent_transfer_id, in_flight_registry
from royalty.ledger import hex_id
from royalty.ledger.amounts import UNIT
from royalty.store.schema import journal_head


def assert_error(response: httpx.Response, status: int, type_: str, *, field: str | None = None, says: str = "") -> dict[str, Any]:
    """The one error shape, a JSON body {"error": {"type", "message", ...}}, the right status, no traceback."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"type", "message", "field", "result"}, error
    assert error["type"] == type_, error
    assert error["message"].strip() and "\n" not in error["message"]
    if field is not None:
        assert error.get("field") == field, error
    if says:
        assert says.lower() in error["message"].lower(), error
    return error


@dataclass
class World:
    node: Node
    server: LiveServer
    admin: httpx.Client

    def person(self, funded: int = 0) -> tuple[str, str, httpx.Client]:
        """A new participant (name, account id, client), funded with ``funded`` base units."""
        name = "p-" + secrets.token_hex(4)
        account, key = self.node.accounts.create(name)
        if funded:
            self.node.tokens.faucet(name, funded, actor=self.node.operator())
        client = self.server.client(key)
        return name, account.id, client


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    schemas: PgSchemas | None = None
    url = None
    if request.param == "postgresql":
        base = pg_base_url()
        if base is None:
            pytest.skip(PG_SKIP_REASON)
        schemas = PgSchemas(base)
        url = schemas.new_url()
    node, _ = royalty.init_node(tmp_path_factory.mktemp("ledger-api") / "home", database_url=url)
    try:
        _, admin_key = node.accounts.create("admin", roles=("admin",))
        with LiveServer(create_app(node)) as server, server.client(admin_key) as admin:
            yield World(node, server, admin)
    finally:
        node.close()
        if schemas is not None:
            schemas.drop_all()


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


# --------------------------------------------------------------------------------------------------------------
# reads
# --------------------------------------------------------------------------------------------------------------


def test_balance_history_and_supply(world: World) -> None:
    alice, alice_id, a = world.person(funded=10 * UNIT)
    bob, _, b = world.person()
    _, _, stranger = world.person()
    r = a.post("/v1/ledger/transfers", json={"to": bob, "amount": "2.5", "memo": "books"}, headers=key())
    assert r.status_code == 201, r.text

    mine = a.get("/v1/ledger/balance").json()
    assert mine["account"] == alice_id and mine["available"] == {"amount": "7.5", "units": 7_500_000}
    assert a.get(f"/v1/ledger/accounts/{alice}/balance").json() == mine
    assert world.admin.get(f"/v1/ledger/accounts/{alice_id}/balance").json() == mine  # admins read anyone's
    assert b.get("/v1/ledger/balance").json()["available"]["amount"] == "2.5"
    assert_error(stranger.get(f"/v1/ledger/accounts/{alice}/balance"), 403, "permission_denied", field="account")
    assert_error(stranger.get(f"/v1/ledger/accounts/{alice}/history"), 403, "permission_denied")
    assert_error(world.server.client().get("/v1/ledger/balance"), 401, "authentication_error")
    assert_error(a.get("/v1/ledger/accounts/nobody-here/balance"), 404, "not_found", field="account")
    assert_error(a.get("/v1/ledger/accounts/treasury/balance"), 422, "invalid_input", says="system account")

    hist = a.get("/v1/ledger/history").json()
    assert [(i["reason"], i["direction"], i["amount"], i["signed"]["amount"]) for i in hist["data"]] == [
        ("faucet", "in", "10", "10"), ("transfer", "out", "2.5", "-2.5")]
    assert hist["data"][1]["memo"] == "books" and hist["has_more"] is False and hist["next_after"] is None
    assert b.get("/v1/ledger/history").json()["data"][0]["memo"] == "books"
    page = a.get("/v1/ledger/history", params={"limit": 1}).json()
    assert len(page["data"]) == 1 and page["has_more"] is True and page["next_after"] == page["data"][0]["id"]
    rest = a.get("/v1/ledger/history", params={"after": page["next_after"]}).json()
    assert [i["reason"] for i in rest["data"]] == ["transfer"] and rest["has_more"] is False
    assert world.admin.get(f"/v1/ledger/accounts/{alice}/history").json() == hist
    assert_error(a.get("/v1/ledger/history", params={"limit": 0}), 422, "invalid_input", field="limit")
    assert_error(a.get("/v1/ledger/history", params={"after": "zz"}), 422, "invalid_input", field="after")
    assert_error(a.get("/v1/ledger/history", params={"after": "0" * 32}), 404, "not_found", field="after")

    supply = world.server.client().get("/v1/ledger/supply").json()  # open to anyone
    assert supply["supply"]["units"] == supply["issued"]["units"] - supply["burnt"]["units"] > 0
    assert set(supply) == {"issued", "burnt", "supply", "cap"}


# --------------------------------------------------------------------------------------------------------------
# transfers and the Idempotency-Key protocol
# --------------------------------------------------------------------------------------------------------------


def test_transfer_replay_and_reuse(world: World) -> None:
    _, alice_id, a = world.person(funded=10 * UNIT)
    bob, bob_id, b = world.person()
    k = key()
    first = a.post("/v1/ledger/transfers", json={"to": bob, "amount": "1.5", "memo": "tea"}, headers=k)
    assert first.status_code == 201, first.text
    body = first.json()
    t = body["transfer"]
    assert body["replayed"] is False and "Idempotent-Replayed" not in first.headers
    assert (t["from"], t["to"], t["amount"], t["units"], t["memo"], t["reason"]) == (
        alice_id, bob_id, "1.5", 1_500_000, "tea", "transfer")
    # The id is SHA-256(caller ‖ key) cut to 128 bits; the fingerprint of the request travels with the transfer.
    assert t["id"] == hex_id(idempotent_transfer_id(alice_id, k["Idempotency-Key"]))
    fp = fingerprint("POST", "/v1/ledger/transfers", {"to": bob, "amount": 1_500_000, "memo": "tea"})
    assert t["user_data"] == f"idem:{fp};memo:tea"

    # A retry: the same response, marked as a replay, and no second effect. "1.50" is the same amount.
    again = a.post("/v1/ledger/transfers", json={"to": bob, "amount": "1.50", "memo": "tea"}, headers=k)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == {"transfer": t, "replayed": True}
    assert b.get("/v1/ledger/balance").json()["available"]["units"] == 1_500_000

    # The same key for a different request: 422, nothing moves.
    for changed in ({"to": bob, "amount": "2", "memo": "tea"}, {"to": bob, "amount": "1.5"},
                    {"to": bob, "amount": "1.5", "memo": "coffee"}):
        assert_error(a.post("/v1/ledger/transfers", json=changed, headers=k), 422, "idempotency_key_reused",
                     field="Idempotency-Key")
    assert_error(a.post("/v1/ledger/faucet", json={"account": bob, "amount": "1"}, headers=k), 422,
                 "idempotency_key_reused")  # another route is another request
    # Keys belong to their caller: bob's use of alice's key is a new payment of his own.
    r = b.post("/v1/ledger/transfers", json={"to": alice_id, "amount": "0.5"}, headers=k)
    assert r.status_code == 201 and r.json()["replayed"] is False
    assert b.get("/v1/ledger/balance").json()["available"]["units"] == 1_000_000
    # A quoted structured-field string is the same key.
    quoted = {"Idempotency-Key": f'"{k["Idempotency-Key"]}"'}
    r = a.post("/v1/ledger/transfers", json={"to": bob, "amount": "1.5", "memo": "tea"}, headers=quoted)
    assert r.status_code == 201 and r.json()["replayed"] is True
    assert world.node.ledger_audit().ok


def test_idempotency_key_is_required(world: World) -> None:
    _, _, a = world.person(funded=UNIT)
    bob, _, _ = world.person()
    before = a.get("/v1/ledger/balance").json()
    bad: list[dict[str, Any]] = [{}, {"Idempotency-Key": ""}, {"Idempotency-Key": '""'}, {"Idempotency-Key": "x" * 256},
                                 {"Idempotency-Key": "caf\u00e9".encode()}, {"Idempotency-Key": "a\tb"}]
    for headers in bad:
        assert_error(a.post("/v1/ledger/transfers", json={"to": bob, "amount": "1"}, headers=headers), 400,
                     "idempotency_key_missing", field="Idempotency-Key")
        assert_error(world.admin.post("/v1/ledger/faucet", json={"account": bob, "amount": "1"}, headers=headers),
                     400, "idempotency_key_missing")
    assert a.get("/v1/ledger/balance").json() == before


def test_transfer_bad_input(world: World) -> None:
    alice, _, a = world.person(funded=5 * UNIT)
    bob, _, _ = world.person()
    cases = [
        ({"to": bob, "amount": "1.2345678"}, 422, "invalid_input", "amount", "is not an amount"),
        ({"to": bob, "amount": "-1"}, 422, "invalid_input", "amount", "is not an amount"),
        ({"to": bob, "amount": "abc"}, 422, "invalid_input", "amount", "is not an amount"),
        ({"to": bob, "amount": "0"}, 422, "invalid_input", "amount", "more than zero"),
        ({"to": bob, "amount": 1.5}, 422, "invalid_input", "amount", "decimal string"),
        ({"to": bob, "amount": True}, 422, "invalid_input", "amount", "decimal string"),
        ({"to": bob, "amount": None}, 422, "invalid_input", "amount", "decimal string"),
        ({"to": bob}, 422, "invalid_input", "amount", "missing"),
        ({"to": bob, "amount": "1", "extra": 1}, 422, "invalid_input", "extra", "unknown field"),
        ({"to": bob, "amount": "1", "memo": "m" * 501}, 422, "invalid_input", "memo", ""),
        ({"to": "nobody-here", "amount": "1"}, 404, "not_found", "account", "no account"),
        ({"to": "treasury", "amount": "1"}, 422, "invalid_input", "account", "system account"),
        ({"to": alice, "amount": "1"}, 422, "invalid_input", "to", "same account"),
        ({"to": bob, "amount": "6"}, 402, "insufficient_funds", None, "not enough available"),
    ]
    for body, status, type_, field, says in cases:
        assert_error(a.post("/v1/ledger/transfers", json=body, headers=key()), status, type_, field=field, says=says)
    r = a.post("/v1/ledger/transfers", content=b"{not json", headers={**key(), "content-type": "application/json"})
    assert_error(r, 400, "bad_request")
    assert a.get("/v1/ledger/balance").json()["available"]["units"] == 5 * UNIT


def test_a_failed_transfer_answers_the_same_on_retry(world: World) -> None:
    _, _, a = world.person(funded=UNIT)
    bob, _, _ = world.person()
    k = key()
    first = assert_error(a.post("/v1/ledger/transfers", json={"to": bob, "amount": "2"}, headers=k), 402,
                         "insufficient_funds")
    assert first["result"] == "exceeds_credits"
    # Even after the payer could afford it, the key's id is burnt: the same failure, never a late payment.
    world.node.tokens.faucet(a.get("/v1/ledger/balance").json()["account"], 5 * UNIT, actor=world.node.operator())
    again = assert_error(a.post("/v1/ledger/transfers", json={"to": bob, "amount": "2"}, headers=k), 402,
                         "insufficient_funds")
    assert again == first
    assert a.get("/v1/ledger/balance").json()["available"]["units"] == 6 * UNIT
    assert a.post("/v1/ledger/transfers", json={"to": bob, "amount": "2"}, headers=key()).status_code == 201


def test_faucet(world: World) -> None:
    bob, bob_id, b = world.person()
    k = key()
    r = world.admin.post("/v1/ledger/faucet", json={"account": bob, "amount": "12.5"}, headers=k)
    assert r.status_code == 201, r.text
    t = r.json()["transfer"]
    assert (t["to"], t["amount"], t["reason"], t["memo"]) == (bob_id, "12.5", "faucet", None)
    again = world.admin.post("/v1/ledger/faucet", json={"account": bob, "amount": "12.5"}, headers=k)
    assert again.status_code == 201 and again.json() == {"transfer": t, "replayed": True}
    assert_error(world.admin.post("/v1/ledger/faucet", json={"account": bob, "amount": "13"}, headers=k), 422,
                 "idempotency_key_reused")
    assert b.get("/v1/ledger/balance").json()["available"]["amount"] == "12.5"
    # Only an admin: the participant cannot fund themselves.
    assert_error(b.post("/v1/ledger/faucet", json={"account": bob, "amount": "1"}, headers=key()), 403,
                 "permission_denied", says="admin")
    assert_error(world.server.client().post("/v1/ledger/faucet", json={"account": bob, "amount": "1"}, headers=key()),
                 401, "authentication_error")
    for body, status, type_ in (({"account": bob, "amount": "-1"}, 422, "invalid_input"),
                                ({"account": "rewards", "amount": "1"}, 422, "invalid_input"),
                                ({"account": "nobody-here", "amount": "1"}, 404, "not_found"),
                                ({"account": bob}, 422, "invalid_input")):
        assert_error(world.admin.post("/v1/ledger/faucet", json=body, headers=key()), status, type_)
    assert b.get("/v1/ledger/balance").json()["available"]["amount"] == "12.5"


def test_in_flight_key_answers_409(world: World) -> None:
    """Hold the first request inside the ledger (the test owns the journal head: SQLite's writer lock, a row
    lock on PostgreSQL), send the same key again: 409 at once. Then let the first finish: 201, and a retry is a
    replay."""
    _, alice_id, a = world.person(funded=5 * UNIT)
    bob, _, b = world.person()
    k = key()
    body = {"to": bob, "amount": "1"}
    registry = in_flight_registry(world.server.server.config.app)
    results: dict[str, httpx.Response] = {}
    with world.node.store.write() as conn:
        conn.execute(select(journal_head.c.size).where(journal_head.c.id == 1).with_for_update())
        first = threading.Thread(target=lambda: results.setdefault("first", a.post("/v1/ledger/transfers", json=body, headers=k)))
        first.start()
        deadline = time.monotonic() + 10
        while (alice_id, k["Idempotency-Key"]) not in registry:
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.005)
        with world.server.client(None, authorization=a.headers["Authorization"]) as a2:
            second = a2.post("/v1/ledger/transfers", json=body, headers=k)
            assert_error(second, 409, "idempotency_key_in_flight", field="Idempotency-Key", says="still being processed")
            other = a2.post("/v1/ledger/transfers", json={"to": bob, "amount": "2"}, headers=k)
            assert_error(other, 409, "idempotency_key_in_flight")  # in flight wins over a different body
        assert first.is_alive()  # still held
    first.join(timeout=30)
    assert results["first"].status_code == 201, results["first"].text
    retry = a.post("/v1/ledger/transfers", json=body, headers=k)
    assert retry.status_code == 201 and retry.json()["replayed"] is True
    assert retry.json()["transfer"] == results["first"].json()["transfer"]
    assert b.get("/v1/ledger/balance").json()["available"]["units"] == UNIT
    assert (alice_id, k["Idempotency-Key"]) not in registry


def test_another_process_sees_the_same_key_as_a_replay(world: World) -> None:
    """Two servers (two apps, two in-flight registries) on one database: the ledger's unique id still makes the
    key take effect once."""
    _, _, a = world.person(funded=5 * UNIT)
    bob, _, b = world.person()
    k = key()
    with LiveServer(create_app(world.node)) as other, other.client(None, authorization=a.headers["Authorization"]) as a2:
        assert a.post("/v1/ledger/transfers", json={"to": bob, "amount": "1"}, headers=k).status_code == 201
        r = a2.post("/v1/ledger/transfers", json={"to": bob, "amount": "1"}, headers=k)
        assert r.status_code == 201 and r.json()["replayed"] is True
        assert_error(a2.post("/v1/ledger/transfers", json={"to": bob, "amount": "3"}, headers=k), 422,
                     "idempotency_key_reused")
    assert b.get("/v1/ledger/balance").json()["available"]["units"] == UNIT


def test_openapi_lists_the_ledger_routes(world: World) -> None:
    paths = world.server.client().get("/openapi.json").json()["paths"]
    for path in ("/v1/ledger/balance", "/v1/ledger/accounts/{account}/balance", "/v1/ledger/history",
                 "/v1/ledger/accounts/{account}/history", "/v1/ledger/transfers", "/v1/ledger/faucet",
                 "/v1/ledger/supply"):
        assert path in paths, path
    params = {p["name"] for p in paths["/v1/ledger/transfers"]["post"]["parameters"]}
    assert "Idempotency-Key" in params
