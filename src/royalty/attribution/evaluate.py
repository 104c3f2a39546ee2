"""Measuring attribution against retraining: subset sampling, the linear datamodeling score (LDS), Banzhaf values
and Spearman correlation with ties.

The protocol (TRAK, Park et al. 2023, Definition 2.3): draw m random subsets S_j of the n training examples,
retrain on each, record the measured quantity f(z_q; θ*(S_j)) for every query q (``actual``, [m, Q]). A method
gives scores τ [Q, n]; its prediction for subset j is Σ_{i∈S_j} τ_qi (``subset_predictions``, [m, Q]).
LDS(q) is the Spearman correlation over the m subsets between actual and predicted; the LDS of a method is the
mean over queries. Orientation: f must grow when a helpful example is added (a log-likelihood, not a loss), as
a higher attribution score means "this example lowers the query's loss".

The same subsets, drawn by independent inclusion at probability 1/2, are Maximum-Sample-Reuse samples, so the
retrained utilities also give Data Banzhaf values (``banzhaf``): a payout ground truth per player.

Everything is numpy, float64 and deterministic (seeded generators, no threading-dependent reductions beyond
BLAS matrix products on float64). Bad arguments raise :class:`royalty.errors.InvalidInput`.
"""

from __future__ import annotations

import numpy as np

from royalty.errors import InvalidInput


