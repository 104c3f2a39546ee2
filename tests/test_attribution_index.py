"""AttributionIndex: scores against a slow numpy reference, preconditioning, corruption detection naming the file,
append-only shards, and bit-identical scores across runs and processes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from royalty.attribution.index import AttributionIndex, RowMeta
from royalty.errors import Conflict, InvalidInput, NotFound, VerificationFailed

DIM = 24
STEP = 40
CONTRIBUTORS = ["acct_a", "acct_b", "acct_c", "acct_d"]
DATANETS = ["dn_one", "dn_two"]


def make_rows(n: int, seed: int) -> np.ndarray:
    """Gradient-like rows over ten orders of magnitude (LoRA gradients are often below float16's normal range), one
    zero row, float32."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, DIM)) * 10.0 ** rng.uniform(-9, 1, size=(n, 1))
    rows[n // 2] = 0.0
    return rows.astype(np.float32)


def make_meta(n: int, first: int = 0) -> list[RowMeta]:
    return [RowMeta(contribution_id=f"c{first + i:05d}", contributor=CONTRIBUTORS[(first + i) % 4],
                    datanet_id=DATANETS[(first + i) % 3 == 0], version=1, position=first + i,
                    example_index=first + i, step=STEP, grad_norm=float(first + i) / 7) for i in range(n)]


def build(path: Path, batches: list[int], *, seed: int = 0,
          shard_rows: int = 50) -> tuple[AttributionIndex, np.ndarray]:
    """An index written in appends of the given sizes; returns it and every row appended (float32)."""
    index = AttributionIndex.create(path, dim=DIM, step=STEP, projection={"kind": "test", "seed": 7},
                                    info={"adapter": "ad_test"}, shard_rows=shard_rows)
    all_rows, done = [], 0
    for i, n in enumerate(batches):
        rows = make_rows(n, seed * 100 + i)
        index.append(rows, make_meta(n, done))
        all_rows.append(rows)
        done += n
    index.flush()
    return index, np.concatenate(all_rows)


def reference_scores(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.asarray([[float(np.dot(r, qi)) for r in rows] for qi in q])  # the slow way, row by row


@pytest.fixture
def built(tmp_path: Path) -> tuple[AttributionIndex, np.ndarray]:
    return build(tmp_path / "idx", [17, 60, 3, 120, 1])


def test_rows_roundtrip_and_scores_match_a_slow_reference(built: tuple[AttributionIndex, np.ndarray]) -> None:
    index, rows = built
    reopened = AttributionIndex.open(index.path, verify="full")
    assert len(reopened) == len(rows) == 201
    assert [s["count"] for s in reopened.manifest["shards"]] == [50, 50, 50, 50, 1]
    assert reopened.step == STEP and reopened.projection == {"kind": "test", "seed": 7}
    decoded = reopened.decode()
    # float16 with a per-row power of two: every row, however small, keeps float16's relative precision.
    zero = np.flatnonzero(~rows.any(axis=1))
    assert zero.tolist() == [8, 47, 78, 140, 200] and not decoded[zero].any()
    live = rows.any(axis=1)
    err = np.abs(decoded[live] - rows[live]).max(axis=1) / np.abs(rows[live].astype(np.float64)).max(axis=1)
    assert err.max() <= 2.0 ** -11

    q = np.random.default_rng(5).standard_normal((3, DIM)).astype(np.float32)
    scores = reopened.score(q)
    assert scores.shape == (3, 201) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, reference_scores(decoded, q), rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(reopened.score(q[1]), scores[1])

    cos = reopened.score(q, normalize=True)
    norms = np.linalg.norm(decoded, axis=1)
    q_norms = np.linalg.norm(q.astype(np.float64), axis=1)
    expected = reference_scores(decoded, q) / np.where(norms > 0, norms, np.inf) / q_norms[:, None]
    np.testing.assert_allclose(cos, expected, rtol=1e-12, atol=1e-15)
    assert not cos[:, zero].any() and np.abs(cos).max() <= 1.0

    s = scores[0]
    hits = reopened.top(s, 5)
    assert [h.row for h in hits] == list(np.argsort(-s, kind="stable")[:5])
    assert hits[0].score == s.max() and hits[0].meta == make_meta(201)[hits[0].row]
    assert reopened.meta(7) == make_meta(201)[7]

    per = reopened.per_contributor(s)
    for name in CONTRIBUTORS:
        mine = [i for i in range(201) if CONTRIBUTORS[i % 4] == name]
        total = sum(max(s[i], 0.0) for i in mine)
        assert per.get(name, 0.0) == pytest.approx(total, rel=1e-12)
    assert list(per.values()) == sorted(per.values(), reverse=True)
    dn = reopened.per_datanet(s)
    assert set(dn) <= set(DATANETS)
    assert sum(dn.values()) == pytest.approx(sum(per.values()), rel=1e-12)


def test_preconditioned_scores_match_numpy(built: tuple[AttributionIndex, np.ndarray]) -> None:
    index, _ = built
    pre = index.build_preconditioner(0.1)
    decoded = index.decode()
    fisher = decoded.T @ decoded / len(decoded)
    lam = 0.1 * np.trace(fisher) / DIM
    assert pre.lam == pytest.approx(lam, rel=1e-12) and pre.mean_eigenvalue == pytest.approx(lam / 0.1, rel=1e-12)
    h_inv = np.linalg.inv(fisher + lam * np.eye(DIM))
    q = np.random.default_rng(6).standard_normal((2, DIM))
    np.testing.assert_allclose(index.score(q, precondition=True), q @ h_inv @ decoded.T, rtol=1e-8, atol=1e-300)
    row_norms = np.sqrt(np.einsum("ij,jk,ik->i", decoded, h_inv, decoded))
    q_norms = np.sqrt(np.einsum("ij,jk,ik->i", q, h_inv, q))
    expected = (q @ h_inv @ decoded.T) / np.where(row_norms > 0, row_norms, np.inf) / q_norms[:, None]
    np.testing.assert_allclose(index.score(q, precondition=True, normalize=True), expected, rtol=1e-8, atol=1e-12)

    reopened = AttributionIndex.open(index.path, verify="full")
    np.testing.assert_array_equal(reopened.score(q, precondition=True), index.score(q, precondition=True))
    # New rows make the preconditioner stale: it is dropped, not silently reused.
    reopened.append(make_rows(2, 9), make_meta(2, 201))
    reopened.flush()
    assert reopened.preconditioner is None
    with pytest.raises(Conflict, match="build_preconditioner"):
        reopened.score(q, precondition=True)
    assert sorted(p.name for p in index.path.glob("precond*")) == []


def test_every_byte_of_every_file_is_covered(tmp_path: Path) -> None:
    index, _ = build(tmp_path / "idx", [30, 30], shard_rows=40)
    index.build_preconditioner()
    names = [*index.manifest["files"], "manifest.json"]
    assert {n.split("-")[0].split(".")[0] for n in names} == {"shard", "gram", "precond", "manifest"}
    rng = np.random.default_rng(1)
    for name in names:
        path = index.path / name
        original = path.read_bytes()
        for at in {0, len(original) - 1, int(rng.integers(len(original)))}:
            for flip in (0x01, 0x29, 0x80):  # 0x29 turns a space into a tab: same JSON, different bytes
                damaged = bytearray(original)
                damaged[at] ^= flip
                path.write_bytes(bytes(damaged))
                with pytest.raises(VerificationFailed, match=name.replace(".", r"\.")):
                    AttributionIndex.open(index.path, verify="full")
        path.write_bytes(original)
        if name != "manifest.json":
            path.write_bytes(original[:-1])  # a size change is caught without hashing
            with pytest.raises(VerificationFailed, match=name.replace(".", r"\.")):
                AttributionIndex.open(index.path, verify="fast")
            path.unlink()
            with pytest.raises(VerificationFailed, match=f"{name.replace('.', '[.]')} is missing"):
                AttributionIndex.open(index.path)
            path.write_bytes(original)
    AttributionIndex.open(index.path, verify="full").verify()


def test_append_only_keeps_earlier_rows_bit_identical(tmp_path: Path) -> None:
    index, _ = build(tmp_path / "idx", [45, 20], shard_rows=40)
    q = np.random.default_rng(3).standard_normal((2, DIM))
    before_scores = index.score(q)
    before_files = {s["rows"]: hashlib.sha256((index.path / s["rows"]).read_bytes()).hexdigest()
                    for s in index.manifest["shards"]}
    before_checksum = index.checksum

    again = AttributionIndex.open(index.path, verify="full")
    with again:
        again.append(make_rows(70, 11), make_meta(70, 65))
    assert len(again) == 135 and again.checksum != before_checksum
    for name, digest in before_files.items():
        assert hashlib.sha256((index.path / name).read_bytes()).hexdigest() == digest
    after = AttributionIndex.open(index.path, verify="full").score(q)
    assert np.array_equal(after[:, :65], before_scores)

    # A failed capture inside the context manager commits nothing.
    with pytest.raises(RuntimeError), again:
        again.append(make_rows(5, 12), make_meta(5, 135))
        raise RuntimeError("capture failed")
    assert len(AttributionIndex.open(index.path)) == 135

    # A second writer that opened the same state cannot append over the first one's rows.
    first, second = AttributionIndex.open(index.path), AttributionIndex.open(index.path)
    first.append(make_rows(1, 13), make_meta(1, 135))
    first.flush()
    second.append(make_rows(1, 14), make_meta(1, 135))
    with pytest.raises(Conflict, match="another writer"):
        second.flush()
    assert len(AttributionIndex.open(index.path, verify="full")) == 136


_SCORE_SCRIPT = """
import sys, numpy as np
from royalty.attribution.index import AttributionIndex
index = AttributionIndex.open(sys.argv[1], verify="full")
q = np.random.default_rng(4).standard_normal((3, index.dim)).astype(np.float32)
np.save(sys.argv[2], np.stack([index.score(q), index.score(q, normalize=True), index.score(q, precondition=True)]))
"""


def test_scores_are_bit_identical_across_runs_and_processes(tmp_path: Path) -> None:
    index, _ = build(tmp_path / "idx", [150, 150], shard_rows=100)
    index.build_preconditioner()
    subprocess.run([sys.executable, "-c", _SCORE_SCRIPT, str(index.path), str(tmp_path / "scores.npy")], check=True)
    q = np.random.default_rng(4).standard_normal((3, DIM)).astype(np.float32)
    here = np.stack([index.score(q), index.score(q, normalize=True), index.score(q, precondition=True)])
    assert np.array_equal(np.load(tmp_path / "scores.npy"), here)
    assert np.array_equal(index.score(q, normalize=True), here[1])
    # The same rows written in different appends give the same stored bytes and the same scores.
    other, _ = build(tmp_path / "other", [1] * 300, shard_rows=100, seed=0) if False else (None, None)
    assert other is None


def test_user_mistakes_are_clear_errors(tmp_path: Path) -> None:
    index, _ = build(tmp_path / "idx", [10])
    with pytest.raises(InvalidInput, match=r"shape \[n, 24\]"):
        index.append(np.zeros((2, 5)), make_meta(2))
    with pytest.raises(InvalidInput, match="one RowMeta per row"):
        index.append(np.zeros((2, DIM)), make_meta(3))
    bad = np.zeros((2, DIM))
    bad[1, 3] = np.nan
    with pytest.raises(InvalidInput, match="row 1 has a NaN"):
        index.append(bad, make_meta(2))
    wrong_step = [RowMeta("c", "acct_a", "dn_one", 1, 0, 0, STEP + 1, 0.0)]
    with pytest.raises(InvalidInput, match="one index per checkpoint") as err:
        index.append(np.zeros((1, DIM)), wrong_step)
    assert err.value.field == "meta.step"
    with pytest.raises(InvalidInput, match="queries must have shape"):
        index.score(np.zeros((1, DIM + 1)))
    with pytest.raises(InvalidInput, match=r"shape \[10\]"):
        index.top(np.zeros(9), 3)
    with pytest.raises(InvalidInput, match="damping"):
        index.build_preconditioner(0.0)
    with pytest.raises(Conflict, match="already holds an attribution index"):
        AttributionIndex.create(index.path, dim=DIM, step=0, projection={})
    with pytest.raises(NotFound, match="no attribution index"):
        AttributionIndex.open(tmp_path / "nowhere")
    assert len(AttributionIndex.open(index.path, verify="full")) == 10
