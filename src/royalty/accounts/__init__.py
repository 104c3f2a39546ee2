"""Accounts: participants, roles and API keys."""

from .service import KINDS, NODE_ROLES, Account, Accounts, ApiKey, Role

__all__ = ["KINDS", "NODE_ROLES", "Account", "Accounts", "ApiKey", "Role"]
