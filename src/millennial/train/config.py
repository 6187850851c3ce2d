"""`TrainConfig`: the `train:` section of params.yaml, validated where it is read."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from millennial.params import ParamsError

PRECISIONS = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every training stage (same data, same token budget).

    Learning rates are each arm's own (`phase1`, `lora`, `llama_pro`, `phase2` sections): every
    arm gets its own tuning, none inherits another's.
    """

    seed: int = 0
    max_steps: int = 40
    batch_size: int = 4  # rows per process per micro-step
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_steps: int = 4
    max_grad_norm: float = 1.0
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    gradient_checkpointing: bool = False
    deep_supervision_steps: int = 1  # TRM's N_sup: optimizer steps per batch; 1 = off
    mixed_precision: str = "auto"  # bf16 where the GPU supports it, fp32 on CPU
    ema_decay: float = 0.0  # weight average for the saved model; 0 = off
    eval_examples: int = 64  # held-out val records per source for the loss before and after

    @classmethod
    def from_params(cls, raw: dict[str, Any], where: str = "params.yaml:train") -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ParamsError(f"{where}: unknown key(s) {', '.join(unknown)}")
        values = {}
        for name, value in raw.items():
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[
                known[name].type
            ]
            if isinstance(value, bool) and expected is not bool:
                raise ParamsError(f"{where}.{name}: expected {known[name].type}, got {value!r}")
            if not isinstance(value, expected):
                raise ParamsError(f"{where}.{name}: expected {known[name].type}, got {value!r}")
            values[name] = value
        config = cls(**values)
        config.check(where)
        return config

    def check(self, where: str = "train") -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every",
                     "keep_checkpoints", "deep_supervision_steps", "eval_examples"):
            if getattr(self, name) < 1:
                raise ParamsError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ParamsError(f"{where}.max_grad_norm must be a finite number > 0, "
                              f"got {self.max_grad_norm}")
        if self.warmup_steps < 0 or not (math.isfinite(self.weight_decay)
                                         and self.weight_decay >= 0):
            raise ParamsError(f"{where}: warmup_steps and weight_decay must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ParamsError(f"{where}.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.mixed_precision not in PRECISIONS:
            raise ParamsError(
                f"{where}.mixed_precision must be one of {', '.join(PRECISIONS)}, "
                f"got {self.mixed_precision!r}"
            )
        if self.deep_supervision_steps > 1 and self.grad_accum > 1:
            raise ParamsError(f"{where}: deep_supervision_steps > 1 needs grad_accum == 1")
