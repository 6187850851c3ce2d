"""What `ComponentRates.calibrate` measures besides the step: the TRM blocks' share of it, and
the machine's matmul rate at the step's shapes.

A step's time is one number; the planner splits its FLOPs into the base's and the TRM's, and
needs each part's time to learn each part's rate. The TRM blocks are timed on their own, on
random hidden states of the step's shape, forward and backward as a phase-1 step runs them
(the lowest block takes no input gradient: the frozen base below it needs none).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from millennial.hybrid.injection import trm_blocks


def trm_block_seconds(model: nn.Module, batch: int, seq: int, repeats: int = 5) -> float:
    """Median seconds of one forward and backward of every TRM block of `model` on a
    (batch, seq, hidden) input, after a warm-up."""
    blocks = trm_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no TRM blocks to time")
    parameter = next(blocks[0].parameters())
    width = model.config.get_text_config().hidden_size
    positions = torch.arange(seq, device=parameter.device).expand(batch, seq)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(batch, seq, width, generator=generator).to(parameter.device)
              .requires_grad_(index > 0) for index in range(len(blocks))]

    def once() -> float:
        start = time.perf_counter()
        for block, hidden in zip(blocks, inputs, strict=True):
            block(hidden, positions, None, None).sum().backward()
        if parameter.device.type == "cuda":
            torch.cuda.synchronize(parameter.device)
        return time.perf_counter() - start

    once()  # warm-up: first-call allocations
    seconds = statistics.median(once() for _ in range(repeats))
    for block in blocks:
        block.zero_grad(set_to_none=True)
    return seconds


def matmul_flops_per_s(tokens: int, width: int, repeats: int = 20,
                       device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> float:
    """Median FLOP/s of a (tokens x width) @ (width x width) matmul: a base layer's projection
    at the step's shape, in the dtype its matmuls run in."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(tokens, width, generator=generator).to(device, dtype)
    b = torch.randn(width, width, generator=generator).to(device, dtype)

    def once() -> float:
        start = time.perf_counter()
        a @ b
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(3):  # warm-up
        once()
    return 2 * tokens * width * width / statistics.median(once() for _ in range(repeats))
