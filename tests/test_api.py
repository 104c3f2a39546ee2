"""The HTTP API over real HTTP: uvicorn on a loopback port, httpx as the client, a real node (SQLite, and
PostgreSQL when ROYALTY_TEST_POSTGRES_URL is set).

The authorization matrix and the bad-input suite share one node and server per backend (module scope: ~200
requests would otherwise pay ~0.7 s of node set-up each); every case makes its own fresh targets, so cases do not
depend on each other's order. The end-to-end tests (proofs, export, pagination) use the per-test ``node`` fixture.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import LiveServer
from conftest import FREE_PUBLISHING, PG_SKIP_REASON, PgSchemas, pg_base_url

import royalty
from royalty import Node
from royalty.api import create_app
from royalty.datanet import verify_proof
from royalty.errors import VerificationFailed

LICENSE = "CC-BY-4.0"
INVALID_KEY = "rk_0123456789abcdef_" + "A" * 43


@pytest.fixture
def genesis_params() -> dict[str, Any]:
    """These tests are about datanets: publishing is free here (tests/test_fees.py covers the publishing fee)."""
    return FREE_PUBLISHING


def assert_error(response: httpx.Response, status: int, type_: str, *, field: str | None = None, says: str = "") -> dict[str, Any]:
    """The one error shape: {"error": {"type", "message", "field"?}}, JSON, the right status, no traceback."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"type", "message", "field"}, error
    assert error["type"] == type_, error
    assert isinstance(error["message"], str) and error["message"].strip() and "\n" not in error["message"], error
    assert "Traceback" not in response.text
    if field is not None:
        assert error.get("field") == field, error
    if says:
        assert says.lower() in error["message"].lower(), error
    return error


def jsonl(*rows: dict[str, Any] | bytes) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def tok() -> str:
    return secrets.token_hex(6)


# --------------------------------------------------------------------------------------------------------------
# a shared node and server per backend
# --------------------------------------------------------------------------------------------------------------


@dataclass
class World:
    node: Node
    server: LiveServer
    keys: dict[str, str | None]  # role -> API key (anonymous: None)
    ids: dict[str, str]  # role -> account id
    seed: str = ""  # an accepted contribution by "contributor", in version 1 of "authz"
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def as_(self, role: str) -> httpx.Client:
        if role not in self.clients:
            if role == "anonymous":
                self.clients[role] = self.server.client()
            elif role == "invalid":
                self.clients[role] = self.server.client(INVALID_KEY)
            else:
                self.clients[role] = self.server.client(self.keys[role])
        return self.clients[role]

    def fresh(self, slug: str = "authz", *, by: str = "contributor", status: str = "pending") -> str:
        """A new contribution by ``by`` on ``slug`` (made through the library), reviewed to ``status``."""
        report = self.node.datanets.contribute_records(slug, [{"text": f"fresh record {tok()}"}], contributor=self.ids[by])
        cid = (report.pending or report.accepted)[0]
        if status == "accepted" and report.pending:
            self.node.datanets.review(slug, actor=self.ids["owner"], accept=[cid])
        elif status == "withdrawn":
            self.node.datanets.withdraw(slug, cid, actor=self.ids[by])
        return cid


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
    node, _ = royalty.init_node(tmp_path_factory.mktemp("api") / "home", database_url=url, params=FREE_PUBLISHING)
    try:
        keys: dict[str, str | None] = {"anonymous": None, "invalid": INVALID_KEY}
        ids: dict[str, str] = {}
        for role in ("owner", "curator", "contributor", "stranger"):
            account, key = node.accounts.create(role)
            keys[role], ids[role] = key, account.id
        node.datanets.create("authz", title="Authorization", kind="text", licenses=[LICENSE], policy="curated", owner=ids["owner"])
        node.datanets.add_curator("authz", ids["curator"], actor=ids["owner"])
        node.datanets.create(
            "inputs", title="Bad input", kind="text", licenses=[LICENSE], policy="open", owner=ids["owner"],
            limits={"max_record_bytes": 256, "max_file_bytes": 4096},
        )  # fmt: skip
        with LiveServer(create_app(node)) as server:
            w = World(node, server, keys, ids)
            w.seed = w.fresh(status="accepted")
            node.datanets.publish("authz", actor=ids["owner"])
            yield w
            for client in w.clients.values():
                client.close()
    finally:
        node.close()
        if schemas is not None:
            schemas.drop_all()


