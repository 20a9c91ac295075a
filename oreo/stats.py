"""Statistics for comparing methods over seeds: mean ± std, and paired differences with a bootstrap interval.

Methods are compared on the same seeds (the same problems, teacher data and initialisation), so the
difference is taken seed by seed and its uncertainty comes from how it varies across seeds, not from
how each method's accuracy does.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def bootstrap_ci(values: list[float], *, level: float = 0.95, resamples: int = 10_000, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``: resample them with replacement ``resamples``
    times (seeded), and take the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means
    (nearest rank)."""
    if not values:
        raise ValueError("bootstrap_ci: no values")
    rng, n = random.Random(seed), len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    lo = means[max(0, min(resamples - 1, round((1 - level) / 2 * resamples)))]
    hi = means[max(0, min(resamples - 1, round((1 + level) / 2 * resamples) - 1))]
    return lo, hi


@dataclass(frozen=True)
class Paired:
    """``a`` − ``b`` on the same seeds: per-seed differences, their mean and its bootstrap interval."""
    a: str
    b: str
    diffs: tuple[float, ...]
    mean: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        """``a > b``, ``a < b`` (the interval excludes 0) or ``tie`` (it holds 0)."""
        return f"{self.a} > {self.b}" if self.low > 0 else f"{self.a} < {self.b}" if self.high < 0 else "tie"


def paired(a: str, b: str, a_values: list[float], b_values: list[float], **bootstrap) -> Paired:
    """``a`` − ``b`` seed by seed (the lists are in the same seed order)."""
    if len(a_values) != len(b_values) or not a_values:
        raise ValueError(f"paired: {a} has {len(a_values)} seeds and {b} {len(b_values)}")
    diffs = tuple(x - y for x, y in zip(a_values, b_values))
    low, high = bootstrap_ci(list(diffs), **bootstrap)
    return Paired(a, b, diffs, statistics.mean(diffs), low, high)
