"""``royalty ledger …``: OPEN balances, transfers, history, the faucet, supply and the audit.

Amounts are decimal OPEN ("12.5", at most 6 decimals); ``--json`` shows each amount both as that string and as
integer base units. The operator runs the CLI on the node for its participants, so ``transfer`` acts as the
payer (``--as`` another account is refused: only the owner moves their funds) and ``faucet`` as the operator.
Commands that take an AMOUNT accept it after the other arguments even when it looks like an option ("-1"), so
a negative amount gets the amount's own error rather than a usage error.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..ledger.amounts import format_amount, parse_amount
from ..ledger.chart import TransferCode
from ..ledger.tokens import HistoryItem, TokenBalance
from ..node import OPERATOR
from ._common import HomeOption, JsonOption, emit, node_at, table

app = typer.Typer(help="The ledger: OPEN balances, transfers, history, faucet, supply and audit.", no_args_is_help=True)

AccountArg = Annotated[str, typer.Argument(metavar="ACCOUNT", help="A participant: account name or id (acct_…).")]
AmountArg = Annotated[str, typer.Argument(metavar="AMOUNT", help="OPEN as a decimal, at most 6 decimals, e.g. 12.5.")]
IdOption = Annotated[
    str | None,
    typer.Option("--id", help="Transfer id (UUID or 32 hex digits): run again with the same id and it is done once.",
                 show_default=False),
]
# "-1" must reach parse_amount (exit 1 naming the amount), not click's option parser (exit 2).
NUMBERS_AS_ARGUMENTS = {"ignore_unknown_options": True}


@app.command("balance")
def balance(account: AccountArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show a participant's OPEN: available, reserved (pending fees), staked, and gOPEN."""
    with node_at(home) as node:
        b = node.tokens.balance(account)
        emit(as_json, b.to_dict(), _balance_text(b))


def _balance_text(b: TokenBalance) -> str:
    return (
        f"{b.name} ({b.account})\n"
        f"available  {format_amount(b.available)} OPEN\n"
        f"reserved   {format_amount(b.reserved)} OPEN\n"
        f"staked     {format_amount(b.staked)} OPEN\n"
        f"gOPEN      {format_amount(b.gopen)}"
    )


