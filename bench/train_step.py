"""Phase-1 step vs full fine-tune step vs LoRA step, on the default base and batch.

Each variant lives in its own worker process (so its peak RSS is its own), and the three take
their optimizer steps in turn, one each per round, after a warm-up round: a machine that slows
down mid-run slows every variant alike (`millennial.evaluate.timing`). Step times are the median
and IQR of the kept rounds; ratios to the full fine-tune are taken within each round. Beside
them: the planner's predicted FLOP ratios (the implementation's overhead over theory) and the
phase-1 step's achieved FLOP/s against the CPU's measured matmul peak (CPU MFU). The three
workers are resident together: about the sum of their peak RSS in memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench._base import REPO, default_base_dir, process_memory
from millennial.cost.hardware import cpu_peak_flops
from millennial.cost.planner import Trainable, model_shape, training_flops_per_token
from millennial.evaluate.timing import Spread, annotated, interleave, paired_ratios
from millennial.hybrid import TRMConfig
from millennial.params import load_params

VARIANTS = ("phase1", "full", "lora")
BATCH, SEQ = 4, 128
WARMUP, STEPS = 1, 5
MAX_RELATIVE_IQR = 0.10  # as params.yaml's evaluate.speed.max_relative_iqr


def _trm() -> TRMConfig:
    return TRMConfig.from_dict(load_params(REPO / "params.yaml")["trm"])


def worker(variant: str, base_dir: Path) -> None:
    """Build the variant and say so (a JSON line), then take one timed optimizer step per
    `step` line on stdin, answering each with its seconds; at end of input, report peak RSS."""
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
    print(json.dumps({"trainable": sum(p.numel() for p in trainable), "lora_rank": rank}),
          flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        seconds = time.perf_counter() - start
        if not torch.isfinite(loss):
            raise RuntimeError(f"{variant}: non-finite loss")
        print(json.dumps({"seconds": seconds}), flush=True)
    print(json.dumps({"peak_rss_mib": process_memory("VmHWM") / 2**20}), flush=True)


class Worker:
    """One variant's worker process, driven a step at a time (its stderr is ours)."""

    def __init__(self, variant: str, base_dir: Path) -> None:
        self.variant = variant
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.train_step", "--worker", variant, "--base",
             str(base_dir)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.built = self._answer()

    def _answer(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.variant} worker failed (exit code "
                               f"{self.process.wait()}): its error is printed above")
        return json.loads(line)

    def step(self) -> float:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self._answer()["seconds"]

    def finish(self) -> dict[str, Any]:
        """Close the worker's input; its last answer is its peak RSS."""
        self.process.stdin.close()
        final = self._answer()
        self.process.wait()
        return final


def predicted_flops(variant: str, config: object, rank: int) -> float:
    shape = model_shape(config)
    phase = {"phase1": "phase1", "full": "scratch", "lora": "lora"}[variant]
    trainable = Trainable.for_phase(phase, _trm() if phase == "phase1" else None, lora_rank=rank)
    return training_flops_per_token(shape, SEQ, trainable).model * BATCH * SEQ


def run() -> str:
    from transformers import AutoConfig

    base_dir = default_base_dir()
    config = AutoConfig.from_pretrained(base_dir)
    workers: dict[str, Worker] = {}
    try:
        for variant in VARIANTS:
            workers[variant] = Worker(variant, base_dir)
        seconds = interleave({v: w.step for v, w in workers.items()}, repeats=STEPS,
                             warmup=WARMUP)
        finished = {variant: w.finish() for variant, w in workers.items()}
    except BaseException:
        for started in workers.values():
            started.process.kill()
        raise
    flops = {variant: predicted_flops(variant, config, w.built["lora_rank"])
             for variant, w in workers.items()}
    peak = cpu_peak_flops(refresh=True)  # measured now, beside the step it is compared with
    lines = [
        "## Training step: phase 1 vs full fine-tune vs LoRA",
        "",
        f"Base `{base_dir.relative_to(REPO)}` ({config.model_type}, "
        f"{config.num_hidden_layers} layers), batch {BATCH}x{SEQ} tokens, AdamW, fp32 on "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU'}; each variant in its own process, the "
        f"three stepping in turn: median (IQR) of {STEPS} rounds after {WARMUP} warm-up, ratios "
        "to the full fine-tune taken within each round. LoRA rank matched to the TRM's trainable "
        f"count. A figure whose IQR exceeds {MAX_RELATIVE_IQR:.0%} of its median is too noisy "
        "to quote; a ratio whose IQR holds 1 is no measurable difference.",
        "",
        "| step | trainable params | seconds | time vs full | planner FLOPs vs full "
        "| measured / predicted | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, w in workers.items():
        ratio = Spread.of(paired_ratios(seconds[variant], seconds["full"]), WARMUP)
        flop_ratio = flops[variant] / flops["full"]
        step = Spread.of(seconds[variant], WARMUP)
        lines.append(
            f"| {variant} | {w.built['trainable']:,} | {annotated(step, MAX_RELATIVE_IQR)} | "
            + ("x1 (is the full fine-tune)" if variant == "full"
               else annotated(ratio, MAX_RELATIVE_IQR, ratio=True))
            + f" | {flop_ratio:.2f} | {ratio.median / flop_ratio:.2f} "
            f"| {finished[variant]['peak_rss_mib']:.0f} |"
        )
    phase1 = Spread.of(seconds["phase1"], WARMUP)
    achieved = flops["phase1"] / phase1.median
    lines += [
        "",
        f"Phase-1 step achieved {achieved / 1e9:.1f} GFLOP/s of model FLOPs (planner count, "
        f"median step) against a matmul peak of {peak / 1e9:.1f} GFLOP/s measured in this run: "
        f"CPU MFU {achieved / peak:.2f}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=VARIANTS)
    parser.add_argument("--base", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.base)
    else:
        print(run())
