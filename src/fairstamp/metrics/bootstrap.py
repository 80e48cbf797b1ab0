"""Metric values with percentile-bootstrap 95% confidence intervals, seeded explicitly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class MetricValue:
    """A metric (in the metric's own unit, e.g. percent) with its bootstrap CI and sample size."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __format__(self, spec: str) -> str:
        spec = spec or ".1f"
        return f"{self.value:{spec}} [{self.ci_low:{spec}}, {self.ci_high:{spec}}]"


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n_units: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> MetricValue:
    """`statistic(indices)` on all units, and the percentile CI over `n_resamples` resamples.

    `statistic` receives an integer index array (units drawn with replacement) so that any metric
    over items, including per-target macro averages, is resampled the same way.
    """
    if n_units <= 0:
        raise ValueError("cannot compute a metric over zero items")
    value = float(statistic(np.arange(n_units)))
    rng = np.random.default_rng(seed)
    draws = np.array([
        statistic(rng.integers(0, n_units, size=n_units)) for _ in range(n_resamples)
    ], dtype=np.float64)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.nanpercentile(draws, [tail, 100.0 - tail]) if n_resamples else (value, value)
    return MetricValue(value=value, ci_low=float(low), ci_high=float(high), n=n_units)


def percent_true(flags: np.ndarray, *, n_resamples: int = 1000, seed: int = 0) -> MetricValue:
    """% of True in a boolean array (SS, DS, RS, accuracy), with its bootstrap CI."""
    flags = np.asarray(flags, dtype=bool)
    return bootstrap(lambda idx: 100.0 * flags[idx].mean(), len(flags),
                     n_resamples=n_resamples, seed=seed)