# --------------------------------------------------------------------------------------------------------------
# authorization: every role x action
# --------------------------------------------------------------------------------------------------------------

ROLES = ("anonymous", "invalid", "owner", "curator", "contributor", "stranger")

# Expected status per role. 401: no or invalid key; 403: authenticated but not allowed. A key that is sent must be
# valid even on open routes, so "invalid" is 401 everywhere.
MATRIX = """
action             anonymous invalid owner curator contributor stranger
create             401       401     201   201     201         201
add_curator        401       401     200   403     403         403
contribute         401       401     200   200     200         200
upload             401       401     200   200     200         200
queue              401       401     200   200     403         403
review             401       401     200   200     403         403
withdraw           401       401     403   403     200         403
purge              401       401     403   403     200         403
publish            401       401     201   403     403         403
read_list          200       401     200   200     200         200
read_show          200       401     200   200     200         200
read_contribution  200       401     200   200     200         200
read_contributions 200       401     200   200     200         200
read_versions      200       401     200   200     200         200
read_version       200       401     200   200     200         200
read_proof         200       401     200   200     200         200
read_export        200       401     200   200     200         200
"""


def _matrix() -> list[tuple[str, str, int]]:
    lines = [line.split() for line in MATRIX.strip().splitlines()]
    header, rows = lines[0][1:], lines[1:]
    assert tuple(header) == ROLES
    return [(row[0], role, int(status)) for row in rows for role, status in zip(header, row[1:])]


Action = Callable[[World, httpx.Client, str], httpx.Response]
D = "/v1/datanets/authz"


def _create(w: World, c: httpx.Client, role: str) -> httpx.Response:
    body = {"slug": f"by-{role}-{tok()}", "title": "Mine", "kind": "text", "licenses": [LICENSE], "policy": "open"}
    return c.post("/v1/datanets", json=body)


def _add_curator(w: World, c: httpx.Client, role: str) -> httpx.Response:
    helper, _ = w.node.accounts.create(f"helper-{tok()}", with_key=False)
    return c.post(f"{D}/curators", json={"account": helper.id})


def _contribute(w: World, c: httpx.Client, role: str) -> httpx.Response:
    return c.post(f"{D}/contributions", json={"records": [{"text": f"json record by {role} {tok()}"}]})


def _upload(w: World, c: httpx.Client, role: str) -> httpx.Response:
    data = jsonl({"text": f"uploaded by {role} {tok()}"})
    return c.post(f"{D}/contributions/upload", files={"file": ("data.jsonl", data, "application/x-ndjson")})


def _review(w: World, c: httpx.Client, role: str) -> httpx.Response:
    return c.post(f"{D}/review", json={"accept": [w.fresh()]})


def _withdraw(w: World, c: httpx.Client, role: str) -> httpx.Response:
    return c.post(f"{D}/contributions/{w.fresh()}/withdraw")


def _purge(w: World, c: httpx.Client, role: str) -> httpx.Response:
    return c.post(f"{D}/contributions/{w.fresh(status='withdrawn')}/purge")


def _publish(w: World, c: httpx.Client, role: str) -> httpx.Response:
    w.fresh(status="accepted")  # something new, so the owner's publish is not refused as unchanged
    return c.post(f"{D}/versions")


ACTIONS: dict[str, Action] = {
    "create": _create,
    "add_curator": _add_curator,
    "contribute": _contribute,
    "upload": _upload,
    "queue": lambda w, c, r: c.get(f"{D}/queue"),
    "review": _review,
    "withdraw": _withdraw,
    "purge": _purge,
    "publish": _publish,
    "read_list": lambda w, c, r: c.get("/v1/datanets"),
    "read_show": lambda w, c, r: c.get(D),
    "read_contribution": lambda w, c, r: c.get(f"{D}/contributions/{w.seed}"),
    "read_contributions": lambda w, c, r: c.get(f"{D}/contributions"),
    "read_versions": lambda w, c, r: c.get(f"{D}/versions"),
    "read_version": lambda w, c, r: c.get(f"{D}/versions/1"),
    "read_proof": lambda w, c, r: c.get(f"{D}/versions/1/proof/{w.seed}"),
    "read_export": lambda w, c, r: c.get(f"{D}/versions/1/export", params={"format": "jsonl"}),
}


