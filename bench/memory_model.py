"""The planner's memory against measurement on this CPU: phase 1, LoRA and a full fine-tune.

Each arm trains one AdamW step of a random 8-layer LLaMA (hidden 512) in its own process, so
its peak RSS (VmHWM) above the process's RSS before the model existed is the arm's memory:
weights, gradients, optimizer state, activations and temporaries. Beside it: the planner's
`memory_per_gpu` for the same run (fp32, one process, no CUDA context), and its activation
bytes against what autograd saved (saved-tensor hooks, `millennial.cost.saved`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench._base import process_memory

ARMS = ("phase1", "lora", "full")
BATCH, SEQ, VOCAB = 4, 256, 8192
LORA_RANK = 16


def measure(arm: str) -> dict[str, float]:
    """One training step of `arm`: measured and planned bytes (run in a fresh process)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from millennial.cost.planner import (
        PRECISIONS,
        Trainable,
        activation_bytes_per_token,
        memory_per_gpu,
        model_shape,
    )
    from millennial.cost.saved import measure_saved
    from millennial.hybrid import TRMConfig, freeze_base, inject

    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    start = process_memory("VmRSS")
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1408,
                         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)
    model: torch.nn.Module = LlamaForCausalLM(config)
    shape = model_shape(config)
    if arm == "phase1":
        trm = TRMConfig(injection_layers=[4], hidden_size=128, num_heads=4, num_layers=2,
                        latent_steps=4, cycles=2, grad_cycles=1, ffn_size=384)
        model = inject(model, trm)
        freeze_base(model)
        trainable = Trainable.for_phase("phase1", trm)
    elif arm == "lora":
        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK,
                                                 target_modules="all-linear"))
        trainable = Trainable.for_phase("lora", None, LORA_RANK)
    else:
        trainable = Trainable(base_layers_from=0, embeddings=True, head=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    saved = measure_saved(model, lambda: model(input_ids=ids, labels=ids).loss.backward(), {})
    optimizer.step()  # AdamW allocates its moments (and foreach temporaries) here
    peak = process_memory("VmHWM")
    count = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    act = activation_bytes_per_token(shape, trainable, precision=PRECISIONS["fp32"])
    planned = memory_per_gpu(frozen_params=total - count, trainable_params=count,
                             activation_bytes_per_token=act["total"],
                             micro_batch_tokens=BATCH * SEQ, gpus=1, sharding="ddp",
                             layer_params=shape.layer_params, precision=PRECISIONS["fp32"],
                             device_is_gpu=False)
    return {"measured_bytes": peak - start, "planned_bytes": planned["total"] * 2**30,
            "saved_bytes": saved.total, "planned_activation_bytes": act["total"] * BATCH * SEQ,
            "trainable": count}


def run() -> str:
    rows = []
    for arm in ARMS:
        done = subprocess.run([sys.executable, "-m", "bench.memory_model", "--arm", arm],
                              capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0:
            raise RuntimeError(f"memory_model {arm}: {done.stderr.strip()[-500:]}")
        rows.append((arm, json.loads(done.stdout.strip().splitlines()[-1])))
    lines = [
        "## Planner memory vs measured (CPU, fp32)",
        "",
        f"One AdamW step of a random 8-layer LLaMA (hidden 512, vocab {VOCAB}), batch "
        f"{BATCH}x{SEQ}, each arm in its own process. Measured: peak RSS above the RSS before "
        "the model was built (weights, gradients, AdamW state, activations, allocator and "
        "temporaries); planned: `memory_per_gpu` (fp32, one process). Activations: the "
        "planner's bytes against autograd's saved tensors (exact).",
        "",
        "| arm | trainable params | planned MiB | measured MiB | measured / planned "
        "| planned activations MiB | saved MiB | saved / planned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in rows:
        lines.append(
            f"| {arm} | {row['trainable']:,} | {row['planned_bytes'] / 2**20:.0f} | "
            f"{row['measured_bytes'] / 2**20:.0f} | "
            f"{row['measured_bytes'] / row['planned_bytes']:.2f} | "
            f"{row['planned_activation_bytes'] / 2**20:.0f} | {row['saved_bytes'] / 2**20:.0f} "
            f"| {row['saved_bytes'] / row['planned_activation_bytes']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arm", choices=ARMS)
    args = parser.parse_args()
    print(json.dumps(measure(args.arm)) if args.arm else run())
