"""Test-time recursion depth: does thinking longer (more cycles T, more latent steps n) help?

TRM blocks read `self.config.cycles` and `self.config.latent_steps` on every forward, so depth is
changed at evaluation time by swapping each block's config, and swapped back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from millennial.hybrid.config import TRMConfig
from millennial.hybrid.injection import trm_blocks


@dataclass(frozen=True)
class Depth:
    cycles: int
    latent_steps: int


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


@contextmanager
def recursion_depth(model: nn.Module, depth: Depth) -> Iterator[nn.Module]:
    """Within this block every TRM block of `model` recurses `depth` deep.

    `grad_cycles` is capped at the new `cycles` (the config requires it; evaluation keeps no
    gradients anyway). The original configs are restored on exit, also after an error.
    """
    blocks = trm_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no TRM blocks: nothing to sweep")
    originals = [block.config for block in blocks]
    try:
        for block, config in zip(blocks, originals, strict=True):
            block.config = replace(config, cycles=depth.cycles, latent_steps=depth.latent_steps,
                                   grad_cycles=min(config.grad_cycles, depth.cycles))
        yield model
    finally:
        for block, config in zip(blocks, originals, strict=True):
            block.config = config


def sweep_row(arm: str, depth: Depth, trained: TRMConfig, accuracy: dict[str, Any],
              latency_ms: float) -> dict[str, Any]:
    """One row of `metrics/eval_sweep.json` (a DVC plot source)."""
    return {
        "arm": arm,
        "cycles": depth.cycles,
        "latent_steps": depth.latent_steps,
        "trained_depth": depth == Depth(trained.cycles, trained.latent_steps),
        "f_calls_per_token": depth.cycles * (depth.latent_steps + 1),
        **accuracy,
        "latency_ms": latency_ms,
    }
