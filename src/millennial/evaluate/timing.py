"""Repeated timings a reader can trust: warm-up runs discarded, variants interleaved, the median
with its interquartile range, and ratios taken round by round.

Wall-clock on a shared machine drifts (another job starts, the clock throttles) and bursts (a
neighbour's thread lands on our core). One best-of-N or a median of three hides both: the same
code measured 1.28x and 7.05x its base. So every timed variant runs once per round, in an order
that rotates from round to round, and a ratio is taken within each round, where drift hits both
sides alike. The median resists bursts; the IQR (q3 - q1) says how far the samples scatter, and
relative to the median it says whether a figure can be quoted at all.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

Key = TypeVar("Key")
Sample = TypeVar("Sample")
MIN_SAMPLES = 3  # fewer have no middle half to speak of


def quartiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """(q1, median, q3) by linear interpolation between order statistics (Hyndman and Fan's
    type 7: numpy's default, Excel's QUARTILE.INC)."""
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, median, q3


@dataclass(frozen=True)
class Spread:
    """The median of repeated samples and the quartiles around it."""

    median: float
    q1: float
    q3: float
    n: int  # samples the quartiles are taken over
    warmup: int  # runs before them, discarded (first-call allocations, lazy initialisation)

    @classmethod
    def of(cls, samples: Sequence[float], warmup: int = 0) -> Spread:
        if len(samples) < MIN_SAMPLES:
            raise ValueError(f"a spread needs at least {MIN_SAMPLES} samples, got {len(samples)}")
        q1, median, q3 = quartiles(samples)
        return cls(median, q1, q3, len(samples), warmup)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def relative_iqr(self) -> float:
        """IQR / median: the scatter as a share of the figure (inf for a median of 0)."""
        return self.iqr / abs(self.median) if self.median else math.inf

    def quotable(self, max_relative_iqr: float) -> bool:
        """Is the scatter narrow enough for the median to mean something?"""
        return self.relative_iqr <= max_relative_iqr

    def excludes(self, value: float) -> bool:
        """`value` lies outside the middle half of the samples: for a ratio and 1, three rounds
        in four or more went the same way, so the difference is more than noise."""
        return not self.q1 <= value <= self.q3

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "iqr": self.iqr,
                "relative_iqr": self.relative_iqr, "n": self.n, "warmup": self.warmup}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spread:
        return cls(float(data["median"]), float(data["q1"]), float(data["q3"]), int(data["n"]),
                   int(data["warmup"]))


def interleave(runs: Mapping[Key, Callable[[], Sample]], *, repeats: int,
               warmup: int) -> dict[Key, list[Sample]]:
    """`warmup` discarded rounds, then `repeats` kept ones; each round calls every run once,
    starting one further along each time, so no run always follows the same neighbour."""
    order = list(runs)
    samples: dict[Key, list[Sample]] = {key: [] for key in order}
    for round_index in range(warmup + repeats):
        shift = round_index % len(order)
        for key in order[shift:] + order[:shift]:
            sample = runs[key]()
            if round_index >= warmup:
                samples[key].append(sample)
    return samples


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two interleaved runs (their spread is the ratio's spread)."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def quoted(spread: Spread, ratio: bool = False) -> str:
    """The median and its IQR as a reader sees them: `97.4 (IQR 95.1-99.0)` (three significant
    digits in the median, the quartiles to the same decimals), `x1.21 (IQR 1.20-1.23)`."""
    if ratio:
        decimals, prefix = 2, "x"
    else:
        size = math.floor(math.log10(abs(spread.median))) if spread.median else 0
        decimals, prefix = max(0, 2 - size), ""
    median, q1, q3 = (f"{value:,.{decimals}f}" for value in (spread.median, spread.q1, spread.q3))
    return f"{prefix}{median} (IQR {q1}-{q3})"


@dataclass(frozen=True)
class Caveat:
    """Why a median should not be quoted as it stands."""

    verdict: str  # a few words, for a table cell
    reason: str  # the numbers behind it

    def __str__(self) -> str:
        return f"{self.verdict} ({self.reason})"


def caveat(spread: Spread, max_relative_iqr: float, ratio: bool = False) -> Caveat | None:
    """None if the median can be quoted as it stands.

    Too wide a spread (IQR over `max_relative_iqr` of the median) is noise, not a figure; a
    ratio whose IQR holds 1 is no measurable difference, neither slowdown nor speed-up.
    """
    if not spread.quotable(max_relative_iqr):
        return Caveat("too noisy to quote", f"IQR {spread.relative_iqr:.0%} of the median, over "
                                            f"the {max_relative_iqr:.0%} limit")
    if ratio and not spread.excludes(1.0):
        return Caveat("no measurable difference", "its IQR holds 1")
    return None


def annotated(spread: Spread, max_relative_iqr: float, ratio: bool = False) -> str:
    """A table cell: the quoted figure, then its caveat's verdict if it has one."""
    note = caveat(spread, max_relative_iqr, ratio)
    return quoted(spread, ratio) + (f", {note.verdict}" if note else "")
