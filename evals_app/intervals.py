"""Means with 95 % confidence intervals, and the gap between groups: the statistics of the bias probe report.

Plain Python and numpy, no Django.

- A group's mean gets a Student t-interval, ``mean ± t(0.975, n - 1) · s / √n`` (``s`` the sample standard
  deviation). One answer gives no interval: its bounds are the mean itself. The bounds are clipped to the measure's
  0..1 scale.
- The gap of a category is the largest group mean minus the smallest. Its interval is a percentile bootstrap
  (``RESAMPLES`` resamples with a fixed seed, so a report is reproducible): each group is resampled with
  replacement, the gap recomputed, and the 2.5th and 97.5th percentiles kept. A t-interval would not do, since the
  gap picks its two groups after looking at the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean of ``n`` values and its confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Gap:
    """The largest group mean minus the smallest (``top`` and ``bottom`` name those groups), with its interval."""

    gap: float
    low: float
    high: float
    top: str
    bottom: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` degrees of freedom (exact closed form for whole ``df``)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    term = total = 1.0
    if df % 2:
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
        extra = math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0
        return 2 / math.pi * (theta + extra)
    for k in range(1, df // 2):
        term *= cos2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


@lru_cache(maxsize=256)
def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (above 0.5) of Student's t with ``df`` degrees of freedom, by bisection."""
    if df < 1 or not 0.5 <= probability < 1:
        raise ValueError("t_quantile needs df >= 1 and a probability from 0.5 to 1")
    target = 2 * probability - 1
    low, high = 0.0, 1.0
    while _t_two_sided(high, df) < target:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if _t_two_sided(middle, df) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def mean_interval(values: Sequence[float], *, confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` with its t-interval, clipped to 0..1. Raises ``ValueError`` when there are none."""
    n = len(values)
    if not n:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, mean, mean, 1)
    deviation = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * deviation / math.sqrt(n)
    return Interval(mean, max(0.0, mean - half), min(1.0, mean + half), n)


def gap_interval(
    groups: Mapping[str, Sequence[float]],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Gap:
    """The gap between the groups' means with its bootstrap interval (see the module's docstring).

    Groups without values are left out; fewer than two groups give a gap of 0.
    """
    filled = {name: np.asarray(values, dtype=float) for name, values in groups.items() if len(values)}
    if len(filled) < 2:
        only = next(iter(filled), "")
        return Gap(0.0, 0.0, 0.0, only, only)
    means = {name: float(math.fsum(values) / len(values)) for name, values in filled.items()}
    top = max(means, key=lambda name: means[name])
    bottom = min(means, key=lambda name: means[name])
    rng = np.random.default_rng(seed)
    resampled = np.stack(
        [rng.choice(values, size=(resamples, len(values)), replace=True).mean(axis=1) for values in filled.values()]
    )
    gaps = resampled.max(axis=0) - resampled.min(axis=0)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(gaps, [tail, 100 - tail])
    return Gap(means[top] - means[bottom], float(low), float(high), top, bottom)
