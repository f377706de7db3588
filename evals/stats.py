"""95% intervals for eval metrics: Wilson for rates, a seeded bootstrap for other means.

A number from 40 items says little without its spread: 0.80 from 40 yes/no questions is
[0.65, 0.90]. Every summary value the harness reports carries one of these, and ``agents eval
compare`` calls a difference noise when either value lies inside the other's interval.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Literal

from pydantic import BaseModel

#: z for a two-sided 95% interval.
Z95 = 1.959963984540054
#: Bootstrap resamples: enough that the interval's ends move by well under 0.01 between seeds.
RESAMPLES = 2000


class Estimate(BaseModel):
    """A mean over ``n`` items and its 95% interval; ``kind`` says how it was computed."""

    value: float
    n: int
    low: float
    high: float
    kind: Literal["wilson", "bootstrap"]

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def text(self) -> str:
        """``0.800 [0.65, 0.90] n=40``: how every report shows a metric."""
        return f"{self.value:.3f} [{self.low:.2f}, {self.high:.2f}] n={self.n}"


def wilson(successes: float, n: int) -> Estimate:
    """The Wilson score interval of a rate: unlike the normal one it stays inside [0, 1] and is
    honest at 0/n and n/n, which small suites hit often."""
    if n == 0:
        raise ValueError("an interval needs at least one item")
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return Estimate(value=p, n=n, low=max(0.0, centre - half), high=min(1.0, centre + half), kind="wilson")


def bootstrap_mean(values: list[float], seed: int = 0) -> Estimate:
    """The percentile bootstrap of a mean (F1, nDCG, latency): seeded, so a report rebuilt from the
    same results shows the same interval."""
    if not values:
        raise ValueError("an interval needs at least one item")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(RESAMPLES))
    low, high = means[int(0.025 * RESAMPLES)], means[int(0.975 * RESAMPLES) - 1]
    return Estimate(value=statistics.fmean(values), n=n, low=low, high=high, kind="bootstrap")


def estimate(values: list[float]) -> Estimate:
    """Wilson when every value is 0 or 1 (a rate), else the bootstrap."""
    if all(v in (0.0, 1.0) for v in values):
        return wilson(sum(values), len(values))
    return bootstrap_mean(values)