@app.command("transfer", context_settings=NUMBERS_AS_ARGUMENTS)
def transfer(
    payer: Annotated[str, typer.Argument(metavar="FROM", help="The payer (name or id); the command acts as them.")],
    payee: Annotated[str, typer.Argument(metavar="TO", help="The payee (name or id).")],
    amount: AmountArg,
    id_: IdOption = None,
    memo: Annotated[str | None, typer.Option("--memo", help="A note kept with the transfer.", show_default=False)] = None,
    as_: Annotated[
        str | None,
        typer.Option("--as", help="Act as this account (default: FROM). Only FROM may move FROM's OPEN.", show_default=False),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send OPEN from FROM's available balance to TO."""
    units = parse_amount(amount)
    with node_at(home) as node:
        t, result = node.tokens.transfer(payer, payee, units, actor=as_ or payer, id=id_, memo=memo)
        src, dst = node.tokens.participant(payer), node.tokens.participant(payee)
        verb = "sent" if result.value == "ok" else "already sent (same id)"
        emit(
            as_json,
            {"transfer": _transfer_dict(t.to_dict(), src.id, dst.id), "result": result.value},
            f"{verb} {format_amount(t.amount)} OPEN from {src.name} to {dst.name}\ntransfer {t.to_dict()['id']}",
        )


@app.command("faucet", context_settings=NUMBERS_AS_ARGUMENTS)
def faucet(
    account: AccountArg,
    amount: AmountArg,
    id_: IdOption = None,
    as_: Annotated[str, typer.Option("--as", help="Act as this account (must be an admin).")] = OPERATOR,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Grant OPEN from the treasury to a participant (admins only; for demos and tests)."""
    units = parse_amount(amount)
    with node_at(home) as node:
        t, result = node.tokens.faucet(account, units, actor=as_, id=id_)
        dst = node.tokens.participant(account)
        verb = "granted" if result.value == "ok" else "already granted (same id)"
        emit(
            as_json,
            {"transfer": _transfer_dict(t.to_dict(), node.accounts.get("treasury").id, dst.id), "result": result.value},
            f"{verb} {format_amount(t.amount)} OPEN from the treasury to {dst.name}\ntransfer {t.to_dict()['id']}",
        )


@app.command("history")
def history(
    account: AccountArg,
    limit: Annotated[int, typer.Option("--limit", help="At most this many transfers.", min=1, max=1_000)] = 50,
    after: Annotated[
        str | None, typer.Option("--after", help="Only transfers after this transfer id (the last one shown).", show_default=False)
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a participant's transfers, oldest first (all their accounts: available, staked, gOPEN)."""
    with node_at(home) as node:
        items, more = node.tokens.history_page(account, limit=limit, after=after)
        data = {
            "data": [_amounts(i.to_dict()) for i in items],
            "has_more": more,
            "next_after": items[-1].to_dict()["id"] if more else None,
        }
        emit(as_json, data, lambda: typer.echo(_history_text(items, more)))


def _history_text(items: list[HistoryItem], more: bool) -> str:
    if not items:
        return "no transfers yet"
    rows = []
    for i in items:
        d = i.to_dict()
        rows.append([str(d["event_seq"]), d["reason"], d["account_kind"], d["signed"]["amount"], d["id"], d["user_data"] or ""])
    text = table(rows, ["SEQ", "REASON", "ACCOUNT", "AMOUNT", "TRANSFER", "MEMO"])
    if more:
        text += f"\nmore: --after {items[-1].to_dict()['id']}"
    return text


@app.command("supply")
def supply(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Show the OPEN supply: issued, burnt, in circulation (issued - burnt) and the cap."""
    with node_at(home) as node:
        s = node.tokens.supply()
        emit(
            as_json,
            s,
            f"supply  {s['supply']['amount']} OPEN\nissued  {s['issued']['amount']}\nburnt   {s['burnt']['amount']}\n"
            f"cap     {s['cap']['amount']}",
        )


@app.command("verify")
def verify(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Replay the journal into an independent ledger and check every balance, transfer and invariant.

    Exits 1 and names the first problem when anything disagrees.
    """
    with node_at(home) as node:
        report = node.ledger_audit()
        emit(as_json, report.to_dict(), lambda: typer.echo(_verify_text(report.to_dict())))
        if not report.ok:
            more = f" (and {report.problem_count - 1} more)" if report.problem_count > 1 else ""
            typer.echo(f"royalty: error: ledger audit failed: {report.problems[0]}{more}", err=True)
            raise typer.Exit(1)


def _verify_text(r: dict[str, Any]) -> str:
    lines = [
        f"{'ledger ok' if r['ok'] else 'LEDGER AUDIT FAILED'}: {r['events']} journal events replayed, "
        f"{r['accounts']} ledger accounts, {r['created']} transfers ({r['failed']} failed attempt(s), "
        f"{r['expired']} expired, {r['pending']} pending)",
        f"supply {r['supply']['amount']} OPEN of a cap of {r['cap']['amount']}",
        "journal " + ("ok" if r["journal"].get("ok") else f"FAILED: {r['journal'].get('error')}"),
        "services " + ", ".join(f"{k} {v}" for k, v in r["services"].items()),
    ]
    lines += [f"problem: {p}" for p in r["problems"]]
    return "\n".join(lines)


def _amounts(t: dict[str, Any]) -> dict[str, Any]:
    """A transfer's dict with its amount in both forms: the decimal string and the base units."""
    return {**t, "amount": format_amount(t["amount"]), "units": t["amount"]}


def _transfer_dict(t: dict[str, Any], payer: str, payee: str) -> dict[str, Any]:
    """A transfer as the edge shows it: the node accounts on both sides and the amount in both forms."""
    return {**_amounts(t), "from": payer, "to": payee, "reason": TransferCode(t["code"]).name.lower()}

