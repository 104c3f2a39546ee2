"""Attribution evaluation: LDS, Spearman with ties, subset sampling, Banzhaf values, and a reduced benchmark B0."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from royalty.attribution.evaluate import (
    banzhaf,
    lds,
    lds_per_query,
    paired_lds_difference,
    rankdata,
    sample_subsets,
    spearman,
    subset_predictions,
)
from conftest import load_benchmark
from royalty.errors import InvalidInput



def all_subsets(n: int) -> np.ndarray:
    return np.array(list(itertools.product([False, True], repeat=n)))


# ---------------------------------------------------------------------------------------------------------------
# LDS and Spearman
# ---------------------------------------------------------------------------------------------------------------


def test_lds_matches_a_hand_computed_case():
    actual = np.array([[1.0, 1.0, 5.0, 2.0], [2.0, 2.0, 5.0, 4.0], [3.0, 3.0, 5.0, 6.0], [4.0, 4.0, 5.0, 8.0]])
    predicted = np.array([[10.0, 1.0, 3.0, 7.0], [20.0, 3.0, 1.0, 7.0], [30.0, 2.0, 2.0, 7.0], [40.0, 4.0, 4.0, 7.0]])
    # query 0: same order, ρ = 1. query 1: rank differences (0, 1, 1, 0), ρ = 1 − 6·2/(4·15) = 0.8.
    # query 2: actual constant, nothing to rank (left out). query 3: prediction constant, ranks nothing (0).
    per_query = lds_per_query(actual, predicted)
    assert per_query[0] == pytest.approx(1.0)
    assert per_query[1] == pytest.approx(0.8)
    assert np.isnan(per_query[2])
    assert per_query[3] == 0.0
    assert lds(actual, predicted) == pytest.approx((1.0 + 0.8 + 0.0) / 3)


def test_spearman_with_ties_equals_scipy():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 4, size=(30, 12)).astype(float)  # heavy ties
    b = rng.integers(0, 6, size=(30, 12)).astype(float)
    b[:, 0] = a[:, 0]  # one perfectly correlated column
    ours = spearman(a, b)
    for c in range(a.shape[1]):
        assert ours[c] == pytest.approx(stats.spearmanr(a[:, c], b[:, c]).statistic, abs=1e-12)
    np.testing.assert_array_equal(rankdata(a), stats.rankdata(a, axis=0))
    assert float(spearman(a[:, 1], b[:, 1])) == pytest.approx(stats.spearmanr(a[:, 1], b[:, 1]).statistic)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_subset_predictions_sum_scores_over_members():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(3, 8))
    masks = sample_subsets(8, 5, seed=2)
    expected = np.array([[scores[q, masks[j]].sum() for q in range(3)] for j in range(5)])
    np.testing.assert_allclose(subset_predictions(scores, masks), expected, rtol=1e-12)


def test_paired_difference_of_a_perfect_and_a_reversed_method():
    rng = np.random.default_rng(3)
    actual = rng.normal(size=(20, 6))
    mean, stderr = paired_lds_difference(actual, actual * 2.0, -actual)
    assert mean == pytest.approx(2.0)
    assert stderr == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# subsets
# ---------------------------------------------------------------------------------------------------------------


def test_subsets_are_seeded_and_of_the_requested_size():
    masks = sample_subsets(101, 30, seed=5, fraction=0.5)
    assert masks.shape == (30, 101) and masks.dtype == bool
    assert (masks.sum(axis=1) == 50).all()  # round(50.5) = 50 (banker's rounding)
    np.testing.assert_array_equal(masks, sample_subsets(101, 30, seed=5, fraction=0.5))
    assert not np.array_equal(masks, sample_subsets(101, 30, seed=6, fraction=0.5))
    assert len({row.tobytes() for row in masks}) == 30
    independent = sample_subsets(1000, 200, seed=5, fixed_size=False)
    assert len(set(independent.sum(axis=1).tolist())) > 5  # sizes vary
    assert independent.mean() == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------------------------------------------------------
# Banzhaf
# ---------------------------------------------------------------------------------------------------------------


def test_banzhaf_of_an_additive_game_is_each_players_value():
    v = np.array([3.0, -1.0, 0.5, 2.0, 0.0])
    masks = all_subsets(5)
    np.testing.assert_allclose(banzhaf(masks, masks @ v), v, atol=1e-12)
    # one game per query: [m, Q] utilities give [n, Q] values
    vq = np.stack([v, -2 * v], axis=1)
    np.testing.assert_allclose(banzhaf(masks, masks @ vq), vq, atol=1e-12)


def test_banzhaf_of_a_non_additive_game_equals_the_definition():
    n = 4
    weights = np.array([1.0, 2.0, 3.0, 5.0])

    def game(members: np.ndarray) -> float:
        return float((members @ weights) ** 2 + members[0] * members[1] * 7.0)

    masks = all_subsets(n)
    truth = [np.mean([game(np.array([*s[:i], True, *s[i:]])) - game(np.array([*s[:i], False, *s[i:]]))
                      for s in itertools.product([False, True], repeat=n - 1)]) for i in range(n)]
    np.testing.assert_allclose(banzhaf(masks, np.array([game(s) for s in masks])), truth, rtol=1e-12)


def test_banzhaf_on_fixed_size_subsets_is_the_documented_affine_map():
    n, v = 6, np.array([4.0, 1.0, -2.0, 0.5, 3.0, 1.5])
    masks = np.array([s for s in all_subsets(n) if s.sum() == n // 2])
    np.testing.assert_allclose(banzhaf(masks, masks @ v), (n * v - v.sum()) / (n - 1), atol=1e-12)


def test_banzhaf_from_sampled_independent_subsets_is_close():
    v = np.linspace(-1.0, 2.0, 10)
    masks = sample_subsets(10, 4000, seed=0, fixed_size=False)
    np.testing.assert_allclose(banzhaf(masks, masks @ v), v, atol=0.2)


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_invalid_input_naming_the_field():
    cases = [
        (lambda: sample_subsets(1, 5, seed=0), "n"),
        (lambda: sample_subsets(10, 5, seed=0, fraction=1.0), "fraction"),
        (lambda: sample_subsets(3, 5, seed=0, fraction=0.1), "fraction"),
        (lambda: lds(np.ones((5, 2)), np.ones((5, 3))), "predicted"),
        (lambda: lds(np.ones((2, 2)) * [[1], [2]], np.ones((2, 2))), "actual"),
        (lambda: lds(np.ones((5, 2)), np.ones((5, 2))), "actual"),  # nothing varies
        (lambda: spearman(np.array([1.0, np.nan, 2.0]), np.arange(3.0)), "values"),
        (lambda: subset_predictions(np.ones((2, 4)), np.ones((3, 5), dtype=bool)), "scores"),
        (lambda: banzhaf(np.array([[True, False], [True, True]]), np.ones(2)), "masks"),
        (lambda: banzhaf(np.array([[1, 0], [0, 1]]), np.ones(2)), "masks"),
        (lambda: banzhaf(np.array([[True, False], [False, True]]), np.ones(3)), "utility"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidInput) as caught:
            call()
        assert caught.value.field == field
        assert "\n" not in caught.value.message


# ---------------------------------------------------------------------------------------------------------------
# reduced B0
# ---------------------------------------------------------------------------------------------------------------


def test_b0_gradients_and_hessian_match_finite_differences():
    b0 = load_benchmark("attribution/b0.py")
    data = b0.load_digits_split(40, 5, seed=1)
    rng = np.random.default_rng(0)
    w = rng.normal(scale=0.3, size=(65, 10))
    lam, eps = 2.0, 1e-6

    def objective(flat: np.ndarray) -> float:
        return float(-b0.log_likelihood(data.x_train, data.y_train, flat.reshape(w.shape)).sum()
                     + lam / 2 * flat @ flat)

    def gradient(flat: np.ndarray) -> np.ndarray:
        return b0.loss_gradients(data.x_train, data.y_train, flat.reshape(w.shape)).sum(axis=0) + lam * flat

    flat = w.ravel()
    for i in rng.choice(flat.size, 8, replace=False):
        step = np.zeros_like(flat)
        step[i] = eps
        assert gradient(flat)[i] == pytest.approx((objective(flat + step) - objective(flat - step)) / (2 * eps),
                                                  rel=1e-5, abs=1e-7)
        column = (gradient(flat + step) - gradient(flat - step)) / (2 * eps)
        np.testing.assert_allclose(b0.hessian(data.x_train, w, lam)[:, i], column, rtol=1e-4, atol=1e-6)


def test_reduced_b0_exact_influence_reaches_lds_0_9_and_is_deterministic():
    b0 = load_benchmark("attribution/b0.py")
    first = b0.run(200, 40, 40)
    assert first.lds["exact influence"] >= 0.9
    assert first.lds["exact influence"] > first.lds["Grad-Dot"]
    # an undamped empirical Fisher is a poor Hessian: the sweep must show it
    assert first.lds["empirical-Fisher IF, c = 0.01"] < first.lds["exact influence"] - 0.2
    assert first.test_accuracy > 0.8
    again = b0.run(200, 40, 40)
    assert again.lds == first.lds
