"""What each training stage trains: TRM only (phase 1), the whole hybrid (phase 2), and the
baselines a user would pick instead, LoRA and LLaMA Pro block expansion.

Each `run_*` function loads the base, decides the trainable parameter groups, calls the shared
loop, saves its artifact atomically and returns the stage's metrics. Stages stay thin.
"""

from __future__ import annotations

import re
import statistics
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import set_seed
from transformers import AutoTokenizer, PreTrainedModel

from millennial.atomic import atomic_dir
from millennial.base import load_base
from millennial.cost.components import matmul_flops_per_s, trm_block_seconds
from millennial.cost.planner import (
    GIB,
    PRECISIONS,
    ModelShape,
    Trainable,
    activation_bytes_per_token,
    component_timings,
    memory_per_gpu,
    model_shape,
    precision_name,
    training_flops_per_token,
)
from millennial.cost.record import CarriedForward, ComponentTimings, PlannedWork, WorkLog
from millennial.fingerprint import code_sha256, dtype_name, tensors_sha256
from millennial.heldout import HeldOutLosses, held_out_losses, held_out_sets, read_split
from millennial.hybrid import (
    TRMConfig,
    freeze_base,
    inject,
    load_trm,
    save_trm,
    trm_parameter_count,
)
from millennial.hybrid.adapter import save_hybrid, save_lora
from millennial.hybrid.expansion import (
    block_parameter_count,
    expand,
    expansion_named_parameters,
    freeze_all_but_expansion,
    is_output_projection,
    matched_block_count,
    save_expansion,
)
from millennial.hybrid.injection import (
    Depth,
    base_named_parameters,
    recursion_depth,
    trm_named_parameters,
    zero_initialised,
)
from millennial.params import ParamsError
from millennial.receipt import require_validated
from millennial.train.config import TrainConfig
from millennial.train.data import PackedData
from millennial.train.loop import (
    ParamGroup,
    TrainResult,
    make_accelerator,
    tokens_per_step,
    train,
)
from millennial.train.prefix import PrefixDecision
from millennial.train.prefix import decide as decide_prefix_cache
from millennial.train.settings import LlamaProSettings, LoraSettings, Phase1Settings, Phase2Config
from millennial.train.state import gather_all, gather_trainable

HELD_OUT_SPLIT = "val"


@dataclass(frozen=True)
class Paths:
    """Where a training stage reads and writes."""

    base: Path  # models/base
    train_data: Path  # data/curated/packed/train.parquet
    documents: Path  # data/curated/documents: the held-out loss scores val records from here
    out: Path  # the model artifact directory
    run: Path  # checkpoints (persisted between runs for resume)
    live: Path | None = None  # dvclive directory
    receipt: Path | None = None  # the validation receipt the data must match (stages: always)


def split_by_init(named: dict[str, torch.nn.Parameter], zero: Callable[[str], bool], lr: float,
                  multiplier: float, prefix: str) -> list[ParamGroup]:
    """Two groups: the weights that start at zero at `lr * multiplier`, the rest at `lr`."""
    out = {n: p for n, p in named.items() if zero(n)}
    rest = {n: p for n, p in named.items() if not zero(n)}
    groups = [ParamGroup(prefix, rest, lr)] if rest else []
    if out:
        groups.append(ParamGroup(f"{prefix}_out", out, lr * multiplier))
    return groups


def _check_optimizer_holds_exactly(model: torch.nn.Module, groups: list[ParamGroup]) -> None:
    """Before any step: the optimizer's parameters are exactly those that require grad."""
    in_groups = {id(p) for g in groups for p in g.parameters.values()}
    requiring = {id(p) for p in model.parameters() if p.requires_grad}
    if in_groups != requiring:
        raise RuntimeError(
            f"optimizer would hold {len(in_groups)} tensors but {len(requiring)} require grad"
        )


