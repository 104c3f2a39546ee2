"""Export a datanet version as JSONL or Parquet, or as a Hugging Face ``datasets.Dataset``.

Each row is the record's own fields (so an export can be contributed elsewhere as is) plus its lineage:
``contribution_id``, ``position`` in the version, ``contributor`` (account id) and ``contributor_name``,
``license``, ``source``, ``consent``, ``tags``. A contribution purged after the version was published keeps its
row with ``purged: true`` and no record fields: the version's root still covers its id.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import and_, select

from ..errors import InvalidInput
from ..store.schema import accounts, contributions, datanet_version_members
from .records import RECORD_FIELDS
from .versions import get_version

if TYPE_CHECKING:
    import datasets

    from .registry import Datanets

EXPORT_FORMATS = ("jsonl", "parquet")


def rows(svc: Datanets, datanet: str, version: int) -> Iterator[dict[str, Any]]:
    """The rows of a version in leaf order."""
    v = get_version(svc, datanet, version)
    dn = svc.get(v.datanet_id)
    m, c = datanet_version_members.c, contributions.c
    query = (
        select(m.position, m.contribution_id, c.contributor_id, accounts.c.name, c.license, c.source, c.consent, c.tags, c.content)
        .join(contributions, and_(c.datanet_id == m.datanet_id, c.id == m.contribution_id))
        .join(accounts, accounts.c.id == c.contributor_id)
        .where(m.datanet_id == dn.id, m.version == v.number)
        .order_by(m.position)
        .execution_options(yield_per=5_000)
    )
    with svc.store.read() as conn, conn.execute(query) as result:
        for r in result:
            # Every row has every field of the kind (None where absent, e.g. an instruction without a system
            # prompt, or a purged record), so all rows share one set of columns.
            record = dict.fromkeys(RECORD_FIELDS[dn.kind])
            if r.content is not None:
                record.update(json.loads(bytes(r.content)))
            yield {
                **record,
                "contribution_id": r.contribution_id,
                "position": int(r.position),
                "contributor": r.contributor_id,
                "contributor_name": r.name,
                "license": r.license,
                "source": r.source,
                "consent": r.consent,
                "tags": json.loads(r.tags),
                "purged": r.content is None,
            }


def export(svc: Datanets, datanet: str, version: int, fmt: str, out: BinaryIO) -> int:
    """Write version ``version`` to ``out`` as ``fmt``; returns the number of rows."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"format {fmt!r} is unknown: choose jsonl or parquet", field="format")
    if fmt == "jsonl":
        count = 0
        for row in rows(svc, datanet, version):
            out.write(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
            count += 1
        return count
    import pyarrow as pa
    import pyarrow.parquet as pq

    # An explicit schema: inferring one from the rows would type an all-empty column as null (tags) and could
    # not be relied on to keep a field that the first rows lack.
    kind = svc.get(datanet).kind
    table = pa.Table.from_pylist(list(rows(svc, datanet, version)), schema=_schema(kind))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    out.write(buffer.getvalue())
    return table.num_rows


def dataset(svc: Datanets, datanet: str, version: int) -> datasets.Dataset:
    """The version as a Hugging Face ``datasets.Dataset`` (what ModelFactory trains on)."""
    import datasets

    return datasets.Dataset.from_list(list(rows(svc, datanet, version)))


def _schema(kind: str) -> Any:
    import pyarrow as pa

    record_types = {
        "text": pa.string(),
        "prompt": pa.string(),
        "response": pa.string(),
        "system": pa.string(),
        "messages": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
    }
    return pa.schema(
        [(name, record_types[name]) for name in RECORD_FIELDS[kind]]
        + [
            ("contribution_id", pa.string()),
            ("position", pa.int64()),
            ("contributor", pa.string()),
            ("contributor_name", pa.string()),
            ("license", pa.string()),
            ("source", pa.string()),
            ("consent", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("purged", pa.bool_()),
        ]
    )
