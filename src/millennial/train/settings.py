"""Each arm's own training settings: the `phase1`, `lora`, `llama_pro` and `phase2` sections.

Every arm has its own learning rate and the same second knob, the learning-rate multiplier of
the weights that start at zero (TRM's `up`, LoRA's B, LLaMA Pro's zeroed output projections):
under Adam a zero-initialised output grows about lr per step whatever its gradient, so this is
where one shared learning rate stops being parity. Tuning budgets are then the same shape for
every arm. Validation goes through `Options`: strict types, ranges, unknown keys named.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from millennial.params import Options, ParamsError

AUTO = "auto"


PREFIX_CACHE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class PrefixCacheSettings:
    """`phase1.prefix_cache`: store the frozen base's output below the lowest TRM block once
    per training block (millennial.train.prefix). `auto` uses it when this run reads a block
    again (epochs, deep supervision, or a store an earlier run filled) and the planner says it
    pays off; `on` also fills a store for later runs, and is refused where it cannot pay off.
    It changes no loss and no weight, so it is not part of a run's identity."""

    mode: str = AUTO
    max_gib: float = 8.0  # the largest store the planner accepts
    dir: str | None = None  # None: runs/prefix_cache; a shared path lets studies reuse stores
    read_gib_per_s: float = 2.0  # what reading a stored state costs, for the payoff test

    @classmethod
    def from_options(cls, options: Options) -> PrefixCacheSettings:
        options.only("mode", "max_gib", "dir", "read_gib_per_s")
        directory = options.get("dir", None)
        if directory is not None:
            directory = options.text("dir")
        return cls(options.choice("mode", PREFIX_CACHE_MODES, AUTO),
                   options.positive("max_gib", 8.0), directory,
                   options.positive("read_gib_per_s", 2.0))


@dataclass(frozen=True)
class Phase1Settings:
    """TRM blocks on the frozen base."""

    lr: float
    out_lr_multiplier: float = 1.0  # `up` (random core) or the zeroed projections (pretrained)
    depth_warmup_steps: int = 0  # cycles ramp from 1 to trm.cycles over these steps; 0 = off
    prefix_cache: PrefixCacheSettings = PrefixCacheSettings()

    @classmethod
    def from_params(cls, raw: Any, where: str | Path = "params.yaml") -> Phase1Settings:
        options = Options(raw, "phase1", where)
        options.only("lr", "out_lr_multiplier", "depth_warmup_steps", "prefix_cache")
        cache = (PrefixCacheSettings.from_options(options.child("prefix_cache"))
                 if options.get("prefix_cache", None) is not None else PrefixCacheSettings())
        return cls(options.positive("lr"), options.positive("out_lr_multiplier", 1.0),
                   options.integer("depth_warmup_steps", 0, low=0), cache)

    def trajectory(self) -> dict[str, Any]:
        """What decides the trained weights (the run's identity): all but the cache."""
        return {k: v for k, v in asdict(self).items() if k != "prefix_cache"}

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
