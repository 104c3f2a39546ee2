"""``/v1/attribution`` and ``/v1/attribute`` over real HTTP (uvicorn on a loopback port, httpx), SQLite only (torch).

A tiny adapter trained on three contributors' facts (as in test_attribution_service); its index is built by an
``attribution_index`` job in the node's detached worker, then answers are attributed, shown and verified over
HTTP, with the permission rules: only the owner or an admin builds; an unpublished adapter's index and receipts
are its owner's and the admins' until it is published.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_server import LiveServer
from conftest import FREE_PUBLISHING, Clock
from factory_fixtures import tiny_model_dir  # noqa: F401  (a session fixture)
from test_api_factory import assert_error
from test_attribution_service import ADAPTER, FACTS, train_facts_adapter

import royalty
from royalty import Node
from royalty.api import create_app
from royalty.attribution.receipts import PPM
from royalty.factory.jobs import pid_alive

pytest.importorskip("torch")


@dataclass
class World:
    node: Node
    ids: dict[str, str]  # name -> account id
    clients: dict[str, httpx.Client]  # name -> client with that account's key; "anon" has none


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[World]:  # noqa: F811
    """ben trained facts-helper (registered, not published) on ada's, bo's and cy's facts; mallory is someone else;
    admin is an admin. A server runs on the node; the worker it starts is stopped at the end."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    node, _ = royalty.init_node(tmp_path_factory.mktemp("api-attribution") / "home", clock=Clock(),
                                params=FREE_PUBLISHING)
    ids, keys = {}, {}
    for name, roles in (("admin", ("admin",)), ("ben", ()), ("mallory", ()), ("ada", ()), ("bo", ()), ("cy", ())):
        account, keys[name] = node.accounts.create(name, roles=roles)
        ids[name] = account.id
    train_facts_adapter(node, tiny_model_dir)
    try:
        with LiveServer(create_app(node)) as server:
            clients = {name: server.client(key) for name, key in keys.items()} | {"anon": server.client()}
            try:
                yield World(node, ids, clients)
            finally:
                for client in clients.values():
                    client.close()
    finally:
        _stop_worker(node.home)
        node.close()
        torch.set_num_threads(threads)


