"""(Interface fixed here; the implementation is being written.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Governance:
    def __init__(self, store, ledger, tokens,staking,accounts,params, clock: Callable[[], int]) -> None:
        self.store = store
        self.ledger = ledger
        self.tokens = tokens
        self.staking = staking
        self.accounts = accounts
        self.params = params
        self.clock = clock
