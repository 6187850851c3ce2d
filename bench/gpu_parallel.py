"""DDP vs FSDP phase-1 step time on every visible GPU, 1B-class random LLaMA, bf16.

Runs only where CUDA is available (`make bench` on a GPU machine, or `python -m
bench.gpu_parallel`); elsewhere the section says it was not run. Each wrapper runs in its own
`torchrun` launch over all visible GPUs: DDP replicates the frozen base on every GPU; FSDP2
(`fully_shard` per decoder layer, as `configs/accelerate/fsdp_8xa100.yaml` asks accelerate to)
shards it and gathers each layer for its forward and backward. Reported: median step time after
a warm-up, its IQR, and the peak memory per GPU. `--smoke` runs the same workers on two CPU
processes (gloo, fp32, a tiny base) so the script is tested where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench._base import REPO
from millennial.evaluate.timing import Spread
from millennial.hybrid import TRMConfig, freeze_base, inject

CONFIG = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                     num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4)
SMOKE = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2)
TRM = TRMConfig(injection_layers=[10, -1], hidden_size=512, num_heads=8, num_layers=2,
                latent_steps=6, cycles=3, ffn_size=1536)
SMOKE_TRM = TRMConfig(injection_layers=[1, -1], hidden_size=16, num_heads=2, num_layers=1,
                      latent_steps=2, cycles=2, ffn_size=32)
BATCH, SEQ, STEPS = 4, 2048, 6
WRAPPERS = ("ddp", "fsdp")


def worker(wrapper: str, smoke: bool) -> dict[str, float] | None:
    """One process of a torchrun launch: time phase-1 steps under `wrapper`; rank 0 reports."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    cuda = not smoke
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    config, trm = (SMOKE, SMOKE_TRM) if smoke else (CONFIG, TRM)
    batch, seq = (2, 16) if smoke else (BATCH, SEQ)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device, torch.float32 if smoke else torch.bfloat16)
    freeze_base(inject(model, trm))
    model.train()
    if wrapper == "ddp":
        model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    else:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    times = []
    for _ in range(STEPS + 1):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    spread = Spread.of(times[1:], warmup=1)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    dist.barrier()
    if rank != 0:
        return None
    return {"median": spread.median, "q1": spread.q1, "q3": spread.q3, "memory_gib": memory,
            "processes": int(os.environ["WORLD_SIZE"])}


def launch(wrapper: str, processes: int, smoke: bool) -> dict[str, float]:
    """torchrun over `processes` processes; rank 0's JSON line."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(processes), "-m", "bench.gpu_parallel", "--worker", wrapper,
               *(["--smoke"] if smoke else [])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{wrapper} launch failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(smoke: bool = False) -> str:
    title = "## GPU: DDP vs FSDP phase-1 step time, 1B-class random LLaMA"
    if not smoke and not torch.cuda.is_available():
        return f"{title}\n\nNot run: no CUDA device on this machine (run `make bench` on a GPU)."
    processes = 2 if smoke else torch.cuda.device_count()
    results = {wrapper: launch(wrapper, processes, smoke) for wrapper in WRAPPERS}
    setting = ("CPU smoke run (gloo, fp32, a 4-layer random base, batch 2x16)" if smoke else
               f"{torch.cuda.get_device_name(0)}, batch {BATCH}x{SEQ} per GPU, bf16, TRM width "
               f"{TRM.hidden_size} at 2 layers")
    lines = [title, "",
             f"{processes} processes; {setting}; median of {STEPS} steps after a warm-up.", "",
             "| wrapper | step s (IQR) | vs DDP | peak memory per GPU GiB |", "|---|---|---|---|"]
    for wrapper, row in results.items():
        lines.append(f"| {wrapper} | {row['median']:.3f} ({row['q1']:.3f}-{row['q3']:.3f}) "
                     f"| {row['median'] / results['ddp']['median']:.2f} "
                     f"| {row['memory_gib']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", choices=WRAPPERS)
    parser.add_argument("--smoke", action="store_true", help="two CPU processes, tiny base")
    args = parser.parse_args()
    if args.worker:
        report = worker(args.worker, args.smoke)
        if report is not None:
            print(json.dumps(report), flush=True)
        # No teardown: freeing DDP's reducer after its gloo group can deadlock (the group's
        # thread waits for the GIL the freeing thread holds); the launch is done, so leave.
        os._exit(0)
    else:
        print(run(args.smoke))
