"""Test-time recursion depth: does thinking longer (more cycles T, more latent steps n) help?

TRM blocks read `self.config.cycles` and `self.config.latent_steps` on every forward, so depth is
changed at evaluation time by swapping each block's config (`millennial.hybrid.injection.
recursion_depth`), and swapped back afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from millennial.hybrid.config import TRMConfig
from millennial.hybrid.injection import Depth


def sweep_points(trained: TRMConfig, cycles: Sequence[int],
                 latent_steps: Sequence[int]) -> list[Depth]:
    """Each `cycles` value at the trained n, and each `latent_steps` value at the trained T.

    One knob at a time around the trained depth, not the full grid: every point costs a full
    generation pass, and the cross already answers "does more of this knob help?".
    """
    points = {Depth(trained.cycles, trained.latent_steps)}
    points.update(Depth(c, trained.latent_steps) for c in cycles)
    points.update(Depth(trained.cycles, n) for n in latent_steps)
    return sorted(points, key=lambda d: (d.cycles, d.latent_steps))


def sweep_row(arm: str, depth: Depth, trained: Depth, accuracy: dict[str, Any],
              latency: dict[str, Any]) -> dict[str, Any]:
    """One row of `metrics/eval_sweep.json` (a DVC plot source); `latency`: the median ms per
    token and its ratio to the base, each beside its spread."""
    return {
        "arm": arm,
        "cycles": depth.cycles,
        "latent_steps": depth.latent_steps,
        "trained_depth": depth == trained,
        "f_calls_per_token": depth.cycles * (depth.latent_steps + 1),
        **accuracy,
        **latency,
    }
