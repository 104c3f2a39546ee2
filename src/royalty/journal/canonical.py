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
# The string encoder _ENCODER itself uses with ensure_ascii=False (the C one where available).
_encode_string = json.encoder.encode_basestring


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically. Raises InvalidInput naming the JSON path of the first bad value."""
    return utf8(canonical_text(value))


def canonical_text(value: Any, path: str = "$") -> str:
    """The canonical JSON of ``value`` as text (not yet UTF-8), after checking every value; ``path`` names
    ``value`` in error messages. The canonical JSON of an object is ``{`` + the ``"key":value`` texts in key order,
    joined by ``,`` + ``}``, so callers may splice canonical texts of parts into a larger object (the journal's
    event envelope does; tests/test_fast_paths.py checks both against a slow reference encoder)."""
    kind = type(value)
    if kind is int and _INT_MIN <= value <= _INT_MAX:  # an envelope's ts, actor: skip the encoder's set-up
        return int.__repr__(value)
    if kind is str:
        return _encode_string(value)
    _check(value, path)
    return _ENCODER.encode(value)


def utf8(text: str) -> bytes:
    """Canonical text as the bytes that are hashed. Raises InvalidInput on a lone surrogate (not UTF-8)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("event contains a lone surrogate: not valid UTF-8", field="data") from None


def string_text(value: str) -> str:
    """The canonical JSON text of one string (quotes and escapes as ``canonical_text``), unchecked: the caller
    knows ``value`` is a ``str``; a lone surrogate is refused when the whole text goes through ``utf8``."""
    return _encode_string(value)


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
