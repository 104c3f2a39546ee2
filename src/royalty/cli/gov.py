"""``royalty gov …``: proposals, votes, the timelock, and the governed Params."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidInput
from ..ledger.amounts import format_amount
from ..ledger.governance import Proposal, parse_edge_actions
from ..ledger.params import parse_param_assignments
from ..ledger.staking import format_time
from ..node import Node
from ._common import HomeOption, JsonOption, emit, node_at, read_json_document, table

app = typer.Typer(help="Governance: propose, vote, queue, execute, cancel, show, list, params.", no_args_is_help=True)

AsOption = Annotated[str, typer.Option("--as", help="Act as this account (name or id).")]
ProposalArg = Annotated[str, typer.Argument(help="The proposal id (prop_…).")]


@app.command("propose")
def propose(
    description: Annotated[str | None, typer.Option("--description", "-d", help="What the proposal does and why.",
                                                    show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Change a parameter, KEY=VALUE (integer); repeatable, all in one set_params action.",
        show_default=False)] = None,
    transfer: Annotated[list[str] | None, typer.Option(
        "--transfer", help="Treasury transfer ACCOUNT=AMOUNT (OPEN, e.g. alice=250.5); repeatable.",
        show_default=False)] = None,
    mint: Annotated[list[str] | None, typer.Option(
        "--mint", help="Mint ACCOUNT=AMOUNT of new OPEN (ACCOUNT may be 'treasury'), within the supply cap; repeatable.",
        show_default=False)] = None,
    burn: Annotated[list[str] | None, typer.Option(
        "--burn", help="Burn AMOUNT of the treasury's OPEN; repeatable.", show_default=False)] = None,
    actions_file: Annotated[Path | None, typer.Option(
        "--actions", help="A JSON file ('-' = stdin) shaped like the HTTP body: {\"actions\": [...], \"description\": ...}. "
                          "Its actions run first, in order.", show_default=False)] = None,
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Propose actions. Order of execution: --actions, then --set (one action), --transfer, --mint, --burn."""
    raw: list[Any] = []
    if actions_file is not None:
        doc = read_json_document(actions_file, "a JSON object with an \"actions\" list")
        if not isinstance(doc.get("actions"), list):
            raise InvalidInput(f"{actions_file}: needs an \"actions\" list", field="actions")
        raw += doc["actions"]
        if description is None and isinstance(doc.get("description"), str):
            description = doc["description"]
    if set_:
        raw.append({"type": "set_params", "changes": parse_param_assignments(set_)})
    raw += [{"type": "treasury_transfer", "to": to, "amount": amount} for to, amount in _pairs(transfer, "--transfer")]
    raw += [{"type": "mint", "to": to, "amount": amount} for to, amount in _pairs(mint, "--mint")]
    raw += [{"type": "burn", "from": "treasury", "amount": amount} for amount in burn or []]
    if not raw:
        raise InvalidInput("nothing to propose: give --set, --transfer, --mint, --burn or --actions FILE", field="actions")
    if description is None:
        raise InvalidInput("a proposal needs --description TEXT", field="description")
    with node_at(home) as node:
        prop = node.governance.propose(parse_edge_actions(raw), description, actor=as_)
        emit(as_json, prop.to_dict(), lambda: typer.echo(
            f"proposed {prop.id}\n{_show_text(node, prop)}"))


