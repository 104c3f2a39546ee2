"""AttributionReceipt: what one answer owes to which data, in a form anyone can recompute, and the weights policy.

A receipt (format ``royalty.receipt/1``) records the request (hashes of the prompt, the response and its token ids,
token counts), the adapter and its datanet versions (with Merkle roots), the method and every parameter that
produced the numbers (projection fingerprint, damping, index checksums, span parameters, the influence/span mix),
the integer scores per contributor, the top examples, the spans, and the weights. Its bytes are the canonical JSON
of :mod:`royalty.journal.canonical` (sorted keys, no whitespace, no floats: every number is an integer, and
real-valued scores are fixed-point integers or fixed-digit decimal strings), and ``receipt_id`` is ``"rcpt_"`` +
the first 24 hex digits of the SHA-256 of those bytes with ``receipt_id`` left out. ``created_ms`` is the only
field about time.

Weights policy (:func:`weights`): how one answer's data share is divided.

1. Influence. Each training row's score is a cosine with the query gradient: with an in-run index (the default,
   ``inrun.py``) the plain cosine of the query gradient and the example's Adam-scaled share of the training
   updates; with a final-weights index the cosine in the damped Fisher metric. Unit normalisation, so a row with
   a huge gradient (an outlier, junk with high loss) cannot outweigh many ordinary ones. Scores are fixed-point
   integers (``round(cosine × 10^9)``) and only the positive part counts: an example that made the answer less
   likely earns nothing (and is not charged).
2. Duplicates are grouped so that duplication cannot raise pay. A record's contribution id is the SHA-256 of its
   canonical content, so an exact copy has the same id, in any datanet or version; within a datanet, exact copies
   are refused at ingestion and near-duplicates refused or queued for a curator. Across datanets, rows are grouped
   by :func:`near_duplicate_keys`: exact copies and near-duplicates (light edits: case, spacing, a changed word;
   estimated Jaccard of word 3-grams >= 0.8) of an earlier row join its group. A group earns once, its best row's
   score, and is paid to the contributor (and datanet) of its first row in the training order (datanets in the
   adapter's config order, then version position).
3. Span credit (``spans.span_credit``): each verbatim span's surprise (nats) split among the distinct contributions
   containing it (so copies again count once), summed per contributor, fixed point in micro-nats.
4. Mix. ``w_c = α · I_c / Σ I + (1 − α) · S_c / Σ S`` with α = ``influence_bps`` / 10,000, a governed Param. When
   one part is empty the other takes the whole share; when both are empty the weights are empty, and the fee
   split (``ledger.fees.split_fee``) sends the whole contributors' share to the treasury.
5. Parts per million: ``w`` is exact rational arithmetic on the integers above, rounded to integers summing to
   exactly 1,000,000 by largest remainder (ties to the smaller id); zero weights are left out. The same for
   datanets. Sums are additive, so splitting one contributor into several accounts changes the total only by
   rounding.

Everything after the scores is integer or rational arithmetic, so the weights are identical on every platform
whenever the fixed-point scores are.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InvalidInput, VerificationFailed
from ..journal.canonical import canonical_json
from .spans import Span, span_credit

FORMAT = "royalty.receipt/1"
PPM = 1_000_000
BPS = 10_000
SCORE_SCALE = 10**9  # fixed-point influence: units per 1.0 of cosine
SPAN_SCALE = 10**6  # fixed-point span credit: micro-nats
NEAR_DUPLICATE_BP = 8_000  # rows this similar (estimated Jaccard, basis points) are one group: the datanets' default
TIME_FIELDS = ("created_ms",)  # fields about time: taken from the stored receipt when it is recomputed


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReceiptRequest(_Frozen):
    request_id: str | None
    prompt_sha256: str
    response_sha256: str
    response_ids_sha256: str  # SHA-256 of the canonical JSON list of the response's token ids
    prompt_tokens: int
    response_tokens: int
    generated: bool  # the adapter wrote the response (greedy) rather than the caller


class ReceiptAdapter(_Frozen):
    id: str
    name: str
    version: int
    owner: str
    manifest_sha256: str


class ReceiptDatanet(_Frozen):
    slug: str
    id: str
    version: int
    root: str


class InfluenceMethod(_Frozen):
    method: str  # "inrun-adam-cosine" or "preconditioned-cosine" (service.METHODS)
    projection_fingerprint: str
    dim: int
    damping: str | None  # decimal text of the float (receipts hold no floats); None: no preconditioner
    normalisation: str
    index_checksum: str
    rows: int
    step: int
    threads: int
    score_scale: int


class SpanMethod(_Frozen):
    params: dict[str, Any]  # TraceParams with keep_fraction as decimal text
    index_checksum: str
    documents: int
    span_scale: int


class Method(_Frozen):
    influence: InfluenceMethod
    spans: SpanMethod
    influence_bps: int
    grouping: str  # "near_duplicates_bp=8000": exact and near-duplicate rows grouped (near_duplicate_keys)
    top: int


class Weights(_Frozen):
    """Parts per million of the data share: each map sums to exactly 1,000,000, or is empty."""

    contributors: dict[str, int]
    datanets: dict[str, int]


class Scores(_Frozen):
    """The integers the weights are computed from: grouped positive influence per contributor and datanet (units of
    1e-9 cosine), span credit per contributor and datanet (micro-nats)."""

    influence: dict[str, int]
    influence_datanets: dict[str, int]
    spans: dict[str, int]
    spans_datanets: dict[str, int]


class TopExample(_Frozen):
    row: int
    contribution_id: str
    contributor: str
    datanet_id: str
    version: int
    position: int
    score: str  # the cosine, 9 decimals


class SpanContribution(_Frozen):
    contribution_id: str
    contributor: str
    datanet_id: str


class ReceiptSpan(_Frozen):
    start: int
    end: int
    text: str
    count: int
    surprise: str  # nats, 6 decimals
    contributions: list[SpanContribution]


class AttributionReceipt(_Frozen):
    """One answer's attribution (see the module docstring). Build with :meth:`seal`, read with :meth:`parse`."""

    format: str = FORMAT
    receipt_id: str
    created_ms: int
    request: ReceiptRequest
    adapter: ReceiptAdapter
    datanets: list[ReceiptDatanet]
    method: Method
    weights: Weights
    scores: Scores
    top: list[TopExample]
    spans: list[ReceiptSpan]

    @classmethod
    def seal(cls, **fields: Any) -> AttributionReceipt:
        """The receipt of ``fields`` (everything but ``receipt_id``), its id computed from its canonical bytes."""
        body = cls.model_validate({**fields, "format": FORMAT, "receipt_id": "rcpt_"}).body()
        return cls.model_validate({**body, "receipt_id": receipt_id_of(body)})

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, where: str = "receipt") -> AttributionReceipt:
        """A receipt from its JSON object; VerificationFailed naming the first bad field when it is not one."""
        if not isinstance(data, Mapping):
            raise VerificationFailed(f"{where} is not a JSON object", field="receipt")
        if data.get("format") != FORMAT:
            raise VerificationFailed(f"{where} has format {data.get('format')!r}, not {FORMAT}", field="format")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"])
            raise VerificationFailed(f"{where} is damaged at {path}: {first['msg']}", field=path) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def body(self) -> dict[str, Any]:
        """The receipt without ``receipt_id``: what the id hashes."""
        return {k: v for k, v in self.to_dict().items() if k != "receipt_id"}

    def canonical(self) -> bytes:
        """The receipt's canonical JSON bytes (what is stored and whose SHA-256 is journaled)."""
        return canonical_json(self.to_dict())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()


