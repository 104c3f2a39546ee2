"""Background jobs (``node.jobs``): a queue in the node's database and the worker process that drains it.

A job is ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``canceled``. A client submits it and may leave:
the work runs in a separate, detached worker process (``royalty jobs worker``; ``ensure_worker`` starts one),
and every step the job reports is an append-only event (``job_events``, seq 0, 1, 2, … per job) that any
client can replay from the last seq it saw (``royalty jobs logs ID --follow --after SEQ``).

Claiming is safe with any number of workers: on PostgreSQL the claim takes the oldest queued row with ``FOR
UPDATE SKIP LOCKED``; on SQLite every write transaction holds the database's single write lock (``BEGIN
IMMEDIATE``), so ``UPDATE … WHERE status = 'queued'`` cannot succeed twice.

A running job's worker refreshes ``heartbeat_ms`` every ``HEARTBEAT_S``. Worker death: when a worker claims,
it first fails every running job whose heartbeat is older than ``STALE_MS`` and whose worker is gone (its pid
is not alive on this host; a worker on another host is judged by the heartbeat alone) with the error
"worker died". A live worker that is merely stalled (stopped with SIGSTOP, say) keeps its job.

Handlers: ``HANDLERS[kind](node, job, ctx) -> result dict``. ``ctx.emit(type, data)`` appends an event and
``ctx.should_stop()`` turns true once a cancel was requested; a handler that stops early returns normally and
the job ends ``canceled``. An exception fails the job with a one-line error; the traceback goes to the worker's
log, ``<home>/logs/worker-<pid>.log``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import re
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from ..accounts import Accounts
from ..errors import Conflict, InvalidInput, NotFound, PermissionDenied, RoyaltyError
from ..store import Store
from ..store.schema import job_events, jobs

if TYPE_CHECKING:
    from ..node import Node

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
FINISHED = ("succeeded", "failed", "canceled")
HEARTBEAT_S = 1.0  # also how soon a running job sees a cancel request
STALE_MS = 30_000  # a running job's heartbeat older than this, and its worker gone: the worker died
POLL_S = 0.5  # an idle worker looks for work this often
_ERROR_MAX = 1_000
_JOB_ID = re.compile(r"job_[0-9a-f]{16}")


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    payload: dict[str, Any]
    actor: str  # account id: who submitted it, and on whose behalf it runs
    created_ms: int
    started_ms: int | None
    finished_ms: int | None
    heartbeat_ms: int | None
    worker: str | None  # "host:pid" of the worker that claimed it
    cancel_requested: bool
    result: dict[str, Any] | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "status": self.status, "payload": self.payload, "actor": self.actor,
            "created_ms": self.created_ms, "started_ms": self.started_ms, "finished_ms": self.finished_ms,
            "heartbeat_ms": self.heartbeat_ms, "worker": self.worker, "cancel_requested": self.cancel_requested,
            "result": self.result, "error": self.error,
        }


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    seq: int
    time_ms: int
    type: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "seq": self.seq, "time_ms": self.time_ms, "type": self.type, "data": self.data}


class Jobs:
    """The jobs queue (``node.jobs``). Generic: "train" today, "attribute" later; see ``HANDLERS``."""

    def __init__(self, store: Store, accounts: Accounts, clock: Callable[[], int]) -> None:
        self.store = store
        self.accounts = accounts
        self.clock = clock

    # --- submit and read ---------------------------------------------------------------------------------------

    def submit(self, kind: str, payload: dict[str, Any], *, actor: str, id: str | None = None) -> Job:
        """Queue a job of ``kind`` (a key of ``HANDLERS``); its first event (seq 0) is ``queued``.

        ``id`` (``job_`` + 16 hex digits) makes the submission idempotent: a client derives it from its own
        retry key, and a job that already has it is returned as it is (the caller compares payloads)."""
        if kind not in HANDLERS:
            raise InvalidInput(f"unknown job kind {kind!r}; kinds: {', '.join(sorted(HANDLERS))}", field="kind")
        if not isinstance(payload, dict):
            raise InvalidInput("a job's payload must be a JSON object", field="payload")
        if id is not None and not _JOB_ID.fullmatch(id):
            raise InvalidInput(f"job id {id!r} must be 'job_' and 16 lowercase hex digits", field="id")
        who = self.accounts.get(actor)
        job_id = id or "job_" + secrets.token_hex(8)
        now = self.clock()
        try:
            with self.store.write() as conn:
                if id is not None and conn.execute(select(jobs.c.id).where(jobs.c.id == id)).first() is not None:
                    return self.get(id)
                conn.execute(insert(jobs).values(
                    id=job_id, kind=kind, status="queued", payload=_json(payload, "payload"), actor=who.id,
                    created_ms=now, cancel_requested=False,
                ))
                self._emit_in(conn, job_id, "queued", {"kind": kind, "actor": who.id})
        except IntegrityError:
            if id is None:
                raise
            return self.get(id)  # another server inserted the same id at the same moment
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self.store.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one_or_none()
        if row is None:
            raise NotFound(f"no job {job_id!r}; see: royalty jobs list", field="job")
        return _job(row)

    def list(self, *, status: str | None = None, actor: str | None = None, after: str | None = None,
             limit: int = 100) -> list[Job]:
        """The newest jobs first; optionally only those with ``status`` or submitted by account id ``actor``.
        ``after`` (a job id, the last of the previous page) continues a listing."""
        j = jobs.c
        query = select(jobs).order_by(j.created_ms.desc(), j.id.desc()).limit(limit)
        if status is not None:
            if status not in STATUSES:
                raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}", field="status")
            query = query.where(j.status == status)
        if actor is not None:
            query = query.where(j.actor == actor)
        with self.store.read() as conn:
            if after is not None:
                anchor = conn.execute(select(j.created_ms, j.id).where(j.id == after)).one_or_none()
                if anchor is None:
                    raise InvalidInput(f"after={after!r} is not a job; pass the last id of the previous page",
                                       field="after")
                query = query.where(or_(j.created_ms < anchor.created_ms,
                                        and_(j.created_ms == anchor.created_ms, j.id < anchor.id)))
            return [_job(r) for r in conn.execute(query).all()]

    def events(self, job_id: str, *, after: int = -1, limit: int = 1000) -> list[JobEvent]:
        """The job's events with ``seq > after``, oldest first: replay from the last seq a client saw."""
        e = job_events.c
        with self.store.read() as conn:
            if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first() is None:
                raise NotFound(f"no job {job_id!r}; see: royalty jobs list", field="job")
            rows = conn.execute(
                select(job_events).where(e.job_id == job_id, e.seq > after).order_by(e.seq).limit(limit)
            ).all()
        return [JobEvent(r.job_id, int(r.seq), int(r.time_ms), r.type, json.loads(r.data)) for r in rows]

    # --- the worker's side -------------------------------------------------------------------------------------

    def claim(self, worker: str) -> Job | None:
        """Take the oldest queued job for ``worker`` ("host:pid"), or None when there is none. Fails the jobs of
        dead workers first (see the module docstring)."""
        now = self.clock()
        with self.store.write() as conn:
            self._fail_dead_in(conn, now)
            if conn.dialect.name == "postgresql":
                job_id = conn.execute(text(
                    "UPDATE jobs SET status = 'running', worker = :w, started_ms = :now, heartbeat_ms = :now "
                    "WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_ms, id LIMIT 1 "
                    "FOR UPDATE SKIP LOCKED) RETURNING id"
                ), {"w": worker, "now": now}).scalar_one_or_none()
            else:
                job_id = conn.execute(
                    select(jobs.c.id).where(jobs.c.status == "queued").order_by(jobs.c.created_ms, jobs.c.id).limit(1)
                ).scalar_one_or_none()
                if job_id is not None:
                    conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued").values(
                        status="running", worker=worker, started_ms=now, heartbeat_ms=now))
            if job_id is None:
                return None
            self._emit_in(conn, job_id, "started", {"worker": worker})
        return self.get(job_id)

    def heartbeat(self, job_id: str) -> bool:
        """Record that the job's worker is alive. True when the job should stop: a cancel was requested, or the
        job is no longer running (another worker judged this one dead)."""
        with self.store.write() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running")
                         .values(heartbeat_ms=self.clock()))
            row = conn.execute(select(jobs.c.status, jobs.c.cancel_requested).where(jobs.c.id == job_id)).one()
        return row.status != "running" or bool(row.cancel_requested)

    def emit(self, job_id: str, type: str, data: dict[str, Any]) -> int:
        """Append a progress event to the job; returns its seq."""
        with self.store.write() as conn:
            return self._emit_in(conn, job_id, type, data)

    def finish(self, job_id: str, result: dict[str, Any], *, status: str = "succeeded") -> Job:
        """End a running job with ``result``: ``succeeded``, or ``canceled`` when its handler stopped on request."""
        if status not in ("succeeded", "canceled"):
            raise InvalidInput(f"finish status must be succeeded or canceled, not {status!r}", field="status")
        return self._end(job_id, status, result=result)

    def fail(self, job_id: str, error: str) -> Job:
        """End a running job as failed with a one-line ``error`` (the first line is kept)."""
        line = (error.strip().splitlines() or ["failed"])[0][:_ERROR_MAX]
        return self._end(job_id, "failed", error=line)

    def cancel(self, job_id: str, *, actor: str) -> Job:
        """Cancel a job (its submitter or an admin). A queued job is canceled at once; a running one is asked to
        stop (its handler sees ``should_stop()`` within ``HEARTBEAT_S``) and ends ``canceled`` when it does."""
        who = self.accounts.get(actor)
        job = self.get(job_id)
        if who.id != job.actor and not who.is_admin:
            raise PermissionDenied(f"only the submitter of {job_id} (or an admin) may cancel it", field="actor")
        with self.store.write() as conn:
            status = self._lock_in(conn, job_id)
            if status in FINISHED:
                raise Conflict(f"job {job_id} already {status}; nothing to cancel", field="job")
            if status == "queued":
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                    status="canceled", cancel_requested=True, finished_ms=self.clock()))
                self._emit_in(conn, job_id, "canceled", {"by": who.id})
            else:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
                self._emit_in(conn, job_id, "cancel_requested", {"by": who.id})
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self.store.read() as conn:
            value = conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar_one_or_none()
        if value is None:
            raise NotFound(f"no job {job_id!r}", field="job")
        return bool(value)

    # --- internals ---------------------------------------------------------------------------------------------

    def _end(self, job_id: str, status: str, *, result: dict[str, Any] | None = None, error: str | None = None) -> Job:
        with self.store.write() as conn:
            current = self._lock_in(conn, job_id)
            if current != "running":
                raise Conflict(f"job {job_id} is {current}, not running; it cannot become {status}", field="job")
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                status=status, finished_ms=self.clock(), result=None if result is None else _json(result, "result"),
                error=error))
            self._emit_in(conn, job_id, status, {"result": result} if error is None else {"error": error})
        return self.get(job_id)

    def _lock_in(self, conn: Connection, job_id: str) -> str:
        """The job's status, its row locked until the transaction ends (PostgreSQL; SQLite's writer lock covers it)."""
        status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id).with_for_update()).scalar_one_or_none()
        if status is None:
            raise NotFound(f"no job {job_id!r}; see: royalty jobs list", field="job")
        return str(status)

    def _emit_in(self, conn: Connection, job_id: str, type_: str, data: dict[str, Any]) -> int:
        if not isinstance(type_, str) or not 1 <= len(type_) <= 32:
            raise InvalidInput(f"event type {type_!r} must be 1-32 characters", field="type")
        if not isinstance(data, dict):
            raise InvalidInput("event data must be a JSON object", field="data")
        self._lock_in(conn, job_id)  # one writer of the job's event seq at a time
        seq = conn.execute(select(func.coalesce(func.max(job_events.c.seq), -1)).where(job_events.c.job_id == job_id)
                           ).scalar_one() + 1
        conn.execute(insert(job_events).values(job_id=job_id, seq=seq, time_ms=self.clock(), type=type_,
                                               data=_json(data, "data")))
        return int(seq)

    def _fail_dead_in(self, conn: Connection, now: int) -> None:
        stale = conn.execute(select(jobs.c.id, jobs.c.worker, jobs.c.heartbeat_ms).where(
            jobs.c.status == "running", jobs.c.heartbeat_ms < now - STALE_MS)).all()
        for row in stale:
            if _worker_alive(row.worker):
                continue
            error = f"worker died: {row.worker} stopped sending heartbeats; submit the job again"
            done = conn.execute(update(jobs).where(
                jobs.c.id == row.id, jobs.c.status == "running", jobs.c.heartbeat_ms == row.heartbeat_ms,
            ).values(status="failed", finished_ms=now, error=error)).rowcount
            if done:
                self._emit_in(conn, row.id, "failed", {"error": error})


