"""Timing statistics: quartiles, spreads, interleaved rounds, and when a figure is quotable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from millennial.evaluate.timing import (
    Spread,
    caveat,
    interleave,
    paired_ratios,
    quartiles,
    quoted,
)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0], (2.0, 3.0, 4.0)),
        ([1.0, 2.0, 3.0, 4.0], (1.75, 2.5, 3.25)),
        ([7.0, 1.0, 3.0], (2.0, 3.0, 5.0)),  # order does not matter
        ([10.0, 10.0, 10.0, 10.0, 1000.0], (10.0, 10.0, 10.0)),  # one burst moves nothing
    ],
)
def test_quartiles_known_values(samples: list[float],
                                expected: tuple[float, float, float]) -> None:
    assert quartiles(samples) == pytest.approx(expected)


def test_quartiles_are_numpys_default_interpolation() -> None:
    samples = list(np.random.default_rng(0).lognormal(size=11))
    assert quartiles(samples) == pytest.approx(tuple(np.percentile(samples, [25, 50, 75])))


def test_a_spread_knows_its_iqr_and_relative_iqr() -> None:
    spread = Spread.of([9.0, 10.0, 11.0, 12.0, 8.0], warmup=2)
    assert (spread.median, spread.q1, spread.q3, spread.n, spread.warmup) == (10.0, 9.0, 11.0,
                                                                              5, 2)
    assert spread.iqr == 2.0 and spread.relative_iqr == pytest.approx(0.2)
    assert Spread.from_dict(spread.to_dict()) == spread
    assert Spread.of([0.0, 0.0, 0.0]).relative_iqr == math.inf
    with pytest.raises(ValueError, match="at least 3 samples"):
        Spread.of([1.0, 2.0])


def test_interleaving_rotates_the_order_and_drops_the_warm_up() -> None:
    calls: list[str] = []

    def run(key: str):
        def timed() -> int:
            calls.append(key)
            return len(calls)
        return timed

    samples = interleave({"a": run("a"), "b": run("b"), "c": run("c")}, repeats=2, warmup=1)
    assert "".join(calls) == "abc" "bca" "cab"
    assert samples == {"a": [6, 8], "b": [4, 9], "c": [5, 7]}  # rounds 2 and 3 only
    assert paired_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]


def test_a_wide_spread_is_too_noisy_to_quote_and_a_tight_one_is_not() -> None:
    tight = Spread.of([97.0, 98.0, 99.0, 100.0, 101.0])
    wide = Spread.of([57.0, 350.0, 640.0, 1060.0, 1700.0])
    assert quoted(tight) == "99.0 (IQR 98.0-100.0)" and caveat(tight, 0.1) is None
    assert quoted(wide) == "640 (IQR 350-1,060)"
    assert str(caveat(wide, 0.1)) == ("too noisy to quote (IQR 111% of the median, over the "
                                      "10% limit)")
    assert caveat(wide, 2.0) is None  # the limit is the reader's


def test_a_ratio_whose_iqr_holds_one_is_no_measurable_difference() -> None:
    slower = Spread.of([1.19, 1.20, 1.21, 1.22, 1.23])
    same = Spread.of([0.97, 0.99, 1.00, 1.02, 1.04])
    assert quoted(slower, ratio=True) == "x1.21 (IQR 1.20-1.22)"
    assert caveat(slower, 0.1, ratio=True) is None
    assert str(caveat(same, 0.1, ratio=True)) == "no measurable difference (its IQR holds 1)"
    assert caveat(same, 0.1) is None  # as a plain figure it is quotable
