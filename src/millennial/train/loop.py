"""The one training loop: single process on CPU or GPU, DDP or FSDP under `accelerate launch`.

What it trains is decided by the caller (named parameter groups with their learning rates); the
loop owns order, precision, accumulation, deep supervision, clipping, the weight average (EMA),
checkpoints and logging. The loss is the curated mixture's: each target token's cross-entropy
times its loss weight, over the total weight of the global batch (plus, with TRM halting heads,
their weighted halting loss on the same scale).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from dvclive import Live
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from millennial.fingerprint import tensors_sha256
from millennial.heldout import HeldOutLosses
from millennial.hybrid.injection import deep_supervision, halting_loss
from millennial.train.checkpoint import (
    Progress,
    claim_run_dir,
    load_latest,
    lock_run_dir,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from millennial.train.config import TrainConfig
from millennial.train.data import PackedData, global_batch_indices, micro_batches
from millennial.train.prefix import PrefixCache
from millennial.train.state import (
    gather_trainable,
    gather_training_state,
    load_training_state,
    load_weights,
)


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
    resumed_tokens: int  # what the checkpoint it resumed from had done (0: a fresh start)
    resumed_seconds: float
    seconds: float
    held_out_before: HeldOutLosses | None  # from `held_out` on the initial weights
    held_out_after: HeldOutLosses | None  # on the final weights (the average, with EMA)
    replayed_tokens: int = 0  # this invocation's tokens whose frozen prefix the cache served
    step_seconds: tuple[float, ...] = ()  # this invocation's steps, from `resumed_from_step`


class WeightAverage:
    """Exponential moving average of the trainable weights (TRM evaluates with it: 87.4 vs 79.9
    on Sudoku-Extreme without). Kept in each parameter's own layout, so DDP and FSDP shards
    average locally; it moves in and out of the parameters to be gathered or restored."""

    def __init__(self, parameters: list[nn.Parameter], decay: float) -> None:
        self.parameters, self.decay = parameters, decay
        self.shadow = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def update(self) -> None:
        for average, parameter in zip(self.shadow, self.parameters, strict=True):
            average.lerp_(parameter.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within this block the parameters hold the average."""
        with torch.no_grad():
            kept = [p.detach().clone() for p in self.parameters]
            self.install()
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, value in zip(self.parameters, kept, strict=True):
                    parameter.copy_(value)

    @torch.no_grad()
    def install(self) -> None:
        """The parameters take the average for good (the run's result)."""
        for parameter, average in zip(self.parameters, self.shadow, strict=True):
            parameter.copy_(average)

    @torch.no_grad()
    def capture(self) -> None:
        """The average takes the parameters' current values (after loading it into them)."""
        for average, parameter in zip(self.shadow, self.parameters, strict=True):
            average.copy_(parameter)


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
    held_out: Callable[[nn.Module], HeldOutLosses] | None = None,
    step_context: Callable[[nn.Module, int], AbstractContextManager[Any]] | None = None,
    prefix: PrefixCache | None = None,
) -> TrainResult:
    """Train `groups` of `model` on `data` for `config.max_steps`, resuming from `run_dir`.

    `identity` adds what the loop cannot see (the base's hash, the TRM config) to what it can
    (trajectory params, data, trainable shapes, process count); checkpoints written under a
    different identity are dropped rather than resumed. `held_out` scores the prepared model
    before (initial weights) and after training: under FSDP only the prepared model is whole
    across processes (with RAM-efficient loading, only process 0 even holds the base's weights).
    `step_context(module, step)` wraps each optimizer step (a depth curriculum sets the TRM's
    depth there); it must be a pure function of the step, so a resumed run repeats it.
    `prefix` (phase 1's frozen-prefix cache) serves each micro-batch's forward below the
    lowest TRM block; losses and gradients are the same with or without it.
    With `config.ema_decay` > 0 the model ends holding the weight average. One trainer at a
    time per `run_dir`: a second one is refused while the first lives.
    """
    with lock_run_dir(run_dir) if accelerator.is_main_process else nullcontext():
        if accelerator.is_main_process:
            changed = claim_run_dir(run_dir, _identity(identity or {}, groups, data, config,
                                                       accelerator.num_processes))
            if changed:
                accelerator.print(f"{run_dir}: checkpoints belonged to another run (changed: "
                                  f"{', '.join(changed)}); training from step 0")
        accelerator.wait_for_everyone()
        set_seed(config.seed)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = torch.optim.AdamW(
            [{"params": list(g.parameters.values()), "lr": g.lr} for g in groups],
            weight_decay=config.weight_decay,
        )
        scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps,
                                                    config.max_steps)
        # Under FSDP, prepare swaps every parameter for a sharded one: look them up again after.
        model, optimizer = accelerator.prepare(model, optimizer)
        module = accelerator.unwrap_model(model)
        trainable = [p for p in module.parameters() if p.requires_grad]
        before = held_out(module) if held_out is not None else None
        average = WeightAverage(trainable, config.ema_decay) if config.ema_decay > 0 else None
        checkpoints = run_dir / "checkpoints"
        progress = Progress()
        latest = load_latest(checkpoints, accelerator.process_index)
        if latest is not None:
            if average is not None:  # the average goes through the parameters to reach its shards
                if latest.average is None:
                    raise RuntimeError(f"{latest.path}: no weight average saved, but ema_decay > 0")
                load_weights(module, latest.average)
                average.capture()
            load_training_state(module, optimizer, latest.trainable, latest.optimizer_state)
            scheduler.load_state_dict(latest.scheduler_state)
            set_rng_state(latest.rng)
            progress = latest.progress
            accelerator.print(f"resuming from {latest.path} (step {progress.step})")
        resumed_from, resumed_tokens = progress.step, progress.tokens
        resumed_seconds = progress.train_seconds
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
        step_seconds: list[float] = []
        supervision = deep_supervision if config.deep_supervision_steps > 1 else None
        while progress.step < config.max_steps:
            step_start = time.perf_counter()
            indices = global_batch_indices(len(data), global_batch, progress.step, config.seed)
            micros = micro_batches(indices, config.batch_size, world, rank)
            scored = data.scored_weight(indices) or 1.0  # nothing scored: a zero loss, not 0/0
            context = step_context(module, progress.step) if step_context else nullcontext()
            with context, supervision(module) if supervision else nullcontext():
                for _ in range(config.deep_supervision_steps):
                    loss, norm = _optimizer_step(model, optimizer, micros, scored, data,
                                                 accelerator, trainable, config, progress.step,
                                                 prefix)
                    scheduler.step()
                    if average is not None:
                        average.update()
            tokens = tokens_per_step(config, world, data.block_size)
            progress.step += 1
            progress.tokens += tokens
            step_seconds.append(time.perf_counter() - step_start)
            progress.train_seconds += step_seconds[-1]
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
                            config.keep_checkpoints, live_dir, average)
        bar.close()
        if live is not None:
            live.end()
        seconds = time.perf_counter() - start
        replayed = 0
        if prefix is not None:  # every process's replayed rows
            rows = torch.tensor(prefix.replayed_rows, device=accelerator.device)
            replayed = int(accelerator.reduce(rows, reduction="sum").item()) * data.block_size
        if average is not None:
            average.install()
        after = held_out(module) if held_out is not None else None
        return TrainResult(progress.step, progress.tokens, progress.losses, resumed_from,
                           resumed_tokens, resumed_seconds, seconds, before, after, replayed,
                           tuple(step_seconds))


