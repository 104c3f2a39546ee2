"""``royalty rewards …``: reward epochs and contributors' earnings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidInput
from ..ledger.amounts import format_amount, parse_amount
from ..ledger.rewards import SOURCES, Earnings, EpochDetail
from ._common import HomeOption, JsonOption, emit, node_at, read_json_document, table

app = typer.Typer(help="Rewards: reward epochs and contributors' earnings.", no_args_is_help=True)
epoch_app = typer.Typer(help="Reward epochs: create, fund, freeze the weights, distribute.", no_args_is_help=True)
app.add_typer(epoch_app, name="epoch")

AsOption = Annotated[str, typer.Option("--as", help="Act as this account (name or id); epochs need an admin.")]
EpochArg = Annotated[str, typer.Argument(help="The epoch id (ep_…).")]


@epoch_app.command("create")
def create(
    title: Annotated[str, typer.Option("--title", help="A one-line description, e.g. '2025-06 contributors'.")] = "",
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Open a new reward epoch with a pool account of its own."""
    with node_at(home) as node:
        e = node.rewards.create_epoch(title, actor=as_)
        emit(as_json, e.to_dict(), f"created epoch {e.id}{f' ({e.title})' if e.title else ''}; fund it with: "
                                   f"royalty rewards epoch fund {e.id} AMOUNT")