def _job(row: Any) -> Job:
    return Job(
        id=row.id, kind=row.kind, status=row.status, payload=json.loads(row.payload), actor=row.actor,
        created_ms=int(row.created_ms), started_ms=_int(row.started_ms), finished_ms=_int(row.finished_ms),
        heartbeat_ms=_int(row.heartbeat_ms), worker=row.worker, cancel_requested=bool(row.cancel_requested),
        result=None if row.result is None else json.loads(row.result), error=row.error,
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _json(value: dict[str, Any], field: str) -> str:
    """Compact JSON; NaN and infinities (a diverged loss) become null so every JSON client can read it."""
    try:
        return json.dumps(_finite(value), sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except TypeError as exc:
        raise InvalidInput(f"{field} must be JSON: {exc}", field=field) from None


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _worker_alive(worker: str | None) -> bool:
    """Whether the worker "host:pid" is a live process on this host. A worker on another host: False (its
    heartbeat alone decides)."""
    host, _, pid = (worker or "").partition(":")
    return host == socket.gethostname() and pid.isdigit() and pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, exited but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        # /proc/<pid>/stat: "pid (comm) state ..."; comm may contain spaces and parentheses.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know


# --------------------------------------------------------------------------------------------------------------
# handlers
# --------------------------------------------------------------------------------------------------------------


class JobContext:
    """What a handler gets besides the node and the job: ``emit`` progress, ``should_stop`` to honour cancels."""

    def __init__(self, jobs_: Jobs, job: Job, stop: threading.Event) -> None:
        self._jobs = jobs_
        self._job = job
        self._stop = stop
        self.stopped = False  # should_stop() answered True at least once: the handler was told to stop

    def emit(self, type: str, data: dict[str, Any]) -> int:
        return self._jobs.emit(self._job.id, type, data)

    def should_stop(self) -> bool:
        if self._stop.is_set():
            self.stopped = True
        return self.stopped


Handler = Callable[["Node", Job, JobContext], dict[str, Any]]


def _train(node: Node, job: Job, ctx: JobContext) -> dict[str, Any]:
    """payload: {"config": resolved TrainConfig as JSON, "resume": bool, "parent": adapter ref or None,
    "attribution_dim"?: int or None}. Trains and registers the adapter as the job's actor (``node.factory.train``;
    with ``attribution_dim``, recording its attribution index during the run)."""
    from .config import load_config

    cfg = load_config(job.payload["config"])
    dim = job.payload.get("attribution_dim")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise InvalidInput(f"train: attribution_dim must be a positive integer or null, got {dim!r}",
                           field="attribution_dim")
    result = node.factory.train(cfg, actor=job.actor, resume=bool(job.payload.get("resume", False)),
                                parent=job.payload.get("parent"), events=ctx.emit, should_stop=ctx.should_stop,
                                attribution_dim=dim)
    return result.to_dict()


def _sleep(node: Node, job: Job, ctx: JobContext) -> dict[str, Any]:
    """payload: {"seconds": float, "steps": int}. Sleeps in ``steps`` equal parts, one "step" event each, and
    stops early on cancel: a way to check that a worker runs, reports and cancels."""
    seconds, steps = job.payload.get("seconds", 1.0), job.payload.get("steps", 1)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 86_400:
        raise InvalidInput(f"sleep: seconds must be a number from 0 to 86400, got {seconds!r}", field="seconds")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100_000:
        raise InvalidInput(f"sleep: steps must be an integer from 1 to 100000, got {steps!r}", field="steps")
    for step in range(steps):
        if ctx.should_stop():
            return {"steps": step, "stopped": True}
        time.sleep(seconds / steps)
        ctx.emit("step", {"step": step + 1, "steps": steps})
    return {"steps": steps, "stopped": False}


def _attribution_index(node: Node, job: Job, ctx: JobContext) -> dict[str, Any]:
    """payload: {"adapter": ref or id, "dim"?: int, "seed"?: int, "method"?: "inrun"|"final", "rebuild"?: bool}. Builds (or reuses) the adapter's
    attribution index (``node.attribution.build_index``, as the job's actor; who may ask is the HTTP layer's rule).
    The result is the build record without the projection seed, the index's secret. A build, once started, runs to
    its end: a cancel takes effect only while the job is queued."""
    from ..attribution.service import DEFAULT_DIM, DEFAULT_METHOD

    p = job.payload
    adapter, rebuild = p.get("adapter"), p.get("rebuild", False)
    if not isinstance(adapter, str) or not adapter:
        raise InvalidInput("attribution_index: payload.adapter must be an adapter ref or id", field="adapter")
    if not isinstance(rebuild, bool):
        raise InvalidInput(f"attribution_index: rebuild must be true or false, got {rebuild!r}", field="rebuild")
    ctx.emit("building", {"adapter": adapter, "rebuild": rebuild})
    record = node.attribution.build_index(adapter, dim=p.get("dim", DEFAULT_DIM), seed=p.get("seed"),
                                          method=p.get("method", DEFAULT_METHOD), rebuild=rebuild)
    return {**record, "params": {k: v for k, v in record["params"].items() if k != "seed"}}


HANDLERS: dict[str, Handler] = {"train": _train, "sleep": _sleep, "attribution_index": _attribution_index}


# --------------------------------------------------------------------------------------------------------------
# the worker process
# --------------------------------------------------------------------------------------------------------------


def run_worker(home: Path, *, once: bool = False, idle_exit_s: float | None = None) -> int:
    """Run jobs until told otherwise; returns how many ran. ``once``: at most one job, and return at once when
    none is queued. ``idle_exit_s``: return after that many seconds without work (None: never).

    Logs to ``<home>/logs/worker-<pid>.log``: a detached worker (``ensure_worker``) has its stdout and stderr
    there already; one started in a terminal writes the file and short lines on stderr."""
    from ..node import open_node

    home = Path(home)
    node = open_node(home)
    log = _worker_log(home)
    jobs_ = node.jobs
    worker = f"{socket.gethostname()}:{os.getpid()}"
    pid_file = home / "run" / "worker.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    log.info("worker %s started on %s", worker, home)
    ran = 0
    idle_since = time.monotonic()
    try:
        while True:
            job = jobs_.claim(worker)
            if job is None and not once:
                if idle_exit_s is None or time.monotonic() - idle_since < idle_exit_s:
                    time.sleep(POLL_S)
                    continue
                job = _last_claim(home, jobs_, worker)
            if job is None:
                break
            _run_job(node, jobs_, job, log)
            ran += 1
            idle_since = time.monotonic()
            if once:
                break
    finally:
        _drop_pid_file(home)
        log.info("worker %s stopped after %d job(s)", worker, ran)
        node.close()
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
    return ran


def _last_claim(home: Path, jobs_: Jobs, worker: str) -> Job | None:
    """An idle worker's final claim, under the lock ``ensure_worker`` takes: a job submitted while this worker
    still looked alive to ``ensure_worker`` is claimed here; otherwise the pid file goes before the lock is let
    go, so the next ``ensure_worker`` starts a new worker."""
    with _spawn_lock(home):
        job = jobs_.claim(worker)
        if job is None:
            _drop_pid_file(home)
        return job


def _drop_pid_file(home: Path) -> None:
    pid_file = home / "run" / "worker.pid"
    with contextlib.suppress(FileNotFoundError):
        if pid_file.read_text().strip() == str(os.getpid()):  # another worker may have written it since
            pid_file.unlink()


@contextlib.contextmanager
def _spawn_lock(home: Path) -> Iterator[None]:
    (home / "run").mkdir(parents=True, exist_ok=True)
    with (home / "run" / "worker.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run_job(node: Node, jobs_: Jobs, job: Job, log: logging.Logger) -> None:
    log.info("job %s (%s) started", job.id, job.kind)
    stop, done = threading.Event(), threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            try:
                if jobs_.heartbeat(job.id):
                    stop.set()
            except RoyaltyError as exc:  # a busy database: the next beat tries again
                log.warning("job %s: heartbeat failed: %s", job.id, exc.message)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
    thread.start()
    ctx = JobContext(jobs_, job, stop)
    try:
        handler = HANDLERS.get(job.kind)
        if handler is None:
            raise InvalidInput(f"this worker has no handler for job kind {job.kind!r}; upgrade royalty", field="kind")
        result = handler(node, job, ctx)
    except KeyboardInterrupt:
        _settle(log, jobs_.fail, job.id, "the worker was interrupted (Ctrl-C) before the job finished")
        raise
    except RoyaltyError as exc:
        log.info("job %s failed: %s", job.id, exc.message)
        _settle(log, jobs_.fail, job.id, exc.message)
    except Exception as exc:  # a bug in a handler must fail its job, not the worker
        log.exception("job %s failed", job.id)
        first = (str(exc).strip().splitlines() or [""])[0]
        message = f"{type(exc).__name__}: {first} (traceback in logs/worker-{os.getpid()}.log)"
        _settle(log, jobs_.fail, job.id, message)
    else:
        status = "canceled" if ctx.stopped else "succeeded"
        _settle(log, jobs_.finish, job.id, result, status=status)
        log.info("job %s %s", job.id, status)
    finally:
        done.set()
        thread.join()


def _settle(log: logging.Logger, end: Callable[..., Job], job_id: str, *args: Any, **kwargs: Any) -> None:
    try:
        end(job_id, *args, **kwargs)
    except Conflict as exc:  # failed meanwhile as "worker died" (a stall longer than STALE_MS): leave it so
        log.warning("job %s: %s", job_id, exc.message)


def _worker_log(home: Path) -> logging.Logger:
    log = logging.getLogger("royalty.worker")
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    detached = os.getsid(0) == os.getpid()  # ensure_worker starts us as a session leader, stderr on our log file
    if not detached:
        (home / "logs").mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(home / "logs" / f"worker-{os.getpid()}.log", encoding="utf-8")
        file_handler.setFormatter(fmt)
        log.addHandler(file_handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    log.addHandler(stream)
    return log


def ensure_worker(home: Path, *, idle_exit_s: float = 60.0) -> int | None:
    """Start a detached worker for ``home`` unless one is alive; returns the new worker's pid, or None.

    The worker runs ``python -m royalty jobs worker --home HOME --idle-exit S`` in a new session (a closed
    terminal or a killed client does not stop it), stdout and stderr on ``<home>/logs/worker-<pid>.log``; its pid
    is kept in ``<home>/run/worker.pid``. A lock file makes two concurrent calls start one worker."""
    home = Path(home).resolve()
    log_dir = home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pid_file = home / "run" / "worker.pid"
    with _spawn_lock(home):
        try:
            pid = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid is not None and pid_alive(pid):
            return None
        # The log is named after the child's pid, known only once it runs: open a temporary name, then rename.
        starting = log_dir / f".worker-starting-{secrets.token_hex(4)}.log"
        with starting.open("ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "royalty", "jobs", "worker", "--home", str(home), "--idle-exit", str(idle_exit_s)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        os.replace(starting, log_dir / f"worker-{child.pid}.log")
        pid_file.write_text(f"{child.pid}\n")
        return child.pid