def test_matrix_covers_every_action() -> None:
    assert {a for a, _, _ in _matrix()} == set(ACTIONS)


@pytest.mark.parametrize(("action", "role", "expected"), _matrix(), ids=[f"{a}-{r}" for a, r, _ in _matrix()])
def test_authorization(world: World, action: str, role: str, expected: int) -> None:
    response = ACTIONS[action](world, world.as_(role), role)
    if expected == 401:
        error = assert_error(response, 401, "authentication_error")
        assert response.headers.get("www-authenticate") == "Bearer"
        assert ("missing API key" if role == "anonymous" else "invalid API key") in error["message"]
    elif expected == 403:
        assert_error(response, 403, "permission_denied", says="only the")
    else:
        assert response.status_code == expected, response.text
        assert "error" not in response.json() if action != "read_export" else response.text


def test_authorization_header_forms(world: World) -> None:
    key = world.keys["owner"]
    for header in (f"Basic {key}", "Bearer", f"Token {key}", key, f"Bearer {key}x"):
        with world.server.client(authorization=header) as c:
            assert_error(c.get(f"{D}/queue"), 401, "authentication_error")
    with world.server.client(authorization=f"bearer  {key}") as c:  # the scheme is case-insensitive
        assert c.get(f"{D}/queue").status_code == 200


def test_actions_take_effect(world: World) -> None:
    """The 2xx answers of the matrix are real: roles, statuses and versions change as reported."""
    owner, contributor = world.as_("owner"), world.as_("contributor")
    cid = world.fresh()
    queue = owner.get(f"{D}/queue", params={"limit": 1000}).json()
    assert cid in [c["id"] for c in queue["data"]] and all(c["status"] == "pending" for c in queue["data"])
    assert owner.post(f"{D}/review", json={"reject": [cid]}).status_code == 422  # a rejection needs a reason
    assert owner.post(f"{D}/review", json={"reject": [cid], "reason": "off topic"}).json() == {"accepted": [], "rejected": [cid]}
    shown = contributor.get(f"{D}/contributions/{cid}").json()
    assert (shown["status"], shown["reason"]) == ("rejected", "off topic")
    assert_error(owner.post(f"{D}/review", json={"accept": [cid]}), 409, "conflict", field="id")

    cid = world.fresh()
    assert contributor.post(f"{D}/contributions/{cid}/withdraw").json()["status"] == "withdrawn"
    purged = contributor.post(f"{D}/contributions/{cid}/purge").json()
    assert purged["purged"] is True and purged["record"] is None
    assert_error(contributor.post(f"{D}/contributions/{world.fresh()}/purge"), 409, "conflict", says="withdraw")

    helper, _ = world.node.accounts.create(f"helper-{tok()}", with_key=False)
    added = owner.post(f"{D}/curators", json={"account": helper.name}).json()
    assert added["curator"]["id"] == helper.id and helper.id in owner.get(D).json()["curators"]

    before = len(owner.get(f"{D}/versions").json()["data"])
    world.fresh(status="accepted")
    version = owner.post(f"{D}/versions").json()
    assert version["version"] == before + 1 and version["datanet"] == world.node.datanets.get("authz").id
    assert_error(owner.post(f"{D}/versions"), 409, "conflict", says="nothing changed")


# --------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------

I = "/v1/datanets/inputs"


def _upload_as(w: World, data: bytes, name: str = "data.jsonl", slug: str = "inputs", **form: str) -> httpx.Response:
    return w.as_("contributor").post(f"/v1/datanets/{slug}/contributions/upload", files={"file": (name, data)}, data=form)


