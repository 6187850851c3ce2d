"""Small-sample statistics for exact-match accuracy and for differences between arms.

Evaluation runs about a hundred examples per (task, split), where the normal approximation is
poor near 0 and 1 (0/40 would get a zero-width interval). The Wilson score interval stays inside
[0, 1] and is honest at 0 and n, so every accuracy in the reports carries one. Two arms answer
the same examples, so their difference is paired: for exact match the Agresti-Min interval for
matched proportions (it stays honest when few answers differ, where a bootstrap is
overconfident), for losses a paired bootstrap. A difference whose interval holds 0 is no
difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% standard normal quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for `correct` successes out of `n`; n = 0 knows nothing: (0, 1)."""
    if n < 0 or not 0 <= correct <= max(n, 0):
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if correct == 0 else max(0.0, center - half)
    high = 1.0 if correct == n else min(1.0, center + half)
    return low, high


@dataclass(frozen=True)
class Proportion:
    """`correct` out of `n`, with its 95% Wilson interval."""

    correct: int
    n: int

    @property
    def rate(self) -> float | None:
        """None for n = 0: an accuracy of no examples is undefined, not zero."""
        return self.correct / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {"accuracy": self.rate, "low": low, "high": high, "n": self.n,
                "correct": self.correct}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Proportion:
        return cls(int(data["correct"]), int(data["n"]))


def pooled(parts: Iterable[Proportion]) -> Proportion:
    """All examples of several cells counted together (each example weighs the same)."""
    items = list(parts)
    return Proportion(sum(p.correct for p in items), sum(p.n for p in items))


def gain_per_usd(accuracy: float | None, base_accuracy: float | None,
                 usd: float | None) -> float | None:
    """Accuracy points gained over the base per training dollar; None where undefined."""
    if accuracy is None or base_accuracy is None or not usd:
        return None
    return (accuracy - base_accuracy) / usd


BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) over paired examples, with a 95% paired-bootstrap interval.

    With `strata`, the mean is the unweighted mean of per-stratum means (each task weighs the
    same) and resampling happens within each stratum.
    """

    difference: float
    low: float
    high: float
    n: int

    @property
    def established(self) -> bool:
        """The interval excludes zero: a difference, not noise."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {"difference": self.difference, "low": self.low, "high": self.high, "n": self.n,
                "established": self.established}


def paired_proportions(a: list[bool], b: list[bool], z: float = Z95) -> Difference:
    """Difference of two matched proportions (the same examples right or wrong under two arms),
    with the Agresti-Min (2005) interval: a Wald interval after adding 1/2 to each cell of the
    2x2 table. Only the discordant pairs inform it."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired proportions need two equal, non-empty lists; got {len(a)} "
                         f"and {len(b)}")
    n = len(a)
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    shrunk = n + 2
    p_a, p_b = (only_a + 0.5) / shrunk, (only_b + 0.5) / shrunk
    centre = p_a - p_b
    half = z * math.sqrt(max(p_a + p_b - centre * centre, 0.0) / shrunk)
    return Difference((only_a - only_b) / n, max(-1.0, centre - half), min(1.0, centre + half), n)


def paired_difference(a: list[float], b: list[float], strata: list[str] | None = None,
                      seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> Difference:
    """Paired bootstrap of mean(a) - mean(b): the same examples scored by two arms."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired difference needs two equal, non-empty lists; got {len(a)} "
                         f"and {len(b)}")
    labels = strata or ["all"] * len(a)
    groups = [np.flatnonzero(np.array(labels) == label) for label in sorted(set(labels))]
    delta = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    point = float(np.mean([delta[g].mean() for g in groups]))
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    for group in groups:
        picks = rng.integers(0, len(group), size=(resamples, len(group)))
        draws += delta[group][picks].mean(axis=1)
    draws /= len(groups)
    low, high = np.quantile(draws, [0.025, 0.975])
    return Difference(point, float(low), float(high), len(a))
