"""What evaluation scores and how: the arms, the splits, and the validated `evaluate:` section of
params.yaml. No torch here: the stages that only compare and report read this too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from millennial.evaluate.timing import MIN_SAMPLES
from millennial.params import Options

SPLITS = ("train", "val", "test", "test_ood")
# Each arm and the training stages it was made by (what it cost: all of them).
TRAINING_STAGES: dict[str, tuple[str, ...]] = {
    "base": (),
    "phase1": ("train_phase1",),
    "phase2": ("train_phase1", "train_phase2"),  # phase 2 starts from phase 1: both are paid
    "lora": ("train_lora",),
    "llama_pro": ("train_llama_pro",),
}
ARMS = tuple(TRAINING_STAGES)
RECURSIVE_ARMS = ("phase1", "phase2")  # arms whose test-time depth the sweep can vary


@dataclass(frozen=True)
class ArmPaths:
    base: Path  # models/base
    phase1: Path  # models/phase1 (TRM adapter)
    phase2: Path  # models/phase2 (full hybrid, or skipped.json)
    lora: Path  # models/lora (PEFT adapter)
    llama_pro: Path  # models/llama_pro (expansion blocks)


@dataclass(frozen=True)
class HarnessConfig:
    """The validated `evaluate.harness:` section."""

    enabled: bool = True
    max_examples: int = 16  # per (task, split): a prefix of the evaluation's examples
    hub_tasks: tuple[str, ...] = ()  # harness tasks from the Hub: networked machines only
    hub_limit: int | None = None  # documents per Hub task (None: all)

    @classmethod
    def from_options(cls, options: Options) -> HarnessConfig:
        options.only("enabled", "max_examples", "hub_tasks", "hub_limit")
        d = cls()
        limit = options.get("hub_limit", None)
        hub = options.get("hub_tasks", [])
        return cls(
            enabled=options.flag("enabled", d.enabled),
            max_examples=options.integer("max_examples", d.max_examples, low=1),
            hub_tasks=options.strings("hub_tasks") if hub != [] else (),
            hub_limit=None if limit is None else options.integer("hub_limit", low=1),
        )


@dataclass(frozen=True)
class SpeedConfig:
    """The validated `evaluate.speed` section."""

    prompt_tokens: int = 32
    new_tokens: int = 16  # per run: 15 step gaps
    repeats: int = 7  # runs kept per variant: the median and IQR are over these
    warmup: int = 1  # runs per variant before them, discarded
    threads: int | None = 1  # intra-op threads while timing (None: torch's default)
    max_relative_iqr: float = 0.10  # a wider IQR / median is flagged too noisy to quote

    @property
    def runs(self) -> int:
        """Runs of each variant, warm-up included."""
        return self.warmup + self.repeats

    @classmethod
    def from_options(cls, options: Options) -> SpeedConfig:
        options.only("prompt_tokens", "new_tokens", "repeats", "warmup", "threads",
                     "max_relative_iqr")
        d = cls()
        unset_threads = "threads" in options.raw and options.raw["threads"] is None
        return cls(
            prompt_tokens=options.integer("prompt_tokens", d.prompt_tokens, low=1),
            new_tokens=options.integer("new_tokens", d.new_tokens, low=2),
            repeats=options.integer("repeats", d.repeats, low=MIN_SAMPLES),
            warmup=options.integer("warmup", d.warmup, low=1),
            threads=None if unset_threads else options.integer("threads", d.threads, low=1),
            max_relative_iqr=options.number("max_relative_iqr", d.max_relative_iqr,
                                            low=0.0, high=10.0),
        )


@dataclass(frozen=True)
class SweepConfig:
    cycles: tuple[int, ...] = (1, 6)
    latent_steps: tuple[int, ...] = (1,)
    max_examples: int = 8  # per (task, split), a prefix of the main evaluation's examples
    splits: tuple[str, ...] = ("test_ood",)


@dataclass(frozen=True)
class EvalConfig:
    """The validated `evaluate:` section of params.yaml."""

    seed: int = 0
    splits: tuple[str, ...] = ("test", "test_ood")
    max_examples: int = 100  # per (task, split)
    max_new_tokens: int = 24  # the cap; each (task, split) decodes what its answers need
    batch_size: int = 64  # decoding is memory-bound on CPUs: wide batches are nearly free
    text_docs: int = 16  # held-out general-text documents for perplexity
    max_length: int = 128  # tokens per perplexity sequence
    ppl_batch_size: int = 4  # sequences per perplexity batch (full-vocabulary logits are big)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    fleet: str = "8xA100-80GB"  # the report's projection of the run onto a GPU fleet
    mfu: float = 0.40
    harness: HarnessConfig = field(default_factory=HarnessConfig)

    @classmethod
    def from_params(cls, raw: Any, where: str = "params.yaml") -> EvalConfig:
        top = Options(raw, "evaluate", where)
        top.only("seed", "splits", "max_examples", "max_new_tokens", "batch_size", "perplexity",
                 "speed", "sweep", "report", "harness")
        ppl = Options(top.get("perplexity", {}), "evaluate.perplexity", where)
        ppl.only("text_docs", "max_length", "batch_size")
        sweep = Options(top.get("sweep", {}), "evaluate.sweep", where)
        sweep.only("cycles", "latent_steps", "max_examples", "splits")
        report = Options(top.get("report", {}), "evaluate.report", where)
        report.only("fleet", "mfu")
        d, s = cls(), SweepConfig()
        return cls(
            seed=top.integer("seed", d.seed, low=0),
            splits=_splits(top, d.splits),
            max_examples=top.integer("max_examples", d.max_examples, low=1),
            max_new_tokens=top.integer("max_new_tokens", d.max_new_tokens, low=1),
            batch_size=top.integer("batch_size", d.batch_size, low=1),
            text_docs=ppl.integer("text_docs", d.text_docs, low=1),
            max_length=ppl.integer("max_length", d.max_length, low=2),
            ppl_batch_size=ppl.integer("batch_size", d.ppl_batch_size, low=1),
            speed=SpeedConfig.from_options(Options(top.get("speed", {}), "evaluate.speed", where)),
            sweep=SweepConfig(
                cycles=_positive_ints(sweep, "cycles", s.cycles),
                latent_steps=_positive_ints(sweep, "latent_steps", s.latent_steps),
                max_examples=sweep.integer("max_examples", s.max_examples, low=1),
                splits=_splits(sweep, s.splits),
            ),
            fleet=report.text("fleet", d.fleet),
            mfu=report.number("mfu", d.mfu, low=1e-6, high=1.0),
            harness=HarnessConfig.from_options(
                Options(top.get("harness", {}), "evaluate.harness", where)),
        )


def _splits(options: Options, default: tuple[str, ...]) -> tuple[str, ...]:
    values = options.strings("splits") if "splits" in options.raw else default
    unknown = sorted(set(values) - set(SPLITS))
    if unknown:
        raise options.error("splits", f"has unknown split(s) {unknown}; known: {list(SPLITS)}")
    return tuple(values)


def _positive_ints(options: Options, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = options.get(name, list(default))
    if not isinstance(value, list) or not value or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    ):
        raise options.error(name, f"must be a non-empty list of positive integers, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class EvalPaths:
    arms: ArmPaths
    documents: Path  # data/curated/documents