@epoch_app.command("fund")
def fund(
    epoch: EpochArg,
    amount: Annotated[str, typer.Argument(help="OPEN to move into the epoch, e.g. 1000 or 0.5; 'all' = the source's whole balance.")],
    source: Annotated[str, typer.Option("--from", help="reward-pool, dust (fee rounding dust) or treasury.")] = "reward-pool",
    id_: Annotated[str | None, typer.Option("--id", help="A transfer id (UUID) that makes a retry safe.", show_default=False)] = None,
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fund an open epoch from the reward pool, the dust account or the treasury."""
    units = None if amount.strip().lower() == "all" else parse_amount(amount)
    src = source.replace("-", "_")
    if src not in SOURCES:
        raise InvalidInput(f"--from must be one of {', '.join(s.replace('_', '-') for s in SOURCES)}, got {source!r}",
                           field="from")
    with node_at(home) as node:
        out = node.rewards.fund(epoch, units, source=src, actor=as_, id=id_)
        funded = out["epoch"]["funded"]["amount"]
        emit(as_json, out, f"funded epoch {epoch} with {out['amount']} OPEN from {source}; it now holds {funded} OPEN")


@epoch_app.command("freeze")
def freeze(
    epoch: EpochArg,
    weight: Annotated[
        list[str] | None,
        typer.Option("--weight", help="ACCOUNT=WEIGHT (a non-negative integer); repeatable.", show_default=False),
    ] = None,
    weights_file: Annotated[
        Path | None,
        typer.Option("--weights", help="A JSON file {\"ACCOUNT\": WEIGHT, …} ('-' = stdin).", show_default=False),
    ] = None,
    as_: AsOption = "operator",
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fix the epoch's weights and its funded amount; the weights' Merkle root is journaled."""
    weights: dict[str, Any] = {}
    if weights_file is not None:
        weights.update(read_json_document(weights_file, "a JSON object of account weights"))
    for item in weight or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--weight {item!r}: use ACCOUNT=WEIGHT, e.g. ada=3", field="weight")
        try:
            weights[key] = int(value)
        except ValueError:
            raise InvalidInput(f"--weight {item!r}: the weight must be an integer", field="weight") from None
    if not weights:
        raise InvalidInput("give the weights with --weight ACCOUNT=WEIGHT or --weights FILE", field="weight")
    with node_at(home) as node:
        e = node.rewards.freeze(epoch, weights, actor=as_)
        emit(as_json, e.to_dict(),
             f"froze epoch {e.id}: {format_amount(e.funded)} OPEN over a total weight of {e.total_weight}\n"
             f"weights root {e.weights_root.hex() if e.weights_root else '-'} (journal event #{e.frozen_seq})")


@epoch_app.command("distribute")
def distribute(epoch: EpochArg, as_: AsOption = "operator", home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Pay a frozen epoch out: floor(funded × weight / total) each, the remainder to the dust account."""
    with node_at(home) as node:
        node.rewards.distribute(epoch, actor=as_)
        detail = node.rewards.detail(epoch)
        e = detail.epoch
        emit(as_json, detail.to_dict(),
             lambda: typer.echo(f"distributed epoch {e.id}: paid {format_amount(e.paid or 0)} OPEN to "
                                f"{sum(1 for r in detail.recipients if r['paid'] and r['paid']['units'])} accounts, "
                                f"dust {format_amount(e.dust or 0)} (journal event #{e.distributed_seq})"))


@epoch_app.command("show")
def show(epoch: EpochArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show an epoch: state, funding, weights root, and each account's weight and payout."""
    with node_at(home) as node:
        detail = node.rewards.detail(epoch)
        emit(as_json, detail.to_dict(), lambda: typer.echo(_show_text(detail)))


def _show_text(detail: EpochDetail) -> str:
    e = detail.epoch
    lines = [
        f"epoch         {e.id}{f' ({e.title})' if e.title else ''}",
        f"state         {e.state}",
        f"funded        {format_amount(e.funded)} OPEN" + (" (so far)" if e.state == "open" else ""),
        "fundings      " + (", ".join(f"{f['amount']} from {f['source']}" for f in detail.fundings) or "-"),
    ]
    if e.weights_root is not None:
        lines += [f"total weight  {e.total_weight}", f"weights root  {e.weights_root.hex()} (journal event #{e.frozen_seq})"]
    if e.paid is not None:
        lines += [f"paid          {format_amount(e.paid)} OPEN, dust {format_amount(e.dust or 0)}"]
    if detail.recipients:
        rows = [[r["name"] or r["account"], str(r["weight"]), r["paid"]["amount"] if r["paid"] else "-"]
                for r in detail.recipients]
        lines += ["", table(rows, ["ACCOUNT", "WEIGHT", "PAID"])]
    return "\n".join(lines)


@epoch_app.command("list")
def list_(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List reward epochs, oldest first."""
    with node_at(home) as node:
        items = node.rewards.epochs()
        rows = [[e.id, e.state, format_amount(e.funded), "-" if e.paid is None else format_amount(e.paid), e.title]
                for e in items]
        emit(as_json, {"epochs": [e.to_dict() for e in items]},
             table(rows, ["EPOCH", "STATE", "FUNDED", "PAID", "TITLE"]) if items
             else "no reward epochs yet; create one with: royalty rewards epoch create")


@epoch_app.command("proof")
def proof(epoch: EpochArg, account: Annotated[str, typer.Argument(help="Account name or id.")],
          home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Prove an account's weight is in a frozen epoch's weights tree (against the journaled weights root)."""
    with node_at(home) as node:
        bundle = node.rewards.weight_proof(epoch, account)
        emit(as_json, bundle, f"{account} has weight {bundle['weight']} at leaf {bundle['index']} of {bundle['size']} "
                              f"in epoch {bundle['epoch']}\nweights root {bundle['weights_root']} "
                              f"(journal event #{bundle['frozen_seq']}), proof of {len(bundle['proof'])} hashes")


@app.command("earnings")
def earnings(
    account: Annotated[str, typer.Argument(help="Account name or id.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """What an account earned and why: each inference fee that paid it (request, receipt, role, weight) and each
    reward epoch payout."""
    with node_at(home) as node:
        result = node.rewards.earnings(account)
        emit(as_json, result.to_dict(), lambda: typer.echo(_earnings_text(result)))


def _earnings_text(e: Earnings) -> str:
    lines = [f"{e.name} ({e.account}) earned {format_amount(e.total_fees + e.total_epochs)} OPEN: "
             f"{format_amount(e.total_fees)} from inference fees, {format_amount(e.total_epochs)} from reward epochs"]
    if e.fees:
        rows = []
        for f in e.fees:
            why = (f"weight {f['weight']} of {f['total_weight']} of the {f['contributors_pool']['amount']} pool"
                   if f["role"] == "contributor" else "adapter owner's share")
            rows.append([f["request_id"], f["receipt_id"] or "-", f["role"], f["amount"]["amount"],
                         f"{f['fee']['amount']}", why])
        lines += ["", "inference fees", table(rows, ["REQUEST", "RECEIPT", "ROLE", "EARNED", "FEE", "WHY"])]
    if e.epochs:
        rows = [[p["epoch"], p["title"] or "-", p["amount"]["amount"],
                 f"weight {p['weight']} of {p['total_weight']} of {p['funded']['amount']}"] for p in e.epochs]
        lines += ["", "reward epochs", table(rows, ["EPOCH", "TITLE", "EARNED", "WHY"])]
    if not e.fees and not e.epochs:
        lines.append("nothing yet")
    return "\n".join(lines)
