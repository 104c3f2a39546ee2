"""Span tracing (royalty.attribution.spans) against a brute-force reference on random small corpora: every span
occurs with its exact count, is maximal, and maps to the right documents; plus integrity and determinism."""

from __future__ import annotations

import hashlib
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from royalty.attribution.spans import (
    DocMeta,
    Span,
    SpanDocument,
    SpanIndex,
    TraceParams,
    span_credit,
)
from royalty.errors import Conflict, InvalidInput, NotFound, VerificationFailed

WORDS = ["ab", "ba", "abc", "c", "bb", "a", "cab", "é", "üb"]
SPACE = b" \t\n\r\x0b\x0c"


def meta(i: int, contributors: int = 3) -> DocMeta:
    return DocMeta(contribution_id=f"c{i}", contributor=f"acct{i % contributors}", datanet_id=f"dn{i % 2}",
                   datanet=f"net{i % 2}", version=1, position=i)


def random_text_corpus(rng: random.Random, docs: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 25))) for _ in range(docs)]


def random_response(rng: random.Random, corpus: list[str]) -> str:
    """Pieces copied from the corpus (word-aligned or not) mixed with random words."""
    pieces = []
    for _ in range(rng.randint(1, 6)):
        doc = rng.choice(corpus)
        if doc and rng.random() < 0.7:
            a = rng.randrange(len(doc))
            pieces.append(doc[a: a + rng.randint(1, 40)])
        else:
            pieces.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))))
    return rng.choice([" ", "  ", "\n"]).join(pieces)


# ------------------------------------------------------------------------------------------- brute force


def occurrences(docs: list[bytes], pattern: bytes) -> list[tuple[int, int]]:
    """Every (doc, byte offset) where ``pattern`` starts, overlapping occurrences included."""
    found = []
    for d, data in enumerate(docs):
        at = data.find(pattern)
        while at >= 0:
            found.append((d, at))
            at = data.find(pattern, at + 1)
    return found


def reference_text(corpus: list[str], response: str, p: TraceParams) -> list[tuple[int, int, int, float, set[int]]]:
    """(start, end, count, surprise, documents) per span in str offsets, by exhaustive search."""
    docs = [t.encode() for t in corpus]
    r = response.encode()
    n = len(r)
    starts = [i for i in range(n) if r[i] not in SPACE and (i == 0 or r[i - 1] in SPACE)]
    ends = [e for e in range(1, n + 1) if r[e - 1] not in SPACE and (e == n or r[e] in SPACE)]
    candidates = []
    for s in starts:
        occurring = [e for e in ends if e > s and occurrences(docs, r[s:e])]
        if occurring:
            candidates.append((s, max(occurring)))
    maximal = [(s, e) for s, e in candidates
               if not any((s2, e2) != (s, e) and s2 <= s and e <= e2 for s2, e2 in candidates)]
    unigram = Counter(b"".join(docs))
    total = sum(unigram.values())
    spans = []
    for s, e in maximal:
        occ = occurrences(docs, r[s:e])
        if e - s < (p.min_length or 20) or len(occ) > p.max_count:
            continue
        surprise = math.fsum(-math.log(unigram[b] / total) for b in r[s:e])
        spans.append((s, e, len(occ), surprise, {d for d, _ in occ}))
    spans.sort(key=lambda x: (-x[3], x[0]))
    kept = sorted(spans[: math.ceil(p.keep_fraction * len(starts))])
    return [(len(r[:s].decode()), len(r[:e].decode()), c, sup, ds) for s, e, c, sup, ds in kept]


def token_occurrences(docs: list[list[int]], pattern: list[int]) -> list[tuple[int, int]]:
    m = len(pattern)
    return [(d, i) for d, ids in enumerate(docs) for i in range(len(ids) - m + 1) if ids[i: i + m] == pattern]


def reference_tokens(docs: list[list[int]], response: list[int], p: TraceParams) -> list[tuple[int, int, int]]:
    n = len(response)
    candidates = []
    for s in range(n):
        occurring = [e for e in range(s + 1, n + 1) if token_occurrences(docs, response[s:e])]
        if occurring:
            candidates.append((s, max(occurring)))
    maximal = [(s, e) for s, e in candidates
               if not any((s2, e2) != (s, e) and s2 <= s and e <= e2 for s2, e2 in candidates)]
    unigram = Counter(t for ids in docs for t in ids)
    total = sum(unigram.values())
    spans = []
    for s, e in maximal:
        count = len(token_occurrences(docs, response[s:e]))
        if e - s >= (p.min_length or 5) and count <= p.max_count:
            surprise = math.fsum(-math.log(unigram[t] / total) for t in response[s:e])
            spans.append((-surprise, s, e, count))
    spans.sort()
    return sorted((s, e, c) for _, s, e, c in spans[: math.ceil(p.keep_fraction * n)])


