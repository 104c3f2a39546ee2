"""``/v1/adapters`` and ``/v1/jobs`` over real HTTP (uvicorn on a loopback port, httpx), on SQLite and PostgreSQL.

Adapters: list/show/verify with the visibility rule (unpublished ones only for their owner and admins),
downloads (only manifest files, ETag = registered SHA-256, 304, a tampered file detectable), publish and
deprecate with their permissions. Jobs: a bad config is refused with every problem before anything is queued;
a submitted training job runs in a detached worker and its Server-Sent Events stream ends with it; idempotent
submission; the stream replays exactly the missed events after a reconnect (Last-Event-ID), sends heartbeats,
and ends when the job is canceled. Adapter artifacts are small well-formed peft directories
(``test_adapters.make_artifact``): registration only hashes files.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import LiveServer
from conftest import FREE_PUBLISHING
from test_adapters import make_artifact

from royalty import Node
from royalty.api import create_app
from royalty.api import jobs as api_jobs
from royalty.factory.jobs import pid_alive, run_worker
from royalty.ledger.amounts import UNIT

FEE = 10 * UNIT  # Params.adapter_registration_fee at genesis


@pytest.fixture
def genesis_params() -> dict[str, Any]:
    return dict(FREE_PUBLISHING)


@dataclass
class World:
    node: Node
    server: LiveServer
    ids: dict[str, str]  # name -> account id
    clients: dict[str, httpx.Client]  # name -> client with that account's key; "anon" has none


@pytest.fixture
def world(node: Node) -> Iterator[World]:
    """alice owns the published datanet first-aid; ben can pay two adapter registrations; mallory is someone
    else; admin is an admin. A server runs on the node."""
    ids, keys = {}, {}
    for name, roles in (("admin", ("admin",)), ("alice", ()), ("ben", ()), ("mallory", ())):
        account, keys[name] = node.accounts.create(name, roles=roles)
        ids[name] = account.id
    node.datanets.create("first-aid", title="First aid", kind="text", licenses=["CC-BY-4.0"], policy="open",
                         owner=ids["alice"], limits={"near_duplicate_threshold": 0.0})
    node.datanets.contribute_records("first-aid", [{"text": f"tip {i}: cool a burn under running water"} for i in range(4)],
                                     contributor=ids["alice"])
    node.datanets.publish("first-aid", actor=ids["alice"])
    node.tokens.faucet("ben", 2 * FEE, actor=node.operator())
    with LiveServer(create_app(node)) as server:
        clients = {name: server.client(key) for name, key in keys.items()} | {"anon": server.client()}
        try:
            yield World(node, server, ids, clients)
        finally:
            for client in clients.values():
                client.close()


def assert_error(response: httpx.Response, status: int, type_: str, *, field: str | None = None, says: str = "") -> dict[str, Any]:
    """The one error shape with a one-line message, the right status, no traceback."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(response.json()) == {"error"} and error["type"] == type_, error
    assert error["message"].strip() and "\n" not in error["message"] and "Traceback" not in response.text
    if field is not None:
        assert error.get("field") == field, error
    if says:
        assert says.lower() in error["message"].lower(), error
    return error


def register(w: World, tmp_path: Path, seed: int) -> Any:
    ben = w.ids["ben"]
    return w.node.adapters.register(make_artifact(tmp_path / f"a{seed}", w.node, ben, seed=seed), owner=ben, actor=ben)