def receipt_id_of(body: Mapping[str, Any]) -> str:
    """``rcpt_`` + the first 24 hex digits of SHA-256 of the canonical JSON of ``body`` (``receipt_id`` excluded)."""
    data = {k: v for k, v in body.items() if k != "receipt_id"}
    return "rcpt_" + hashlib.sha256(canonical_json(data)).hexdigest()[:24]


def first_difference(expected: Any, actual: Any, path: str = "") -> str | None:
    """The path (``weights.contributors.acct_…``, ``top[2].score``) of the first place two JSON values differ, in
    canonical key order, or None when they are equal. ``receipt_id`` is compared last: it changes with any field."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        keys = sorted(set(expected) | set(actual), key=lambda k: (path == "" and k == "receipt_id", k))
        for key in keys:
            sub = f"{path}.{key}" if path else key
            if key not in expected or key not in actual:
                return sub
            found = first_difference(expected[key], actual[key], sub)
            if found is not None:
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        for i, (a, b) in enumerate(zip(expected, actual)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found is not None:
                return found
        return None if len(expected) == len(actual) else f"{path}[{min(len(expected), len(actual))}]"
    if type(expected) is not type(actual) or expected != actual:
        return path or "receipt"
    return None


# --------------------------------------------------------------------------------------------------------------
# the weights policy
# --------------------------------------------------------------------------------------------------------------


def fixed_scores(scores: np.ndarray) -> np.ndarray:
    """Cosine scores [N] float64 → int64 units of 1e-9 (round half to even)."""
    return np.rint(np.asarray(scores, dtype=np.float64) * SCORE_SCALE).astype(np.int64)


def decimal(units: int, scale: int) -> str:
    """Fixed-point ``units / scale`` as exact decimal text (``scale`` a power of ten): 1234, 1000 → ``"1.234"``."""
    digits = len(str(scale)) - 1
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(int(units)), scale)
    return f"{sign}{whole}.{frac:0{digits}d}" if digits else f"{sign}{whole}"


@dataclass(frozen=True)
class RowOwners:
    """Who each index row's credit goes to once duplicates are grouped: ``group[i]`` is the first row with row i's
    contribution id (rows are in training order), and ``contributor``/``datanet`` code each row's account and
    datanet id (indexes into ``contributors``/``datanets``). Built once per index (:meth:`of`)."""

    group: np.ndarray  # [N] int64
    contributor: np.ndarray  # [N] int64
    datanet: np.ndarray  # [N] int64
    contributors: list[str]
    datanets: list[str]

    @classmethod
    def of(cls, contribution_ids: Sequence[str], contributors: Sequence[str], datanets: Sequence[str]) -> RowOwners:
        if not len(contribution_ids) == len(contributors) == len(datanets):
            raise InvalidInput("contribution ids, contributors and datanets must have one entry per row", field="rows")
        first: dict[str, int] = {}
        group = np.fromiter((first.setdefault(c, i) for i, c in enumerate(contribution_ids)), dtype=np.int64,
                            count=len(contribution_ids))
        c_codes, c_names = _codes(contributors)
        d_codes, d_names = _codes(datanets)
        return cls(group, c_codes, d_codes, c_names, d_names)


def near_duplicate_keys(texts: Sequence[str], contribution_ids: Sequence[str], *,
                        threshold_bp: int = NEAR_DUPLICATE_BP) -> list[str]:
    """The grouping key of every row (rows in training order): the contribution id of the earliest row whose
    text this row's duplicates, exactly (the same contribution id) or nearly (estimated Jaccard similarity of
    word 3-grams >= ``threshold_bp``, ``datanet.dedup``'s MinHash, the most similar earlier row when several
    are). A row that duplicates nothing earlier keys itself. Texts without words are grouped by exact content
    only (their signatures say nothing). Deterministic: integer hashing only."""
    from ..datanet.dedup import NearDuplicateIndex, has_words, signature

    if len(texts) != len(contribution_ids):
        raise InvalidInput("texts and contribution ids must have one entry per row", field="rows")
    index = NearDuplicateIndex(threshold_bp)
    group_of: dict[str, str] = {}  # contribution id -> its group's key
    keys = []
    for text, cid in zip(texts, contribution_ids, strict=True):
        if cid not in group_of:
            key = cid
            if has_words(text):
                sig = signature(text)
                match = index.best_match(sig)
                if match is not None:
                    key = group_of[match[0]]
                index.add(cid, sig)
            group_of[cid] = key
        keys.append(group_of[cid])
    return keys


def _codes(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    table: dict[str, int] = {}
    codes = np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int64, count=len(values))
    return codes, list(table)


def grouped_influence(fixed: np.ndarray, owners: RowOwners) -> tuple[dict[str, int], dict[str, int]]:
    """Positive fixed-point influence per contributor and per datanet with duplicates grouped: a group (rows of one
    contribution id) earns its best row's score once, credited to its first row's contributor and datanet."""
    fixed = np.asarray(fixed, dtype=np.int64)
    if fixed.shape != owners.group.shape:
        raise InvalidInput(f"scores must have one entry per row ({owners.group.shape[0]}), got {fixed.shape}",
                           field="scores")
    best = np.zeros_like(fixed)  # [N] per group (indexed by its first row), integers: exact in any order
    positive = np.flatnonzero(fixed > 0)
    np.maximum.at(best, owners.group[positive], fixed[positive])
    groups = np.flatnonzero(best > 0)
    by_contributor = np.zeros(len(owners.contributors), dtype=np.int64)
    by_datanet = np.zeros(len(owners.datanets), dtype=np.int64)
    np.add.at(by_contributor, owners.contributor[groups], best[groups])
    np.add.at(by_datanet, owners.datanet[groups], best[groups])
    return (_positive(owners.contributors, by_contributor), _positive(owners.datanets, by_datanet))


def _positive(names: list[str], sums: np.ndarray) -> dict[str, int]:
    return {name: int(sums[i]) for i, name in sorted(enumerate(names), key=lambda x: x[1]) if sums[i] > 0}


def fixed_span_credit(spans: Iterable[Span], *, by: str) -> dict[str, int]:
    """``spans.span_credit`` per ``by`` ("contributor" or "datanet_id") in micro-nats, zero entries left out."""
    credit = span_credit(spans, by=by)  # type: ignore[arg-type]
    out = {k: round(v * SPAN_SCALE) for k, v in credit.items()}
    return {k: v for k, v in sorted(out.items()) if v > 0}


def mix(influence: Mapping[str, int], spans: Mapping[str, int], influence_bps: int) -> dict[str, Fraction]:
    """Exact shares ``α · I_c/ΣI + (1−α) · S_c/ΣS`` (see the module docstring); empty when both parts are empty."""
    if not 0 <= influence_bps <= BPS:
        raise InvalidInput(f"influence_bps must be in [0, {BPS}] (got {influence_bps})", field="influence_bps")
    total_i, total_s = sum(influence.values()), sum(spans.values())
    if total_i <= 0 and total_s <= 0:
        return {}
    alpha = Fraction(influence_bps, BPS)
    if total_i <= 0:
        alpha = Fraction(0)
    elif total_s <= 0:
        alpha = Fraction(1)
    out: dict[str, Fraction] = {}
    for key in sorted(set(influence) | set(spans)):
        w = Fraction(0)
        if total_i > 0:
            w += alpha * Fraction(influence.get(key, 0), total_i)
        if total_s > 0:
            w += (1 - alpha) * Fraction(spans.get(key, 0), total_s)
        if w > 0:
            out[key] = w
    return out


def to_ppm(shares: Mapping[str, Fraction]) -> dict[str, int]:
    """Exact shares summing to 1 → integers summing to exactly 1,000,000 (largest remainder, ties to the smaller
    id), zeros left out; {} stays {}."""
    if not shares:
        return {}
    total = sum(shares.values())
    scaled = {k: v / total * PPM for k, v in shares.items()}
    floors = {k: math.floor(v) for k, v in scaled.items()}
    left = PPM - sum(floors.values())
    for key in sorted(scaled, key=lambda k: (-(scaled[k] - floors[k]), k))[:left]:
        floors[key] += 1
    return {k: v for k, v in sorted(floors.items()) if v > 0}


def weights(influence: Mapping[str, int], spans: Mapping[str, int], influence_bps: int) -> dict[str, int]:
    """The policy end to end for one key space (contributors or datanets): parts per million."""
    return to_ppm(mix(influence, spans, influence_bps))