def test_upload_rejects_bad_lines_and_keeps_good_ones(world: World) -> None:
    t = tok()
    data = jsonl(
        {"text": f"good one {t}"},
        b'{"text": "bad \xff\xfe utf-8"}',
        {"prompt": "wrong schema"},
        {"text": "x" * 400},
        {"text": f"wrong license {t}", "license": "MIT"},
        b"{not json",
        {"text": f"good two {t}"},
        {"text": f"good one {t}"},
    )
    response = _upload_as(world, data)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["rows"] == 8 and report["counts"] == {"accepted": 2, "pending": 0, "duplicates": 1, "rejected": 5}
    rejected = {r["line"]: r for r in report["rejected"]}
    assert sorted(rejected) == [2, 3, 4, 5, 6]
    assert "not valid UTF-8" in rejected[2]["reason"] and "0xff" in rejected[2]["reason"]
    assert "unknown field 'prompt'" in rejected[3]["reason"] and rejected[3]["field"] == "prompt"
    assert "max_record_bytes" in rejected[4]["reason"]
    assert "license MIT is not accepted" in rejected[5]["reason"] and rejected[5]["field"] == "license"
    assert "not valid JSON" in rejected[6]["reason"]
    assert report["duplicates"] == [{"line": 8, "id": report["accepted"][0], "duplicate_of_line": 1}]
    kept = [world.as_("anonymous").get(f"{I}/contributions/{cid}").json() for cid in report["accepted"]]
    assert [k["record"]["text"] for k in kept] == [f"good one {t}", f"good two {t}"]
    assert {k["source"] for k in kept} == {"data.jsonl"}

    again = _upload_as(world, data).json()
    assert again["unchanged"] is True and again["counts"]["accepted"] == 0 and again["counts"]["duplicates"] == 3
    assert {d["duplicate_of"] for d in again["duplicates"] if "duplicate_of" in d} == set(report["accepted"])


def test_upload_form_fields_apply_to_every_row(world: World) -> None:
    t = tok()
    data = b"text\n" + f"first {t}\nsecond {t}\n".encode()
    report = _upload_as(world, data, "rows.csv", license=LICENSE, source="https://example.org/x", consent="granted", tags="a,b").json()
    assert report["counts"]["accepted"] == 2
    row = world.as_("owner").get(f"{I}/contributions/{report['accepted'][0]}").json()
    assert (row["license"], row["source"], row["consent"], row["tags"]) == (LICENSE, "https://example.org/x", "granted", ["a", "b"])
    wrong = _upload_as(world, jsonl({"text": f"third {t}"}), license="MIT").json()
    assert wrong["counts"]["rejected"] == 1 and "license MIT is not accepted" in wrong["rejected"][0]["reason"]


@pytest.mark.parametrize(
    ("name", "data", "status", "type_", "says"),
    [
        ("binary.jsonl", b"\x00\x01\x02\x03binary\x00" * 10, 422, "invalid_input", "binary file"),
        ("empty.jsonl", b"", 422, "invalid_input", "the file is empty"),
        ("blank.jsonl", b"\n \n\t\n", 422, "invalid_input", "the file is empty"),
        ("sheet.xlsx", b"PK\x03\x04", 422, "invalid_input", "unknown file type .xlsx"),
        ("noext", b'{"text": "x"}\n', 422, "invalid_input", "unknown file type (none)"),
        ("big.jsonl", jsonl(*[{"text": f"row {i} " + "y" * 90} for i in range(50)]), 413, "payload_too_large", "max_file_bytes"),
        ("huge.jsonl", b'{"text": "z"}\n' * 20_000, 413, "payload_too_large", "max_file_bytes"),
    ],
    ids=["binary", "empty", "blank", "unknown-type", "no-extension", "over-max-file", "far-over-max-file"],
)
def test_upload_whole_file_problems(world: World, name: str, data: bytes, status: int, type_: str, says: str) -> None:
    assert_error(_upload_as(world, data, name), status, type_, field="file", says=says)


def test_upload_request_problems(world: World) -> None:
    c = world.as_("contributor")
    assert_error(c.post(f"{I}/contributions/upload", data={"license": LICENSE}), 422, "invalid_input", field="file", says="field 'file'")
    assert_error(c.post(f"{I}/contributions/upload", content=b"{}", headers={"content-type": "application/json"}), 422, "invalid_input", field="file")
    assert_error(
        c.post(f"{I}/contributions/upload", files={"file": ("a.jsonl", b'{"text":"q"}\n')}, data={"colour": "red"}),
        422, "invalid_input", field="colour", says="unknown form field",
    )  # fmt: skip
    no_boundary = {"content-type": "multipart/form-data"}
    assert_error(c.post(f"{I}/contributions/upload", content=b"--x\r\n", headers=no_boundary), 400, "bad_request", says="boundary")
    assert_error(_upload_as(world, jsonl({"text": "a"}), slug="no-such-datanet"), 404, "not_found", field="datanet", says="no datanet 'no-such-datanet'")
    text_only = _upload_as(world, b"a paragraph\n", "notes.txt")
    assert text_only.status_code == 200 and text_only.json()["rows"] == 1


