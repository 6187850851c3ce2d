"""Small-sample statistics for exact-match accuracy.

Evaluation runs tens of examples per (task, split), where the normal approximation breaks down
(0/40 would get a zero-width interval). The Wilson score interval stays inside [0, 1] and is
honest at 0 and n, so every accuracy in the reports carries one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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
