"""Bootstrap intervals: seeded, missing values excluded, ~95% coverage of the true mean."""

from __future__ import annotations

import numpy as np
import pytest

from tinystories.eval.stats import bootstrap_mean, win_rate


def test_bootstrap_is_seeded_and_skips_missing():
    values = [7.1, 8.3, None, 6.2, 9.9, None, 5.4]
    est = bootstrap_mean(values, seed=3)
    assert est.mean == pytest.approx(7.38) and est.n == 5 and est.missing == 2
    assert est.low < 7.38 < est.high
    assert bootstrap_mean(values, seed=3) == est
    assert bootstrap_mean(values, seed=4) != est
    empty = bootstrap_mean([None, None])
    assert empty.n == 0 and empty.missing == 2 and str(empty) == "n/a"


def test_bootstrap_interval_covers_the_true_mean_95_percent():
    """Scores 0-10 drawn from a known distribution: the interval holds the true mean ~95% of runs."""
    rng = np.random.default_rng(0)
    probs = np.array([1, 1, 2, 3, 5, 8, 13, 8, 5, 3, 1], dtype=float)
    probs /= probs.sum()
    true_mean = float((np.arange(11) * probs).sum())
    reps = 400
    hits = 0
    for rep in range(reps):
        sample = rng.choice(11, size=60, p=probs).tolist()
        est = bootstrap_mean(sample, seed=rep, resamples=1000)
        hits += est.low <= true_mean <= est.high
    coverage = hits / reps
    assert 0.90 <= coverage <= 0.985, coverage  # 95% +- ~4 standard errors of 400 runs


def test_win_rate_counts_ties_as_half():
    result = win_rate(["a", "a", "b", "tie", None], seed=0)
    assert result["win_rate"]["mean"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert (result["a"], result["b"], result["tie"], result["missing"]) == (2, 1, 1, 1)
