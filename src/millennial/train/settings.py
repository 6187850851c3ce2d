"""Each arm's own training settings: the `phase1`, `lora`, `llama_pro` and `phase2` sections.

Every arm has its own learning rate and the same second knob, the learning-rate multiplier of
the weights that start at zero (TRM's `up`, LoRA's B, LLaMA Pro's zeroed output projections):
under Adam a zero-initialised output grows about lr per step whatever its gradient, so this is
where one shared learning rate stops being parity. Tuning budgets are then the same shape for
every arm. Validation goes through `Options`: strict types, ranges, unknown keys named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from millennial.params import Options, ParamsError

AUTO = "auto"


@dataclass(frozen=True)
class Phase1Settings:
    """TRM blocks on the frozen base."""

    lr: float
    out_lr_multiplier: float = 1.0  # `up` (random core) or the zeroed projections (pretrained)
    depth_warmup_steps: int = 0  # cycles ramp from 1 to trm.cycles over these steps; 0 = off

    @classmethod
    def from_params(cls, raw: Any, where: str | Path = "params.yaml") -> Phase1Settings:
        options = Options(raw, "phase1", where)
        options.only("lr", "out_lr_multiplier", "depth_warmup_steps")
        return cls(options.positive("lr"), options.positive("out_lr_multiplier", 1.0),
                   options.integer("depth_warmup_steps", 0, low=0))

    def cycles_at(self, step: int, cycles: int) -> int:
        """The curriculum's cycles at `step`: 1 at step 0, rising linearly to `cycles`."""
        if step >= self.depth_warmup_steps:
            return cycles
        return 1 + (cycles - 1) * step // self.depth_warmup_steps


@dataclass(frozen=True)
class LoraSettings:
    target_modules: str | tuple[str, ...]
    alpha_per_rank: float
    dropout: float
    lr: float
    b_lr_multiplier: float = 1.0  # LoRA+ (Hayou et al. 2024): B, which starts at zero

    @classmethod
    def from_params(cls, raw: Any, where: str | Path = "params.yaml") -> LoraSettings:
        options = Options(raw, "lora", where)
        options.only("target_modules", "alpha_per_rank", "dropout", "lr", "b_lr_multiplier")
        targets = options.strings("target_modules")
        return cls(
            targets[0] if isinstance(raw["target_modules"], str) else targets,
            options.positive("alpha_per_rank"),
            options.number("dropout", 0.0, low=0.0, high=0.99),
            options.positive("lr"),
            options.positive("b_lr_multiplier", 1.0),
        )


@dataclass(frozen=True)
class LlamaProSettings:
    """LLaMA Pro block expansion: `blocks` copies (auto: the count closest to the TRM's size)."""

    blocks: int | None  # None = auto
    lr: float
    out_lr_multiplier: float = 1.0  # the copied blocks' zeroed output projections

    @classmethod
    def from_params(cls, raw: Any, where: str | Path = "params.yaml") -> LlamaProSettings:
        options = Options(raw, "llama_pro", where)
        options.only("blocks", "lr", "out_lr_multiplier")
        blocks = None if options.get("blocks", AUTO) == AUTO else options.integer("blocks", low=1)
        return cls(blocks, options.positive("lr"), options.positive("out_lr_multiplier", 1.0))


@dataclass(frozen=True)
class Phase2Config:
    enabled: bool
    max_steps: int
    lr_base: float
    lr_trm: float
    trainable: tuple[str, ...]  # name fragments of base parameters to unfreeze; ("all",) = all

    @classmethod
    def from_params(cls, raw: Any, where: str | Path = "params.yaml") -> Phase2Config:
        options = Options(raw, "phase2", where)
        options.only("enabled", "max_steps", "lr_base", "lr_trm", "trainable")
        trainable = raw.get("trainable", "all")
        if trainable == "all":
            trainable = ["all"]
        if not isinstance(trainable, list) or not trainable or not all(
                isinstance(t, str) and t for t in trainable):
            raise ParamsError(f"{where}: 'phase2.trainable' must be 'all' or a list of name "
                              f"fragments, got {trainable!r}")
        return cls(options.flag("enabled"), options.integer("max_steps", low=1),
                   options.positive("lr_base"), options.positive("lr_trm"), tuple(trainable))
