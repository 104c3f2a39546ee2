"""Staking and gOPEN (``node.staking``): stake OPEN for non-transferable gOPEN 1:1, delegate voting power,
cooldown then redeem, and the stakers' share of inference fees.

(The interface below is fixed: governance and fees are written against it. Implementation in progress.)

Time is the node's ledger clock in milliseconds; ``timepoint`` arguments are ms. Durations in Params are seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from ..accounts import Accounts
from ..store import Store
from .core import Ledger
from .params import ParamsRegistry
from .tokens import Tokens


class Staking:
    def __init__(self, store: Store, ledger: Ledger, tokens: Tokens, accounts: Accounts, params: ParamsRegistry,
                 clock: Callable[[], int]) -> None:
        self.store = store
        self.ledger = ledger
        self.tokens = tokens
        self.accounts = accounts
        self.params = params
        self.clock = clock

    # --- participant operations (authorization: actor must be the participant) ----------------------------------
    def stake(self, ref: str, amount: int, *, actor: str, id: Any = None) -> Any:
        """AVAILABLE → STAKED (OPEN) and GOPEN_ISSUANCE → GOPEN (gOPEN) for ``amount``, atomically; voting units
        of the participant's delegatee grow by ``amount``."""
        raise NotImplementedError

    def cooldown(self, ref: str, *, actor: str) -> Any:
        """Start the cooldown; redeem is allowed after ``stake_cooldown_s`` and within ``stake_unstake_window_s``."""
        raise NotImplementedError

    def redeem(self, ref: str, amount: int, *, actor: str, id: Any = None) -> Any:
        """STAKED → AVAILABLE and burn gOPEN, within the redeem budget (Aave v1.5)."""
        raise NotImplementedError

    def delegate(self, ref: str, delegatee: str, *, actor: str) -> Any:
        """Give the participant's voting units to ``delegatee`` (themselves included). Votes count only when
        delegated."""
        raise NotImplementedError

    def claim(self, ref: str, *, actor: str, id: Any = None) -> Any:
        """Pay the participant's accrued staker rewards STAKER_POOL → AVAILABLE."""
        raise NotImplementedError

    # --- voting power (ERC20Votes / ERC5805 semantics) ----------------------------------------------------------
    def get_votes(self, ref: str) -> int:
        """Current voting power (base units of gOPEN delegated to ``ref``)."""
        raise NotImplementedError

    def get_past_votes(self, ref: str, timepoint: int) -> int:
        """Voting power at ``timepoint`` ms (the last checkpoint at or before it). Raises InvalidInput when
        ``timepoint`` >= now (ERC5805FutureLookup): the past must be settled."""
        raise NotImplementedError

    def get_past_total_supply(self, timepoint: int) -> int:
        """Total gOPEN at ``timepoint`` ms (same rule)."""
        raise NotImplementedError

    def get_past_votes_in(self, conn: Connection, account_id: str, timepoint: int) -> int:
        raise NotImplementedError

    def get_past_total_supply_in(self, conn: Connection, timepoint: int) -> int:
        raise NotImplementedError

    # --- fees -----------------------------------------------------------------------------------------------------
    def distribute_in(self, conn: Connection, amount: int) -> int:
        """Credit ``amount`` base units of stakers' rewards to every staker pro rata through the reward-per-token
        accumulator, inside the caller's transaction. Returns how much was allocated (0 when nothing is staked;
        the caller then sends that share elsewhere). The caller moves the allocated OPEN into STAKER_POOL in the
        same transaction; stakers later ``claim`` from it."""
        raise NotImplementedError

    def audit(self) -> list[str]:
        """Invariant problems found (I9: staked = gOPEN per participant, budgets, voting units = stake); empty
        when all hold. ``royalty ledger verify`` calls this."""
        raise NotImplementedError
