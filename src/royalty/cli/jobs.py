"""``royalty jobs …``: background jobs that outlive the client that started them.

``jobs submit train CONFIG.yaml [key=value ...]`` checks the config, queues the run and makes sure a detached
worker is running; ``jobs logs ID --follow`` streams its progress and can be stopped and restarted at any time
(``--after SEQ`` replays from the last event seen). ``jobs worker`` is the worker itself.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ..factory.jobs import POLL_S, STATUSES, Job, JobEvent, ensure_worker, run_worker
from ..node import OPERATOR, Node
from ..settings import load_settings
from ._common import HomeOption, JsonOption, emit, node_at, table

app = typer.Typer(help="Background jobs (training runs): submit, list, show, cancel, follow logs, run a worker.",
                  no_args_is_help=True)
submit_app = typer.Typer(help="Queue a job and make sure a worker runs it.", no_args_is_help=True)
app.add_typer(submit_app, name="submit")

JobArg = Annotated[str, typer.Argument(metavar="JOB", help="The job id (job_…).")]
AsOption = Annotated[str, typer.Option("--as", help="Act as this account (name or id).")]
NoWorkerOption = Annotated[bool, typer.Option(
    "--no-worker", help="Only queue the job; a worker started with `royalty jobs worker` runs it.")]


@submit_app.command("train")
def submit_train(
    config: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="The training config (see royalty train --explain).")],
    overrides: Annotated[list[str] | None, typer.Argument(metavar="[KEY=VALUE]...",
                                                          help="Overrides such as lora.r=16 train.epochs=1.",
                                                          show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue this config's interrupted (or canceled) run.")] = False,
    continue_from: Annotated[str | None, typer.Option(
        "--continue-from", metavar="ADAPTER", help="Start from this adapter's weights (name or name@N), as a new run.",
        show_default=False)] = None,
    attribution_index: Annotated[bool, typer.Option(
        "--attribution-index", help="Record the adapter's attribution index while it trains (see royalty train).")] = False,
    index_dim: Annotated[int, typer.Option("--index-dim", min=1, help="Row size of that index (projected).")] = 1024,
    as_: AsOption = OPERATOR,
    no_worker: NoWorkerOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a training run as ACCOUNT (who owns the adapter and pays its registration fee).

    The config is checked first (every problem reported at once) and its local paths made absolute, so the
    worker reads the same files whatever directory it runs in.
    """
    # The config's pydantic models: only this command needs them.
    from ..factory.config import load_config
    from ..factory.service import check_attribution_capture

    cfg = load_config(config, overrides or [])
    dim = index_dim if attribution_index else None
    check_attribution_capture(dim, resume)
    payload = {"config": _absolute_paths(cfg.model_dump(mode="json")), "resume": resume, "parent": continue_from,
               "attribution_dim": dim}
    with node_at(home) as node:
        # Refused now rather than in the worker: an unknown parent adapter, an owner who cannot pay the fee.
        if continue_from is not None:
            node.adapters.get(continue_from)
        node.factory.check_registration_fee(node.accounts.get(as_).id)
        _submit(node, "train", payload, as_, no_worker, as_json)


def _absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    # model.base is already absolute (load_config resolves local paths); output.dir is not part of the config's
    # meaning, so it is resolved here, against the directory the job was submitted from.
    if config["output"].get("dir") is not None:
        config["output"]["dir"] = str(Path(config["output"]["dir"]).resolve())
    return config


