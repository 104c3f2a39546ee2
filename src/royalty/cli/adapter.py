"""``royalty adapter …``: the node's registered LoRA adapters: list, show, verify, publish, deprecate.

Adapters are registered by ``royalty train`` (or a train job); each name has versions ``name@1``, ``name@2``, …
and a bare name means its latest version.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..factory.adapters import STATUSES, Adapter
from ..ledger.amounts import format_amount
from ..node import OPERATOR
from ._common import HomeOption, JsonOption, emit, node_at, table

app = typer.Typer(help="LoRA adapters registered on this node: list, show, verify, publish, deprecate.",
                  no_args_is_help=True)

RefArg = Annotated[str, typer.Argument(metavar="ADAPTER", help="name (latest version), name@N, or id (ad_…).")]
AsOption = Annotated[str, typer.Option("--as", help="Act as this account (the owner or an admin).")]


@app.command("list")
def list_(
    owner: Annotated[str | None, typer.Option("--owner", help="Only this account's adapters.", show_default=False)] = None,
    status: Annotated[str | None, typer.Option("--status", help=f"Only this status: {', '.join(STATUSES)}.",
                                               show_default=False)] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List registered adapters, by name and version."""
    with node_at(home) as node:
        items = node.adapters.list(owner=owner, status=status)
        names = {a.id: a.name for a in node.accounts.list()}
        rows = [[a.ref, a.status, names.get(a.owner, a.owner), ", ".join(a.to_dict()["datanets"]),
                 format_amount(a.price_in_per_1k), format_amount(a.price_out_per_1k), a.id] for a in items]
        emit(as_json, {"data": [a.to_dict() for a in items]},
             table(rows, ["ADAPTER", "STATUS", "OWNER", "DATANETS", "IN/1K", "OUT/1K", "ID"]) if items
             else "no adapters registered yet; train one with: royalty train CONFIG.yaml")


@app.command("show")
def show(ref: RefArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show an adapter: owner, status, base model, datanets and roots, metrics, price, files."""
    with node_at(home) as node:
        a = node.adapters.get(ref)
        owner = node.accounts.get(a.owner)
        emit(as_json, {**a.to_dict(), "manifest": a.manifest}, _show_text(a, owner.name))


def _show_text(a: Adapter, owner: str) -> str:
    m = a.manifest
    base = m.get("base_model", {})
    metrics = m.get("metrics", {})
    lines = [
        f"{a.ref}  ({a.status})",
        f"id          {a.id}",
        f"owner       {owner} ({a.owner})",
        f"base model  {base.get('name')} ({base.get('architecture')}, weights {a.base_weights_sha256[:16]}…)",
        (f"price       {format_amount(a.price_in_per_1k)} OPEN / 1k input tokens, "
         f"{format_amount(a.price_out_per_1k)} OPEN / 1k output tokens"),
        f"manifest    {a.manifest_sha256} (journal seq {a.event_seq})",
        f"path        {a.path}",
    ]
    if a.parent_id:
        lines.append(f"parent      {a.parent_id}")
    for d in m.get("datanets", []):
        lines.append(f"datanet     {d['slug']}@{d['version']} root {d['root']} "
                     f"({d.get('examples_train', '?')} train / {d.get('examples_eval', '?')} eval examples)")
    lines.append("metrics     " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if not isinstance(v, dict)))
    evaluation = metrics.get("eval")
    if isinstance(evaluation, dict):
        lines.append("held-out    " + ", ".join(f"{k} {_fmt(v)}" for k, v in evaluation.items()
                                                 if not isinstance(v, (list, dict))))
    lines.append(f"files       {', '.join(sorted(m.get('files', {})))}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command("verify")
def verify(ref: RefArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Recompute every file's hash and check each datanet root against the journal.

    Exits 1 and names every changed, missing or extra file and every root that does not match.
    """
    with node_at(home) as node:
        report = node.adapters.verify(ref)
        emit(as_json, report, lambda: typer.echo(_verify_text(report)))
        if not report["ok"]:
            more = f" (and {len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
            typer.echo(f"royalty: error: adapter {report['adapter']} does not verify: {report['problems'][0]}{more}",
                       err=True)
            raise typer.Exit(1)


def _verify_text(r: dict[str, Any]) -> str:
    head = "ok" if r["ok"] else "FAILED"
    lines = [f"{r['adapter']}: {head}: {r['files']} file hashes, manifest {r['manifest_sha256'][:16]}…"]
    lines += [f"datanet {d['datanet']} root {str(d['root'])[:16]}… "
              + ("matches journal seq " + str(d["event_seq"]) if not d["problem"] else "MISMATCH")
              for d in r["datanets"]]
    lines += [f"problem: {p}" for p in r["problems"]]
    return "\n".join(lines)


@app.command("publish")
def publish(ref: RefArg, as_: AsOption = OPERATOR, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Make an adapter public (owner or admin)."""
    with node_at(home) as node:
        a = node.adapters.publish(ref, actor=as_)
        emit(as_json, a.to_dict(), f"published {a.ref}")


@app.command("deprecate")
def deprecate(
    ref: RefArg,
    reason: Annotated[str, typer.Option("--reason", help="Why, in one line (kept in the journal).")],
    as_: AsOption = OPERATOR,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retire an adapter for good (owner or admin); the reason is journaled."""
    with node_at(home) as node:
        a = node.adapters.deprecate(ref, actor=as_, reason=reason)
        emit(as_json, a.to_dict(), f"deprecated {a.ref}: {reason}")
