"""Planner accuracy: predicted vs measured phase-1 step time for three base sizes.

The planner turns FLOPs into time through one number, the MFU. Calibrate it on the smallest base
(the MFU a real step achieved there), then predict the step time of two larger bases from their
planner FLOPs alone and compare with what they measure. Random LLaMA bases, same TRM, same batch.
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from millennial.cost.planner import Trainable, model_shape, training_flops_per_token
from millennial.hybrid import TRMConfig, freeze_base, inject

BASES = {  # name: (hidden, layers, heads, intermediate)
    "llama-13M": (256, 6, 4, 704),
    "llama-45M": (512, 8, 8, 1408),
    "llama-110M": (768, 12, 12, 2048),
}
TRM = TRMConfig(injection_layers=[-2, -1], hidden_size=128, num_heads=4, num_layers=2,
                latent_steps=4, cycles=2, ffn_size=384)
BATCH, SEQ, STEPS, VOCAB = 4, 128, 3, 8192


def measure(hidden: int, layers: int, heads: int, intermediate: int) -> tuple[float, float]:
    """(planner FLOPs of one phase-1 step, fastest measured seconds of STEPS steps)."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         intermediate_size=intermediate)
    torch.manual_seed(0)
    model = inject(LlamaForCausalLM(config), TRM)
    freeze_base(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    times = []
    for _ in range(STEPS + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    flops = training_flops_per_token(model_shape(config), SEQ, Trainable(trm=TRM)).model
    return flops * BATCH * SEQ, min(times[1:])


def run() -> str:
    rows = {name: measure(*shape) for name, shape in BASES.items()}
    calibration = next(iter(rows))
    flops0, seconds0 = rows[calibration]
    throughput = flops0 / seconds0  # = peak x MFU, calibrated on the smallest base
    lines = [
        "## Planner accuracy: predicted vs measured phase-1 step time",
        "",
        f"Calibrated on {calibration} (achieved {throughput / 1e9:.1f} GFLOP/s of planner FLOPs);"
        f" batch {BATCH}x{SEQ}, TRM width {TRM.hidden_size} at the last two layers.",
        "",
        "| base | planner GFLOPs/step | predicted s | measured s | measured / predicted |",
        "|---|---|---|---|---|",
    ]
    for name, (flops, seconds) in rows.items():
        predicted = flops / throughput
        lines.append(f"| {name} | {flops / 1e9:.1f} | {predicted:.2f} | {seconds:.2f} "
                     f"| {seconds / predicted:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
