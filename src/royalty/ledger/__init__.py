"""The ledger: double-entry accounts and immutable transfers on the TigerBeetle model (``node.ledger``)."""

from .codes import AMOUNT_MAX, ID_MAX, AccountFlags, Asset, Result, TransferFlags
from .core import AccountSpec, Balance, Ledger, LedgerAccount, Transfer, TransferSpec, hex_id, parse_id

__all__ = [
    "AMOUNT_MAX",
    "ID_MAX",
    "AccountFlags",
    "AccountSpec",
    "Asset",
    "Balance",
    "Ledger",
    "LedgerAccount",
    "Result",
    "Transfer",
    "TransferFlags",
    "TransferSpec",
    "hex_id",
    "parse_id",
]
