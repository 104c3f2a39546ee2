"""Reading contribution files: JSONL, CSV, Parquet, and plain .txt/.md.

Each reader yields ``Row(line, fields)`` or ``Row(line, error=...)``: a bad line never stops the file, and
every line number is the one a person sees in an editor (1-based; for Parquet, the 1-based row number).
Problems with the file as a whole (empty, binary, unknown format) raise InvalidInput before anything is read.

Splitting rule for .txt and .md (text datanets only): a record is a paragraph, i.e. a run of non-blank lines;
one or more blank lines separate records. In .md files a fenced code block (``` or ~~~) is never split, even
where it contains blank lines. A record's line number is the line its paragraph starts on.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput

FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".md": "markdown",
}


@dataclass
class Row:
    line: int
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_field: str | None = None


def detect_format(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInput(
            f"{name}: unknown file type {suffix or '(none)'}; use one of {', '.join(sorted(FORMATS))}", field="file"
        )
    return FORMATS[suffix]


def read_rows(data: bytes, name: str, kind: str, max_bytes: int | None = None) -> Iterator[Row]:
    """Rows of a contribution file given as bytes. Raises InvalidInput for whole-file problems.

    ``max_bytes`` bounds what a compressed format (Parquet) may expand to, as declared by its metadata."""
    fmt = detect_format(name)
    if not data.strip():
        raise InvalidInput(f"{name}: the file is empty", field="file")
    if fmt != "parquet" and b"\x00" in data[:65536]:
        raise InvalidInput(f"{name}: this looks like a binary file (it contains NUL bytes), not {fmt} text", field="file")
    if fmt in ("jsonl", "text", "markdown") and data.startswith(b"\xef\xbb\xbf"):
        # A UTF-8 byte order mark (Windows editors write one) is not part of the first record (CSV strips it too).
        data = data[3:]
    if fmt in ("text", "markdown") and kind != "text":
        raise InvalidInput(f"{name}: plain text files can only be contributed to 'text' datanets, this one is '{kind}'", field="file")
    if fmt == "jsonl":
        return _jsonl(data)
    if fmt == "csv":
        return _csv(data, name)
    if fmt == "parquet":
        return _parquet(_open_parquet(data, name, max_bytes), name)
    return _paragraphs(data, markdown=fmt == "markdown")


def _jsonl(data: bytes) -> Iterator[Row]:
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Row(number, error=f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            yield Row(number, error=f"not valid JSON ({getattr(exc, 'msg', exc)} at column {getattr(exc, 'colno', '?')})")
            continue
        except RecursionError:
            yield Row(number, error="not valid JSON (nested too deeply)")
            continue
        if not isinstance(value, dict):
            yield Row(number, error=f"expected a JSON object, got {type(value).__name__}")
            continue
        yield Row(number, value)


def _csv(data: bytes, name: str) -> Iterator[Row]:
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad cell costs one row, not the file.
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    # The csv module refuses fields over 128 KiB by default; records are bounded by max_record_bytes instead.
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise InvalidInput(f"{name}: no CSV header row ({exc})", field="file") from None
    header = [h.strip() for h in header]
    if any(_has_surrogates(h) for h in header) or not all(header) or len(set(header)) != len(header):
        raise InvalidInput(f"{name}: the CSV header must name each column once, in UTF-8", field="file")
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Row(start, error=f"malformed CSV ({exc})")
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            yield Row(line, error=f"has {len(cells)} columns, the header has {len(header)}")
            continue
        if any(_has_surrogates(c) for c in cells):
            yield Row(line, error="not valid UTF-8")
            continue
        row: dict[str, Any] = {}
        for key, cell in zip(header, cells):
            if key == "messages" or key == "tags" and cell.lstrip().startswith("["):
                try:
                    row[key] = json.loads(cell)
                except (ValueError, RecursionError):
                    yield Row(line, error=f"column {key!r} must hold JSON", error_field=key)
                    break
            elif cell != "":
                row[key] = cell
        else:
            yield Row(line, row)


def _open_parquet(data: bytes, name: str, max_bytes: int | None) -> Any:
    """Open a Parquet file and refuse one that would expand beyond ``max_bytes`` (a small, highly compressed
    file must not be able to fill memory). Arrow checks every page against its declared uncompressed size, so
    the metadata's sizes bound what decoding allocates."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        meta = parquet.metadata
        expanded = sum(
            meta.row_group(g).column(c).total_uncompressed_size
            for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)
        )
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"{name}: not a readable Parquet file ({str(exc).splitlines()[0]})", field="file") from None
    if max_bytes is not None and expanded > max_bytes:
        raise InvalidInput(
            f"{name}: the Parquet file expands to {expanded:,} bytes; this datanet accepts up to {max_bytes:,} "
            "(max_file_bytes)",
            field="file",
        )
    return parquet


def _parquet(parquet: Any, name: str) -> Iterator[Row]:
    import pyarrow as pa

    number = 0
    for group in range(parquet.metadata.num_row_groups):  # one row group in memory at a time
        try:
            rows = parquet.read_row_group(group).to_pylist()
        except (pa.ArrowException, OSError, ValueError, OverflowError) as exc:  # e.g. a timestamp beyond Python's range
            raise InvalidInput(
                f"{name}: a column holds values that cannot be read ({str(exc).splitlines()[0]}); records need text columns",
                field="file",
            ) from None
        for row in rows:
            number += 1
            yield Row(number, {k: v for k, v in row.items() if v is not None})


def _paragraphs(data: bytes, *, markdown: bool) -> Iterator[Row]:
    lines = data.split(b"\n")
    block: list[str] = []
    block_start = 0
    in_fence = False
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            if block:
                yield Row(block_start, {"text": "\n".join(block)})
                block = []
            yield Row(number, error=f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
            continue
        if markdown and line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        if line.strip() or in_fence:
            if not block:
                block_start = number
            block.append(line)
        elif block:
            yield Row(block_start, {"text": "\n".join(block)})
            block = []
    if block:
        yield Row(block_start, {"text": "\n".join(block)})


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)
