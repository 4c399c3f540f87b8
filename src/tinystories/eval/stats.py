"""Means with seeded bootstrap confidence intervals, and pairwise win rates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float  # bootstrap percentile interval
    high: float
    n: int  # observations used (missing judgments excluded)
    missing: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


def bootstrap_mean(values: Sequence[float | None], seed: int = 0, resamples: int = 2000,
                   level: float = 0.95) -> Estimate:
    """Mean of the present values and its percentile bootstrap interval; None counts as missing."""
    present = np.asarray([v for v in values if v is not None], dtype=np.float64)
    missing = len(values) - len(present)
    if len(present) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, missing)
    rng = np.random.default_rng(seed)
    means = present[rng.integers(0, len(present), size=(resamples, len(present)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(present.mean()), float(low), float(high), len(present), missing)


def win_rate(outcomes: Sequence[str | None], seed: int = 0) -> dict[str, Any]:
    """Win rate of model A ("a" = 1, "tie" = 0.5, "b" = 0) with its interval, and the counts."""
    value = {"a": 1.0, "tie": 0.5, "b": 0.0}
    est = bootstrap_mean([None if o is None else value[o] for o in outcomes], seed=seed)
    counts = {k: sum(o == k for o in outcomes) for k in value}
    return {"win_rate": est.to_json(), **counts, "missing": sum(o is None for o in outcomes)}
