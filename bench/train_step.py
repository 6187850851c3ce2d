"""Phase-1 step vs full fine-tune step vs LoRA step, on the default base and batch.

Each variant runs in its own process (so its peak RSS is its own) and reports the best of a few
timed optimizer steps. Beside the measured time ratios: the planner's predicted FLOP ratios (the
implementation's overhead over theory) and the phase-1 step's achieved FLOP/s against the CPU's
measured matmul peak (CPU MFU).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench._base import REPO, default_base_dir
from millennial.cost.hardware import cpu_peak_flops
from millennial.cost.planner import Trainable, model_shape, training_flops_per_token
from millennial.hybrid import TRMConfig
from millennial.params import load_params

VARIANTS = ("phase1", "full", "lora")
BATCH, SEQ, STEPS = 4, 128, 3


def _trm() -> TRMConfig:
    return TRMConfig.from_dict(load_params(REPO / "params.yaml")["trm"])


def worker(variant: str, base_dir: Path) -> dict[str, float]:
    """Build the variant, take a warm-up step and STEPS timed steps; report the fastest."""
    from transformers import AutoModelForCausalLM

    from millennial.hybrid import freeze_base, inject
    from millennial.train.arms import lora_model, matched_lora_rank
    from millennial.train.settings import LoraSettings

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    rank = 0
    if variant == "phase1":
        freeze_base(inject(model, _trm()))
    elif variant == "lora":
        from millennial.hybrid import trm_parameter_count

        settings = LoraSettings("all-linear", 2.0, 0.0, 1e-3)
        rank = matched_lora_rank(model, settings, trm_parameter_count(model.config, _trm()))
        model = lora_model(model, settings, rank)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ))
    times = []
    for _ in range(STEPS + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{variant}: non-finite loss")
    return {"seconds": min(times[1:]), "trainable": sum(p.numel() for p in trainable),
            "lora_rank": rank,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def predicted_flops(variant: str, config: object, rank: int) -> float:
    shape = model_shape(config)
    phase = {"phase1": "phase1", "full": "scratch", "lora": "lora"}[variant]
    trainable = Trainable.for_phase(phase, _trm() if phase == "phase1" else None, lora_rank=rank)
    return training_flops_per_token(shape, SEQ, trainable).model * BATCH * SEQ


def run() -> str:
    from transformers import AutoConfig

    base_dir = default_base_dir()
    config = AutoConfig.from_pretrained(base_dir)
    results = {}
    for variant in VARIANTS:
        process = subprocess.run(
            [sys.executable, "-m", "bench.train_step", "--worker", variant, "--base",
             str(base_dir)], cwd=REPO, capture_output=True, text=True, check=False,
        )
        if process.returncode != 0:
            raise RuntimeError(f"{variant} worker failed: {process.stderr[-2000:]}")
        results[variant] = json.loads(process.stdout.strip().splitlines()[-1])
        results[variant]["flops"] = predicted_flops(variant, config, results[variant]["lora_rank"])
    full = results["full"]
    peak = cpu_peak_flops(refresh=True)  # measured now, beside the step it is compared with
    lines = [
        "## Training step: phase 1 vs full fine-tune vs LoRA",
        "",
        f"Base `{base_dir.relative_to(REPO)}` ({config.model_type}, "
        f"{config.num_hidden_layers} layers), batch {BATCH}x{SEQ} tokens, AdamW, fp32 on "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU'}; best of {STEPS} steps after a warm-up;"
        " each variant in its own process. LoRA rank matched to the TRM's trainable count.",
        "",
        "| step | trainable params | seconds | time vs full | planner FLOPs vs full "
        "| measured / predicted | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, row in results.items():
        time_ratio = row["seconds"] / full["seconds"]
        flop_ratio = row["flops"] / full["flops"]
        lines.append(
            f"| {variant} | {row['trainable']:,} | {row['seconds']:.2f} | {time_ratio:.2f} "
            f"| {flop_ratio:.2f} | {time_ratio / flop_ratio:.2f} | {row['peak_rss_mib']:.0f} |"
        )
    phase1 = results["phase1"]
    achieved = phase1["flops"] / phase1["seconds"]
    lines += [
        "",
        f"Phase-1 step achieved {achieved / 1e9:.1f} GFLOP/s of model FLOPs (planner count) "
        f"against a matmul peak of {peak / 1e9:.1f} GFLOP/s measured in this run: "
        f"CPU MFU {achieved / peak:.2f}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=VARIANTS)
    parser.add_argument("--base", type=Path)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.base)))
    else:
        print(run())
