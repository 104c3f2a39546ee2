"""Background jobs: the queue (submit, claim, events and their replay, finish/fail, cancel), concurrent workers
never sharing a job, dead-worker detection, the worker loop (handlers, errors without tracebacks, cancel), a
job that keeps running after its client is killed, and ``royalty jobs …``; on both backends."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FREE_PUBLISHING, Clock, run_cli
from factory_fixtures import tiny_model_dir  # noqa: F401

import royalty
from royalty import Node
from royalty.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from royalty.factory.jobs import STALE_MS, Jobs, pid_alive, run_worker

HOST = socket.gethostname()


@pytest.fixture
def jobs(node: Node) -> Jobs:
    return node.jobs


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def types(jobs: Jobs, job_id: str, after: int = -1) -> list[str]:
    return [e.type for e in jobs.events(job_id, after=after)]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------------------------------------------
# the queue
# --------------------------------------------------------------------------------------------------------------


def test_submit_claim_events_replay_finish(node: Node, jobs: Jobs) -> None:
    operator = node.operator()
    job = jobs.submit("sleep", {"seconds": 0, "steps": 2}, actor="operator")
    assert (job.status, job.kind, job.actor, job.worker, job.cancel_requested) == ("queued", "sleep", operator, None, False)
    assert types(jobs, job.id) == ["queued"]

    claimed = jobs.claim(f"{HOST}:1")
    assert claimed is not None and claimed.id == job.id
    assert (claimed.status, claimed.worker) == ("running", f"{HOST}:1")
    assert claimed.started_ms is not None and claimed.heartbeat_ms == claimed.started_ms
    assert jobs.claim(f"{HOST}:2") is None  # nothing else queued

    assert jobs.emit(job.id, "step", {"step": 1, "loss": float("nan")}) == 2
    assert jobs.emit(job.id, "step", {"step": 2, "loss": 0.5}) == 3
    done = jobs.finish(job.id, {"steps": 2})
    assert (done.status, done.result, done.error) == ("succeeded", {"steps": 2}, None)
    assert done.finished_ms is not None and done.finished

    events = jobs.events(job.id)
    assert [(e.seq, e.type) for e in events] == [(0, "queued"), (1, "started"), (2, "step"), (3, "step"), (4, "succeeded")]
    assert events[2].data == {"step": 1, "loss": None}  # NaN is stored as null: every JSON client reads it
    # A client that saw seq 2 reconnects and gets exactly the rest.
    assert [e.seq for e in jobs.events(job.id, after=2)] == [3, 4]
    assert [e.seq for e in jobs.events(job.id, after=0, limit=2)] == [1, 2]

    with pytest.raises(Conflict, match="is succeeded, not running"):
        jobs.fail(job.id, "late")
    with pytest.raises(InvalidInput, match="unknown job kind 'bake'"):
        jobs.submit("bake", {}, actor="operator")
    with pytest.raises(NotFound, match="no job"):
        jobs.events("job_nope")
    assert [j.id for j in jobs.list(status="succeeded")] == [job.id] and jobs.list(status="queued") == []


def test_claim_order_fail_keeps_one_line(node: Node, jobs: Jobs, clock: Clock) -> None:
    first = jobs.submit("sleep", {}, actor="operator")
    second = jobs.submit("sleep", {}, actor="operator")
    assert jobs.claim("w:1").id == first.id and jobs.claim("w:2").id == second.id
    failed = jobs.fail(first.id, "out of memory\n  at layer 3\nTraceback ...")
    assert (failed.status, failed.error) == ("failed", "out of memory")
    assert jobs.events(first.id)[-1].data == {"error": "out of memory"}
    assert [j.id for j in jobs.list()] == [second.id, first.id]  # newest first


def test_cancel_queued_and_running(node: Node, jobs: Jobs) -> None:
    mallory = node.accounts.create("mallory", with_key=False)[0].id
    queued = jobs.submit("sleep", {}, actor="operator")
    with pytest.raises(PermissionDenied, match="only the submitter"):
        jobs.cancel(queued.id, actor=mallory)
    canceled = jobs.cancel(queued.id, actor="operator")
    assert canceled.status == "canceled" and canceled.finished_ms is not None
    assert types(jobs, queued.id) == ["queued", "canceled"]
    assert jobs.claim("w:1") is None  # a canceled job is never started
    with pytest.raises(Conflict, match="already canceled"):
        jobs.cancel(queued.id, actor="operator")

    running = jobs.submit("sleep", {}, actor=mallory)
    jobs.claim("w:1")
    assert jobs.heartbeat(running.id) is False and not jobs.cancel_requested(running.id)
    asked = jobs.cancel(running.id, actor="operator")  # an admin may cancel anyone's job
    assert (asked.status, asked.cancel_requested) == ("running", True)
    assert jobs.heartbeat(running.id) is True  # the worker learns it at its next heartbeat
    assert jobs.finish(running.id, {"stopped": True}, status="canceled").status == "canceled"
    assert types(jobs, running.id) == ["queued", "started", "cancel_requested", "canceled"]


def test_dead_workers_jobs_fail_on_the_next_claim(node: Node, jobs: Jobs, clock: Clock) -> None:
    gone = jobs.submit("sleep", {}, actor="operator")
    alive = jobs.submit("sleep", {}, actor="operator")
    remote = jobs.submit("sleep", {}, actor="operator")
    jobs.claim(f"{HOST}:{dead_pid()}")
    jobs.claim(f"{HOST}:{os.getpid()}")  # this process: alive, however old its heartbeat
    jobs.claim("other-host:1")
    assert jobs.claim("w:9") is None  # heartbeats are fresh: nobody is judged dead
    assert {j.status for j in jobs.list()} == {"running"}

    clock.now += STALE_MS + 1
    assert jobs.claim("w:9") is None
    assert jobs.get(alive.id).status == "running"
    for job in (gone, remote):
        failed = jobs.get(job.id)
        assert failed.status == "failed" and failed.error.startswith("worker died"), failed.error
        assert types(jobs, job.id)[-1] == "failed"
    # The dead worker's late report is refused rather than resurrecting the job.
    with pytest.raises(Conflict):
        jobs.finish(gone.id, {})


def test_two_workers_never_claim_the_same_job(node: Node, home: Path, closing: Any) -> None:
    """Four workers, each with its own node (engine, connections), race for 40 jobs."""
    submitted = {node.jobs.submit("sleep", {"seconds": 0}, actor="operator").id for _ in range(40)}
    workers = [closing(royalty.open_node(home)) for _ in range(4)]
    claimed: list[list[str]] = [[] for _ in workers]
    start = threading.Barrier(len(workers))

    def drain(i: int) -> None:
        start.wait()
        while (job := workers[i].jobs.claim(f"w:{i}")) is not None:
            claimed[i].append(job.id)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    everything = [j for c in claimed for j in c]
    assert len(everything) == len(set(everything)) == 40
    assert set(everything) == submitted
    for job_id in everything:
        assert types(node.jobs, job_id) == ["queued", "started"]  # one "started" each: one claim each


# --------------------------------------------------------------------------------------------------------------
# the worker
# --------------------------------------------------------------------------------------------------------------


def test_worker_runs_a_job_and_reports_errors_without_tracebacks(node: Node, jobs: Jobs, home: Path) -> None:
    ok = jobs.submit("sleep", {"seconds": 0, "steps": 3}, actor="operator")
    assert run_worker(home, once=True) == 1
    done = jobs.get(ok.id)
    assert (done.status, done.result) == ("succeeded", {"steps": 3, "stopped": False})
    assert types(jobs, ok.id) == ["queued", "started", "step", "step", "step", "succeeded"]
    assert [e.data for e in jobs.events(ok.id) if e.type == "step"][-1] == {"step": 3, "steps": 3}

    bad_payload = jobs.submit("sleep", {"steps": 0}, actor="operator")  # a user mistake: its message, as is
    broken = jobs.submit("train", {}, actor="operator")  # a bug-shaped failure: no config in the payload
    assert run_worker(home, once=True) == 1 and run_worker(home, once=True) == 1
    assert jobs.get(bad_payload.id).error == "sleep: steps must be an integer from 1 to 100000, got 0"
    error = jobs.get(broken.id).error
    assert error.startswith("KeyError: 'config'") and "Traceback" not in error and "\n" not in error
    log = home / "logs" / f"worker-{os.getpid()}.log"
    assert "Traceback" in log.read_text()
    assert run_worker(home, once=True) == 0  # nothing queued: returns at once
    assert not (home / "run" / "worker.pid").exists()


def test_worker_honours_cancel(node: Node, jobs: Jobs, home: Path) -> None:
    job = jobs.submit("sleep", {"seconds": 60, "steps": 600}, actor="operator")
    ran: list[int] = []
    thread = threading.Thread(target=lambda: ran.append(run_worker(home, once=True)))
    thread.start()
    try:
        wait_for(lambda: "step" in types(jobs, job.id), what="the first step")
        jobs.cancel(job.id, actor="operator")
    finally:
        thread.join(timeout=30)
    assert ran == [1]
    done = jobs.get(job.id)
    assert done.status == "canceled" and done.result["stopped"] is True and done.result["steps"] < 600
    assert types(jobs, job.id)[-2:] == ["step", "canceled"] or types(jobs, job.id)[-1] == "canceled"


def test_a_job_keeps_running_after_its_client_is_killed(node: Node, jobs: Jobs, home: Path) -> None:
    """`royalty jobs submit` starts a detached worker and returns; the client's whole process group is then
    killed, a follower is killed mid-stream, and the job still finishes; a new follower replays the rest."""
    cmd = [sys.executable, "-m", "royalty"]
    client = subprocess.Popen(cmd + ["jobs", "submit", "sleep", "--seconds", "3", "--steps", "6", "--home", str(home), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    submitted = json.loads(out)
    worker_pid = submitted["worker_pid"]
    try:
        assert worker_pid is not None and worker_pid != client.pid
        with contextlib.suppress(ProcessLookupError):  # nothing left in the client's group: the worker is not in it
            os.killpg(client.pid, signal.SIGKILL)
        assert pid_alive(worker_pid)
        assert os.getsid(worker_pid) == worker_pid  # its own session: a closed terminal does not reach it

        follower = subprocess.Popen(cmd + ["jobs", "logs", submitted["id"], "--follow", "--home", str(home)],
                                    stdout=subprocess.PIPE, text=True)
        seen = []
        for line in follower.stdout:  # ends early only if the follower dies: then the assert below fails
            seen.append(line)
            if " step " in line:
                break
        assert seen and " step " in seen[-1], seen
        follower.kill()
        follower.wait()
        last_seen = int(seen[-1].split()[0])

        done = wait_for(lambda: (j := jobs.get(submitted["id"])).finished and j, timeout=120, what="the job to finish")
        assert done.status == "succeeded" and done.result == {"steps": 6, "stopped": False}
        assert done.worker == f"{HOST}:{worker_pid}"
        replay = subprocess.run(cmd + ["jobs", "logs", submitted["id"], "--after", str(last_seen), "--home", str(home),
                                       "--json"], capture_output=True, text=True, timeout=120, check=True)
        replayed = [json.loads(line) for line in replay.stdout.splitlines()]
        assert [e["seq"] for e in replayed] == list(range(last_seen + 1, 9))  # queued, started, 6 steps, succeeded
        assert replayed[-1]["type"] == "succeeded"
        assert (home / "logs" / f"worker-{worker_pid}.log").read_text().count("job " + submitted["id"]) >= 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker_pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(worker_pid), timeout=30, what="the worker to exit")


# --------------------------------------------------------------------------------------------------------------
# royalty jobs …
# --------------------------------------------------------------------------------------------------------------


def test_cli_jobs(node: Node, jobs: Jobs, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = str(home)
    code, out, _ = run_cli(capsys, "jobs", "submit", "sleep", "--seconds", "0", "--steps", "2", "--no-worker",
                           "--home", h, "--json")
    assert code == 0
    job_id = json.loads(out)["id"]
    assert json.loads(out)["worker_pid"] is None
    code, out, _ = run_cli(capsys, "jobs", "list", "--home", h)
    assert code == 0 and job_id in out and "queued" in out
    code, out, _ = run_cli(capsys, "jobs", "worker", "--once", "--home", h)
    assert code == 0 and "ran 1 job" in out
    code, out, _ = run_cli(capsys, "jobs", "show", job_id, "--home", h)
    assert code == 0 and "succeeded" in out and '"steps": 2' in out
    code, out, _ = run_cli(capsys, "jobs", "logs", job_id, "--after", "1", "--home", h)
    lines = out.splitlines()
    assert code == 0 and [int(line.split()[0]) for line in lines] == [2, 3, 4]
    assert "step" in lines[0] and "succeeded" in lines[-1]
    code, out, _ = run_cli(capsys, "jobs", "logs", job_id, "--follow", "--home", h, "--json")  # ended: returns
    assert code == 0 and [json.loads(line)["type"] for line in out.splitlines()] == types(jobs, job_id)
    code, _, err = run_cli(capsys, "jobs", "cancel", job_id, "--home", h)
    assert code == 1 and "already succeeded" in err

    # A bad training config is refused before anything is queued.
    config = tmp_path / "bad.yaml"
    config.write_text("model: {base: /nowhere}\nlora: {r: 0}\n")
    code, _, err = run_cli(capsys, "jobs", "submit", "train", str(config), "train.epochs=0", "--no-worker", "--home", h)
    assert code == 1 and "lora.r" in err and "train.epochs" in err
    assert [j.id for j in jobs.list()] == [job_id]


# --------------------------------------------------------------------------------------------------------------
# a real training job (tiny model, SQLite only)
# --------------------------------------------------------------------------------------------------------------


def test_a_training_job_trains_and_registers_an_adapter(tmp_path: Path, tiny_model_dir: Path, clock: Clock,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    node, _ = royalty.init_node(tmp_path / "home", clock=clock, params=FREE_PUBLISHING)
    try:
        alice = node.accounts.create("alice", with_key=False)[0].id
        node.accounts.create("ben", with_key=False)
        node.datanets.create("tips", title="Tips", kind="text", licenses=["CC-BY-4.0"], policy="open", owner=alice,
                             limits={"near_duplicate_threshold": 0.0})
        node.datanets.contribute_records("tips", [{"text": f"tip {i}: rinse a cut with clean water"} for i in range(10)],
                                         contributor=alice)
        node.datanets.publish("tips", actor=alice)
        node.tokens.faucet("ben", node.params.current().adapter_registration_fee, actor=node.operator())
        home = node.home
    finally:
        node.close()
    config = tmp_path / "tiny.yaml"
    config.write_text(f"model: {{base: {tiny_model_dir}}}\ndata: {{datanets: [tips@1], max_seq_len: 32, eval_fraction: 0.2}}\n"
                      "lora: {r: 2, alpha: 4}\ntrain: {epochs: 1, batch_size: 4, seed: 1, threads: 1}\n"
                      "output: {name: tiny-helper}\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "jobs", "submit", "train", str(config), "--attribution-index", "--resume",
                             "--as", "ben", "--no-worker", "--home", str(home))
    assert code == 1 and "cannot follow a resumed run" in err
    code, out, err = run_cli(capsys, "jobs", "submit", "train", str(config), "output.dir=run", "--as", "ben",
                             "--attribution-index", "--index-dim", "16", "--no-worker", "--home", str(home), "--json")
    assert code == 0, err
    submitted = json.loads(out)
    assert submitted["payload"]["attribution_dim"] == 16
    assert submitted["payload"]["config"]["output"]["dir"] == str(tmp_path / "run")  # absolute for the worker

    assert run_worker(home, once=True) == 1
    with royalty.open_node(home) as node:
        job = node.jobs.get(submitted["id"])
        assert job.status == "succeeded", job.error
        assert job.result["adapter"]["ref"] == "tiny-helper@1"
        seen = types(node.jobs, job.id)
        assert seen[:2] == ["queued", "started"] and "step" in seen
        assert seen[-3:] == ["registered", "attribution_index", "succeeded"]
        index = job.result["attribution_index"]  # recorded during the run: no replay
        assert index["replay"] == {"captured": True} and index["dim"] == 16 and "seed" not in index["params"]
        assert node.attribution.info("tiny-helper@1")["grad"]["rows"] == index["rows"] > 0
        assert node.adapters.verify("tiny-helper@1")["ok"]