def refs(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [a["ref"] for a in response.json()["data"]]


# --------------------------------------------------------------------------------------------------------------
# adapters
# --------------------------------------------------------------------------------------------------------------


def test_adapter_reads_files_and_visibility(world: World, tmp_path: Path) -> None:
    w, c = world, world.clients
    a1, a2 = register(w, tmp_path, 0), register(w, tmp_path, 1)
    both = ["first-aid-helper@1", "first-aid-helper@2"]

    # Registered (not yet published): only the owner and admins see them.
    assert refs(c["ben"].get("/v1/adapters")) == both == refs(c["admin"].get("/v1/adapters"))
    assert refs(c["anon"].get("/v1/adapters")) == [] == refs(c["mallory"].get("/v1/adapters"))
    assert refs(c["ben"].get("/v1/adapters", params={"owner": "ben", "status": "registered"})) == both
    assert refs(c["ben"].get("/v1/adapters", params={"status": "published"})) == []
    assert_error(c["ben"].get("/v1/adapters", params={"status": "live"}), 422, "invalid_input", field="status")
    assert_error(c["ben"].get("/v1/adapters", params={"owner": "nobody"}), 404, "not_found")
    page = c["ben"].get("/v1/adapters", params={"limit": 1}).json()
    assert [a["ref"] for a in page["data"]] == both[:1] and page["has_more"] and page["next_after"] == both[0]
    page = c["ben"].get("/v1/adapters", params={"limit": 1, "after": page["next_after"]}).json()
    assert [a["ref"] for a in page["data"]] == both[1:] and not page["has_more"] and page["next_after"] is None

    shown = c["ben"].get("/v1/adapters/first-aid-helper").json()  # the latest version
    assert (shown["id"], shown["version"], shown["owner"], shown["status"]) == (a2.id, 2, w.ids["ben"], "registered")
    assert shown["manifest"] == json.loads((a2.path / "royalty.json").read_text())
    assert shown["datanets"] == ["first-aid@1"] and "path" not in shown  # where files live is the operator's business
    assert c["admin"].get(f"/v1/adapters/{a1.id}").json()["ref"] == "first-aid-helper@1"
    assert_error(c["mallory"].get("/v1/adapters/first-aid-helper@1"), 403, "permission_denied", says="not published")
    assert_error(c["anon"].get("/v1/adapters/first-aid-helper@1/verify"), 403, "permission_denied")
    assert_error(c["ben"].get("/v1/adapters/nothing-here"), 404, "not_found", field="adapter")
    assert_error(c["ben"].get("/v1/adapters/first-aid-helper@x"), 422, "invalid_input", field="adapter")
    verified = c["ben"].get("/v1/adapters/first-aid-helper@1/verify").json()
    assert verified["ok"] is True and verified["problems"] == [] and verified["files"] == 3

    # Files: only the manifest's, with the registered SHA-256 as ETag and Repr-Digest.
    url = "/v1/adapters/first-aid-helper@1/files/"
    body = (a1.path / "adapter_model.safetensors").read_bytes()
    digest = a1.manifest["files"]["adapter_model.safetensors"]
    r = c["ben"].get(url + "adapter_model.safetensors")
    assert r.status_code == 200 and r.content == body and hashlib.sha256(body).hexdigest() == digest
    assert r.headers["etag"] == f'"{digest}"'
    assert r.headers["repr-digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"
    assert r.headers["content-type"] == "application/octet-stream"
    r = c["ben"].get(url + "adapter_model.safetensors", headers={"If-None-Match": f'"x", "{digest}"'})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == f'"{digest}"'
    r = c["ben"].get(url + "adapter_model.safetensors", headers={"Range": "bytes=0-7"})
    assert r.status_code == 206 and r.content == body[:8]
    r = c["admin"].get(url + "royalty.json")
    assert r.content == (a1.path / "royalty.json").read_bytes() and r.headers["etag"] == f'"{a1.manifest_sha256}"'
    assert c["ben"].get(url + "README.md").text.startswith("---\nbase_model:")
    assert_error(c["ben"].get(url + "node.json"), 404, "not_found", field="name", says="adapter_config.json")
    assert_error(c["ben"].get(url + "..%2F..%2F..%2Fnode.json"), 404, "not_found", field="name")
    assert_error(c["mallory"].get(url + "adapter_config.json"), 403, "permission_denied")


def test_publish_deprecate_and_tampering(world: World, tmp_path: Path) -> None:
    w, c = world, world.clients
    adapter = register(w, tmp_path, 0)
    url = "/v1/adapters/first-aid-helper@1"
    size = w.node.journal.size()
    assert_error(c["anon"].post(url + "/publish"), 401, "authentication_error")
    assert_error(c["mallory"].post(url + "/publish"), 403, "permission_denied")
    r = c["ben"].post(url + "/publish")
    assert r.status_code == 200 and r.json()["status"] == "published" and "path" not in r.json()
    assert_error(c["ben"].post(url + "/publish"), 409, "conflict", field="status")

    # Published: public, files too, without a key.
    assert refs(c["anon"].get("/v1/adapters")) == ["first-aid-helper@1"]
    assert c["mallory"].get(url).json()["status"] == "published"
    config = (adapter.path / "adapter_config.json").read_bytes()
    assert c["anon"].get(url + "/files/adapter_config.json").content == config

    assert_error(c["mallory"].post(url + "/deprecate", json={"reason": "mine now"}), 403, "permission_denied")
    assert_error(c["admin"].post(url + "/deprecate"), 422, "invalid_input")
    assert_error(c["admin"].post(url + "/deprecate", json={"reason": " "}), 422, "invalid_input", field="reason")
    assert_error(c["admin"].post(url + "/deprecate", json={"reason": "x", "why": "y"}), 422, "invalid_input",
                 says="unknown field 'why'")
    r = c["admin"].post(url + "/deprecate", json={"reason": "superseded by v2"})
    assert r.status_code == 200 and r.json()["status"] == "deprecated"
    events = w.node.journal.events(after=size - 1, limit=10)
    assert [(e.type, e.actor) for e in events] == [("adapter.published", w.ids["ben"]),
                                                    ("adapter.deprecated", w.ids["admin"])]
    assert events[1].data["reason"] == "superseded by v2"
    assert refs(c["anon"].get("/v1/adapters", params={"status": "deprecated"})) == ["first-aid-helper@1"]

    # A file changed on disk: verify names it, and a download no longer matches its ETag.
    (adapter.path / "adapter_config.json").write_bytes(config.replace(b'"r": 4', b'"r": 5'))
    verified = c["anon"].get(url + "/verify").json()
    assert verified["ok"] is False and any(p.startswith("adapter_config.json: SHA-256") for p in verified["problems"])
    r = c["anon"].get(url + "/files/adapter_config.json")
    assert r.headers["etag"] != f'"{hashlib.sha256(r.content).hexdigest()}"'


# --------------------------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------------------------


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse a text/event-stream: one dict per event ({"id"?, "event", "data"}), {"comment": …} per comment."""
    block: dict[str, Any] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line:
            name, _, value = line.partition(":")
            block[name] = value.removeprefix(" ")
        elif block:
            if "data" in block:
                block["data"] = json.loads(block["data"])
                yield block
            block = {}


def stream(client: httpx.Client, job_id: str, **kwargs: Any) -> Any:
    return client.stream("GET", f"/v1/jobs/{job_id}/events/stream", **kwargs)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_bad_config_is_refused_with_every_problem(world: World) -> None:
    c = world.clients
    config = {"model": {"base": ""}, "data": {"datanets": ["first-aid"]}, "lora": {"r": 0, "alpah": 8},
              "output": {"name": "helper", "dir": "/etc/royalty"}}
    error = assert_error(c["ben"].post("/v1/jobs", json={"kind": "train", "config": config}), 422, "config_invalid",
                         field="model.base")
    fields = [p["field"] for p in error["problems"]]
    assert {"model.base", "data.datanets[0].ref", "lora.r", "lora.alpah", "output.dir"} <= set(fields), error
    assert all(f"{p['field']}: {p['message']}" in error["message"] for p in error["problems"])
    assert "alpha" in error["message"]  # the nearest valid name is suggested

    good = {"model": {"base": "/models/tiny"}, "data": {"datanets": ["first-aid@1"]}, "output": {"name": "helper"}}
    here = {**good, "output": {"name": "helper", "dir": ""}}  # "" would be the server's working directory
    assert_error(c["ben"].post("/v1/jobs", json={"kind": "train", "config": here}), 422, "config_invalid",
                 field="output.dir")
    assert_error(c["ben"].post("/v1/jobs", json={"kind": "sleep", "config": good}), 422, "invalid_input", field="kind")
    assert_error(c["ben"].post("/v1/jobs", json={"kind": "train", "config": good, "resume": True, "attribution_dim": 64}),
                 422, "invalid_input")
    assert_error(c["ben"].post("/v1/jobs", json={"kind": "train", "config": good, "attribution_dim": 0}), 422,
                 "invalid_input", field="attribution_dim")
    assert_error(c["ben"].post("/v1/jobs", json={"kind": "train", "config": "model: {}"}), 422, "invalid_input",
                 field="config")
    assert_error(c["anon"].post("/v1/jobs", json={"kind": "train", "config": good}), 401, "authentication_error")
    assert_error(c["ben"].post("/v1/jobs", json={"kind": "train", "config": good}, headers={"Idempotency-Key": ""}),
                 400, "idempotency_key_missing", field="Idempotency-Key")
    assert world.node.jobs.list() == []  # nothing was queued


def test_a_submitted_job_runs_in_a_worker_and_its_stream_ends_with_it(world: World, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """mallory cannot pay the registration fee: refused at once (402), nothing queued. Funded, her job is queued,
    the worker fails it at its start (the model directory is empty), and the stream says so."""
    w, c = world, world.clients
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = {"model": {"base": "models/tiny"}, "data": {"datanets": ["first-aid@1"]}, "output": {"name": "helper"},
              "lora": {"r": 4}}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    assert_error(c["mallory"].post("/v1/jobs", json={"kind": "train", "config": config}, headers=key), 402,
                 "insufficient_funds")
    assert w.node.jobs.list() == []
    w.node.tokens.faucet("mallory", w.node.params.current().adapter_registration_fee, actor=w.node.operator())
    r = c["mallory"].post("/v1/jobs", json={"kind": "train", "config": config}, headers=key)
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers, r.text
    job = r.json()
    try:
        assert (job["kind"], job["actor"], job["payload"]["resume"]) == ("train", w.ids["mallory"], False)
        resolved = job["payload"]["config"]  # defaults filled in, the local model path made absolute
        assert resolved["lora"]["r"] == 4 and resolved["train"]["epochs"] == 3
        assert resolved["model"]["base"] == str(tmp_path.resolve() / "models" / "tiny")
        again = c["mallory"].post("/v1/jobs", json={"kind": "train", "config": config}, headers=key)
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == job["id"]
        assert_error(c["mallory"].post("/v1/jobs", json={"kind": "train", "config": config, "resume": True}, headers=key),
                     422, "idempotency_key_reused", field="Idempotency-Key")
        assert [j.id for j in w.node.jobs.list()] == [job["id"]]

        # The job is the submitter's and the admins'.
        assert_error(c["ben"].get(f"/v1/jobs/{job['id']}"), 403, "permission_denied", field="job")
        assert_error(c["ben"].get(f"/v1/jobs/{job['id']}/events"), 403, "permission_denied")
        assert_error(c["ben"].get(f"/v1/jobs/{job['id']}/events/stream"), 403, "permission_denied")
        assert_error(c["ben"].post(f"/v1/jobs/{job['id']}/cancel"), 403, "permission_denied")
        assert_error(c["ben"].get("/v1/jobs/job_0000000000000000"), 404, "not_found")
        assert c["ben"].get("/v1/jobs").json() == {"data": [], "has_more": False, "next_after": None}
        assert [j["id"] for j in c["admin"].get("/v1/jobs").json()["data"]] == [job["id"]]

        with stream(c["mallory"], job["id"], timeout=90) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            events = list(sse(response))  # ends by itself when the job has ended
        end = events[-1]
        assert end["event"] == "end" and "id" not in end and end["data"]["status"] == "failed"
        assert str(tmp_path.resolve() / "models" / "tiny") in end["data"]["error"]
        typed = [e for e in events if "event" in e and e["event"] != "end"]
        assert [e["event"] for e in typed][:2] == ["queued", "started"] and typed[-1]["event"] == "failed"
        assert [int(e["id"]) for e in typed] == [e["data"]["seq"] for e in typed] == list(range(len(typed)))
        assert c["mallory"].get(f"/v1/jobs/{job['id']}").json()["status"] == "failed"
    finally:
        _stop_worker(w.node.home)


def _stop_worker(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int((home / "run" / "worker.pid").read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid), 30, "the worker to exit")


def test_the_stream_replays_exactly_what_a_reconnecting_client_missed(world: World) -> None:
    w, ben = world, world.clients["ben"]
    job = w.node.jobs.submit("sleep", {"seconds": 2.0, "steps": 8}, actor=w.ids["ben"])
    worker = threading.Thread(target=run_worker, args=(w.node.home,), kwargs={"once": True})
    worker.start()
    try:
        first: list[dict[str, Any]] = []
        with stream(ben, job.id) as response:
            for event in sse(response):
                first.append(event)
                if event.get("event") == "step":
                    break  # disconnect mid-job
        assert [e["event"] for e in first] == ["queued", "started", "step"]
        last = first[-1]["id"]

        with stream(ben, job.id, params={"after": 0}, headers={"Last-Event-ID": last}) as response:
            rest = list(sse(response))  # Last-Event-ID wins over ?after=
        assert rest[-1]["event"] == "end" and rest[-1]["data"]["status"] == "succeeded"
        seen = [(int(e["id"]), e["event"], e["data"]) for e in first + rest[:-1]]
        everything = [(e.seq, e.type, e.to_dict()) for e in w.node.jobs.events(job.id)]
        assert seen == everything  # nothing missed, nothing twice, in order
        assert [t for _, t, _ in everything] == ["queued", "started"] + ["step"] * 8 + ["succeeded"]
    finally:
        worker.join(timeout=60)

    with stream(ben, job.id, params={"after": 8}) as response:
        assert [e.get("id") for e in sse(response)] == ["9", "10", None]
    page = ben.get(f"/v1/jobs/{job.id}/events", params={"after": 2, "limit": 3}).json()
    assert [e["seq"] for e in page["data"]] == [3, 4, 5] and page["has_more"] and page["next_after"] == 5
    assert page["status"] == "succeeded"
    assert_error(ben.get(f"/v1/jobs/{job.id}/events/stream", headers={"Last-Event-ID": "seven"}), 422,
                 "invalid_input", field="Last-Event-ID")
    assert_error(ben.get(f"/v1/jobs/{job.id}/events", params={"after": -2}), 422, "invalid_input", field="after")


def test_the_stream_keeps_alive_and_ends_when_the_job_is_canceled(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_jobs, "HEARTBEAT_S", 0.2)
    w, ben = world, world.clients["ben"]
    job = w.node.jobs.submit("sleep", {"seconds": 60}, actor=w.ids["ben"])  # no worker: it stays queued
    other = w.node.jobs.submit("sleep", {}, actor=w.ids["admin"])
    received: list[dict[str, Any]] = []
    with stream(ben, job.id) as response:
        for event in sse(response):
            received.append(event)
            if "comment" in event and len(received) == 2:  # queued, then a heartbeat: now cancel it
                r = ben.post(f"/v1/jobs/{job.id}/cancel")
                assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert received[0]["event"] == "queued" and received[1] == {"comment": "keep-alive"}
    typed = [e for e in received if "event" in e]
    assert [e["event"] for e in typed] == ["queued", "canceled", "end"]
    assert typed[-1]["data"]["id"] == job.id and typed[-1]["data"]["status"] == "canceled"
    assert_error(ben.post(f"/v1/jobs/{job.id}/cancel"), 409, "conflict", says="already canceled")

    # Lists: a caller's own jobs, newest first, paged; admins see everyone's.
    mine = w.node.jobs.submit("sleep", {}, actor=w.ids["ben"])
    page = ben.get("/v1/jobs", params={"limit": 1}).json()
    assert [j["id"] for j in page["data"]] == [mine.id] and page["has_more"] and page["next_after"] == mine.id
    page = ben.get("/v1/jobs", params={"limit": 1, "after": mine.id}).json()
    assert [j["id"] for j in page["data"]] == [job.id] and not page["has_more"]
    assert [j["id"] for j in ben.get("/v1/jobs", params={"status": "canceled"}).json()["data"]] == [job.id]
    assert [j["id"] for j in w.clients["admin"].get("/v1/jobs").json()["data"]] == [mine.id, other.id, job.id]
    assert_error(ben.get("/v1/jobs", params={"after": other.id}), 422, "invalid_input", field="after")
    assert_error(ben.get("/v1/jobs", params={"status": "done"}), 422, "invalid_input", field="status")
