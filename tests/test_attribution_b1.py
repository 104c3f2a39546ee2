"""The B1 data generator (royalty.attribution.synthetic) and a reduced run of benchmarks/attribution/b1.py."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict

import pytest

from royalty.attribution.synthetic import (
    DUPLICATOR,
    OUTLIER,
    SyntheticSpec,
    generate,
    pretraining_texts,
)
from conftest import load_benchmark
from royalty.errors import InvalidInput
from royalty.factory.basemodel import TinySpec



# ---------------------------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------------------------


def test_generator_is_deterministic_and_seeded():
    assert generate() == generate()
    assert pretraining_texts() == pretraining_texts()
    other = generate(SyntheticSpec(seed=1))
    assert [r.prompt for r in other.records] != [r.prompt for r in generate().records]


def test_default_set_has_the_promised_shape():
    data = generate()
    assert 950 <= len(data.records) <= 1050
    assert len(data.contributors) == 20 and data.contributors[-2:] == [DUPLICATOR, OUTLIER]
    assert [r.index for r in data.records] == list(range(len(data.records)))
    assert len({r.task for r in data.records if r.kind == "task"}) == 10
    assert len(data.queries) == 100


def test_facts_have_one_owner_repeated_with_paraphrases():
    data = generate()
    by_fact = defaultdict(list)
    for r in data.records:
        if r.kind == "fact":
            by_fact[r.fact].append(r)
    assert len(by_fact) == data.spec.facts
    for f, records in by_fact.items():
        assert {r.contributor for r in records} == {data.fact_owner[f]}
        assert 3 <= len(records) <= 5
        assert len({r.prompt for r in records}) == len(records)  # paraphrased, never the same prompt twice
    train_prompts = {r.prompt for r in data.records}
    facts = [q for q in data.queries if q.kind == "fact"]
    assert len(facts) == data.spec.facts
    for q in facts:
        assert q.owner == data.fact_owner[q.fact]
        assert q.prompt not in train_prompts  # an unseen phrasing
        clean = [r for r in by_fact[q.fact] if not r.noisy]
        assert all(r.response == q.response for r in clean)
    for q in data.queries:
        if q.kind == "task":
            assert q.owner is None and q.prompt not in train_prompts


def test_noise_duplicates_and_outliers():
    data = generate()
    honest = [r for r in data.records if r.kind in ("task", "fact")]
    noisy = [r for r in honest if r.noisy]
    assert len(noisy) == round(data.spec.noise * len(honest))
    clean_answers = {(r.prompt, r.response) for r in honest if not r.noisy}
    assert not any((r.prompt, r.response) in clean_answers for r in noisy)  # the response really changed
    duplicates = [r for r in data.records if r.kind == "duplicate"]
    assert len(duplicates) == data.spec.duplicator
    for d in duplicates:
        original = data.records[d.duplicate_of]
        assert d.contributor == DUPLICATOR != original.contributor
        assert (d.prompt, d.response) == (original.prompt, original.response)
    outliers = [r for r in data.records if r.contributor == OUTLIER]
    assert len(outliers) == data.spec.outlier
    longest_honest = max(len(r.response) for r in honest)
    assert min(len(r.response) for r in outliers) > longest_honest


def test_bad_spec_is_refused_with_the_field():
    with pytest.raises(InvalidInput) as err:
        generate(SyntheticSpec(noise=0.7))
    assert err.value.field == "noise"
    with pytest.raises(InvalidInput) as err:
        generate(SyntheticSpec(queries=10))
    assert err.value.field == "queries"


# ---------------------------------------------------------------------------------------------------------------
# a reduced B1: 4 contributors (2 honest, the duplicator, the outlier), ~60 examples, 8 subsets
# ---------------------------------------------------------------------------------------------------------------


def test_reduced_b1_runs_and_beats_chance(tmp_path):
    b1 = load_benchmark("attribution/b1.py")
    data = SyntheticSpec(honest_contributors=2, tasks=3, task_records=24, facts=8, duplicator=3, outlier=2,
                         queries=12)
    cfg = dataclasses.replace(
        b1.QUICK, data=data, pretrain_steps=40, pretrain_texts=400, epochs=4, checkpoints=2, subsets=8,
        contributor_subsets=6, counterfactual_queries=1,
        base=TinySpec(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
    )
    assert 55 <= len(generate(data).records) <= 65
    start = time.perf_counter()
    result = b1.run(cfg, tmp_path, log=lambda _line: None)
    assert time.perf_counter() - start <= 60
    assert set(result.lds) >= {"Grad-Dot", "Grad-Cos", "TracIn-CP", "Adam-Cos", "Representation cosine", "DataInf",
                               "BM25 (prompt and response)", b1.HEADLINE}
    assert all(math.isfinite(v) for v in result.lds.values())
    assert math.isfinite(result.ceiling)
    assert result.chance_top1 == 0.5
    assert result.fact_top1["Grad-Cos"] > result.chance_top1
    assert result.duplication[f"{b1.HEADLINE}, duplicates grouped"] == pytest.approx(1.0)
    assert result.split_change <= 1e-9
    assert 0.0 <= result.owner_percentile <= 1.0 and 0.0 <= result.class_auc[b1.HEADLINE] <= 1.0
    rows, notes = b1.table(result, cfg)
    assert rows[0][0] == f"LDS, {b1.HEADLINE}" and "subsets" in notes

    # a rerun scores from the cache: no retrain runs again
    again = b1.run(cfg, tmp_path, log=lambda _line: None)
    assert "per retrain (mean)" not in again.seconds
    assert again.lds == result.lds

    # a cache made with other arguments is refused
    cache = next(tmp_path.glob("retrains-*.npz"))
    with pytest.raises(SystemExit, match="other parameters"):
        b1.RetrainCache(cache, {"something": "else"})


def test_fisher_cosine_equals_the_explicit_metric():
    """B1's kernel-form preconditioned cosine against H⁻¹ built in parameter space, on random rows of mixed
    norms (fewer rows than parameters, as in B1)."""
    import numpy as np

    b1 = load_benchmark("attribution/b1.py")
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(30, 50)) * rng.uniform(0.1, 3.0, size=(30, 1))
    queries = rng.normal(size=(4, 50))
    for c in (0.01, 1.0):
        kernel_eigenvalues = np.linalg.eigvalsh(rows @ rows.T)
        rank = int((kernel_eigenvalues > kernel_eigenvalues.max() * 1e-10).sum())
        fisher = rows.T @ rows / len(rows)
        h_inv = np.linalg.inv(fisher + c * np.trace(fisher) / rank * np.eye(50))
        norm = lambda x: np.sqrt(np.einsum("ij,jk,ik->i", x, h_inv, x))  # noqa: E731
        expected = queries @ h_inv @ rows.T / norm(queries)[:, None] / norm(rows)[None, :]
        np.testing.assert_allclose(b1.fisher_cosine(rows, queries, c), expected, rtol=1e-9, atol=1e-12)
