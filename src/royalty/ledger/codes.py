"""Result codes, flags and assets of the double-entry ledger (TigerBeetle's names, ``docs/reference``).

TigerBeetle answers ``created`` only by omission; here every event gets a result and success is ``ok``.
``exists`` also means success (the retry of an id that was created before): ``Result.succeeded`` is true for
both. Codes TigerBeetle does not have are marked "royalty" below.
"""

from __future__ import annotations

from enum import Enum, IntEnum, IntFlag

AMOUNT_MAX = 2**63 - 1  # BIGINT on both backends: amounts and every balance field stay below 2^63
ID_MAX = 2**128 - 1  # u128; 0 and ID_MAX are reserved, as in TigerBeetle
LEDGER_MAX = 2**32 - 1  # u32
CODE_MAX = 2**16 - 1  # u16
TIMEOUT_MAX = 2**32 - 1  # u32 seconds


class Asset(IntEnum):
    """The ``ledger`` field: one asset per ledger; transfers never cross ledgers."""

    OPEN = 1
    GOPEN = 2


class AccountFlags(IntFlag):
    NONE = 0
    LINKED = 1 << 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2
    HISTORY = 1 << 3  # accepted and stored; every account keeps history here anyway


class TransferFlags(IntFlag):
    NONE = 0
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING_TRANSFER = 1 << 2
    VOID_PENDING_TRANSFER = 1 << 3


ACCOUNT_FLAGS_KNOWN = int(AccountFlags.LINKED | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
                          | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS | AccountFlags.HISTORY)
TRANSFER_FLAGS_KNOWN = int(TransferFlags.LINKED | TransferFlags.PENDING | TransferFlags.POST_PENDING_TRANSFER
                           | TransferFlags.VOID_PENDING_TRANSFER)


class Result(str, Enum):
    """The outcome of one event in ``create_accounts`` / ``create_transfers``."""

    ok = "ok"
    exists = "exists"
    linked_event_failed = "linked_event_failed"
    linked_event_chain_open = "linked_event_chain_open"
    id_already_failed = "id_already_failed"
    reserved_flag = "reserved_flag"
    id_must_not_be_zero = "id_must_not_be_zero"
    id_must_not_be_int_max = "id_must_not_be_int_max"
    flags_are_mutually_exclusive = "flags_are_mutually_exclusive"
    ledger_must_not_be_zero = "ledger_must_not_be_zero"
    code_must_not_be_zero = "code_must_not_be_zero"
    # accounts
    exists_with_different_user_data = "exists_with_different_user_data"
    owner_not_found = "owner_not_found"  # royalty: the owner is not an account of this node
    # transfers: the exists family
    exists_with_different_flags = "exists_with_different_flags"
    exists_with_different_pending_id = "exists_with_different_pending_id"
    exists_with_different_timeout = "exists_with_different_timeout"
    exists_with_different_debit_account_id = "exists_with_different_debit_account_id"
    exists_with_different_credit_account_id = "exists_with_different_credit_account_id"
    exists_with_different_amount = "exists_with_different_amount"
    exists_with_different_ledger = "exists_with_different_ledger"
    exists_with_different_code = "exists_with_different_code"
    # transfers: validation
    debit_account_id_must_not_be_zero = "debit_account_id_must_not_be_zero"
    debit_account_id_must_not_be_int_max = "debit_account_id_must_not_be_int_max"
    credit_account_id_must_not_be_zero = "credit_account_id_must_not_be_zero"
    credit_account_id_must_not_be_int_max = "credit_account_id_must_not_be_int_max"
    accounts_must_be_different = "accounts_must_be_different"
    pending_id_must_be_zero = "pending_id_must_be_zero"
    pending_id_must_not_be_zero = "pending_id_must_not_be_zero"
    pending_id_must_not_be_int_max = "pending_id_must_not_be_int_max"
    pending_id_must_be_different = "pending_id_must_be_different"
    timeout_reserved_for_pending_transfer = "timeout_reserved_for_pending_transfer"
    amount_must_not_be_zero = "amount_must_not_be_zero"
    amount_out_of_range = "amount_out_of_range"  # royalty: negative, or not below 2^63
    # transfers: state
    debit_account_not_found = "debit_account_not_found"
    credit_account_not_found = "credit_account_not_found"
    accounts_must_have_the_same_ledger = "accounts_must_have_the_same_ledger"
    transfer_must_have_the_same_ledger_as_accounts = "transfer_must_have_the_same_ledger_as_accounts"
    pending_transfer_not_found = "pending_transfer_not_found"
    pending_transfer_not_pending = "pending_transfer_not_pending"
    pending_transfer_has_different_debit_account_id = "pending_transfer_has_different_debit_account_id"
    pending_transfer_has_different_credit_account_id = "pending_transfer_has_different_credit_account_id"
    pending_transfer_has_different_ledger = "pending_transfer_has_different_ledger"
    pending_transfer_has_different_code = "pending_transfer_has_different_code"
    exceeds_pending_transfer_amount = "exceeds_pending_transfer_amount"
    pending_transfer_has_different_amount = "pending_transfer_has_different_amount"
    pending_transfer_already_posted = "pending_transfer_already_posted"
    pending_transfer_already_voided = "pending_transfer_already_voided"
    pending_transfer_expired = "pending_transfer_expired"
    overflows_debits_pending = "overflows_debits_pending"
    overflows_credits_pending = "overflows_credits_pending"
    overflows_debits_posted = "overflows_debits_posted"
    overflows_credits_posted = "overflows_credits_posted"
    overflows_debits = "overflows_debits"
    overflows_credits = "overflows_credits"
    exceeds_credits = "exceeds_credits"
    exceeds_debits = "exceeds_debits"

    @property
    def succeeded(self) -> bool:
        return self in (Result.ok, Result.exists)

    def __str__(self) -> str:
        return self.value


# Failures that depend on the ledger's state at the time, not on the event alone (TigerBeetle >= 0.16.4): the
# id is burnt, so a retry answers ``id_already_failed`` instead of succeeding later with a different effect.
# (Failures that depend only on the event itself repeat by themselves; post/void outcomes are final anyway.)
TRANSIENT: frozenset[Result] = frozenset({
    Result.debit_account_not_found,
    Result.credit_account_not_found,
    Result.pending_transfer_not_found,
    Result.exceeds_credits,
    Result.exceeds_debits,
})
