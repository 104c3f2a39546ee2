"""The near-duplicate detector (``royalty.datanet.dedup``) against the slow, obvious references: the exact Jaccard
similarity of the two shingle-hash sets, and datasketch's MinHash estimate of the same sets.

Texts are random words with a controlled edit rate: each word is replaced with probability ``e``, so a word
3-gram survives with probability ``p = (1 - e)^3`` and the expected Jaccard is ``p / (2 - p)``. Everything is
seeded, so the statistical bounds below are checked on fixed samples (they hold with a wide margin).
"""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
from datasketch import MinHash

from royalty.datanet import dedup
from royalty.datanet.dedup import NUM_PERM, NearDuplicateIndex, lsh_bands, shingle_hashes, signature, similarity


def vocabulary(rng: random.Random, size: int = 50_000) -> list[str]:
    return ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(4, 10))) for _ in range(size)]


def edited(rng: random.Random, words: list[str], rate: float, vocab: list[str]) -> list[str]:
    return [rng.choice(vocab) if rng.random() < rate else w for w in words]


def rate_for(jaccard: float) -> float:
    """The per-word edit rate whose expected 3-gram Jaccard is ``jaccard``."""
    p = 2 * jaccard / (1 + jaccard)
    return 1 - p ** (1 / 3)


def exact_jaccard(a: str, b: str) -> float:
    x, y = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    return len(x & y) / len(x | y)


def datasketch_estimate(a: str, b: str) -> float:
    sketches = []
    for text in (a, b):
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([int(h).to_bytes(8, "little") for h in shingle_hashes(text)])
        sketches.append(m)
    return float(sketches[0].jaccard(sketches[1]))


def candidates(sig_a: np.ndarray, sig_b: np.ndarray, bands: int, rows: int) -> bool:
    return any(np.array_equal(sig_a[i * rows : (i + 1) * rows], sig_b[i * rows : (i + 1) * rows]) for i in range(bands))


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str, float]]:
    """(a, b, exact Jaccard) for 240 pairs at edit rates from 1% to 50%."""
    rng = random.Random(11)
    vocab = vocabulary(rng)
    out = []
    for rate in (0.01, 0.03, 0.06, 0.1, 0.2, 0.35, 0.5, 0.7):
        for _ in range(30):
            words = rng.choices(vocab, k=rng.randint(150, 400))
            a, b = " ".join(words), " ".join(edited(rng, words, rate, vocab))
            out.append((a, b, exact_jaccard(a, b)))
    return out


# --------------------------------------------------------------------------------------------------------------
# shingles and signatures
# --------------------------------------------------------------------------------------------------------------


def test_shingles_ignore_case_spacing_and_compatibility_forms() -> None:
    assert signature("Hello   World,\tfoo BAR").tolist() == signature("hello world foo bar").tolist()
    assert signature("ﬁne ｆｕｌｌ width").tolist() == signature("fine full width").tolist()  # NFKC
    assert signature("a b c d").tolist() != signature("d c b a").tolist()  # order matters
    assert len(shingle_hashes("one two three four five")) == 3
    assert len(shingle_hashes("one two three one two three")) == 3  # a set: repeats count once
    # Fewer than three words: one shingle of the whole sequence; no words at all: one fixed shingle.
    assert len(shingle_hashes("hi")) == 1 and len(shingle_hashes("hi there")) == 1
    assert shingle_hashes("hi there").tolist() != shingle_hashes("there hi").tolist()
    assert shingle_hashes("!!! ...").tolist() == [0]


def test_signature_shape_and_bytes_round_trip() -> None:
    sig = signature("the quick brown fox jumps over the lazy dog")
    assert sig.dtype == np.uint32 and sig.shape == (NUM_PERM,)
    data = dedup.to_bytes(sig)
    assert len(data) == 4 * NUM_PERM == 512
    back = dedup.from_bytes(data)
    assert back.dtype == np.uint32 and np.array_equal(back, sig)
    assert back.flags.writeable  # a copy, not a view of the stored bytes
    # Little-endian on disk whatever the machine: the signature is part of the storage format.
    assert dedup.to_bytes(np.array([1, 2], dtype=np.uint32)) == b"\x01\x00\x00\x00\x02\x00\x00\x00"
    assert dedup.from_bytes(bytes(data)).tolist() == sig.tolist()
    assert similarity(sig, back) == 10_000


def test_signature_is_stable_across_processes() -> None:
    # Stored signatures are compared with ones computed by later releases: the hash family is fixed.
    sig = signature("the quick brown fox jumps over the lazy dog")
    assert dedup.to_bytes(sig).hex()[:32] == _GOLDEN
    assert np.array_equal(sig, dedup.signatures(["the quick brown fox jumps over the lazy dog"])[0])


# The first four values of that signature, recorded when the format was fixed. A change here means every stored
# signature silently stops matching new ones: a storage format change, not a refactoring.
_GOLDEN = "a1a6231b20cca10cd222752f9cb47308"


# --------------------------------------------------------------------------------------------------------------
# the estimator against the references
# --------------------------------------------------------------------------------------------------------------


