"""The overhead part's interval (bench/stats.py): the sign-test interval for a median."""

from __future__ import annotations

import math

import pytest

from bench.stats import describe, median_interval, min_trials


def test_twelve_trials_give_the_third_smallest_and_third_largest() -> None:
    # P(Binomial(12, 1/2) <= 2) = 79/4096, so [x(3), x(10)] covers 1 - 2 * 79/4096 = 96.1%,
    # and [x(4), x(9)] only 1 - 2 * 299/4096 = 85.4%.
    ratios = [0.80, 0.99, 0.91, 0.95, 0.97, 1.02, 0.93, 0.96, 0.94, 0.98, 1.10, 0.92]
    interval = median_interval(ratios)
    assert interval is not None
    assert (interval.low, interval.high) == (0.92, 0.99)
    assert interval.median == pytest.approx(0.955)
    assert interval.coverage == pytest.approx(1 - 2 * 79 / 4096)
    assert interval.trials == 12


def test_a_higher_level_widens_the_interval() -> None:
    ratios = [float(i) for i in range(1, 21)]
    at_95, at_99 = median_interval(ratios, 0.95), median_interval(ratios, 0.99)
    assert at_95 is not None and at_99 is not None
    assert (at_95.low, at_95.high) == (6.0, 15.0)  # k = 6: coverage 95.9%
    assert (at_99.low, at_99.high) == (4.0, 17.0)  # k = 4: coverage 99.7%


def test_too_few_trials_give_no_interval_and_say_how_many_it_needs() -> None:
    assert min_trials(0.95) == 6
    assert median_interval([1.0, 1.1, 0.9, 1.2, 1.05]) is None
    line = describe("overhead ratio", [1.0, 1.1, 0.9])
    assert line == "overhead ratio: 1.00 (no 95% interval: 3 paired trials, it needs 6)"


def test_the_summary_line_names_median_interval_and_trials() -> None:
    line = describe("worker CPU ratio", [1.10, 1.04, 1.06, 1.20, 1.05, 1.08])
    # Six trials: only the extremes give >= 95% (1 - 2/64 = 96.9%).
    assert line == "worker CPU ratio: 1.07 (95% interval 1.04-1.20, 6 paired trials)"


def test_no_trials_at_all_is_not_a_number() -> None:
    assert describe("overhead ratio", []).startswith("overhead ratio: nan ")
    assert median_interval([]) is None
    assert math.isnan(float(describe("overhead ratio", []).split()[2]))
