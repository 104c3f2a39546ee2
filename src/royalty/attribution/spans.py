"""Span tracing: the stretches of a response that the training text contains verbatim (OLMoTrace-style).

Index. All training documents of a datanet version are concatenated into one *corpus* with a separator after each
document, and a suffix array over it (libdivsufsort through ``pydivsufsort``) lists every suffix in sorted order, so
the suffixes that start with a pattern form one contiguous run of the array, found by binary search. Two kinds:

- ``text``: documents are ``str``; the corpus is their UTF-8 bytes, separated by 0xFF (a byte UTF-8 never uses, so
  no match can run across a document boundary). A *unit* is a byte; response positions are ``str`` offsets.
- ``tokens``: documents are token ids; the corpus stores each id as a big-endian u16 (u32 when an id is 65,535 or
  more), so byte order is id order and the byte suffix array, kept at id boundaries, sorts token suffixes. The
  separator is the width's largest value (an id equal to it is refused). A unit is a token; positions are token
  indices.

Files (in one directory, written to a temporary sibling and renamed into place, so a reader never sees half an
index): ``corpus.bin``, ``sa.bin`` (little-endian int32 byte offsets; int64 past 2**31 bytes), ``docs.bin`` (int64
start offset of every document, plus the corpus length), ``docs.jsonl`` (one :class:`DocMeta` a line),
``unigram.bin`` (int64 count of every unit value, separators excluded) and ``manifest.json``: format, kind, counts
and the size and SHA-256 of every file, sealed by a SHA-256 of the manifest itself. :meth:`SpanIndex.open` checks
the seal, the sizes and the small files' hashes (``verify="fast"``) or every file's hash (``"full"``) and names the
damaged file.

Tracing (:meth:`SpanIndex.trace`), for a response of L candidate starts (word starts in text: a non-whitespace byte
at the start or after ASCII whitespace; every token in token indexes):

1. From each start, the longest prefix of the rest of the response that occurs in the corpus: one binary search
   for the rest of the response, whose longest occurring prefix is the longer common prefix with its two sorted
   neighbours. In text indexes it is cut back to the last word end it covers (no partial trailing word).
2. A candidate is dropped when an earlier start's candidate contains it. Because every suffix of an occurring
   string occurs too, candidate ends never decrease with the start, so a candidate survives iff its end is past
   the previous candidate's end.
3. Survivors shorter than ``min_length`` units or occurring more than ``max_count`` times are dropped; counts are
   exact (overlapping occurrences count, as they are separate suffixes).
4. The rest are ranked by surprise, -Σ log p(unit) under the corpus's unigram distribution, in nats (longer and
   rarer ranks higher; ties by position), and the top ⌈keep_fraction · L⌉ are kept, returned in response order.
5. Each kept span lists the documents of up to ``max_documents`` of its occurrences (a sample seeded by the seed
   and the span's content when there are more, so the same span always lists the same documents).

Credit (:func:`span_credit`): each span's surprise is split equally among the distinct contributions whose
documents contain it, then summed per contributor (or datanet, or contribution). Common phrases are filtered by
``max_count`` and earn little surprise; duplicated documents of one contribution count once, but the same text in
two contributions splits the credit, so exact-duplicate grouping must happen before indexing or before paying.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import mmap
import os
import random
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import Conflict, InvalidInput, NotFound, VerificationFailed

FORMAT = "royalty.spans/1"
FILES = ("corpus.bin", "sa.bin", "docs.bin", "docs.jsonl", "unigram.bin")
_BULK = ("corpus.bin", "sa.bin")  # ~5 bytes per unit: hashed only by verify="full"
_TEXT_SEPARATOR = 0xFF
_ASCII_SPACE = frozenset(b" \t\n\r\x0b\x0c")
_DEFAULT_MIN_LENGTH = {"text": 20, "tokens": 5}  # about four words either way


@dataclass(frozen=True)
class DocMeta:
    """Where a training document came from."""

    contribution_id: str
    contributor: str  # account id
    datanet_id: str
    datanet: str  # slug
    version: int
    position: int  # leaf position in the datanet version


@dataclass(frozen=True)
class SpanDocument:
    """One training document containing a span; ``offset`` is where the span starts in it (str offset in text
    indexes, token index in token indexes)."""

    doc: int  # document number in the index (order of SpanIndex.build's input)
    offset: int
    meta: DocMeta


@dataclass(frozen=True)
class Span:
    """A maximal, rare stretch of the response found verbatim in the training text.

    ``start``/``end``: half-open position in the response (str offsets in text indexes, token indices in token
    indexes); ``text`` is the span's text (None in token indexes); ``length`` in units (bytes or tokens);
    ``count``: exact number of occurrences in the corpus; ``surprise``: -Σ log unigram p of its units (nats).
    """

    start: int
    end: int
    text: str | None
    length: int
    count: int
    surprise: float
    documents: tuple[SpanDocument, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TraceParams:
    """Tracing knobs (see the module docstring). ``min_length`` is in units; None means 20 bytes for text indexes
    and 5 tokens for token indexes."""

    min_length: int | None = None
    max_count: int = 10
    keep_fraction: float = 0.05
    max_documents: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_length is not None and self.min_length < 1:
            raise InvalidInput(f"min_length must be >= 1 (got {self.min_length})", field="min_length")
        if self.max_count < 1:
            raise InvalidInput(f"max_count must be >= 1 (got {self.max_count})", field="max_count")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise InvalidInput(f"keep_fraction must be in (0, 1] (got {self.keep_fraction})", field="keep_fraction")
        if self.max_documents < 1:
            raise InvalidInput(f"max_documents must be >= 1 (got {self.max_documents})", field="max_documents")


Kind = Literal["text", "tokens"]


class SpanIndex:
    """A suffix-array index over training documents; build with :meth:`build`, load with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.kind: Kind = manifest["kind"]
        self.width: int = manifest["width"]  # bytes per unit
        self.separator: int = manifest["separator"]
        with open(path / "corpus.bin", "rb") as f:
            # mmap refuses empty files; a corpus always holds at least one separator
            self._corpus = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        with open(path / "sa.bin", "rb") as f:
            self._sa_map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # memoryview indexing yields Python ints: much faster than numpy scalars inside bisect's key
        self._sa = memoryview(self._sa_map).cast("i" if manifest["sa_dtype"] == "<i4" else "q")
        self._doc_starts = np.fromfile(path / "docs.bin", dtype="<i8")  # [documents + 1]
        self._metas = [DocMeta(**json.loads(line)) for line in (path / "docs.jsonl").read_text("utf-8").splitlines()]
        unigram = np.fromfile(path / "unigram.bin", dtype="<i8")
        with np.errstate(divide="ignore"):
            # -log p per unit value; a value absent from the corpus is never inside a span
            self._neg_logp = -np.log(unigram / max(int(unigram.sum()), 1))

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, docs: Iterable[tuple[DocMeta, str | Sequence[int]]], out_dir: str | Path) -> SpanIndex:
        """Index ``docs`` (all text, or all token ids) into the new directory ``out_dir`` and open it.

        Raises InvalidInput when there are no documents, text and token ids are mixed, or a token id is negative
        or too large (>= 2**32 - 1); Conflict when ``out_dir`` exists (indexes are immutable).
        """
        out = Path(out_dir)
        if out.exists():
            raise Conflict(f"{out} already exists; span indexes are immutable: choose a new directory",
                           field="out_dir")
        metas: list[DocMeta] = []
        contents: list[str | Sequence[int]] = []
        for meta, content in docs:
            metas.append(meta)
            contents.append(content)
        if not contents:
            raise InvalidInput("no documents to index", field="docs")
        if all(isinstance(c, str) for c in contents):
            kind: Kind = "text"
            corpus, width, separator = _text_corpus(contents)  # type: ignore[arg-type]
        elif not any(isinstance(c, str) for c in contents):
            kind = "tokens"
            corpus, width, separator = _token_corpus(contents)  # type: ignore[arg-type]
        else:
            raise InvalidInput("documents mix text and token ids; index one kind", field="docs")

        n = len(corpus.data)
        sa = _suffix_array(corpus.data)
        if width > 1:
            sa = sa[sa % width == 0]  # suffixes at unit boundaries only
        sa_dtype = "<i4" if n < 2**31 else "<i8"
        units = corpus.units
        unigram = np.bincount(units[units != separator].astype(np.int64), minlength=256 if kind == "text" else 0)

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            (tmp / "corpus.bin").write_bytes(corpus.data)
            sa.astype(sa_dtype).tofile(tmp / "sa.bin")
            corpus.starts.astype("<i8").tofile(tmp / "docs.bin")
            with open(tmp / "docs.jsonl", "w", encoding="utf-8") as f:
                for meta in metas:
                    f.write(json.dumps(asdict(meta), sort_keys=True, separators=(",", ":")) + "\n")
            unigram.astype("<i8").tofile(tmp / "unigram.bin")
            manifest: dict[str, Any] = {
                "format": FORMAT, "kind": kind, "width": width, "separator": separator, "sa_dtype": sa_dtype,
                "documents": len(metas), "units": int(len(units) - len(metas)),
                "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": _file_sha256(tmp / name)}
                          for name in FILES},
            }
            manifest["checksum"] = _manifest_checksum(manifest)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", "utf-8")
            for name in (*FILES, "manifest.json"):
                _fsync(tmp / name)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(out, manifest)

    @classmethod
    def open(cls, path: str | Path, *, verify: Literal["fast", "full"] = "fast") -> SpanIndex:
        """Open an index. ``fast`` checks the manifest's seal, every file's size and the SHA-256 of the small files
        (document offsets, metadata, unigram counts); ``full`` also hashes the corpus and the suffix array.
        Raises NotFound without a manifest, VerificationFailed naming the damaged file."""
        root = Path(path)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise NotFound(f"no span index at {root} (manifest.json missing); build it first", field="path")
        try:
            manifest = json.loads(manifest_path.read_text("utf-8"))
            sealed = manifest.get("checksum") == _manifest_checksum(manifest)
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
            sealed = False
        if not sealed:
            raise VerificationFailed(f"{manifest_path}: manifest checksum mismatch; rebuild the span index",
                                     field="manifest.json")
        if manifest.get("format") != FORMAT:
            raise VerificationFailed(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}",
                                     field="manifest.json")
        for name in FILES:
            expect = manifest["files"][name]
            file = root / name
            if not file.is_file() or file.stat().st_size != expect["bytes"]:
                raise VerificationFailed(f"{file}: missing or wrong size; rebuild the span index", field=name)
            if (verify == "full" or name not in _BULK) and _file_sha256(file) != expect["sha256"]:
                raise VerificationFailed(f"{file}: SHA-256 mismatch; rebuild the span index", field=name)
        return cls(root, manifest)

    # ------------------------------------------------------------------------------------------------ queries

    @property
    def documents(self) -> int:
        return int(self.manifest["documents"])

    @property
    def units(self) -> int:
        """Units (bytes or tokens) of all documents, separators excluded."""
        return int(self.manifest["units"])

    @property
    def nbytes(self) -> int:
        """Bytes on disk, manifest included."""
        return sum(f["bytes"] for f in self.manifest["files"].values()) + (self.path / "manifest.json").stat().st_size

    def document_text(self, doc: int) -> str:
        """The text of document ``doc`` (a text index; documents in the order they were built)."""
        if self.kind != "text":
            raise InvalidInput("a token index holds token ids, not text", field="kind")
        if not 0 <= doc < self.documents:
            raise InvalidInput(f"document {doc} is not in this index ({self.documents} documents)", field="doc")
        begin, end = int(self._doc_starts[doc]), int(self._doc_starts[doc + 1]) - 1  # the separator byte ends it
        return self._corpus[begin:end].decode("utf-8")

    def count(self, pattern: str | Sequence[int]) -> int:
        """Exact number of occurrences of ``pattern`` (text or ids, as the index) in the documents."""
        encoded, _ = self._encode(pattern)
        lo, hi = self._range(encoded)
        return hi - lo

    def trace(self, response: str | Sequence[int], params: TraceParams | None = None) -> list[Span]:
        """The response's maximal rare spans found in the training text, best ⌈keep_fraction · L⌉, in response
        order. Deterministic: the same index, response and params give the same list."""
        p = params or TraceParams()
        min_length = p.min_length if p.min_length is not None else _DEFAULT_MIN_LENGTH[self.kind]
        pattern, limits = self._encode(response)
        w = self.width
        n_units = len(pattern) // w
        if self.kind == "text":
            starts = [i for i in range(n_units) if pattern[i] not in _ASCII_SPACE
                      and (i == 0 or pattern[i - 1] in _ASCII_SPACE)]
            word_ends = [e for e in range(1, n_units + 1) if pattern[e - 1] not in _ASCII_SPACE
                         and (e == n_units or pattern[e] in _ASCII_SPACE)]
        else:
            starts = list(range(n_units))
            word_ends = []

        found: list[tuple[int, int]] = []  # (start, end) in units, maximal candidates
        last_end = 0
        for s in starts:
            longest = self._longest_prefix(pattern[s * w: limits[s] * w]) // w
            e = s + longest
            if self.kind == "text":
                k = bisect.bisect_right(word_ends, e) - 1  # last word end <= e
                e = word_ends[k] if k >= 0 else 0
            if e > s and e > last_end:
                found.append((s, e))
            last_end = max(last_end, e)

        ranked: list[tuple[float, int, int, int, int]] = []  # (-surprise, start, end, lo, hi)
        for s, e in found:
            if e - s < min_length:
                continue
            lo, hi = self._range(pattern[s * w: e * w])
            if hi - lo > p.max_count:
                continue
            units = np.frombuffer(pattern[s * w: e * w], dtype=_unit_dtype(w))
            surprise = math.fsum(self._neg_logp[units].tolist())
            ranked.append((-surprise, s, e, lo, hi))
        ranked.sort()
        keep = sorted(ranked[: math.ceil(p.keep_fraction * len(starts))], key=lambda r: r[1])
        return [self._span(response, pattern, s, e, lo, hi, -neg, p) for neg, s, e, lo, hi in keep]

    # ------------------------------------------------------------------------------------------------ internals

    def _encode(self, response: str | Sequence[int]) -> tuple[bytes, list[int]]:
        """The response as corpus bytes, and for every unit the first unit index a match from it cannot pass
        (a token id the corpus cannot hold ends every match before it)."""
        if self.kind == "text":
            if not isinstance(response, str):
                raise InvalidInput("this span index holds text: pass the response as a string", field="response")
            data = response.encode("utf-8", errors="strict")
            return data, [len(data)] * len(data)
        if isinstance(response, str):
            raise InvalidInput("this span index holds token ids: pass the response as a list of ids",
                               field="response")
        ids = [int(t) for t in response]
        limits = [0] * len(ids)
        stop = len(ids)
        for i in range(len(ids) - 1, -1, -1):
            if not 0 <= ids[i] < self.separator:
                stop = i
            limits[i] = stop
        safe = np.array([t if 0 <= t < self.separator else 0 for t in ids], dtype=_unit_dtype(self.width))
        return safe.tobytes(), limits

    def _suffix(self, j: int, length: int) -> bytes:
        start = self._sa[j]
        return self._corpus[start: start + length]

    def _range(self, pattern: bytes) -> tuple[int, int]:
        """[lo, hi): the suffix-array rows whose suffix starts with ``pattern``."""
        m = len(pattern)
        n = len(self._sa)
        lo = bisect.bisect_left(range(n), pattern, key=lambda j: self._suffix(j, m))
        hi = bisect.bisect_right(range(n), pattern, lo=lo, key=lambda j: self._suffix(j, m))
        return lo, hi

    def _longest_prefix(self, pattern: bytes) -> int:
        """Length in bytes (a multiple of the width) of the longest prefix of ``pattern`` found in the corpus: the
        longer common prefix with the suffixes sorted just before and after it."""
        m = len(pattern)
        if m == 0:
            return 0
        n = len(self._sa)
        pos = bisect.bisect_left(range(n), pattern, key=lambda j: self._suffix(j, m))
        best = 0
        for j in (pos - 1, pos):
            if 0 <= j < n:
                best = max(best, _common_prefix(pattern, self._suffix(j, m)))
        return best - best % self.width

    def _span(self, response: str | Sequence[int], pattern: bytes, s: int, e: int, lo: int, hi: int,
              surprise: float, p: TraceParams) -> Span:
        w = self.width
        positions = sorted(self._sa[j] for j in range(lo, hi))
        if len(positions) > p.max_documents:
            digest = hashlib.sha256(p.seed.to_bytes(8, "little", signed=True) + pattern[s * w: e * w]).digest()
            positions = sorted(random.Random(digest).sample(positions, p.max_documents))
        documents: list[SpanDocument] = []
        for pos in positions:
            doc = int(np.searchsorted(self._doc_starts, pos, side="right")) - 1
            if documents and documents[-1].doc == doc:
                continue  # a second occurrence in the same document
            begin = int(self._doc_starts[doc])
            if self.kind == "text":
                offset = len(self._corpus[begin:pos].decode("utf-8"))
            else:
                offset = (pos - begin) // w
            documents.append(SpanDocument(doc=doc, offset=offset, meta=self._metas[doc]))
        if self.kind == "text":
            assert isinstance(response, str)
            # starts and ends sit next to ASCII whitespace or the ends, so they are character boundaries
            start = len(pattern[:s].decode("utf-8"))
            text = pattern[s:e].decode("utf-8")
            return Span(start, start + len(text), text, e - s, hi - lo, surprise, tuple(documents))
        return Span(s, e, None, e - s, hi - lo, surprise, tuple(documents))


