"""The chart of accounts: which ledger accounts exist, what their codes mean, and how ids are derived.

Every ledger account of the protocol and of its participants has a deterministic id,
``account_id(ledger, code, owner)``, so every service, test and auditor computes the same ids without a lookup.
Transfer ids of protocol operations are derived the same way from the operation's own id (a request id, an
epoch id, a proposal id) and the leg's name, so a retry of the operation reuses its ids and is idempotent (I5).

Codes follow TigerBeetle's data-modeling advice: the account ``code`` is the account's type, the transfer
``code`` is the reason for the transfer.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum

from .codes import ID_MAX, AccountFlags, Asset

USER_FLAGS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)


class AccountCode(IntEnum):
    """Account types. System accounts belong to the node's system participants (treasury, fees, rewards)."""

    # OPEN, system
    TREASURY = 1  # genesis supply, protocol fee legs, governance-controlled grants
    ISSUANCE = 2  # debit-normal source of all OPEN: supply = issued - burnt
    BURN = 3  # credit-normal sink of burnt OPEN
    FEE_ESCROW = 4  # inference fees between reservation and settlement
    STAKER_POOL = 5  # stakers' share of fees, until each staker claims it
    REWARD_POOL = 6  # funds reward epochs
    DUST = 7  # what floor rounding leaves over from contributor splits; recycled into reward epochs
    EPOCH_POOL = 8  # one per reward epoch (owner: rewards; id derived from the epoch id)
    # OPEN, per participant
    AVAILABLE = 10  # spendable OPEN
    STAKED = 11  # OPEN locked as stake (backs gOPEN 1:1)
    # gOPEN (Asset.GOPEN)
    GOPEN_ISSUANCE = 20  # debit-normal source of gOPEN, minted when OPEN is staked
    GOPEN = 21  # a participant's gOPEN: non-transferable, equals their STAKED OPEN


class TransferCode(IntEnum):
    """Reasons for transfers."""

    GENESIS = 1
    TRANSFER = 2
    FAUCET = 3
    MINT = 4
    BURN = 5
    TREASURY_GRANT = 6  # a treasury transfer executed by governance
    FEE_RESERVE = 10  # pending, payer -> escrow; posting/voiding it keeps this code
    FEE_TREASURY = 11
    FEE_OWNER = 12
    FEE_STAKERS = 13
    FEE_CONTRIBUTOR = 14
    FEE_DUST = 15
    PUBLISH_FEE = 20  # datanet publishing fee, publisher -> treasury
    ADAPTER_FEE = 21  # adapter registration fee, owner -> treasury
    STAKE = 30
    REDEEM = 31
    GOPEN_MINT = 32
    GOPEN_BURN = 33
    STAKER_CLAIM = 34
    EPOCH_FUND = 40
    EPOCH_PAY = 41
    EPOCH_DUST = 42


# (ledger, code, flags) of each system account; owner is the system participant named in the value.
SYSTEM_LEDGER_ACCOUNTS: dict[AccountCode, tuple[Asset, int, str]] = {
    AccountCode.TREASURY: (Asset.OPEN, USER_FLAGS, "treasury"),
    AccountCode.ISSUANCE: (Asset.OPEN, 0, "treasury"),
    AccountCode.BURN: (Asset.OPEN, 0, "treasury"),
    AccountCode.FEE_ESCROW: (Asset.OPEN, USER_FLAGS, "fees"),
    AccountCode.STAKER_POOL: (Asset.OPEN, USER_FLAGS, "rewards"),
    AccountCode.REWARD_POOL: (Asset.OPEN, USER_FLAGS, "rewards"),
    AccountCode.DUST: (Asset.OPEN, USER_FLAGS, "rewards"),
    AccountCode.GOPEN_ISSUANCE: (Asset.GOPEN, 0, "treasury"),
}

# The ledger accounts every participant gets (created on first use, see Tokens.ensure_accounts_in).
PARTICIPANT_LEDGER_ACCOUNTS: dict[AccountCode, tuple[Asset, int]] = {
    AccountCode.AVAILABLE: (Asset.OPEN, USER_FLAGS),
    AccountCode.STAKED: (Asset.OPEN, USER_FLAGS),
    AccountCode.GOPEN: (Asset.GOPEN, USER_FLAGS),
}


def _digest_id(*parts: str) -> int:
    value = int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:16], "big")
    # 0 and 2^128 - 1 are reserved ids; the chance of hitting them is 2^-127, but be exact anyway.
    return value if 0 < value < ID_MAX else 1


def asset_of(code: AccountCode) -> Asset:
    return Asset.GOPEN if code in (AccountCode.GOPEN, AccountCode.GOPEN_ISSUANCE) else Asset.OPEN


def account_id(code: AccountCode, owner: str) -> int:
    """The ledger account id of ``owner``'s account of type ``code``. ``owner`` is the participant's node
    account id (``acct_…``) for participant accounts, ``"system"`` for the system accounts, and the epoch id for
    an epoch pool."""
    return _digest_id("royalty", "account", str(int(asset_of(code))), str(int(code)), owner)


def system_account_id(code: AccountCode) -> int:
    """The id of one of the protocol's own accounts (``SYSTEM_LEDGER_ACCOUNTS``)."""
    return account_id(code, "system")


def transfer_id(*parts: str) -> int:
    """A transfer id derived from an operation's id and the leg's name, e.g. ``transfer_id("fee", request_id,
    "post")``: retries of the same operation reuse the same ids, so they answer ``exists`` (I5)."""
    return _digest_id("royalty", "transfer", *parts)
