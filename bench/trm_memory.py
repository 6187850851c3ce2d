"""Activation memory vs TRM cycles: no-grad cycles must keep no graph, so memory stays flat.

Measures, for T = 1, 2, 4, 8 (grad_cycles = 1), one phase-1 forward+backward on the same base and
batch: bytes autograd saved for backward (exact, any device), CUDA peak memory when on a GPU, and
wall time. Compute grows with T; saved activations must not.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from millennial.hybrid import TRMConfig, freeze_base, inject

CYCLES = (1, 2, 4, 8)
REPEATS = 3


def bench_base(device: torch.device) -> LlamaForCausalLM:
    """A 6-layer, 256-wide random LLaMA: big enough to measure, small enough for 2 cores."""
    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=768,
                         num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device)


def measure(cycles: int, device: torch.device, batch: int, seq: int) -> dict[str, object]:
    config = TRMConfig(injection_layers=[2, -1], hidden_size=64, num_heads=4, latent_steps=6,
                       cycles=cycles, grad_cycles=1, ffn_size=192)
    model = inject(bench_base(device), config)
    freeze_base(model)
    model.train()
    ids = torch.randint(0, 4096, (batch, seq), device=device)
    saved_bytes = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved_bytes
        saved_bytes += tensor.numel() * tensor.element_size()
        return tensor

    timings = []
    for _ in range(REPEATS):  # the fastest of a few runs: least disturbed by other processes
        saved_bytes = 0
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at cycles={cycles}")
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if device.type == "cuda" else "n/a"
    return {"cycles": cycles, "calls": config.total_calls, "saved_mib": saved_bytes / 2**20,
            "peak_mib": peak, "seconds": min(timings)}


def run(device: str | None = None, batch: int = 4, seq: int = 128) -> str:
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = [measure(cycles, target, batch, seq) for cycles in CYCLES]
    first = rows[0]
    lines = [
        "## TRM activation memory vs cycles",
        "",
        f"Phase-1 forward+backward, random 6-layer LLaMA (hidden 256), TRM at 2 layers "
        f"(width 64, n=6, grad_cycles=1), batch {batch}x{seq}, device {target.type}.",
        "",
        "| cycles T | f calls/token/block | saved activations MiB | ratio vs T=1 "
        "| CUDA peak MiB | time ratio vs T=1 |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['cycles']} | {row['calls']} | {row['saved_mib']:.1f} "
            f"| {row['saved_mib'] / first['saved_mib']:.2f} | {row['peak_mib']} "
            f"| {row['seconds'] / first['seconds']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    print(run(args.device))
