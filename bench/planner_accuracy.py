"""Planner accuracy: predicted vs measured phase-1 step time for three base sizes.

Calibrate on the smallest base, predict the step time of two larger bases from their planner
FLOPs, and compare with what they measure. Two calibrations side by side:
- one MFU for the whole step (what `--calibrate` does with a record without `components`);
- per-component rates (`ComponentRates`, what `--calibrate` does with a phase-1 record that
  has them, as `train_phase1` writes): the TRM blocks, timed alone on the calibration base
  (`trm_block_seconds`), get their own rate; the base's FLOPs run at the machine's matmul rate
  (probed at the step's shape) plus a fixed time per decoder layer learnt from the rest of the
  calibration step. The TRM's narrow matmuls and many small ops run far below the base's wide
  matmuls, and its share of the FLOPs shrinks as the base grows; a small base's norms,
  activations and dispatch weigh more than a large one's: one MFU learnt on a small base
  undersells larger ones.
Random LLaMA bases, same TRM, same batch; each step timed as the median of several after a
warm-up.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from millennial.cost.components import matmul_flops_per_s, trm_block_seconds
from millennial.cost.planner import (
    ComponentRates,
    FlopBreakdown,
    Trainable,
    component_timings,
    model_shape,
    training_flops_per_token,
)
from millennial.hybrid import TRMConfig, freeze_base, inject

BASES = {  # name: (hidden, layers, heads, intermediate)
    "llama-13M": (256, 6, 4, 704),
    "llama-45M": (512, 8, 8, 1408),
    "llama-110M": (768, 12, 12, 2048),
}
TRM = TRMConfig(injection_layers=[-2, -1], hidden_size=128, num_heads=4, num_layers=2,
                latent_steps=4, cycles=2, ffn_size=384)
BATCH, SEQ, STEPS, VOCAB = 4, 128, 7, 8192


def measure(hidden: int, layers: int, heads: int, intermediate: int, calibrating: bool
            ) -> tuple[FlopBreakdown, float, float | None]:
    """(planner FLOPs per token, median step seconds, TRM blocks' seconds when calibrating)."""
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
    trm = trm_block_seconds(model, BATCH, SEQ, repeats=STEPS) if calibrating else None
    flops = training_flops_per_token(model_shape(config), SEQ, Trainable(trm=TRM))
    return flops, statistics.median(times[1:]), trm


def run() -> str:
    names = list(BASES)
    rows = {name: measure(*BASES[name], calibrating=name == names[0]) for name in names}
    tokens = BATCH * SEQ
    flops0, seconds0, trm0 = rows[names[0]]
    assert trm0 is not None
    throughput = flops0.executed * tokens / seconds0  # one MFU: peak x MFU, calibrated
    calibration = BASES[names[0]]
    matmul = matmul_flops_per_s(tokens, calibration[0])
    rates = ComponentRates.calibrate(component_timings(
        flops0, micro_batch_tokens=tokens, layers=calibration[1], micro_batch_seconds=seconds0,
        steps_timed=STEPS, trm_seconds=trm0, matmul_flops_per_s=matmul))
    lines = [
        "## Planner accuracy: predicted vs measured phase-1 step time",
        "",
        f"Calibrated on {names[0]}: the whole step achieved {throughput / 1e9:.1f} GFLOP/s of "
        f"planner FLOPs (one MFU). Per component: the TRM blocks timed alone ({trm0:.3f} s of "
        f"the {seconds0:.3f} s step) achieved {rates.trm / 1e9:.1f} GFLOP/s; the base's matmuls "
        f"run at the probed {rates.matmul / 1e9:.1f} GFLOP/s ({tokens} x {calibration[0]} @ "
        f"{calibration[0]} x {calibration[0]}) plus {rates.layer_seconds * 1e3:.2f} ms per "
        f"decoder layer. Batch {BATCH}x{SEQ}, TRM width {TRM.hidden_size} at the last two "
        f"layers; median of {STEPS} steps after a warm-up.",
        "",
        "| base | planner GFLOPs/step | TRM share of FLOPs | measured s | one MFU: predicted s "
        "| measured / predicted | per component: predicted s | measured / predicted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (flops, seconds, _) in rows.items():
        total = flops.executed * tokens
        single = total / throughput
        component = rates.step_seconds(flops, tokens, BASES[name][1])
        share = (flops.trm_forward + flops.trm_backward) / flops.executed
        lines.append(f"| {name} | {total / 1e9:.1f} | {share:.0%} | {seconds:.2f} | {single:.2f} "
                     f"| {seconds / single:.2f} | {component:.2f} | {seconds / component:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
