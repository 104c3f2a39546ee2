"""Canonical JSON: the exact bytes an event is hashed as.

Rules: UTF-8, object keys sorted by code point, no insignificant whitespace, no floats (amounts are integers in
base units), integers within signed 64 bits, strings without lone surrogates. Values allowed: object (string
keys), array, string, integer, true, false, null. The same value always encodes to the same bytes, so any
verifier can re-derive a leaf hash from the decoded event.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidInput

_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# One encoder for all calls: json.dumps with non-default options builds a new encoder every time.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically. Raises InvalidInput naming the JSON path of the first bad value."""
    _check(value, "$")
    text = _ENCODER.encode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("event contains a lone surrogate: not valid UTF-8", field="data") from None


def _check(value: Any, path: str) -> None:
    # Exact type checks first: this runs for every journaled value, and events are mostly flat objects of
    # strings and integers.
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidInput(f"{path}: integer {value} does not fit in 64 bits", field=path)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidInput(f"{path}: object keys must be strings, got {type(key).__name__}", field=path)
            item_kind = type(item)
            if item_kind is str or item is None or (item_kind is int and _INT_MIN <= item <= _INT_MAX):
                continue
            _check(item, f"{path}.{key}")
        return
    if kind is list or kind is tuple:
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
        return
    if isinstance(value, float):
        raise InvalidInput(f"{path}: floats are not allowed in events; use integers in base units", field=path)
    raise InvalidInput(f"{path}: {type(value).__name__} cannot be journaled", field=path)
