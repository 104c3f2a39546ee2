"""Records and their provenance: what one contribution is, how it is validated, and how its id is made.

A record's id is SHA-256 of its canonical content: the record normalised (strings in Unicode NFC, only the
fields of its kind, in canonical JSON), so the same text always gets the same id whoever sends it and however
their file spelled it. Provenance (contributor, license, source, consent, tags, time) is kept beside the
content, not in it: two people contributing the same text is a duplicate, not two contributions.

Record schemas per datanet kind:

    text         {"text": str}
    instruction  {"prompt": str, "response": str, "system": str (optional)}
    chat         {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}  (>= 1 assistant turn)

Rows in files may also carry the metadata fields ``license``, ``source``, ``consent`` and ``tags``, which
override the defaults given for the whole file, and the lineage fields of an export (``EXPORT_FIELDS``), which
are ignored.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from ..journal.canonical import canonical_json

KINDS: tuple[str, ...] = ("text", "instruction", "chat")
ROLES: tuple[str, ...] = ("system", "user", "assistant")
RECORD_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "instruction": ("prompt", "response", "system"),
    "chat": ("messages",),
}
METADATA_FIELDS: tuple[str, ...] = ("license", "source", "consent", "tags")
# Lineage columns that ``export`` adds to every row. They describe where the row came from, not the record, so a
# contribution file made by exporting a version is accepted as is: these fields are ignored (ids are recomputed
# from the content, and the new contributor is whoever contributes the file).
EXPORT_FIELDS: tuple[str, ...] = ("contribution_id", "position", "contributor", "contributor_name", "purged")
# SPDX license identifiers (https://spdx.org/licenses/) and LicenseRef-* for custom licenses.
_SPDX = re.compile(r"(?:LicenseRef-)?[A-Za-z0-9][A-Za-z0-9.+-]{0,62}")
_TAG = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
MAX_TAGS = 16
MAX_METADATA_CHARS = 2_000


class RecordError(ValueError):
    """A record or its metadata is invalid. ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Record:
    """A validated record: normalised fields, canonical bytes and id."""

    kind: str
    fields: dict[str, Any]
    content: bytes  # canonical JSON of ``fields``
    id: str  # SHA-256 hex of ``content``

    def text(self) -> str:
        """All the record's text, for near-duplicate detection and size statistics."""
        return record_text(self.kind, self.fields)


def make_record(kind: str, raw: dict[str, Any]) -> Record:
    """Validate ``raw`` (record fields only) against ``kind`` and build the Record. Raises RecordError."""
    fields = _normalise(kind, raw)
    content = canonical_json(fields)
    return Record(kind, fields, content, hashlib.sha256(content).hexdigest())