# ------------------------------------------------------------------------------------------- tracing


@pytest.mark.parametrize("seed", range(6))
def test_text_trace_matches_brute_force(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    corpus = random_text_corpus(rng, rng.randint(1, 12))
    index = SpanIndex.build([(meta(i), t) for i, t in enumerate(corpus)], tmp_path / "ix")
    for trial in range(15):
        response = random_response(rng, corpus)
        params = TraceParams(min_length=rng.choice([1, 3, 6]), max_count=rng.choice([1, 3, 50]),
                             keep_fraction=rng.choice([0.2, 0.5, 1.0]), max_documents=50)
        spans = index.trace(response, params)
        expected = reference_text(corpus, response, params)
        got = [(s.start, s.end, s.count, {d.doc for d in s.documents}) for s in spans]
        assert got == [(s, e, c, ds) for s, e, c, _, ds in expected], (trial, response)
        for span, (*_, surprise, _) in zip(spans, expected, strict=True):
            assert span.surprise == pytest.approx(surprise, rel=1e-12)
            assert span.text == response[span.start: span.end]
            assert span.length == len(span.text.encode())
            # every listed document holds the span where it says, and carries that document's metadata
            for d in span.documents:
                assert corpus[d.doc][d.offset: d.offset + len(span.text)] == span.text
                assert d.meta == meta(d.doc)
            assert index.count(span.text) == span.count


@pytest.mark.parametrize("seed", range(4))
def test_token_trace_matches_brute_force(tmp_path: Path, seed: int) -> None:
    rng = random.Random(100 + seed)
    vocab = rng.choice([4, 8, 70_000])  # 70,000 forces the 4-byte width
    docs = [[rng.randrange(vocab) for _ in range(rng.randint(0, 30))] for _ in range(rng.randint(1, 8))]
    index = SpanIndex.build([(meta(i), ids) for i, ids in enumerate(docs)], tmp_path / "ix")
    assert index.width == (4 if vocab > 65_535 else 2)
    for _ in range(10):
        response = []
        for _ in range(rng.randint(1, 4)):
            doc = rng.choice(docs)
            a = rng.randrange(len(doc) + 1)
            response += doc[a: a + rng.randint(1, 12)] if rng.random() < 0.7 else [rng.randrange(vocab + 2)]
        params = TraceParams(min_length=rng.choice([1, 2, 4]), max_count=rng.choice([1, 3, 50]),
                             keep_fraction=rng.choice([0.1, 1.0]), max_documents=50)
        spans = index.trace(response, params)
        assert [(s.start, s.end, s.count) for s in spans] == reference_tokens(docs, response, params)
        for span in spans:
            assert span.text is None
            assert {d.doc for d in span.documents} == {d for d, _ in token_occurrences(docs, response[span.start:
                                                                                                        span.end])}
            for d in span.documents:
                assert docs[d.doc][d.offset: d.offset + span.length] == response[span.start: span.end]


def test_a_match_never_crosses_a_document_boundary(tmp_path: Path) -> None:
    index = SpanIndex.build([(meta(0), "alpha beta"), (meta(1), "gamma delta")], tmp_path / "ix")
    spans = index.trace("alpha beta gamma delta", TraceParams(min_length=1, keep_fraction=1.0))
    assert [s.text for s in spans] == ["alpha beta", "gamma delta"]
    assert index.count("beta gamma") == 0
    tokens = SpanIndex.build([(meta(0), [1, 2]), (meta(1), [3, 4])], tmp_path / "tk")
    # 65535 is the u16 separator: as a response token it must match nothing, not the boundary
    spans = tokens.trace([1, 2, 65535, 3, 4], TraceParams(min_length=1, keep_fraction=1.0))
    assert [(s.start, s.end) for s in spans] == [(0, 2), (3, 5)]


def test_spans_keep_the_rarest_and_longest_and_map_to_contributions(tmp_path: Path) -> None:
    corpus = ["the capital of Zorbia is Quellmarsh, founded in 1203 by river traders",
              "bananas grow in bunches on large herbaceous plants",
              "the cat sat on the mat", "the cat sat on the mat", "the cat sat on the mat"]
    index = SpanIndex.build([(meta(i), t) for i, t in enumerate(corpus)], tmp_path / "ix")
    response = ("I read that the capital of Zorbia is Quellmarsh, founded in 1203 by river traders, and that "
                "bananas grow in bunches on large herbaceous plants while the cat sat on the mat")
    everything = index.trace(response, TraceParams(keep_fraction=1.0, max_count=2))
    assert [s.text for s in everything] == ["the capital of Zorbia is Quellmarsh, founded in 1203 by river",
                                            "bananas grow in bunches on large herbaceous plants"]
    # "the cat sat on the mat" occurs 3 times > max_count=2; with max_count=10 it is found, in 3 documents
    common = index.trace(response, TraceParams(keep_fraction=1.0))
    cat = next(s for s in common if s.text == "the cat sat on the mat")
    assert cat.count == 3 and [d.doc for d in cat.documents] == [2, 3, 4]
    # a budget of one span keeps the most surprising one
    top = index.trace(response, TraceParams(keep_fraction=0.01))  # ⌈0.01 · 31 words⌉ = 1
    assert len(top) == 1 and top[0].text.startswith("the capital of Zorbia")


def test_document_sample_is_seeded_and_deterministic(tmp_path: Path) -> None:
    corpus = [f"doc {i}: the shared sentence appears here" for i in range(30)]
    index = SpanIndex.build([(meta(i), t) for i, t in enumerate(corpus)], tmp_path / "ix")
    params = TraceParams(min_length=5, max_count=100, max_documents=4, keep_fraction=1.0, seed=7)
    first = index.trace("so the shared sentence appears here", params)
    assert len(first) == 1 and first[0].count == 30 and len(first[0].documents) == 4
    assert index.trace("so the shared sentence appears here", params) == first
    docs = {tuple(d.doc for d in index.trace("so the shared sentence appears here",
                                             TraceParams(min_length=5, max_count=100, max_documents=4, seed=s))[0]
                  .documents) for s in range(10)}
    assert len(docs) > 1  # the seed changes the sample


def test_build_and_trace_are_deterministic_across_processes(tmp_path: Path) -> None:
    rng = random.Random(5)
    corpus = random_text_corpus(rng, 20)
    docs = [(meta(i), t) for i, t in enumerate(corpus)]
    a, b = SpanIndex.build(docs, tmp_path / "a"), SpanIndex.build(docs, tmp_path / "b")
    for name in ("manifest.json", "corpus.bin", "sa.bin", "docs.bin", "docs.jsonl", "unigram.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    response = random_response(rng, corpus) + " " + corpus[3]
    params = TraceParams(min_length=3, keep_fraction=1.0)
    here = repr([s.to_dict() for s in a.trace(response, params)])
    assert here == repr([s.to_dict() for s in b.trace(response, params)])
    code = ("import sys; from royalty.attribution.spans import SpanIndex, TraceParams; "
            "print(repr([s.to_dict() for s in SpanIndex.open(sys.argv[1], verify='full')"
            ".trace(sys.argv[2], TraceParams(min_length=3, keep_fraction=1.0))]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), response], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == here and "'count'" in here


# ------------------------------------------------------------------------------------------- credit


def span(surprise: float, *metas: DocMeta) -> Span:
    return Span(0, 1, "x", 1, len(metas), surprise, tuple(SpanDocument(m.position, 0, m) for m in metas))


def test_span_credit_splits_by_contribution_and_weights_by_surprise() -> None:
    a0, a1, b = meta(0), meta(3), meta(1)  # contributors acct0, acct0, acct1
    twice = DocMeta(**{**a0.__dict__, "position": 9})  # the same contribution in another document
    spans = [span(6.0, a0, b), span(3.0, a0, twice), span(4.0, a1, b)]
    assert span_credit(spans) == {"acct0": 3.0 + 3.0 + 2.0, "acct1": 3.0 + 2.0}
    assert span_credit(spans, by="contribution_id") == {"c0": 6.0, "c1": 5.0, "c3": 2.0}
    assert span_credit(spans, by="datanet_id") == {"dn0": 3.0 + 3.0, "dn1": 3.0 + 2.0 + 2.0}
    assert span_credit([]) == {}


def test_splitting_accounts_does_not_change_total_credit(tmp_path: Path) -> None:
    texts = ["zeta owns this remarkable sentence about quartz", "another remarkable line on basalt columns"]
    one = SpanIndex.build([(DocMeta(f"c{i}", "acct", "dn", "net", 1, i), t) for i, t in enumerate(texts)],
                          tmp_path / "one")
    split = SpanIndex.build([(DocMeta(f"c{i}", f"acct-{i}", "dn", "net", 1, i), t) for i, t in enumerate(texts)],
                            tmp_path / "split")
    response = "zeta owns this remarkable sentence about quartz and another remarkable line on basalt columns"
    params = TraceParams(keep_fraction=1.0)
    whole = span_credit(one.trace(response, params))["acct"]
    parts = span_credit(split.trace(response, params))
    assert whole > 0 and math.isclose(sum(parts.values()), whole, rel_tol=1e-12)


# ------------------------------------------------------------------------------------------- integrity and errors


@pytest.mark.parametrize("name", ["corpus.bin", "sa.bin", "docs.bin", "docs.jsonl", "unigram.bin"])
def test_any_changed_byte_is_detected_and_the_file_named(tmp_path: Path, name: str) -> None:
    SpanIndex.build([(meta(i), f"document number {i} with text") for i in range(5)], tmp_path / "ix")
    path = tmp_path / "ix" / name
    data = bytearray(path.read_bytes())
    for at in (0, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[at] ^= 0x01
        path.write_bytes(bytes(flipped))
        if name in ("corpus.bin", "sa.bin"):
            SpanIndex.open(tmp_path / "ix")  # fast mode checks only the size of the bulk files
        else:
            with pytest.raises(VerificationFailed, match=name):
                SpanIndex.open(tmp_path / "ix")
        with pytest.raises(VerificationFailed, match=name) as err:
            SpanIndex.open(tmp_path / "ix", verify="full")
        assert err.value.field == name
    path.write_bytes(bytes(data[:-1]))  # a truncated file fails even the fast check
    with pytest.raises(VerificationFailed, match=name):
        SpanIndex.open(tmp_path / "ix")
    path.write_bytes(bytes(data))
    assert SpanIndex.open(tmp_path / "ix", verify="full").documents == 5


def test_an_edited_manifest_is_detected(tmp_path: Path) -> None:
    SpanIndex.build([(meta(0), "some text here")], tmp_path / "ix")
    manifest = tmp_path / "ix" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"documents": 1', '"documents": 2'))
    with pytest.raises(VerificationFailed, match="manifest.json"):
        SpanIndex.open(tmp_path / "ix")
    manifest.write_text("{not json")
    with pytest.raises(VerificationFailed, match="manifest.json"):
        SpanIndex.open(tmp_path / "ix")


def test_user_mistakes_raise_royalty_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no documents"):
        SpanIndex.build([], tmp_path / "empty")
    with pytest.raises(InvalidInput, match="mix text and token ids"):
        SpanIndex.build([(meta(0), "text"), (meta(1), [1, 2])], tmp_path / "mixed")
    with pytest.raises(InvalidInput, match="token ids must be"):
        SpanIndex.build([(meta(0), [1, -2])], tmp_path / "negative")
    assert not any(p.name != "ix" for p in tmp_path.iterdir())  # nothing half-written left behind
    text = SpanIndex.build([(meta(0), "text")], tmp_path / "ix")
    with pytest.raises(Conflict, match="already exists"):
        SpanIndex.build([(meta(0), "text")], tmp_path / "ix")
    with pytest.raises(InvalidInput, match="as a string"):
        text.trace([1, 2, 3])
    with pytest.raises(NotFound, match="no span index"):
        SpanIndex.open(tmp_path / "nowhere")
    with pytest.raises(InvalidInput) as err:
        TraceParams(keep_fraction=0)
    assert err.value.field == "keep_fraction"
    assert text.trace("") == [] and text.trace("   ") == []


def test_index_files_are_what_the_manifest_says(tmp_path: Path) -> None:
    index = SpanIndex.build([(meta(i), "abc " * i) for i in range(4)], tmp_path / "ix")
    for name, entry in index.manifest["files"].items():
        data = (tmp_path / "ix" / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert index.units == sum(len("abc " * i) for i in range(4)) and index.kind == "text"