def test_upload_far_over_the_limit_is_refused_before_reading(world: World) -> None:
    """A declared Content-Length over the cap is refused at once; a body without one is cut off at the cap."""
    c = world.as_("contributor")
    headers = {"content-type": "multipart/form-data; boundary=x", "content-length": str(50 * 2**20)}
    with socket.create_connection(("127.0.0.1", int(world.server.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            f"POST {I}/contributions/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {world.keys['contributor']}\r\n".encode()
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
            + b"\r\n--x\r\n"
        )
        sock.settimeout(10)
        answer = b""
        while b'"}}' not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["error"]["type"] == "payload_too_large" and "52,428,800 bytes" in body

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length; the server must stop reading at the cap
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        for _ in range(100):
            yield b'{"text": "chunk"}\n' * 100

    response = c.post(f"{I}/contributions/upload", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(response, 413, "payload_too_large", field="file", says="max_file_bytes")


def test_json_contribution_problems(world: World) -> None:
    c = world.as_("contributor")
    assert_error(c.post(f"{I}/contributions", json={"records": []}), 422, "invalid_input", field="records", says="records is empty")
    assert_error(c.post(f"{I}/contributions", json={}), 422, "invalid_input", field="records", says="missing required field 'records'")
    assert_error(c.post(f"{I}/contributions", json={"records": "text"}), 422, "invalid_input", field="records")
    assert_error(c.post(f"{I}/contributions", json={"records": [{"text": "a"}], "colour": 1}), 422, "invalid_input", field="colour", says="unknown field")
    error = assert_error(c.post(f"{I}/contributions", content=b'{"records": [', headers={"content-type": "application/json"}), 400, "bad_request", field="body")
    assert "not valid JSON" in error["message"]
    big = {"records": [{"text": f"r{i} " + "w" * 100} for i in range(40)]}
    assert_error(c.post(f"{I}/contributions", json=big), 413, "payload_too_large", field="records", says="max_file_bytes")
    assert_error(c.post("/v1/datanets/nope/contributions", json={"records": [{"text": "a"}]}), 404, "not_found", field="datanet")

    t = tok()
    report = c.post(f"{I}/contributions", json={"records": [{"text": f"ok {t}"}, "not an object", {"text": ""}, {"text": f"ok {t}"}]}).json()
    assert report["counts"] == {"accepted": 1, "pending": 0, "duplicates": 1, "rejected": 2}
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [(2, "a record must be an object"), (3, "text is empty")]


def test_quota(world: World) -> None:
    owner = world.as_("owner")
    slug = f"quota-{tok()}"
    body = {"slug": slug, "title": "Q", "kind": "text", "licenses": [LICENSE], "policy": "open", "limits": {"max_records_per_day": 2}}
    created = owner.post("/v1/datanets", json=body)
    assert created.status_code == 201 and created.json()["limits"]["max_records_per_day"] == 2
    report = world.as_("contributor").post(f"/v1/datanets/{slug}/contributions", json={"records": [{"text": f"q{i}"} for i in range(3)]}).json()
    assert report["counts"]["accepted"] == 2 and [r["line"] for r in report["rejected"]] == [3]
    assert "over quota" in report["rejected"][0]["reason"] and "max_records_per_day" in report["rejected"][0]["reason"]
    # the quota is per account: someone else may still contribute
    other = world.as_("stranger").post(f"/v1/datanets/{slug}/contributions", json={"records": [{"text": "q-other"}]}).json()
    assert other["counts"]["accepted"] == 1


def test_create_problems(world: World) -> None:
    c = world.as_("owner")
    good = {"slug": f"ok-{tok()}", "title": "T", "kind": "text", "licenses": [LICENSE], "policy": "open"}
    missing = {k: v for k, v in good.items() if k != "title"}
    assert_error(c.post("/v1/datanets", json=missing), 422, "invalid_input", field="title", says="missing required field 'title'")
    assert_error(c.post("/v1/datanets", json={**good, "slug": "Bad Slug!"}), 422, "invalid_input", field="slug", says="slug 'Bad Slug!' is not allowed")
    assert_error(c.post("/v1/datanets", json={**good, "kind": "video"}), 422, "invalid_input", field="kind", says="kind 'video' is unknown")
    assert_error(c.post("/v1/datanets", json={**good, "licenses": []}), 422, "invalid_input", field="license", says="at least one license")
    assert_error(
        c.post("/v1/datanets", json={**good, "limits": {"max_records_per_day": 0}}), 422, "invalid_input", field="limits.max_records_per_day"
    )
    assert_error(c.post("/v1/datanets", json={**good, "limits": {"colour": 1}}), 422, "invalid_input", field="limits.colour")
    assert_error(c.post("/v1/datanets", content=b"{oops", headers={"content-type": "application/json"}), 400, "bad_request", says="not valid JSON")
    assert c.post("/v1/datanets", json=good).status_code == 201
    assert_error(c.post("/v1/datanets", json=good), 409, "conflict", field="slug", says="already exists")
    assert_error(c.post("/v1/datanets/authz/curators", json={"account": "nobody-here"}), 404, "not_found", field="account")


def test_read_problems(world: World) -> None:
    c = world.as_("anonymous")
    assert_error(c.get("/v1/datanets/nope"), 404, "not_found", field="datanet")
    assert_error(c.get(f"{D}/contributions/{'0' * 64}"), 404, "not_found", field="contribution")
    assert_error(c.get(f"{D}/contributions", params={"status": "lost"}), 422, "invalid_input", field="status")
    assert_error(c.get(f"{D}/contributions", params={"limit": 0}), 422, "invalid_input", field="limit")
    assert_error(c.get(f"{D}/versions/99"), 404, "not_found", field="version")
    assert_error(c.get(f"{D}/versions/abc"), 422, "invalid_input", field="number")
    assert_error(c.get(f"{D}/versions/1/proof/{'0' * 64}"), 404, "not_found", field="contribution")
    assert_error(c.get(f"{D}/versions/1/export", params={"format": "xml"}), 422, "invalid_input", field="format")
    assert_error(c.get("/v1/datanets", params={"after": "nope"}), 422, "invalid_input", field="after")


# --------------------------------------------------------------------------------------------------------------
# the one error shape
# --------------------------------------------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, Callable[[World], httpx.Response], int, str]] = [
    ("no-key", lambda w: w.as_("anonymous").post("/v1/datanets", json={}), 401, "authentication_error"),
    ("bad-key", lambda w: w.as_("invalid").get("/v1/datanets"), 401, "authentication_error"),
    ("forbidden", lambda w: w.as_("stranger").post(f"{D}/versions"), 403, "permission_denied"),
    ("unknown-datanet", lambda w: w.as_("anonymous").get("/v1/datanets/missing"), 404, "not_found"),
    ("unknown-route", lambda w: w.as_("anonymous").get("/v2/nothing"), 404, "not_found"),
    ("unknown-root", lambda w: w.as_("anonymous").get("/"), 404, "not_found"),
    ("wrong-method", lambda w: w.as_("owner").delete(D), 405, "method_not_allowed"),
    ("malformed-json", lambda w: w.as_("owner").post("/v1/datanets", content=b"[", headers={"content-type": "application/json"}), 400, "bad_request"),
    ("validation", lambda w: w.as_("owner").post("/v1/datanets", json={"slug": 5}), 422, "invalid_input"),
    ("bad-query", lambda w: w.as_("owner").get("/v1/datanets", params={"limit": "many"}), 422, "invalid_input"),
    ("conflict", lambda w: w.as_("owner").post("/v1/datanets", json={"slug": "authz", "title": "t", "kind": "text", "licenses": [LICENSE], "policy": "open"}), 409, "conflict"),
    ("too-large", lambda w: _upload_as(w, b"x" * 5000, "a.txt"), 413, "payload_too_large"),
]


@pytest.mark.parametrize(("name", "request_", "status", "type_"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_shape(world: World, name: str, request_: Callable[[World], httpx.Response], status: int, type_: str) -> None:
    assert_error(request_(world), status, type_)


# --------------------------------------------------------------------------------------------------------------
# end to end on the per-test node (SQLite and PostgreSQL): proofs, export, pagination
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def live(node: Node) -> Iterator[LiveServer]:
    with LiveServer(create_app(node)) as server:
        yield server


def test_proofs_verify_offline_and_export_carries_lineage(node: Node, live: LiveServer) -> None:
    alice_account, alice = node.accounts.create("alice")
    bob_account, bob = node.accounts.create("bob")
    with live.client(alice) as a, live.client(bob) as b, live.client() as anon:
        body = {"slug": "poems", "title": "Poems", "kind": "text", "licenses": [LICENSE], "policy": "open", "tags": ["poetry"]}
        created = a.post("/v1/datanets", json=body)
        assert created.status_code == 201 and created.json()["owner"] == alice_account.id
        ra = a.post("/v1/datanets/poems/contributions", json={"records": [{"text": f"alice line {i}"} for i in range(3)]}).json()
        rb = b.post("/v1/datanets/poems/contributions/upload", files={"file": ("b.jsonl", jsonl({"text": "bob's own poem"}))}).json()
        assert ra["counts"]["accepted"] == 3 and rb["counts"]["accepted"] == 1
        version = a.post("/v1/datanets/poems/versions")
        assert version.status_code == 201 and version.json()["size"] == 4

        key = anon.get("/v1/node").json()["verifier_key"]
        assert key == node.signer.verifier_key
        for cid in ra["accepted"] + rb["accepted"]:
            bundle = anon.get(f"/v1/datanets/poems/versions/1/proof/{cid}").json()
            checked = verify_proof(bundle, [key])
            assert checked["ok"] and checked["contribution_id"] == cid and checked["version"] == 1
        tampered = {**bundle, "contribution_id": ra["accepted"][0]}
        with pytest.raises(VerificationFailed):
            verify_proof(tampered, [key])

        exported = anon.get("/v1/datanets/poems/versions/1/export", params={"format": "jsonl"})
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/x-ndjson")
        assert 'filename="poems-v1.jsonl"' in exported.headers["content-disposition"]
        rows = [json.loads(line) for line in exported.text.splitlines()]
        assert [r["contribution_id"] for r in rows] == ra["accepted"] + rb["accepted"]
        assert [r["contributor"] for r in rows] == [alice_account.id] * 3 + [bob_account.id]
        assert rows[-1]["text"] == "bob's own poem" and rows[-1]["contributor_name"] == "bob"

        parquet = anon.get("/v1/datanets/poems/versions/1/export", params={"format": "parquet"})
        assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(parquet.content))
        assert table.column("contribution_id").to_pylist() == [r["contribution_id"] for r in rows]

        shown = anon.get("/v1/datanets/poems").json()
        assert shown["counts"]["accepted"] == 4 and shown["contributors"] == 2
        assert [e["name"] for e in shown["leaderboard"]] == ["alice", "bob"]
        assert shown["versions"][0]["root"] == version.json()["root"]


def test_pagination(node: Node, live: LiveServer) -> None:
    _, key = node.accounts.create("paula")
    with live.client(key) as c:
        for i in range(3):
            body = {"slug": f"set-{i}", "title": "S", "kind": "text", "licenses": [LICENSE], "policy": "open"}
            assert c.post("/v1/datanets", json=body).status_code == 201
        report = c.post("/v1/datanets/set-0/contributions", json={"records": [{"text": f"p{i}"} for i in range(5)]}).json()

        seen, after = [], None
        while True:
            page = c.get("/v1/datanets/set-0/contributions", params={"limit": 2, **({"after": after} if after is not None else {})}).json()
            seen += [x["id"] for x in page["data"]]
            if not page["has_more"]:
                assert page["next_after"] is None
                break
            after = page["next_after"]
        assert seen == report["accepted"]

        first = c.get("/v1/datanets", params={"limit": 2}).json()
        assert [d["slug"] for d in first["data"]] == ["set-0", "set-1"] and first["has_more"]
        rest = c.get("/v1/datanets", params={"limit": 2, "after": first["next_after"]}).json()
        assert [d["slug"] for d in rest["data"]] == ["set-2"] and not rest["has_more"]
        pending = c.get("/v1/datanets/set-0/contributions", params={"status": "pending"}).json()
        assert pending == {"data": [], "has_more": False, "next_after": None}


def test_unexpected_errors_answer_500_without_traceback(node: Node) -> None:
    app = create_app(node)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with LiveServer(app) as server, server.client() as c:
        error = assert_error(c.get("/boom"), 500, "internal_error")
    assert "secret" not in error["message"]


# LIBRARY BUG (these two fail until it is fixed): a NUL character in a datanet's title/description or in a
# contribution's source/consent is stored on SQLite but makes PostgreSQL raise DataError: HTTP 500, and on
# contribute the whole batch (up to 5,000 rows) is lost. Record text already refuses NUL ("contains a NUL
# character"); metadata should too, on both backends. Fix in datanet/registry.py Datanets.create and
# datanet/records.py _meta_text.


def _library_bug(message: str) -> None:
    # pytrace=False: a short report. (Formatting long tracebacks here sometimes trips CPython 3.11.7's
    # "AST constructor recursion depth mismatch" SystemError inside pytest, which aborts the whole run.)
    pytest.fail(f"LIBRARY BUG: {message}", pytrace=False)


def test_nul_in_datanet_metadata_is_refused(node: Node, live: LiveServer) -> None:
    _, key = node.accounts.create("nora")
    body = {"slug": "nul", "title": "N", "kind": "text", "licenses": [LICENSE], "policy": "open"}
    with live.client(key) as c:
        for name in ("description", "title"):
            response = c.post("/v1/datanets", json={**body, name: "a\u0000b"})
            if response.status_code != 422 or response.json()["error"].get("field") != name:
                _library_bug(f"a NUL in a datanet's {name} should be 422 (field {name}); got {response.status_code} {response.text[:200]}")


def test_nul_in_contribution_metadata_is_refused_per_line(node: Node, live: LiveServer) -> None:
    _, key = node.accounts.create("nora")
    body = {"slug": "nul", "title": "N", "kind": "text", "licenses": [LICENSE], "policy": "open"}
    with live.client(key) as c:
        assert c.post("/v1/datanets", json=body).status_code == 201
        records = [{"text": "fine"}, {"text": "x", "source": "a\u0000b"}, {"text": "y", "consent": "a\u0000b"}]
        response = c.post("/v1/datanets/nul/contributions", json={"records": records})
        rejected = [(r["line"], r["field"]) for r in response.json().get("rejected", [])] if response.status_code == 200 else None
        if rejected != [(2, "source"), (3, "consent")] or len(response.json()["accepted"]) != 1:
            _library_bug(f"NUL in source/consent should reject those lines only; got {response.status_code} {response.text[:200]}")


def test_nul_in_review_reason_is_refused(node: Node, live: LiveServer) -> None:
    _, key = node.accounts.create("nora")
    body = {"slug": "nul", "title": "N", "kind": "text", "licenses": [LICENSE], "policy": "curated"}
    with live.client(key) as c:
        assert c.post("/v1/datanets", json=body).status_code == 201
        cid = c.post("/v1/datanets/nul/contributions", json={"records": [{"text": "fine"}]}).json()["pending"][0]
        response = c.post("/v1/datanets/nul/review", json={"reject": [cid], "reason": "a\u0000b"})
        if response.status_code != 422 or response.json()["error"].get("field") != "reason":
            _library_bug(f"a NUL in a review reason should be 422 (field reason); got {response.status_code} {response.text[:200]}")


def test_openapi_schema(live: LiveServer) -> None:
    with live.client() as c:
        schema = c.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/v1/node", "/v1/datanets", "/v1/datanets/{slug}/contributions/upload", "/v1/datanets/{slug}/versions/{number}/export"} <= set(paths)
    upload = paths["/v1/datanets/{slug}/contributions/upload"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert "records" in paths["/v1/datanets/{slug}/contributions"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_royalty_serve(tmp_path: Path) -> None:
    """`royalty serve` opens the node and serves the API on 127.0.0.1 by default."""
    home = tmp_path / "home"
    node, _ = royalty.init_node(home)
    node_id = node.node_id
    node.close()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROYALTY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "royalty", "serve", "--home", str(home), "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/v1/node", timeout=2).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "royalty serve did not start"
                time.sleep(0.1)
        assert info["node_id"] == node_id and "home" not in info
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    missing = subprocess.run([sys.executable, "-m", "royalty", "serve", "--home", str(tmp_path / "none")], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "no royalty node" in missing.stderr
