"""What each training stage trains: TRM only (phase 1), the whole hybrid (phase 2), LoRA.

Each `run_*` function loads the base, decides the trainable parameter groups, calls the shared
loop, saves its artifact atomically and returns the stage's metrics. Stages stay thin.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from millennial.atomic import atomic_dir
from millennial.cost.planner import Trainable, model_shape, training_flops_per_token
from millennial.fingerprint import tensors_sha256
from millennial.hybrid import (
    TRMConfig,
    freeze_base,
    inject,
    load_trm,
    save_trm,
    trm_parameter_count,
)
from millennial.hybrid.injection import base_named_parameters, trm_named_parameters
from millennial.params import ParamsError
from millennial.train.config import TrainConfig
from millennial.train.data import PackedData
from millennial.train.loop import ParamGroup, TrainResult, make_accelerator, mean_loss, train
from millennial.train.state import gather_all, gather_trainable


@dataclass(frozen=True)
class Paths:
    """Where a training stage reads and writes."""

    base: Path  # models/base
    train_data: Path  # data/curated/packed/train.parquet
    val_data: Path  # data/curated/packed/val.parquet
    out: Path  # the model artifact directory
    run: Path  # checkpoints (persisted between runs for resume)
    live: Path | None = None  # dvclive directory


def load_base(base_dir: Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The frozen base from `prepare_base`, and its provenance."""
    provenance_path = base_dir / "provenance.json"
    if not provenance_path.is_file():
        raise FileNotFoundError(f"{provenance_path}: not found; run the prepare_base stage first")
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    return model, json.loads(provenance_path.read_text())


def _check_optimizer_holds_exactly(model: torch.nn.Module, groups: list[ParamGroup]) -> None:
    """Before any step: the optimizer's parameters are exactly those that require grad."""
    in_groups = {id(p) for g in groups for p in g.parameters.values()}
    requiring = {id(p) for p in model.parameters() if p.requires_grad}
    if in_groups != requiring:
        raise RuntimeError(
            f"optimizer would hold {len(in_groups)} tensors but {len(requiring)} require grad"
        )


def _held_out(model: torch.nn.Module, sets: dict[str, PackedData],
              config: TrainConfig) -> dict[str, float]:
    """Held-out loss on each named validation set."""
    return {name: mean_loss(model, data, config.eval_batches, config.batch_size)
            for name, data in sets.items()}


def _run(
    model: PreTrainedModel,
    groups: list[ParamGroup],
    paths: Paths,
    config: TrainConfig,
    accelerator: Accelerator,
    what_trains: Trainable,
    identity: dict[str, Any],
) -> tuple[TrainResult, dict[str, float]]:
    """Train, with the held-out loss before and after, and the planner's FLOPs for what ran."""
    _check_optimizer_holds_exactly(model, groups)
    data = PackedData.from_parquet(paths.train_data)
    # All validation blocks, and task blocks only (answer tokens); read once for both scorings.
    val = {"val_loss": PackedData.from_parquet(paths.val_data),
           "val_task_loss": PackedData.from_parquet(paths.val_data, kind="task")}
    result = train(model, groups, data, config, paths.run, accelerator, paths.live, identity,
                   held_out=lambda prepared: _held_out(prepared, val, config))
    per_token = training_flops_per_token(
        model_shape(model.config), data.block_size, what_trains,
        grad_checkpointing=config.gradient_checkpointing,
    ).model
    measured = {f"{k}_before": v for k, v in result.held_out_before.items()}
    measured |= {f"{k}_after": v for k, v in result.held_out_after.items()}
    # Only the tokens this run trained on (a resumed run's earlier part was metered then).
    trained = result.tokens * (result.steps - result.resumed_from_step) // max(result.steps, 1)
    measured |= {"tokens_this_run": trained, "flops_per_token": per_token,
                 "flops": per_token * trained}
    return result, measured


def _metrics(
    result: TrainResult, measured: dict[str, float], trainable: int, total: int
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
    paths: Paths, trm: TRMConfig, config: TrainConfig, accelerator: Accelerator | None = None
) -> dict[str, Any]:
    """Inject TRM blocks into the frozen base and train them alone; save the adapter."""
    accelerator = accelerator or make_accelerator(config)
    set_seed(config.seed)  # the blocks' initial weights come from the global RNG
    model, provenance = load_base(paths.base)
    inject(model, trm)
    trainable = freeze_base(model)
    groups = [ParamGroup("trm", trm_named_parameters(model), config.lr)]
    identity = {"arm": "phase1", "base": provenance["state_sha256"], "trm": trm.to_dict()}
    result, held_out = _run(model, groups, paths, config, accelerator,
                            Trainable.for_phase("phase1", trm), identity)
    weights = gather_trainable(accelerator.unwrap_model(model))  # every process: FSDP gathers
    if accelerator.is_main_process:  # the base stayed frozen: its hash is the provenance's
        save_trm(accelerator.unwrap_model(model), paths.out, tensors=weights,
                 base_sha256=provenance["state_sha256"], base_name=provenance["name"],
                 base_revision=provenance["revision"])
    return _metrics(result, held_out, trainable, _unique_count(model))