def sample_subsets(n: int, m: int, *, seed: int, fraction: float = 0.5, fixed_size: bool = True) -> np.ndarray:
    """``m`` random subsets of ``range(n)`` as a boolean mask [m, n], the same for the same arguments.

    ``fixed_size=True`` (LDS, as in TRAK): every subset has exactly ``round(fraction * n)`` members.
    ``fixed_size=False`` (Maximum Sample Reuse): every element is included independently with probability
    ``fraction``; with ``fraction=0.5`` these subsets make :func:`banzhaf` an unbiased estimate.
    """
    if n < 2:
        raise InvalidInput(f"n: need at least 2 training examples to form subsets (got {n})", field="n")
    if m < 1:
        raise InvalidInput(f"m: need at least 1 subset (got {m})", field="m")
    if not 0.0 < fraction < 1.0:
        raise InvalidInput(f"fraction: must be strictly between 0 and 1 (got {fraction})", field="fraction")
    rng = np.random.default_rng(seed)
    if not fixed_size:
        return rng.random((m, n)) < fraction
    size = round(fraction * n)
    if not 0 < size < n:
        raise InvalidInput(f"fraction: {fraction} of {n} examples leaves an empty or full subset; use a larger n or "
                           "a fraction nearer 0.5", field="fraction")
    masks = np.zeros((m, n), dtype=bool)
    for j in range(m):
        masks[j, rng.permutation(n)[:size]] = True
    return masks


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks along axis 0 (1-based, float64), ties given the average of the ranks they span (scipy's
    ``rankdata(method="average")``). ``values`` is [m] or [m, Q]; every value must be finite."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim not in (1, 2):
        raise InvalidInput(f"values: expected a vector or a matrix (got {x.ndim} dimensions)", field="values")
    if not np.isfinite(x).all():
        raise InvalidInput("values: contains NaN or infinity; ranks need finite numbers", field="values")
    columns = x.reshape(x.shape[0], -1)
    ranks = np.empty_like(columns)
    for c in range(columns.shape[1]):
        order = np.argsort(columns[:, c], kind="stable")
        ordered = columns[order, c]
        starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
        starts = np.flatnonzero(starts_group)
        ends = np.r_[starts[1:], len(ordered)]
        # positions starts..ends-1 hold ranks starts+1..ends; a tie group gets their mean
        average = (starts + 1 + ends) / 2.0
        ranks[order, c] = average[np.cumsum(starts_group) - 1]
    return ranks.reshape(x.shape)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation along axis 0, with ties (Pearson correlation of average ranks; equals
    ``scipy.stats.spearmanr``). ``a`` and ``b`` are [m] (gives a 0-d array) or [m, Q] (gives [Q]). A column that
    is constant in ``a`` or in ``b`` has no correlation: NaN."""
    ra, rb = _paired(a, b, "b")
    ra, rb = rankdata(ra), rankdata(rb)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    denominator = np.sqrt((ra * ra).sum(axis=0) * (rb * rb).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(axis=0) / denominator
    return np.where(denominator > 0, np.clip(rho, -1.0, 1.0), np.nan)


def subset_predictions(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """A method's prediction for every subset and query: Σ_{i∈S_j} scores[q, i] as [m, Q] float64.

    ``scores`` is [Q, n] (query × training example, the layout of the attribution index's ``score``), ``masks``
    is [m, n] boolean from :func:`sample_subsets`."""
    s = np.asarray(scores, dtype=np.float64)
    mask = np.asarray(masks)
    if s.ndim != 2 or mask.ndim != 2 or s.shape[1] != mask.shape[1]:
        raise InvalidInput(f"scores: expected [Q, n] against masks [m, n] (got {s.shape} and {mask.shape})",
                           field="scores")
    if not np.isfinite(s).all():
        raise InvalidInput("scores: contains NaN or infinity", field="scores")
    return mask.astype(np.float64) @ s.T


def lds_per_query(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """LDS of each query: Spearman over subsets between ``actual`` and ``predicted`` (both [m, Q]) → [Q].

    A query whose actual values do not vary over the subsets has nothing to rank: NaN (left out of the mean).
    A method whose prediction does not vary ranks nothing: 0."""
    act, pred = _paired(actual, predicted, "predicted")
    if act.ndim != 2:
        raise InvalidInput(f"actual: expected [m, Q] (got shape {act.shape})", field="actual")
    if act.shape[0] < 3:
        raise InvalidInput(f"actual: need at least 3 subsets for a rank correlation (got {act.shape[0]})",
                           field="actual")
    rho = spearman(act, pred)
    constant_actual = (act == act[0]).all(axis=0)
    return np.where(constant_actual, np.nan, np.nan_to_num(rho, nan=0.0))


def lds(actual: np.ndarray, predicted: np.ndarray) -> float:
    """The linear datamodeling score: the mean over queries of :func:`lds_per_query`. ``actual`` and
    ``predicted`` are [m, Q]. The LDS of one seed's ``actual`` against another seed's is the noise ceiling."""
    per_query = lds_per_query(actual, predicted)
    if np.isnan(per_query).all():
        raise InvalidInput("actual: no query varies across the subsets, so there is nothing to rank",
                           field="actual")
    return float(np.nanmean(per_query))


def paired_lds_difference(actual: np.ndarray, predicted_a: np.ndarray,
                          predicted_b: np.ndarray) -> tuple[float, float]:
    """Method A minus method B on the same queries: (mean of the per-query LDS differences, its standard error).

    Pairing removes the between-query variance that dominates either LDS alone (per-query Spearman over ~40
    subsets has a standard error near 0.15)."""
    diff = lds_per_query(actual, predicted_a) - lds_per_query(actual, predicted_b)
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        raise InvalidInput("actual: no query varies across the subsets, so there is nothing to rank",
                           field="actual")
    stderr = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
    return float(diff.mean()), stderr


def banzhaf(masks: np.ndarray, utility: np.ndarray) -> np.ndarray:
    """Data Banzhaf values by Maximum Sample Reuse: φ(i) = mean U(S ∋ i) − mean U(S ∌ i) over the given subsets.

    ``masks`` is [m, n] boolean (players may be examples or contributors), ``utility`` is [m] or [m, Q] (one
    game per query); the result is [n] or [n, Q] float64. On all 2ⁿ subsets, or in expectation on
    independent-inclusion subsets with probability 1/2, it is the exact Banzhaf value. On fixed-size subsets of
    size s it estimates E[U | i ∈ S, |S| = s] − E[U | i ∉ S, |S| = s], which for an additive game
    U(S) = Σ_{i∈S} v_i is (n·v_i − Σ_j v_j)/(n − 1): the same ranking, not the same values."""
    mask = np.asarray(masks)
    u = np.asarray(utility, dtype=np.float64)
    if mask.ndim != 2 or mask.dtype != bool:
        raise InvalidInput(f"masks: expected a boolean [m, n] array (got {mask.dtype} {mask.shape})", field="masks")
    if u.ndim not in (1, 2) or u.shape[0] != mask.shape[0]:
        raise InvalidInput(f"utility: expected [m] or [m, Q] with m = {mask.shape[0]} (got {u.shape})",
                           field="utility")
    if not np.isfinite(u).all():
        raise InvalidInput("utility: contains NaN or infinity", field="utility")
    inside = mask.sum(axis=0)
    outside = mask.shape[0] - inside
    missing = np.flatnonzero((inside == 0) | (outside == 0))
    if missing.size:
        raise InvalidInput(f"masks: player {int(missing[0])} is in every subset or in none, so its value is not "
                           "identified; draw more subsets", field="masks")
    members = mask.astype(np.float64)
    u2 = u.reshape(u.shape[0], -1)
    total = u2.sum(axis=0)
    with_i = members.T @ u2  # [n, Q]: Σ_j U(S_j) over subsets containing i
    values = with_i / inside[:, None] - (total - with_i) / outside[:, None]
    return values.reshape((mask.shape[1],) + u.shape[1:])


def _paired(a: np.ndarray, b: np.ndarray, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise InvalidInput(f"{name_b}: shape {y.shape} does not match {x.shape}", field=name_b)
    if x.ndim not in (1, 2) or x.shape[0] < 2:
        raise InvalidInput(f"{name_b}: expected [m] or [m, Q] with m >= 2 (got shape {x.shape})", field=name_b)
    return x.copy(), y.copy()