CreditKey = Literal["contributor", "datanet_id", "contribution_id"]


def span_credit(spans: Iterable[Span], *, by: CreditKey = "contributor") -> dict[str, float]:
    """Surprise-weighted span credit: each span's surprise split equally among the distinct contributions of its
    documents, summed per ``by`` (contributor account, datanet id or contribution id). Keys sorted; sums in
    float64 with exact rounding (``math.fsum``), so the result does not depend on summation order."""
    parts: dict[str, list[float]] = {}
    for span in spans:
        owners: dict[str, DocMeta] = {}
        for d in span.documents:
            owners.setdefault(d.meta.contribution_id, d.meta)
        for meta in owners.values():
            parts.setdefault(getattr(meta, by), []).append(span.surprise / len(owners))
    return {key: math.fsum(parts[key]) for key in sorted(parts)}


# ---------------------------------------------------------------------------------------------------- helpers


@dataclass
class _Corpus:
    data: bytes  # what corpus.bin holds
    units: np.ndarray  # [units + documents] the same, one entry per unit
    starts: np.ndarray  # [documents + 1] byte offset of each document, then the total


def _text_corpus(texts: list[str]) -> tuple[_Corpus, int, int]:
    parts: list[bytes] = []
    starts = [0]
    for i, text in enumerate(texts):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"document {i} is not valid Unicode ({exc.reason}); clean the text",
                               field="docs") from None
        parts.append(data + bytes([_TEXT_SEPARATOR]))
        starts.append(starts[-1] + len(parts[-1]))
    data = b"".join(parts)
    return _Corpus(data, np.frombuffer(data, dtype=np.uint8), np.array(starts, dtype=np.int64)), 1, _TEXT_SEPARATOR