def split_row(kind: str, row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a file row into (record fields, metadata fields); unknown fields are an error naming them."""
    allowed = RECORD_FIELDS[kind]
    record, meta = {}, {}
    for key, value in row.items():
        if key in allowed:
            record[key] = value
        elif key in METADATA_FIELDS:
            meta[key] = value
        elif key in EXPORT_FIELDS:
            continue
        else:
            raise RecordError(
                f"unknown field {key!r}: a {kind} record has {', '.join(allowed)}; "
                f"optional metadata: {', '.join(METADATA_FIELDS)}",
                field=key,
            )
    return record, meta


def record_text(kind: str, fields: dict[str, Any]) -> str:
    if kind == "text":
        return str(fields["text"])
    if kind == "instruction":
        return "\n".join(str(fields[k]) for k in ("system", "prompt", "response") if k in fields)
    return "\n".join(str(m["content"]) for m in fields["messages"])


def _normalise(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    if kind == "text":
        _only(raw, ("text",), kind)
        return {"text": _text(raw, "text")}
    if kind == "instruction":
        _only(raw, ("prompt", "response", "system"), kind)
        out = {"prompt": _text(raw, "prompt"), "response": _text(raw, "response")}
        if raw.get("system") not in (None, ""):
            out["system"] = _text(raw, "system")
        return out
    if kind == "chat":
        _only(raw, ("messages",), kind)
        messages = raw.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RecordError("messages must be a non-empty list of {role, content} objects", field="messages")
        out_messages = []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise RecordError(f"{where} must be an object with exactly 'role' and 'content'", field=where)
            if message["role"] not in ROLES:
                raise RecordError(f"{where}.role must be one of {', '.join(ROLES)}, got {message['role']!r}", field=f"{where}.role")
            out_messages.append({"role": message["role"], "content": _text(message, "content", where)})
        if not any(m["role"] == "assistant" for m in out_messages):
            raise RecordError("a chat record needs at least one assistant turn", field="messages")
        return {"messages": out_messages}
    raise RecordError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}", field="kind")


def _only(raw: dict[str, Any], allowed: tuple[str, ...], kind: str) -> None:
    for key in raw:
        if key not in allowed:
            raise RecordError(f"unknown field {key!r}: a {kind} record has {', '.join(allowed)}", field=key)


def _text(raw: dict[str, Any], key: str, where: str | None = None) -> str:
    name = f"{where}.{key}" if where else key
    if key not in raw or raw[key] is None:
        raise RecordError(f"missing field {name!r}", field=name)
    value = raw[key]
    if not isinstance(value, str):
        raise RecordError(f"{name} must be a string, got {type(value).__name__}", field=name)
    if "\x00" in value:
        raise RecordError(f"{name} contains a NUL character (binary data?)", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(f"{name} is not valid UTF-8 text", field=name) from None
    value = unicodedata.normalize("NFC", value)
    if not value.strip():
        raise RecordError(f"{name} is empty", field=name)
    return value


# --- provenance ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    license: str
    source: str
    consent: str
    tags: tuple[str, ...]


def make_provenance(meta: dict[str, Any], defaults: dict[str, Any], allowed_licenses: tuple[str, ...]) -> Provenance:
    """Merge a row's metadata over the file's defaults and validate it against the datanet's licenses."""
    given = lambda d: {k: v for k, v in d.items() if v not in (None, "", ())}  # noqa: E731
    merged = {**given(defaults), **given(meta)}
    license_ = merged.get("license")
    if license_ in (None, ""):
        if len(allowed_licenses) != 1:
            raise RecordError(
                f"no license given: this datanet accepts {', '.join(allowed_licenses)}; pass --license or a 'license' field",
                field="license",
            )
        license_ = allowed_licenses[0]
    if not isinstance(license_, str) or not _SPDX.fullmatch(license_):
        raise RecordError(f"license {license_!r} is not an SPDX identifier (e.g. CC-BY-4.0, MIT)", field="license")
    if license_ not in allowed_licenses:
        raise RecordError(
            f"license {license_} is not accepted by this datanet (accepted: {', '.join(allowed_licenses)})", field="license"
        )
    source = _meta_text(merged.get("source", ""), "source")
    consent = _meta_text(merged.get("consent", ""), "consent")
    return Provenance(license_, source, consent, parse_tags(merged.get("tags", ())))


def parse_tags(value: Any) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise RecordError("tags must be a list or a comma-separated string", field="tags")
    if not all(isinstance(t, str) for t in items):  # str() would turn null into the tag "none", 1 into "1"
        raise RecordError("tags must be strings (a list of strings or a comma-separated string)", field="tags")
    tags = tuple(dict.fromkeys(t.strip().lower() for t in items if t.strip()))
    bad = [t for t in tags if not _TAG.fullmatch(t)]
    if bad:
        raise RecordError(f"tag {bad[0]!r} is not allowed: use lowercase letters, digits, '.', '_', '-'", field="tags")
    if len(tags) > MAX_TAGS:
        raise RecordError(f"at most {MAX_TAGS} tags", field="tags")
    return tags


def _meta_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{name} must be a string", field=name)
    if len(value) > MAX_METADATA_CHARS:
        raise RecordError(f"{name} is longer than {MAX_METADATA_CHARS} characters", field=name)
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; refuse it everywhere so both backends agree
        raise RecordError(f"{name} contains a NUL character", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: refused here, per row, not by the journal for the whole batch
        raise RecordError(f"{name} is not valid UTF-8 text", field=name) from None
    return value.strip()


def check_license_list(licenses: list[str]) -> list[str]:
    """Validate a datanet's accepted licenses; returns the problems (empty when fine)."""
    if not licenses:
        return ["at least one license is required (SPDX identifiers, e.g. CC-BY-4.0)"]
    return [f"license {x!r} is not an SPDX identifier (e.g. CC-BY-4.0, MIT)" for x in licenses if not _SPDX.fullmatch(x)]