def tokens_per_step(config: TrainConfig, processes: int, block_size: int) -> int:
    """Input tokens one optimizer step's forwards process (all processes, supervision steps)."""
    return (config.batch_size * processes * config.grad_accum * block_size
            * config.deep_supervision_steps)


# Fields that do not change what a run computes: changing them keeps its checkpoints.
_BOOKKEEPING = ("checkpoint_every", "keep_checkpoints", "eval_examples")


def _identity(extra: dict[str, Any], groups: list[ParamGroup], data: PackedData,
              config: TrainConfig, processes: int) -> dict[str, Any]:
    trajectory = {k: v for k, v in asdict(config).items() if k not in _BOOKKEEPING}
    return {
        **extra,
        "train": trajectory,
        "processes": processes,
        "data_sha256": tensors_sha256({"input_ids": data.input_ids,
                                       "loss_weight": data.loss_weight}),
        "groups": {g.name: {"lr": g.lr, "shapes": {n: list(p.shape)
                                                   for n, p in g.parameters.items()}}
                   for g in groups},
    }


def _optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micros: list[list[int]],
    scored: float,
    data: PackedData,
    accelerator: Accelerator,
    trainable: list[nn.Parameter],
    config: TrainConfig,
    step: int,
    prefix: PrefixCache | None = None,
) -> tuple[float, float]:
    """One optimizer step over the micro-batches; returns (global mean loss, gradient norm).

    Each micro-batch's loss is its weighted token sum over the `scored` weight of the whole global
    batch, so any split into micro-batches and processes gives the gradient one process would
    compute.
    """
    optimizer.zero_grad(set_to_none=True)
    world = accelerator.num_processes
    total = torch.zeros((), device=accelerator.device)
    for index, rows in enumerate(micros):
        batch = {k: v.to(accelerator.device) for k, v in data.rows(rows).items()}
        last = index == len(micros) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            with prefix.serving(rows) if prefix is not None else nullcontext():
                loss = weighted_loss(model, batch["input_ids"], batch["loss_weight"]) / scored
            accelerator.backward(loss * world)  # DDP averages gradients over processes
        total += loss.detach()
    mean_loss = accelerator.reduce(total, reduction="sum").item()
    if not math.isfinite(mean_loss):
        raise NonFiniteError(f"step {step}: loss is {mean_loss}; last good checkpoint kept")
    norm = float(accelerator.clip_grad_norm_(trainable, config.max_grad_norm))
    if not math.isfinite(norm):
        raise NonFiniteError(f"step {step}: gradient norm is {norm}; last good checkpoint kept")
    optimizer.step()
    bad = sum(not bool(torch.isfinite(_local(p)).all()) for p in trainable)
    if accelerator.reduce(torch.tensor(bad, device=accelerator.device), reduction="sum").item():
        raise NonFiniteError(f"step {step}: weights are not finite after the update; last good "
                             "checkpoint kept")
    return mean_loss, norm