@app.command("vote")
def vote(
    proposal: ProposalArg,
    support: Annotated[str, typer.Argument(help="for, against or abstain.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept with the vote).", show_default=False)] = None,
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Vote on an active proposal with your voting power at its snapshot."""
    with node_at(home) as node:
        v = node.governance.vote(proposal, support, actor=as_, reason=reason)
        note = "" if v.weight else " (no voting power at the snapshot: recorded, counts nothing)"
        emit(as_json, v.to_dict(),
             f"{_name(node, v.voter)} voted {v.to_dict()['support']} on {v.proposal} with "
             f"{format_amount(v.weight)} gOPEN{note}")


@app.command("queue")
def queue(proposal: ProposalArg, as_: AsOption = "operator", home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Queue a succeeded proposal in the timelock."""
    with node_at(home) as node:
        prop = node.governance.queue(proposal, actor=as_)
        emit(as_json, prop.to_dict(),
             f"queued {prop.id}: executable from {_when(prop.eta_ms)} until before {_when(prop.expires_ms)}")


@app.command("execute")
def execute(proposal: ProposalArg, as_: AsOption = "operator", home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Execute a queued proposal whose timelock has passed (all actions or none)."""
    with node_at(home) as node:
        prop = node.governance.execute(proposal, actor=as_)
        emit(as_json, prop.to_dict(), f"executed {prop.id}: {len(prop.actions)} action(s)")


@app.command("cancel")
def cancel(proposal: ProposalArg, as_: AsOption = "operator", home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Cancel a pending proposal (its proposer only)."""
    with node_at(home) as node:
        prop = node.governance.cancel(proposal, actor=as_)
        emit(as_json, prop.to_dict(), f"canceled {prop.id}")


@app.command("show")
def show(proposal: ProposalArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show a proposal: state, actions, times, votes and quorum."""
    with node_at(home) as node:
        prop = node.governance.get(proposal)
        votes = node.governance.votes(proposal)
        data = prop.to_dict() | {"vote_list": [v.to_dict() for v in votes]}

        def human() -> None:
            typer.echo(_show_text(node, prop))
            if votes:
                rows = [[_name(node, v.voter), v.to_dict()["support"], format_amount(v.weight), v.reason or ""]
                        for v in votes]
                typer.echo(table(rows, ["VOTER", "SUPPORT", "WEIGHT", "REASON"]))

        emit(as_json, data, human)


@app.command("list")
def list_(
    state: Annotated[str | None, typer.Option("--state", help="Only proposals in this state.", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.", min=1, max=1000)] = 100,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List proposals, oldest first."""
    with node_at(home) as node:
        items = node.governance.list(state=state, limit=limit)
        rows = [[p.id, p.state, _name(node, p.proposer), format_amount(p.tally.for_), format_amount(p.tally.against),
                 format_amount(p.tally.abstain), _first_line(p.description)] for p in items]
        emit(as_json, {"proposals": [p.to_dict() for p in items]},
             table(rows, ["ID", "STATE", "PROPOSER", "FOR", "AGAINST", "ABSTAIN", "DESCRIPTION"]) if items
             else "no proposals; create one with: royalty gov propose")


@app.command("params")
def params(
    history: Annotated[bool, typer.Option("--history", help="Also list every version, with its reason.")] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the governed Params in force (and, with --history, every version)."""
    with node_at(home) as node:
        current = node.params.current().model_dump()
        versions = node.params.history()

        def human() -> None:
            typer.echo(table([[k, str(v)] for k, v in current.items()], ["PARAM", "VALUE"]))
            if history:
                typer.echo("")
                rows = []
                prev: dict[str, Any] | None = None
                for h in versions:
                    if prev is None:
                        shown = "(initial set)"
                    else:
                        shown = ", ".join(f"{k}={v}" for k, v in h["params"].items() if prev.get(k) != v) or "(no change)"
                    prev = h["params"]
                    rows.append([str(h["seq"]), _when(h["effective_ms"]), h["reason"], shown])
                typer.echo(table(rows, ["SEQ", "EFFECTIVE", "REASON", "CHANGES"]))

        emit(as_json, {"params": current, "history": versions if history else None}, human)


# --- helpers ---------------------------------------------------------------------------------------------------


def _pairs(items: list[str] | None, flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        account, sep, amount = item.rpartition("=")
        if not sep or not account or not amount:
            raise InvalidInput(f"{flag} {item!r}: use ACCOUNT=AMOUNT, e.g. alice=250.5", field=flag.lstrip("-"))
        out.append((account, amount))
    return out


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return format_time(ms)


def _name(node: Node, account: str) -> str:
    return node.accounts.get(account).name


def _first_line(text: str, width: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _describe(action: dict[str, Any], node: Node) -> str:
    kind = action["type"]
    if kind == "set_params":
        return "set " + ", ".join(f"{k}={v}" for k, v in action["changes"].items())
    amount = format_amount(action["amount"])
    if kind == "burn":
        return f"burn {amount} OPEN from the treasury"
    to = action["to"] if action["to"] == "treasury" else _name(node, action["to"])
    return f"{'mint' if kind == 'mint' else 'transfer from the treasury'} {amount} OPEN to {to}"


def _show_text(node: Node, p: Proposal) -> str:
    lines = [
        f"proposal   {p.id}",
        f"state      {p.state}",
        f"proposer   {_name(node, p.proposer)}",
        f"snapshot   {_when(p.snapshot_ms)}",
        f"deadline   {_when(p.deadline_ms)}",
    ]
    if p.eta_ms is not None:
        lines += [f"eta        {_when(p.eta_ms)}", f"expires    {_when(p.expires_ms)}"]
    if p.executed_ms is not None:
        lines.append(f"executed   {_when(p.executed_ms)}")
    if p.canceled_ms is not None:
        lines.append(f"canceled   {_when(p.canceled_ms)}")
    quorum = "-" if p.quorum is None else format_amount(p.quorum)
    lines.append(f"votes      for {format_amount(p.tally.for_)}, against {format_amount(p.tally.against)}, "
                 f"abstain {format_amount(p.tally.abstain)} gOPEN ({p.voters} voter(s)); quorum {quorum}")
    lines.append("actions")
    lines += [f"  {i}. {_describe(a, node)}" for i, a in enumerate(p.actions)]
    lines.append("description")
    lines += [f"  {line}" for line in p.description.splitlines()]
    return "\n".join(lines)