@dataclass(frozen=True)
class Phase2Config:
    enabled: bool
    max_steps: int
    lr_base: float
    lr_trm: float
    trainable: tuple[str, ...]  # name fragments of base parameters to unfreeze; ("all",) = all

    @classmethod
    def from_params(cls, raw: dict[str, Any], where: str = "params.yaml:phase2") -> Phase2Config:
        expected = {"enabled", "max_steps", "lr_base", "lr_trm", "trainable"}
        if set(raw) != expected:
            raise ParamsError(f"{where}: expected keys {sorted(expected)}, got {sorted(raw)}")
        trainable = raw["trainable"]
        if trainable == "all":
            trainable = ["all"]
        if not isinstance(trainable, list) or not all(isinstance(t, str) for t in trainable):
            raise ParamsError(f"{where}.trainable must be 'all' or a list of name fragments")
        if not isinstance(raw["enabled"], bool):
            raise ParamsError(f"{where}.enabled must be true or false")
        return cls(raw["enabled"], int(raw["max_steps"]), float(raw["lr_base"]),
                   float(raw["lr_trm"]), tuple(trainable))


def run_phase2(
    paths: Paths,
    phase1_dir: Path,
    phase2: Phase2Config,
    config: TrainConfig,
    accelerator: Accelerator | None = None,
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
    result, held_out = _run(model, groups, paths, config, accelerator,
                            _phase2_trainable(base, model.trm_config), identity)
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


def save_hybrid(model: PreTrainedModel, weights: dict[str, torch.Tensor], base_dir: Path,
                out: Path) -> None:
    """Base weights (sharded safetensors, loadable by plain from_pretrained) + TRM adapter.

    `weights` are the model's full tensors (from `gather_all`: a sharded model has no whole
    tensors of its own).
    """
    trm_names = set(trm_named_parameters(model))
    base_state = {name: weights[name] for name in base_named_parameters(model)}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, state_dict=base_state, safe_serialization=True,
                              max_shard_size="200MB")
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
        save_trm(model, tmp / "trm", tensors={n: weights[n] for n in trm_names},
                 base_sha256=tensors_sha256(base_state), base_name=str(out),
                 base_revision="phase2")


def load_hybrid(directory: Path) -> PreTrainedModel:
    """A phase-2 hybrid saved by `save_hybrid`."""
    return load_trm(AutoModelForCausalLM.from_pretrained(directory), directory / "trm")


@dataclass(frozen=True)
class LoraSettings:
    target_modules: str | tuple[str, ...]
    alpha_per_rank: float
    dropout: float
    lr: float

    @classmethod
    def from_params(cls, raw: dict[str, Any], where: str = "params.yaml:lora") -> LoraSettings:
        expected = {"target_modules", "alpha_per_rank", "dropout", "lr"}
        if set(raw) != expected:
            raise ParamsError(f"{where}: expected keys {sorted(expected)}, got {sorted(raw)}")
        targets = raw["target_modules"]
        targets = targets if isinstance(targets, str) else tuple(targets)
        return cls(targets, float(raw["alpha_per_rank"]), float(raw["dropout"]), float(raw["lr"]))


def lora_model(base: PreTrainedModel, settings: LoraSettings, rank: int) -> torch.nn.Module:
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
    groups = [ParamGroup("lora", trainable, settings.lr)]
    identity = {"arm": "lora", "base": provenance["state_sha256"], "rank": rank,
                "lora": asdict(settings)}
    result, held_out = _run(model, groups, paths, config, accelerator,
                            Trainable.for_phase("lora", None, lora_rank=rank), identity)
    weights = gather_trainable(accelerator.unwrap_model(model))  # every process: FSDP gathers
    if accelerator.is_main_process:
        with atomic_dir(paths.out) as tmp:  # PEFT keeps the adapter's keys from `state_dict`
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=weights)
    metrics = _metrics(result, held_out, count, _unique_count(model))
    return metrics | {"lora_rank": rank, "trm_trainable_params": target}