def _local(parameter: torch.Tensor) -> torch.Tensor:
    """This process's shard of a parameter (FSDP's are DTensors), or the parameter itself."""
    to_local = getattr(parameter, "to_local", None)
    return to_local() if to_local is not None else parameter


def weighted_loss(model: nn.Module, input_ids: torch.Tensor,
                  loss_weight: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of cross-entropy x loss weight (weight 0: not scored), plus the
    halting heads' loss where the model has any."""
    logits = model(input_ids=input_ids, use_cache=False).logits
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(),
                          reduction="none")
    loss = (nll * loss_weight[:, 1:].flatten()).sum()
    halting = halting_loss(model, logits, input_ids, loss_weight)
    return loss if halting is None else loss + halting


def _checkpoint(
    accelerator: Accelerator,
    directory: Path,
    progress: Progress,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int,
    logs: Path | None,
    average: WeightAverage | None,
) -> None:
    states = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
    weights, optimizer_state = gather_training_state(module, optimizer)  # every process
    averaged = None
    if average is not None:
        with average.applied():  # every process; cloned: a plain model's state dict is a view
            averaged = {n: t.clone() for n, t in gather_trainable(module).items()}
    if accelerator.is_main_process:
        save_checkpoint(directory, progress, weights, optimizer_state, scheduler.state_dict(),
                        states, keep, logs, averaged)
    accelerator.wait_for_everyone()
