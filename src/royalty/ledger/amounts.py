"""OPEN and gOPEN amounts: integers of base units inside (6 decimals), decimal strings at the edges.

``parse_amount("0.25") == 250_000``; ``format_amount(250_000) == "0.25"``. No floats anywhere: a float cannot
hold 0.1 exactly, and both backends must agree to the base unit.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InvalidInput
from .codes import AMOUNT_MAX

DECIMALS = 6
UNIT = 10**DECIMALS  # base units per token
_AMOUNT = re.compile(r"^(\d{1,13})(?:\.(\d{1,6}))?$")


def parse_amount(value: Any, field: str = "amount", *, allow_zero: bool = False) -> int:
    """A token amount given as a decimal string (``"100"``, ``"0.25"``) or an int of whole tokens, in base
    units. Raises InvalidInput naming ``field`` for anything else: negatives, more than 6 decimals, exponents,
    floats, or values not below 2^63 base units."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"{field} must be a decimal string such as \"12.5\", got {value!r}", field=field)
    if isinstance(value, int):
        units = value * UNIT
    else:
        m = _AMOUNT.match(value.strip())
        if m is None:
            raise InvalidInput(
                f"{field} {value!r} is not an amount: use a non-negative decimal with at most {DECIMALS} decimals, "
                "e.g. \"12.5\"",
                field=field,
            )
        units = int(m.group(1)) * UNIT + int((m.group(2) or "").ljust(DECIMALS, "0"))
    if units < 0 or units > AMOUNT_MAX:
        raise InvalidInput(f"{field} {value!r} is out of range", field=field)
    if units == 0 and not allow_zero:
        raise InvalidInput(f"{field} must be more than zero", field=field)
    return units


def format_amount(units: int) -> str:
    """Base units as a decimal string without trailing zeros: 1_500_000 -> "1.5", 3 -> "0.000003"."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNIT)
    text = f"{whole}.{frac:0{DECIMALS}d}".rstrip("0").rstrip(".")
    return sign + text


def amount_json(units: int) -> dict[str, Any]:
    """The edge form of an amount in ``--json`` and HTTP bodies: both the decimal string and the base units."""
    return {"amount": format_amount(units), "units": units}