def _stop_worker(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int((home / "run" / "worker.pid").read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid), "the worker did not exit"


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish within {timeout} s")


def test_build_attribute_show_verify_with_permissions(world: World) -> None:
    w, c = world, world.clients
    prompt, response = FACTS["ada"][0]
    ask = {"adapter": ADAPTER, "prompt": prompt, "response": response}

    # No index yet: 404 saying how to build one.
    assert_error(c["ben"].post("/v1/attribute", json=ask), 404, "not_found", field="adapter",
                 says="POST /v1/attribution/indexes")
    assert_error(c["ben"].get(f"/v1/attribution/indexes/{ADAPTER}"), 404, "not_found", says="no attribution index")

    # Only the owner (or an admin) builds; bodies are checked before anything is queued.
    assert_error(c["anon"].post("/v1/attribution/indexes", json={"adapter": ADAPTER}), 401, "authentication_error")
    assert_error(c["mallory"].post("/v1/attribution/indexes", json={"adapter": ADAPTER}), 403, "permission_denied")
    assert_error(c["ben"].post("/v1/attribution/indexes", json={"adapter": ADAPTER, "dim": 0}), 422,
                 "invalid_input", field="dim")
    assert_error(c["ben"].post("/v1/attribution/indexes", json={"adapter": ADAPTER, "batch": 4}), 422,
                 "invalid_input", says="unknown field 'batch'")
    assert_error(c["ben"].post("/v1/attribution/indexes", json={"adapter": "nothing-here"}), 404, "not_found")
    assert w.node.jobs.list() == []

    r = c["ben"].post("/v1/attribution/indexes", json={"adapter": ADAPTER, "dim": 128, "seed": 11})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["kind"], job["actor"], job["status"]) == ("attribution_index", w.ids["ben"], "queued")
    adapter_id = w.node.adapters.get(ADAPTER).id
    assert job["payload"] == {"adapter": adapter_id, "dim": 128, "seed": 11, "method": "inrun", "rebuild": False}
    # A second build of the same adapter while one is queued or running: refused, naming the job.
    assert_error(c["admin"].post("/v1/attribution/indexes", json={"adapter": ADAPTER}), 409, "conflict",
                 says=job["id"])
    done = wait_job(c["ben"], job["id"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["rows"] == 12 and not result["reused"] and "seed" not in json.dumps(result)

    info = c["ben"].get(f"/v1/attribution/indexes/{ADAPTER}")
    assert info.status_code == 200, info.text
    info = info.json()
    assert info["grad"]["rows"] == 12 and info["spans"]["documents"] == 12 and info["params"]["dim"] == 128
    assert info["grad_checksum"] == result["grad_checksum"] and "seed" not in json.dumps(info)
    assert "path" not in info  # where the node keeps files is the operator's business
    # Other parameters without rebuild: refused at once, nothing queued.
    assert_error(c["ben"].post("/v1/attribution/indexes", json={"adapter": ADAPTER, "dim": 64}), 409, "conflict",
                 field="params", says="dim")
    assert len(w.node.jobs.list()) == 1

    # Attribute: the fact's owner gets most of the data share; the receipt is stored and journaled.
    assert_error(c["anon"].post("/v1/attribute", json=ask), 401, "authentication_error")
    assert_error(c["mallory"].post("/v1/attribute", json=ask), 403, "permission_denied", says="not published")
    assert_error(c["ben"].post("/v1/attribute", json={**ask, "top": 0}), 422, "invalid_input", field="top")
    assert_error(c["ben"].post("/v1/attribute", json={**ask, "temperature": 1}), 422, "invalid_input")
    r = c["ben"].post("/v1/attribute", json={**ask, "request_id": "req-1", "top": 3})
    assert r.status_code == 201, r.text
    made = r.json()
    receipt = made["receipt"]
    rid = receipt["receipt_id"]
    assert r.headers["location"] == f"/v1/attribution/receipts/{rid}"
    weights = receipt["weights"]["contributors"]
    assert sum(weights.values()) == PPM and max(weights, key=weights.__getitem__) == w.ids["ada"]
    assert len(receipt["top"]) == 3 and receipt["request"]["request_id"] == "req-1"
    assert made["request"]["prompt"] == prompt and made["request"]["response"] == response
    event = w.node.journal.events(type="attribution.receipt")[-1]
    assert made["event_seq"] == event.seq and event.data["sha256"] == made["sha256"]

    # Show and verify (the appeal); an unpublished adapter's receipts are its owner's and the admins'.
    shown = c["ben"].get(f"/v1/attribution/receipts/{rid}").json()
    assert shown == made
    assert c["admin"].get(f"/v1/attribution/receipts/{rid}").status_code == 200
    for who in ("mallory", "anon"):
        assert_error(c[who].get(f"/v1/attribution/receipts/{rid}"), 403, "permission_denied")
        assert_error(c[who].post(f"/v1/attribution/receipts/{rid}/verify"), 403, "permission_denied")
        assert_error(c[who].post("/v1/attribution/verify", json=receipt), 403, "permission_denied")
        assert_error(c[who].get(f"/v1/attribution/indexes/{ADAPTER}"), 403, "permission_denied")
    ok = c["ben"].post(f"/v1/attribution/receipts/{rid}/verify")
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"ok": True, "receipt_id": rid, "sha256": made["sha256"], "event_seq": event.seq}
    assert c["ben"].post("/v1/attribution/verify", json=receipt).json()["ok"] is True
    assert_error(c["ben"].get("/v1/attribution/receipts/rcpt_" + "0" * 24), 404, "not_found", field="receipt_id")
    assert_error(c["ben"].get("/v1/attribution/receipts/nope"), 422, "invalid_input", field="receipt_id")

    # A tampered receipt: 409 naming the field that differs from the recomputation.
    ada = w.ids["ada"]
    tampered = json.loads(json.dumps(receipt))
    tampered["weights"]["contributors"][ada] -= 1
    assert_error(c["ben"].post("/v1/attribution/verify", json=tampered), 409, "verification_failed",
                 field=f"weights.contributors.{ada}")
    tampered = {**receipt, "top": receipt["top"][:-1]}
    assert_error(c["ben"].post("/v1/attribution/verify", json=tampered), 409, "verification_failed", field="top[2]")
    assert_error(c["ben"].post("/v1/attribution/verify", json={"format": "royalty.receipt/1"}), 409,
                 "verification_failed")
    # The stored copy changed on disk: the appeal names the field too.
    path = w.node.home / "attribution" / "receipts" / f"{rid}.json"
    original = path.read_bytes()
    needle = f'"{ada}":{weights[ada]}'.encode()
    assert original.count(needle) == 1
    path.write_bytes(original.replace(needle, f'"{ada}":{weights[ada] + 1}'.encode()))
    try:
        assert_error(c["ben"].post(f"/v1/attribution/receipts/{rid}/verify"), 409, "verification_failed",
                     field=f"weights.contributors.{ada}")
    finally:
        path.write_bytes(original)

    # Published: anyone reads and verifies its receipts, any account attributes; building stays the owner's.
    assert c["ben"].post(f"/v1/adapters/{ADAPTER}/publish").status_code == 200
    public = c["anon"].get(f"/v1/attribution/receipts/{rid}").json()
    assert public["receipt"] == receipt
    assert public["request"] is None  # the question and answer stay with the owner and admins; hashes are public
    assert c["mallory"].post(f"/v1/attribution/receipts/{rid}/verify").json()["ok"] is True
    assert c["anon"].get(f"/v1/attribution/indexes/{ADAPTER}").json()["grad"]["rows"] == 12
    assert_error(c["mallory"].post("/v1/attribution/indexes", json={"adapter": ADAPTER, "dim": 128}), 403,
                 "permission_denied", says="owner")
    prompt, response = FACTS["bo"][1]
    r = c["mallory"].post("/v1/attribute", json={"adapter": ADAPTER, "prompt": prompt, "response": response})
    assert r.status_code == 201, r.text
    theirs = r.json()["receipt"]["weights"]["contributors"]
    assert max(theirs, key=theirs.__getitem__) == w.ids["bo"]
    r = c["mallory"].post("/v1/attribute", json={"adapter": ADAPTER, "prompt": prompt, "max_new_tokens": 4})
    assert r.status_code == 201, r.text  # no response: the adapter answers first, and the receipt says so
    generated = r.json()
    assert generated["receipt"]["request"]["generated"] and 1 <= generated["receipt"]["request"]["response_tokens"] <= 4
    assert generated["request"]["response"].strip()

    # An admin asks for the same build: the job reuses the index.
    r = c["admin"].post("/v1/attribution/indexes", json={"adapter": ADAPTER, "dim": 128, "seed": 11})
    assert r.status_code == 202, r.text
    again = wait_job(c["admin"], r.json()["id"])
    assert again["status"] == "succeeded" and again["result"]["reused"], again
    assert again["result"]["grad_checksum"] == result["grad_checksum"]
