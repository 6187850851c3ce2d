"""bf16 phase-1 MFU on a CUDA device, for a 1B-class random LLaMA base.

Runs only where CUDA is available (`make bench` on a GPU machine, or `python -m bench.gpu_mfu`);
elsewhere the section says it was not run. MFU = planner model FLOPs per step / step time / the
device's dense bf16 peak from `millennial.cost.hardware`.
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from millennial.cost.hardware import GPUS, gpu_kind_from_nvml_name
from millennial.cost.planner import Trainable, model_shape, training_flops_per_token
from millennial.hybrid import TRMConfig, freeze_base, inject

CONFIG = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                     num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4)
TRM = TRMConfig(injection_layers=[10, -1], hidden_size=512, num_heads=8, num_layers=2,
                latent_steps=6, cycles=3, ffn_size=1536)
BATCH, SEQ, STEPS = 8, 2048, 5


def run() -> str:
    title = "## GPU: bf16 phase-1 MFU, 1B-class random LLaMA"
    if not torch.cuda.is_available():
        return f"{title}\n\nNot run: no CUDA device on this machine (run `make bench` on a GPU)."
    name = torch.cuda.get_device_name(0)
    kind = gpu_kind_from_nvml_name(name)
    if kind is None:
        raise RuntimeError(f"no peak FLOP/s known for {name!r}")
    torch.manual_seed(0)
    model = inject(LlamaForCausalLM(CONFIG).to("cuda", torch.bfloat16), TRM)
    freeze_base(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, CONFIG.vocab_size, (BATCH, SEQ), device="cuda")
    times = []
    for _ in range(STEPS + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    flops = training_flops_per_token(model_shape(CONFIG), SEQ, Trainable(trm=TRM)).model
    seconds = min(times[1:])
    achieved = flops * BATCH * SEQ / seconds
    peak = GPUS[kind].peak_flops
    return "\n".join([
        title, "",
        f"{name} ({kind}), batch {BATCH}x{SEQ}, TRM width {TRM.hidden_size} at 2 layers, "
        f"best of {STEPS} steps: {seconds:.3f} s/step, {achieved / 1e12:.1f} TFLOP/s of planner "
        f"model FLOPs, MFU {achieved / peak:.2f} of the {peak / 1e12:.0f} TFLOP/s bf16 peak; "
        f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB.",
    ])


if __name__ == "__main__":
    print(run())