def _held_out_scorer(paths: Paths, config: TrainConfig,
                     block_size: int) -> Callable[[torch.nn.Module], HeldOutLosses]:
    """Loss per source on the first `eval_examples` val records of each (by content hash),
    each scored alone as evaluation prompts are; tokenized once for before and after."""
    tokenizer = AutoTokenizer.from_pretrained(paths.base)
    sets = held_out_sets(read_split(paths.documents, HELD_OUT_SPLIT), lambda row: row["source"],
                         config.eval_examples, tokenizer, block_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return lambda model: held_out_losses(model, sets, batch_size=config.batch_size, pad_id=pad)


def _run(
    model: PreTrainedModel,
    groups: list[ParamGroup],
    paths: Paths,
    config: TrainConfig,
    accelerator: Accelerator,
    what_trains: Callable[[int], Trainable],
    identity: dict[str, Any],
    step_context: Callable[[torch.nn.Module, int], AbstractContextManager[Any]] | None = None,
    work: WorkLog | None = None,
    prefix_cache: Callable[[PackedData], PrefixDecision] | None = None,
    time_components: Callable[[TrainResult, int], ComponentTimings | None] | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train, with the held-out loss before and after, and the planner's FLOPs for what ran.

    `what_trains(step)` is what the planner counts at each step (a depth curriculum runs fewer
    TRM calls early on). `work` (the stage's meter) hears the plan before training starts and,
    for a resumed run, what the earlier invocations did. The library's code is part of the
    run's identity: a code change trains afresh rather than resume another code's checkpoints.
    `prefix_cache(data)` (phase 1) decides whether the frozen-prefix cache serves this run;
    the FLOPs it saves come off the plan and off what is metered. `time_components(result,
    block_size)` (phase 1) times the run's parts for the planner's calibration.
    """
    _check_optimizer_holds_exactly(model, groups)
    if paths.receipt is not None:
        require_validated(paths.receipt, paths.documents, paths.train_data.parent)
    data = PackedData.from_parquet(paths.train_data)
    held_out = _held_out_scorer(paths, config, data.block_size)
    shape = model_shape(model.config)
    step_tokens = tokens_per_step(config, accelerator.num_processes, data.block_size)
    per_step = [training_flops_per_token(shape, data.block_size, what_trains(step),
                                         grad_checkpointing=config.gradient_checkpointing).model
                for step in range(config.max_steps)]
    prefix = prefix_cache(data) if prefix_cache is not None else PrefixDecision.unused("")
    saved_per_token = prefix.plan.flops_saved_per_token if prefix.plan else 0.0
    if work is not None:
        work.plan(_plan(model, shape, sum(per_step) * step_tokens
                        - prefix.expected_replayed_tokens * saved_per_token, step_tokens,
                        data.block_size, config, accelerator, what_trains(config.max_steps - 1)))
    result = train(model, groups, data, config, paths.run, accelerator, paths.live,
                   {**identity, "code": code_sha256()}, held_out=held_out,
                   step_context=step_context, prefix=prefix.cache)
    done = range(result.resumed_from_step, result.steps)
    trained = step_tokens * len(done)  # this invocation's (a resumed run's start was metered)
    flops = (sum(per_step[step] for step in done) * step_tokens
             - result.replayed_tokens * saved_per_token)
    if work is not None and result.resumed_from_step:
        work.carry_forward(CarriedForward(
            from_step=result.resumed_from_step, tokens=result.resumed_tokens,
            flops=sum(per_step[:result.resumed_from_step]) * step_tokens,
            train_seconds=result.resumed_seconds))
    if work is not None and time_components is not None:
        timings = time_components(result, data.block_size)
        if timings is not None:
            work.time_components(timings)
    measured: dict[str, Any] = {"tokens_this_run": trained,
                                "flops_per_token": sum(per_step) / len(per_step),
                                "flops": flops,
                                "run_flops": sum(per_step) * step_tokens}
    if prefix_cache is not None:
        measured["prefix_cache"] = prefix.report(result.replayed_tokens)
    for when, losses in (("before", result.held_out_before), ("after", result.held_out_after)):
        if losses is not None:
            measured[f"val_task_loss_{when}"] = losses.task
            measured[f"val_text_loss_{when}"] = losses.text
    if result.held_out_before is not None and result.held_out_after is not None:
        measured["val_loss_by_source"] = {"before": result.held_out_before.by_group,
                                          "after": result.held_out_after.by_group}
    return result, measured


def _plan(model: torch.nn.Module, shape: ModelShape, flops: float,
          step_tokens: int, block_size: int, config: TrainConfig, accelerator: Accelerator,
          trainable: Trainable) -> PlannedWork:
    """The planner's prediction for this training run: FLOPs of every step and the memory of
    one device at the final step's depth (weights, optimizer state, one micro-batch)."""
    trainable_count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_count = sum(p.numel() for p in model.parameters()) - trainable_count
    precision = precision_name(dtype_name(next(model.parameters()).dtype),
                               bf16_autocast=accelerator.mixed_precision == "bf16")
    bytes_of = PRECISIONS[precision]
    act = activation_bytes_per_token(shape, trainable,
                                     grad_checkpointing=config.gradient_checkpointing,
                                     precision=bytes_of)
    sharding = "fsdp" if accelerator.distributed_type == DistributedType.FSDP else "ddp"
    memory = memory_per_gpu(
        frozen_params=frozen_count, trainable_params=trainable_count,
        activation_bytes_per_token=act["total"], micro_batch_tokens=config.batch_size * block_size,
        gpus=accelerator.num_processes, sharding=sharding, layer_params=shape.layer_params,
        precision=bytes_of, device_is_gpu=accelerator.device.type == "cuda")
    return PlannedWork(
        tokens=step_tokens * config.max_steps, flops=flops,
        peak_memory_bytes=memory["total"] * GIB, memory_breakdown=memory,
        basis=f"training steps only, {precision}, {accelerator.num_processes} process(es) "
              f"{sharding}, micro-batch {config.batch_size} x {block_size} tokens",
        precision=precision, sharding=sharding)


def _metrics(
    result: TrainResult, measured: dict[str, Any], trainable: int, total: int
) -> dict[str, Any]:
    return {
        "trainable_params": trainable,
        "total_params": total,
        "steps": result.steps,
        "tokens": result.tokens,
        "final_loss": result.losses[-1] if result.losses else None,
        "resumed_from_step": result.resumed_from_step,
        "train_seconds": round(result.seconds, 3),
        **measured,
    }


def _unique_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_phase1(
    paths: Paths,
    trm: TRMConfig,
    settings: Phase1Settings,
    config: TrainConfig,
    accelerator: Accelerator | None = None,
    work: WorkLog | None = None,
    where: str | Path = "params.yaml",
) -> dict[str, Any]:
    """Inject TRM blocks into the frozen base and train them alone; save the adapter."""
    accelerator = accelerator or make_accelerator(config)
    set_seed(config.seed)  # the blocks' initial weights come from the global RNG
    model, provenance = load_base(paths.base)
    inject(model, trm)
    trm = model.trm_config  # resolved against the base (a pretrained core takes its widths)
    trainable = freeze_base(model)
    groups = split_by_init(trm_named_parameters(model), lambda n: zero_initialised(n, trm),
                           settings.lr, settings.out_lr_multiplier, "trm")
    identity = {"arm": "phase1", "base": provenance["state_sha256"], "trm": trm.to_dict(),
                "phase1": settings.trajectory()}

    def at_step(step: int) -> TRMConfig:  # the depth curriculum (cycles ramp up from 1)
        cycles = settings.cycles_at(step, trm.cycles)
        return replace(trm, cycles=cycles, grad_cycles=min(trm.grad_cycles, cycles))

    curriculum = None
    if settings.depth_warmup_steps:
        def curriculum(module: torch.nn.Module, step: int) -> AbstractContextManager[Any]:
            return recursion_depth(module, Depth(at_step(step).cycles, trm.latent_steps))

    def prefix_cache(data: PackedData) -> PrefixDecision:
        return decide_prefix_cache(model, trm, settings.prefix_cache, data, config, accelerator,
                                   provenance["state_sha256"], paths.run.parent, where)

    def timings(result: TrainResult, block_size: int) -> ComponentTimings | None:
        final = [seconds for step, seconds in enumerate(result.step_seconds,
                                                        result.resumed_from_step)
                 if step > result.resumed_from_step and at_step(step).cycles == trm.cycles]
        return _component_timings(model, trm, config, accelerator, final, block_size,
                                  result.replayed_tokens)

    result, held_out = _run(model, groups, paths, config, accelerator,
                            lambda step: Trainable.for_phase("phase1", at_step(step)), identity,
                            curriculum, work, prefix_cache, timings)
    weights = gather_trainable(accelerator.unwrap_model(model))  # every process: FSDP gathers
    if accelerator.is_main_process:  # the base stayed frozen: its hash is the provenance's
        save_trm(accelerator.unwrap_model(model), paths.out, tensors=weights,
                 base_sha256s=provenance["state_sha256_by_dtype"], base_name=provenance["name"],
                 base_revision=provenance["revision"])
    metrics = _metrics(result, held_out, trainable, _unique_count(model))
    return metrics | {"lr_groups": {g.name: g.lr for g in groups}}


MIN_TIMED_STEPS = 2  # steps at the final depth, after this invocation's first


def _component_timings(model: torch.nn.Module, trm: TRMConfig, config: TrainConfig,
                       accelerator: Accelerator, step_seconds: list[float], block_size: int,
                       replayed_tokens: int) -> ComponentTimings | None:
    """One micro-batch of this phase-1 run split into what the planner prices separately: the
    median step at the final depth (the first step, which allocates, left out), the TRM
    blocks timed alone on the same shape, and the base's matmul rate probed there. None, and
    said, where the steps cannot be split so: too few, a replayed frozen prefix (the base did
    not run), or FSDP (the blocks are shards)."""
    why = None
    if len(step_seconds) < MIN_TIMED_STEPS:
        why = f"{len(step_seconds)} step(s) at the final depth after the first"
    elif replayed_tokens:
        why = "the frozen-prefix cache replayed part of the base"
    elif accelerator.distributed_type == DistributedType.FSDP:
        why = "FSDP shards the blocks"
    if why is not None:
        accelerator.print(f"planner calibration: components not timed ({why})")
        return None
    module = accelerator.unwrap_model(model)
    micro_batches = config.grad_accum * config.deep_supervision_steps
    with accelerator.autocast():
        trm_seconds = trm_block_seconds(module, config.batch_size, block_size)
    parameter = next(module.parameters())
    matmul_dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else parameter.dtype
    shape = model_shape(module.config)
    flops = training_flops_per_token(shape, block_size, Trainable.for_phase("phase1", trm),
                                     grad_checkpointing=config.gradient_checkpointing)
    return component_timings(
        flops, micro_batch_tokens=config.batch_size * block_size, layers=shape.num_layers,
        micro_batch_seconds=statistics.median(step_seconds) / micro_batches,
        steps_timed=len(step_seconds), trm_seconds=trm_seconds,
        matmul_flops_per_s=matmul_flops_per_s(config.batch_size * block_size,
                                              shape.hidden_size, device=accelerator.device,
                                              dtype=matmul_dtype))


def run_phase2(
    paths: Paths,
    phase1_dir: Path,
    phase2: Phase2Config,
    config: TrainConfig,
    accelerator: Accelerator | None = None,
    work: WorkLog | None = None,
) -> dict[str, Any]:
    """Start from phase 1, unfreeze the hybrid (or the listed modules), train with two LRs.

    Saves the full hybrid: the (changed) base as sharded safetensors plus the TRM adapter in
    `trm/`, which records the new base's hash.
    """
    config = TrainConfig(**{**config.__dict__, "max_steps": phase2.max_steps})
    accelerator = accelerator or make_accelerator(config)
    model, provenance = load_base(paths.base)
    load_trm(model, phase1_dir)
    base = {
        name: p
        for name, p in base_named_parameters(model).items()
        if "all" in phase2.trainable or any(fragment in name for fragment in phase2.trainable)
    }
    if not base:
        raise ParamsError(f"phase2.trainable {list(phase2.trainable)} matches no base parameter")
    trm = trm_named_parameters(model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in (*base.values(), *trm.values()):
        parameter.requires_grad_(True)
    groups = [ParamGroup("base", base, phase2.lr_base), ParamGroup("trm", trm, phase2.lr_trm)]
    identity = {"arm": "phase2", "base": provenance["state_sha256"],
                "phase1": tensors_sha256(trm), "trm": model.trm_config.to_dict()}
    planned = _phase2_trainable(base, model.trm_config)
    result, held_out = _run(model, groups, paths, config, accelerator, lambda _: planned,
                            identity, work=work)
    weights = gather_all(accelerator.unwrap_model(model))  # every process: FSDP gathers
    if accelerator.is_main_process:
        save_hybrid(accelerator.unwrap_model(model), weights, paths.base, paths.out)
    trainable = sum(p.numel() for g in groups for p in g.parameters.values())
    metrics = _metrics(result, held_out, trainable, _unique_count(model))
    return metrics | {"lr_groups": {g.name: g.lr for g in groups}}


def _phase2_trainable(base: dict[str, torch.nn.Parameter], trm: TRMConfig) -> Trainable:
    """The planner's view of phase 2: every layer from the lowest unfrozen one up.

    Name fragments can unfreeze arbitrary modules; the planner counts whole layers, so this
    is exact for "all" and for layer-prefix fragments, and an upper bound otherwise.
    """
    layers = [int(m.group(1)) for n in base if (m := re.search(r"\.(\d+)\.", n))]
    embeddings = any("embed" in n or "wte" in n for n in base)
    return Trainable(base_layers_from=min(layers, default=None), embeddings=embeddings,
                     head=any("lm_head" in n for n in base), trm=trm)


def lora_model(base: PreTrainedModel, settings: LoraSettings, rank: int) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model  # ~2 s to import: only LoRA's stage pays

    targets = settings.target_modules
    config = LoraConfig(
        r=rank,
        lora_alpha=settings.alpha_per_rank * rank,
        lora_dropout=settings.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    # PEFT resolves "all-linear" to a set and saves it in hash order, so adapter_config.json (a
    # DVC output) would differ from process to process for the same adapter: sort it.
    resolved = model.peft_config["default"]
    if not isinstance(resolved.target_modules, str):
        resolved.target_modules = sorted(resolved.target_modules)
    return model


def matched_lora_rank(base: PreTrainedModel, settings: LoraSettings, target: int) -> int:
    """The LoRA rank whose trainable count is closest to `target` (counts are linear in rank)."""
    probe = lora_model(base, settings, rank=1)
    per_rank, _ = probe.get_nb_trainable_parameters()
    probe.unload()  # removes the LoRA layers again, leaving `base` as it was
    return max(1, round(target / per_rank))


def run_lora(
    paths: Paths,
    trm: TRMConfig,
    settings: LoraSettings,
    config: TrainConfig,
    accelerator: Accelerator | None = None,
    work: WorkLog | None = None,
) -> dict[str, Any]:
    """The baseline a user would pick instead: LoRA at the TRM's trainable size, same data."""
    accelerator = accelerator or make_accelerator(config)
    base, provenance = load_base(paths.base)
    target = trm_parameter_count(base.config, trm)
    rank = matched_lora_rank(base, settings, target)
    set_seed(config.seed)  # LoRA's A matrices are random: same seed, same start, as phase 1
    model = lora_model(base, settings, rank)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    count = sum(p.numel() for p in trainable.values())
    if abs(count - target) > 0.1 * target:
        warnings.warn(f"LoRA rank {rank} gives {count} trainable parameters vs TRM's {target}",
                      stacklevel=2)
    groups = split_by_init(trainable, lambda n: ".lora_B." in n, settings.lr,
                           settings.b_lr_multiplier, "lora")
    identity = {"arm": "lora", "base": provenance["state_sha256"], "rank": rank,
                "lora": asdict(settings)}
    planned = Trainable.for_phase("lora", None, lora_rank=rank)
    result, held_out = _run(model, groups, paths, config, accelerator, lambda _: planned,
                            identity, work=work)
    weights = gather_trainable(accelerator.unwrap_model(model))  # every process: FSDP gathers
    if accelerator.is_main_process:
        with atomic_dir(paths.out) as tmp:
            save_lora(accelerator.unwrap_model(model), tmp, weights, provenance)
    metrics = _metrics(result, held_out, count, _unique_count(model))
    return metrics | {"lora_rank": rank, "trm_trainable_params": target,
                      "lr_groups": {g.name: g.lr for g in groups}}


def run_llama_pro(
    paths: Paths,
    trm: TRMConfig,
    settings: LlamaProSettings,
    config: TrainConfig,
    accelerator: Accelerator | None = None,
    work: WorkLog | None = None,
    where: str | Path = "params.yaml",
) -> dict[str, Any]:
    """The other baseline: LLaMA Pro's interleaved zero-output block copies, only they train."""
    accelerator = accelerator or make_accelerator(config)
    model, provenance = load_base(paths.base)
    target = trm_parameter_count(model.config, trm)
    depth = model.config.get_text_config().num_hidden_layers
    blocks = settings.blocks or matched_block_count(depth, block_parameter_count(model), target)
    try:
        expansion = expand(model, blocks)
    except ValueError as err:
        raise ParamsError(f"{where}: 'llama_pro.blocks': {err}") from err
    trainable = freeze_all_but_expansion(model)
    groups = split_by_init(expansion_named_parameters(model), is_output_projection, settings.lr,
                           settings.out_lr_multiplier, "blocks")
    identity = {"arm": "llama_pro", "base": provenance["state_sha256"], "hosts": expansion.hosts,
                "llama_pro": asdict(settings)}
    planned = Trainable(new_layers=expansion.positions)
    result, held_out = _run(model, groups, paths, config, accelerator, lambda _: planned,
                            identity, work=work)
    weights = gather_trainable(accelerator.unwrap_model(model))  # every process: FSDP gathers
    if accelerator.is_main_process:
        save_expansion(accelerator.unwrap_model(model), paths.out, tensors=weights,
                       base_sha256s=provenance["state_sha256_by_dtype"],
                       base_name=provenance["name"], base_revision=provenance["revision"])
    metrics = _metrics(result, held_out, trainable, _unique_count(model))
    return metrics | {"blocks": blocks, "hosts": list(expansion.hosts),
                      "trm_trainable_params": target,
                      "lr_groups": {g.name: g.lr for g in groups}}