@submit_app.command("sleep")
def submit_sleep(
    seconds: Annotated[float, typer.Option("--seconds", help="How long the job takes.", min=0, max=86_400)] = 5.0,
    steps: Annotated[int, typer.Option("--steps", help="Progress events to emit along the way.", min=1, max=100_000)] = 5,
    as_: AsOption = OPERATOR,
    no_worker: NoWorkerOption = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a job that only sleeps and reports progress: checks that a worker runs, reports and cancels."""
    with node_at(home) as node:
        _submit(node, "sleep", {"seconds": seconds, "steps": steps}, as_, no_worker, as_json)


def _submit(node: Node, kind: str, payload: dict[str, Any], actor: str, no_worker: bool, as_json: bool) -> None:
    job = node.jobs.submit(kind, payload, actor=actor)
    pid = None if no_worker else ensure_worker(node.home)
    worker = ("queued; start a worker with: royalty jobs worker" if no_worker
              else f"started worker pid {pid}" if pid is not None else "a worker is already running")
    emit(as_json, {**job.to_dict(), "worker_pid": pid},
         f"submitted {job.id} ({kind}); {worker}\nfollow it with: royalty jobs logs {job.id} --follow")


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option("--status", help=f"Only this status: {', '.join(STATUSES)}.",
                                               show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many jobs, newest first.", min=1, max=1_000)] = 50,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    with node_at(home) as node:
        items = node.jobs.list(status=status, limit=limit)
        rows = [[j.id, j.kind, j.status, _time(j.created_ms), _duration(j), j.error or ""] for j in items]
        emit(as_json, {"data": [j.to_dict() for j in items]},
             table(rows, ["JOB", "KIND", "STATUS", "CREATED", "TOOK", "ERROR"]) if items else "no jobs yet")


@app.command("show")
def show(job_id: JobArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show a job: status, times, worker, result or error."""
    with node_at(home) as node:
        j = node.jobs.get(job_id)
        lines = [f"{j.id}  {j.kind}  {j.status}" + ("  (cancel requested)" if j.cancel_requested and not j.finished else ""),
                 f"actor     {j.actor}", f"created   {_time(j.created_ms)}"]
        if j.started_ms is not None:
            lines.append(f"started   {_time(j.started_ms)} by worker {j.worker}")
        if j.finished_ms is not None:
            lines.append(f"finished  {_time(j.finished_ms)} ({_duration(j)})")
        if j.error:
            lines.append(f"error     {j.error}")
        if j.result is not None:
            lines.append("result    " + json.dumps(j.result, sort_keys=True))
        emit(as_json, j.to_dict(), "\n".join(lines))


@app.command("cancel")
def cancel(job_id: JobArg, as_: AsOption = OPERATOR, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Cancel a job: a queued one at once, a running one at its next step (a training run saves a checkpoint)."""
    with node_at(home) as node:
        j = node.jobs.cancel(job_id, actor=as_)
        emit(as_json, j.to_dict(), f"canceled {j.id}" if j.status == "canceled"
             else f"asked {j.id} to stop; it ends at its next step (see: royalty jobs logs {j.id} --follow)")


@app.command("logs")
def logs(
    job_id: JobArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until the job ends.")] = False,
    after: Annotated[int, typer.Option("--after", help="Only events after this seq (the last one you saw).", min=-1)] = -1,
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event, one per line.")] = False,
) -> None:
    """Print a job's progress events (seq, time, type, data), replaying from --after.

    With --follow, waits for new events until the job ends; stop any time (Ctrl-C): the job keeps running, and
    `--after SEQ` picks up where you left.
    """
    with node_at(home) as node:
        last = after
        try:
            while True:
                # The status is read before the events: a job's last event commits with its final status, so
                # once it reads finished, the fetch below sees everything.
                ended = not follow or node.jobs.get(job_id).finished
                batch = node.jobs.events(job_id, after=last)
                for event in batch:
                    typer.echo(json.dumps(event.to_dict(), sort_keys=True) if as_json else _event_line(event))
                    last = event.seq
                if not batch:
                    if ended:
                        break
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            typer.echo(f"stopped following; {job_id} keeps running. Resume with: "
                       f"royalty jobs logs {job_id} --follow --after {last}", err=True)
            raise typer.Exit(130) from None


def _event_line(e: JobEvent) -> str:
    data = " ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in e.data.items())
    return f"{e.seq:>5}  {_time(e.time_ms)}  {e.type:<16} {data}".rstrip()


@app.command("worker")
def worker(
    once: Annotated[bool, typer.Option("--once", help="Run at most one job, then exit.")] = False,
    idle_exit: Annotated[float | None, typer.Option("--idle-exit", help="Exit after this many seconds without work.",
                                                    min=0, show_default=False)] = None,
    home: HomeOption = None,
) -> None:
    """Run queued jobs in this process until stopped (Ctrl-C), --once, or --idle-exit seconds without work.

    Logs to <home>/logs/worker-<pid>.log. Any number of workers may run against one node.
    """
    ran = run_worker(load_settings(home).home, once=once, idle_exit_s=idle_exit)
    typer.echo(f"worker ran {ran} job(s)")


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(j: Job) -> str:
    if j.started_ms is None:
        return ""
    seconds = ((j.finished_ms if j.finished_ms is not None else j.heartbeat_ms or j.started_ms) - j.started_ms) / 1000
    return f"{seconds:.1f}s"
