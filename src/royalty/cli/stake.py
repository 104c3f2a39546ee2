"""``royalty stake|cooldown|redeem|delegate|claim|votes``: staking OPEN for gOPEN and voting power.

ACCOUNT is the participant who acts. The CLI runs as the node's operator, who acts for the home's participants
locally (as ``--as`` does for datanets): each command passes ``actor=ACCOUNT`` to the library, which still
checks everything else (the account exists, is a participant, has the funds, the cooldown window).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..ledger.amounts import amount_json, format_amount, parse_amount
from ..ledger.staking import StakerState, StakingReceipt, format_time
from ._common import HomeOption, JsonOption, emit, node_at

AccountArg = Annotated[str, typer.Argument(help="The participant who acts (name or acct_… id).")]
AmountArg = Annotated[str, typer.Argument(help="OPEN, as a decimal with at most 6 decimals, e.g. 12.5.")]


def _state_text(s: StakerState) -> str:
    lines = [
        f"{s.name} ({s.account})",
        f"available   {format_amount(s.available)} OPEN",
        f"staked      {format_amount(s.staked)} OPEN = {format_amount(s.gopen)} gOPEN",
        f"delegatee   {s.delegatee or '- (not delegated: these units count nowhere)'}",
        f"votes       {format_amount(s.votes)} (delegated to {s.name})",
        f"claimable   {format_amount(s.claimable)} OPEN",
    ]
    if s.cooldown_start_ms is not None:
        lines.append(f"cooldown    {s.cooldown_status}: budget {format_amount(s.cooldown_budget)} OPEN, redeem from "
                     f"{format_time(s.redeem_opens_ms)} to {format_time(s.redeem_closes_ms)}")
    return "\n".join(lines)


def _receipt_text(r: StakingReceipt, headline: str) -> str:
    if r.replayed:
        headline += " (already done under this id; nothing changed)"
    return headline + "\n" + _state_text(r.state)


def register(app: typer.Typer) -> None:
    """Add the staking commands at the top level."""

    @app.command("stake")
    def stake(account: AccountArg, amount: AmountArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
        """Stake OPEN: it becomes gOPEN 1:1 (voting power once delegated; see royalty delegate)."""
        units = parse_amount(amount)
        with node_at(home) as node:
            r = node.staking.stake(account, units, actor=account)
            emit(as_json, r.to_dict(), _receipt_text(r, f"staked {format_amount(r.amount)} OPEN"))

    @app.command("cooldown")
    def cooldown(account: AccountArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
        """Start the cooldown: redeem opens after stake_cooldown_s, for stake_unstake_window_s."""
        with node_at(home) as node:
            r = node.staking.cooldown(account, actor=account)
            emit(as_json, r.to_dict(), _receipt_text(r, f"cooldown started: up to {format_amount(r.amount)} OPEN redeemable"))

    @app.command("redeem")
    def redeem(account: AccountArg, amount: AmountArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
        """Unstake OPEN within the unstake window after a cooldown (burns the same gOPEN)."""
        units = parse_amount(amount)
        with node_at(home) as node:
            r = node.staking.redeem(account, units, actor=account)
            emit(as_json, r.to_dict(), _receipt_text(r, f"redeemed {format_amount(r.amount)} OPEN"))

    @app.command("delegate")
    def delegate(
        account: AccountArg,
        delegatee: Annotated[str, typer.Argument(help="Who gets the voting power (the account itself included).")],
        home: HomeOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Delegate the account's voting power (votes count only when delegated)."""
        with node_at(home) as node:
            r = node.staking.delegate(account, delegatee, actor=account)
            target = node.accounts.get(delegatee).name
            head = f"{r.state.name} already delegates to {target}" if r.result == "noop" else \
                f"{r.state.name} now delegates {format_amount(r.amount)} votes to {target}"
            emit(as_json, r.to_dict(), _receipt_text(r, head))

    @app.command("claim")
    def claim(account: AccountArg, home: HomeOption = None, as_json: JsonOption = False) -> None:
        """Claim the account's share of inference fees paid to stakers."""
        with node_at(home) as node:
            r = node.staking.claim(account, actor=account)
            head = "nothing to claim" if r.result == "noop" else f"claimed {format_amount(r.amount)} OPEN"
            emit(as_json, r.to_dict(), _receipt_text(r, head))

    @app.command("votes")
    def votes(
        account: AccountArg,
        at: Annotated[int | None, typer.Option("--at", help="A past time in Unix ms: the votes then.", min=0,
                                               show_default=False)] = None,
        home: HomeOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Voting power delegated to ACCOUNT, now or at a past time (--at MS)."""
        with node_at(home) as node:
            who = node.accounts.get(account)
            if at is None:
                value = node.staking.get_votes(who.id)
                data = {"account": who.id, "name": who.name, "at_ms": None, "votes": amount_json(value),
                        "state": node.staking.state(who.id).to_dict()}
                emit(as_json, data, f"{who.name}: {format_amount(value)} votes now")
            else:
                value = node.staking.get_past_votes(who.id, at)
                supply = node.staking.get_past_total_supply(at)
                data = {"account": who.id, "name": who.name, "at_ms": at, "votes": amount_json(value),
                        "total_supply": amount_json(supply)}
                emit(as_json, data, f"{who.name}: {format_amount(value)} votes at {at} (of {format_amount(supply)} gOPEN)")