def test_estimate_matches_exact_jaccard_and_datasketch(pairs: list[tuple[str, str, float]]) -> None:
    ours, theirs, z_ours, z_theirs = [], [], [], []
    for a, b, exact in pairs:
        estimate = similarity(signature(a), signature(b)) / 10_000
        reference = datasketch_estimate(a, b)
        ours.append(estimate - exact)
        theirs.append(reference - exact)
        sd = math.sqrt(exact * (1 - exact) / NUM_PERM)
        if sd > 0.01:  # standardised errors where the estimator has spread
            z_ours.append((estimate - exact) / sd)
            z_theirs.append((reference - exact) / sd)
    assert abs(statistics.fmean(ours)) <= 0.02, statistics.fmean(ours)
    assert abs(statistics.fmean(theirs)) <= 0.02
    # The spread is what MinHash theory says (std of the standardised error ~1), like datasketch's.
    assert 0.75 <= statistics.pstdev(z_ours) <= 1.25, statistics.pstdev(z_ours)
    assert 0.75 <= statistics.pstdev(z_theirs) <= 1.25
    assert 0.7 <= statistics.pstdev(ours) / statistics.pstdev(theirs) <= 1.4
    assert max(abs(e) for e in ours) <= 0.2
    # Identical texts estimate exactly 1; unrelated texts near 0.
    a = pairs[0][0]
    assert similarity(signature(a), signature(a)) == 10_000
    assert similarity(signature(pairs[0][0]), signature(pairs[-1][0])) <= 500


def test_estimate_tracks_edit_rate(pairs: list[tuple[str, str, float]]) -> None:
    by_rate: dict[int, list[float]] = {}
    for i, (a, b, _) in enumerate(pairs):
        by_rate.setdefault(i // 30, []).append(similarity(signature(a), signature(b)) / 10_000)
    means = [statistics.fmean(v) for _, v in sorted(by_rate.items())]
    assert means == sorted(means, reverse=True)  # more edits, less similar
    for rate, mean in zip((0.01, 0.03, 0.06, 0.1, 0.2, 0.35, 0.5, 0.7), means):
        p = (1 - rate) ** 3
        assert abs(mean - p / (2 - p)) <= 0.05, (rate, mean)


# --------------------------------------------------------------------------------------------------------------
# LSH
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_recall_above_threshold(threshold: float) -> None:
    rng = random.Random(int(threshold * 100))
    vocab = vocabulary(rng)
    index = NearDuplicateIndex(round(threshold * 10_000))
    bands, rows = lsh_bands(threshold)
    assert (index.bands, index.rows) == (bands, rows)
    queries = []
    for i in range(300):
        target = rng.uniform(threshold + 0.05, min(1.0, threshold + 0.2))
        words = rng.choices(vocab, k=250)
        a, b = " ".join(words), " ".join(edited(rng, words, rate_for(target), vocab))
        index.add(f"k{i}", signature(a))
        queries.append((f"k{i}", a, b))
    found = candidate = eligible = exact_above = 0
    for key, a, b in queries:
        exact = exact_jaccard(a, b)
        if exact < threshold + 0.05:
            continue
        eligible += 1
        sig_b = signature(b)
        candidate += candidates(signature(a), sig_b, bands, rows)
        match = index.best_match(sig_b)
        if exact >= threshold + 0.1:
            exact_above += 1
            found += match is not None and match[0] == key
        if match is not None:
            assert match[0] == key  # never another (unrelated) record
            assert match[1] >= index.threshold_bp
    assert eligible >= 200 and exact_above >= 50
    assert candidate / eligible >= 0.99, (candidate, eligible)
    # End to end (candidate, then the signature estimate against the threshold) once the estimate's own
    # spread (~0.035 at these similarities) is accounted for.
    assert found / exact_above >= 0.99, (found, exact_above)


def test_lsh_rarely_matches_below_threshold() -> None:
    rng = random.Random(5)
    vocab = vocabulary(rng)
    index = NearDuplicateIndex(8_000)
    hits = total = 0
    for i in range(200):
        words = rng.choices(vocab, k=250)
        a, b = " ".join(words), " ".join(edited(rng, words, rate_for(0.6), vocab))
        index.add(f"k{i}", signature(a))
        if exact_jaccard(a, b) <= 0.65:
            total += 1
            hits += index.best_match(signature(b)) is not None
    assert total >= 150 and hits <= total * 0.01


def test_lsh_bands_sanity() -> None:
    previous_rows = 0
    for t in [x / 100 for x in range(5, 101, 5)]:
        bands, rows = lsh_bands(t)
        assert bands >= 1 and rows >= 1 and bands * rows <= NUM_PERM
        assert rows >= previous_rows  # stricter thresholds use longer bands
        previous_rows = rows
        hit = lambda s: 1 - (1 - s**rows) ** bands  # noqa: E731
        if t >= 0.3:
            assert hit(t) >= dedup.LSH_RECALL, (t, bands, rows)
            assert hit(min(1.0, t + 0.05)) >= 0.99
        if t >= 0.8:
            assert hit(t - 0.4) <= 0.1  # far below the threshold, few candidates (each costs one comparison)
    assert lsh_bands(1.0) == (1, NUM_PERM)
    with pytest.raises(ValueError):
        NearDuplicateIndex(0)
    with pytest.raises(ValueError):
        NearDuplicateIndex(10_001)


def test_index_add_is_idempotent_and_excludes() -> None:
    index = NearDuplicateIndex(8_000)
    sig = signature("alpha beta gamma delta epsilon zeta eta theta")
    index.add("x", sig)
    index.add("x", sig)
    assert len(index) == 1
    assert index.best_match(sig) == ("x", 10_000)
    assert index.best_match(sig, exclude="x") is None
    index.add("y", sig)
    assert index.best_match(sig) == ("y", 10_000)  # ties go to the larger key, deterministically