def _token_corpus(docs: list[Sequence[int]]) -> tuple[_Corpus, int, int]:
    arrays = [np.asarray(d, dtype=np.int64).reshape(-1) for d in docs]
    top = max((int(a.max()) for a in arrays if a.size), default=0)
    low = min((int(a.min()) for a in arrays if a.size), default=0)
    if low < 0 or top >= 2**32 - 1:
        raise InvalidInput(f"token ids must be in [0, 2**32 - 1) (got {low if low < 0 else top})", field="docs")
    width = 2 if top < 2**16 - 1 else 4
    separator = 2 ** (8 * width) - 1
    units = np.concatenate([np.append(a, separator) for a in arrays]).astype(_unit_dtype(width))
    starts = np.cumsum([0] + [(len(a) + 1) * width for a in arrays], dtype=np.int64)
    return _Corpus(units.tobytes(), units, starts), width, separator


def _unit_dtype(width: int) -> str:
    return {1: "u1", 2: ">u2", 4: ">u4"}[width]


def _suffix_array(corpus: bytes) -> np.ndarray:
    """[len(corpus)] start offsets of the corpus's byte suffixes in sorted order."""
    # imported here: only building needs the C library; opening and tracing do not
    from pydivsufsort import divsufsort

    return np.asarray(divsufsort(corpus, force64=len(corpus) >= 2**31))


def _common_prefix(a: bytes, b: bytes) -> int:
    k = min(len(a), len(b))
    if a[:k] == b[:k]:
        return k
    diff = np.frombuffer(a[:k], dtype=np.uint8) != np.frombuffer(b[:k], dtype=np.uint8)
    return int(np.argmax(diff))


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
