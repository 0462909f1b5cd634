"""The overhead part's statistics: a confidence interval for the median of paired ratios.

Each overhead trial runs the bare workflow and ours one right after the other (the
order alternating between trials), and gives one ratio per figure (ours / bare). The
ratios of a shared machine have outliers (a neighbour's burst lands in one half of a
pair), so the figure reported is their median, with the distribution-free interval for
a median from order statistics (the sign-test interval, e.g. Conover, *Practical
Nonparametric Statistics*, 3rd ed., §3.2; Hollander & Wolfe §3.6): for n sorted ratios
x(1) <= ... <= x(n), [x(k), x(n+1-k)] holds the true median with probability
1 - 2 * P(Binomial(n, 1/2) <= k - 1), whatever the ratios' distribution, as long as the
trials are independent. The largest k whose coverage is still >= the level asked for is
used; the coverage reached is reported with it (it is discrete: 96.1% for 12 trials).
Fewer than 6 trials cannot give 95% at all (two trials on one side already have 2/32).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MedianInterval:
    median: float
    low: float
    high: float
    coverage: float  # the interval's exact coverage, >= the level asked for
    trials: int

    @property
    def width(self) -> float:
        return self.high - self.low


def _binomial_half_cdf(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return float(sum(math.comb(n, i) for i in range(k + 1))) / float(2**n)


def median_interval(values: Sequence[float], level: float = 0.95) -> MedianInterval | None:
    """The median of `values` and its order-statistic interval at `level`, or None when
    there are too few values for that level."""
    ordered = sorted(values)
    n = len(ordered)
    best: tuple[int, float] | None = None
    for k in range(1, n // 2 + 1):
        coverage = 1 - 2 * _binomial_half_cdf(n, k - 1)
        if coverage < level:
            break
        best = (k, coverage)
    if best is None:
        return None
    k, coverage = best
    return MedianInterval(statistics.median(ordered), ordered[k - 1], ordered[n - k], coverage, n)


def describe(
    name: str, values: Sequence[float], level: float = 0.95, pairs: str = "paired trials"
) -> str:
    """`name: 0.98 (95% interval 0.96-0.99, 12 paired trials)`, the bench's summary line
    (`pairs` names what gave each ratio: trials, or the simultaneous part's windows)."""
    interval = median_interval(values, level)
    if interval is None:
        median = statistics.median(values) if values else float("nan")
        return (
            f"{name}: {median:.2f} (no {level:.0%} interval: {len(values)} {pairs}, "
            f"it needs {min_trials(level)})"
        )
    return (
        f"{name}: {interval.median:.2f} ({level:.0%} interval {interval.low:.2f}-"
        f"{interval.high:.2f}, {interval.trials} {pairs})"
    )


def min_trials(level: float = 0.95) -> int:
    """The fewest values for which `median_interval` gives an interval at `level`."""
    n = 1
    while 1 - 2 * _binomial_half_cdf(n, 0) < level:
        n += 1
    return n
