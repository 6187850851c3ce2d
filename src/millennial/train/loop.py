"""The one training loop: single process on CPU or GPU, DDP or FSDP under `accelerate launch`.

What it trains is decided by the caller (named parameter groups with their learning rates); the
loop owns order, precision, accumulation, deep supervision, clipping, checkpoints and logging.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from dvclive import Live
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from millennial.fingerprint import tensors_sha256
from millennial.hybrid.injection import deep_supervision
from millennial.train.checkpoint import (
    Progress,
    claim_run_dir,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from millennial.train.config import TrainConfig
from millennial.train.data import PackedData, global_batch_indices, micro_batches
from millennial.train.state import gather_training_state, load_training_state


class NonFiniteError(RuntimeError):
    """Loss or gradient became inf/NaN; the run stops and the last good checkpoint survives."""


@dataclass(frozen=True)
class ParamGroup:
    """Named trainable parameters and their learning rate."""

    name: str
    parameters: dict[str, nn.Parameter]
    lr: float


@dataclass(frozen=True)
class TrainResult:
    steps: int
    tokens: int  # input tokens processed in forward passes (all processes, all supervision steps)
    losses: list[float]
    resumed_from_step: int
    seconds: float
    held_out_before: dict[str, float]  # from `held_out` on the initial weights ({} without it)
    held_out_after: dict[str, float]


def make_accelerator(config: TrainConfig) -> Accelerator:
    precision = config.mixed_precision
    if precision == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if cuda_bf16 else "no"
    # cpu=True when there is no GPU: only then does accelerate run gloo DDP across processes
    # started by `accelerate launch` or torchrun (otherwise each process trains alone).
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def train(
    model: nn.Module,
    groups: list[ParamGroup],
    data: PackedData,
    config: TrainConfig,
    run_dir: Path,
    accelerator: Accelerator,
    live_dir: Path | None = None,
    identity: dict[str, Any] | None = None,
    held_out: Callable[[nn.Module], dict[str, float]] | None = None,
) -> TrainResult:
    """Train `groups` of `model` on `data` for `config.max_steps`, resuming from `run_dir`.

    `identity` adds what the loop cannot see (the base's hash, the TRM config) to what it can
    (trajectory params, data, trainable shapes, process count); checkpoints written under a
    different identity are dropped rather than resumed. `held_out` scores the prepared model
    before (initial weights) and after training: under FSDP only the prepared model is whole
    across processes (with RAM-efficient loading, only process 0 even holds the base's weights).
    """
    if accelerator.is_main_process:
        changed = claim_run_dir(run_dir, _identity(identity or {}, groups, data, config,
                                                   accelerator.num_processes))
        if changed:
            accelerator.print(f"{run_dir}: checkpoints belonged to another run (changed: "
                              f"{', '.join(changed)}); training from step 0")
    accelerator.wait_for_everyone()
    set_seed(config.seed)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(
        [{"params": list(g.parameters.values()), "lr": g.lr} for g in groups],
        weight_decay=config.weight_decay,
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    # Under FSDP, prepare swaps every parameter for a sharded one: look them up again after.
    model, optimizer = accelerator.prepare(model, optimizer)
    module = accelerator.unwrap_model(model)
    trainable = [p for p in module.parameters() if p.requires_grad]
    before = held_out(module) if held_out is not None else {}
    checkpoints = run_dir / "checkpoints"
    progress = Progress()
    latest = load_latest(checkpoints, accelerator.process_index)
    if latest is not None:
        load_training_state(module, optimizer, latest.trainable, latest.optimizer_state)
        scheduler.load_state_dict(latest.scheduler_state)
        set_rng_state(latest.rng)
        progress = latest.progress
        accelerator.print(f"resuming from {latest.path} (step {progress.step})")
    resumed_from = progress.step
    model.train()
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = config.batch_size * world * config.grad_accum
    live = None
    if live_dir is not None and accelerator.is_main_process:
        # Resume the logs as the checkpoint saw them (complete, and without the steps after it).
        resume_logs = latest is not None and latest.restore_logs(live_dir)
        live = Live(str(live_dir), resume=resume_logs, save_dvc_exp=False, dvcyaml=None)
        live.step = progress.step  # rows are numbered by training step, resumed or not
    bar = tqdm(total=config.max_steps, initial=progress.step, desc="train", unit="step",
               disable=not accelerator.is_main_process)
    start = time.perf_counter()
    supervision = deep_supervision if config.deep_supervision_steps > 1 else None
    while progress.step < config.max_steps:
        step_start = time.perf_counter()
        indices = global_batch_indices(len(data), global_batch, progress.step, config.seed)
        micros = micro_batches(indices, config.batch_size, world, rank)
        scored = data.scored_tokens(indices)
        with supervision(accelerator.unwrap_model(model)) if supervision else nullcontext():
            for _ in range(config.deep_supervision_steps):
                loss, norm = _optimizer_step(model, optimizer, micros, scored, data, accelerator,
                                             trainable, config, progress.step)
                scheduler.step()
        tokens = global_batch * data.block_size * config.deep_supervision_steps
        progress.step += 1
        progress.tokens += tokens
        progress.losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if live is not None:
            live.log_metric("loss", loss)
            live.log_metric("lr", scheduler.get_last_lr()[0])
            live.log_metric("grad_norm", norm)
            live.log_metric("tokens_per_s", tokens / (time.perf_counter() - step_start))
            live.next_step()
        if progress.step % config.checkpoint_every == 0 or progress.step == config.max_steps:
            _checkpoint(accelerator, checkpoints, progress, module, optimizer, scheduler,
                        config.keep_checkpoints, live_dir)
    bar.close()
    if live is not None:
        live.end()
    seconds = time.perf_counter() - start
    after = held_out(module) if held_out is not None else {}
    return TrainResult(progress.step, progress.tokens, progress.losses, resumed_from, seconds,
                       before, after)


# Fields that do not change what a run computes: changing them keeps its checkpoints.
_BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "eval_batches")


def _identity(extra: dict[str, Any], groups: list[ParamGroup], data: PackedData,
              config: TrainConfig, processes: int) -> dict[str, Any]:
    trajectory = {k: v for k, v in asdict(config).items() if k not in _BOOKKEEPING}
    return {
        **extra,
        "train": trajectory,
        "processes": processes,
        "data_sha256": tensors_sha256({"input_ids": data.input_ids, "loss_mask": data.loss_mask}),
        "groups": {g.name: {"lr": g.lr, "shapes": {n: list(p.shape)
                                                   for n, p in g.parameters.items()}}
                   for g in groups},
    }


def _optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micros: list[list[int]],
    scored: int,
    data: PackedData,
    accelerator: Accelerator,
    trainable: list[nn.Parameter],
    config: TrainConfig,
    step: int,
) -> tuple[float, float]:
    """One optimizer step over the micro-batches; returns (global mean loss, gradient norm).

    Each micro-batch's loss is its token sum over the `scored` tokens of the whole global batch,
    so any split into micro-batches and processes gives the gradient one process would compute.
    """
    optimizer.zero_grad(set_to_none=True)
    world = accelerator.num_processes
    total = torch.zeros((), device=accelerator.device)
    for index, rows in enumerate(micros):
        batch = {k: v.to(accelerator.device) for k, v in data.rows(rows).items()}
        last = index == len(micros) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            loss = model(**batch, use_cache=False, num_items_in_batch=scored).loss
            accelerator.backward(loss * world)  # DDP averages gradients over processes
        total += loss.detach()
    mean_loss = accelerator.reduce(total, reduction="sum").item()
    if not math.isfinite(mean_loss):
        raise NonFiniteError(f"step {step}: loss is {mean_loss}; last good checkpoint kept")
    norm = float(accelerator.clip_grad_norm_(trainable, config.max_grad_norm))
    if not math.isfinite(norm):
        raise NonFiniteError(f"step {step}: gradient norm is {norm}; last good checkpoint kept")
    optimizer.step()
    return mean_loss, norm


def _checkpoint(
    accelerator: Accelerator,
    directory: Path,
    progress: Progress,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int,
    logs: Path | None,
) -> None:
    states = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
    weights, optimizer_state = gather_training_state(module, optimizer)  # every process
    if accelerator.is_main_process:
        save_checkpoint(directory, progress, weights, optimizer_state, scheduler.state_dict(),
                        states, keep, logs)
    accelerator.wait_for_everyone()


@torch.no_grad()
def mean_loss(model: nn.Module, data: PackedData, batches: int, batch_size: int) -> float:
    """Mean LM loss over the first `batches` batches of `data` (held-out loss, fixed order)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses = []
    for start in range(0, min(len(data), batches * batch_size), batch_size):
        rows = list(range(start, min(start + batch_size, len(data))))
        batch = {k: v.to(device) for k, v in data.rows(rows).items()}
        losses.append(model(**batch, use_cache=False).loss.item())
    model.train(was_training)
    return sum(losses) / len(losses)
