"""Evaluation: was the injection worth it? Base vs TRM (phase 1, phase 2) vs LoRA.

Every arm answers the same held-out examples with greedy decoding; accuracy carries a Wilson
interval, perplexity measures what general text the model kept, a recursion sweep varies the
TRM's test-time depth, and training cost turns accuracy gained into accuracy per dollar.

`run_evaluation` does the work and returns plain JSON-able data; `millennial.evaluate.report`
renders it; `stages/evaluate.py` wires both to files.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from millennial.cost.planner import forward_flops_per_token, model_shape
from millennial.data import DataError, Options
from millennial.data.pack import Encoded
from millennial.evaluate.arms import Arm, ArmPaths, iter_arms, training_record
from millennial.evaluate.metrics import (
    TaskExample,
    answer_tokens,
    encode_prompts,
    encode_scored,
    measure_speed,
    pad_batch,
    perplexity,
    read_split,
    select_examples,
    select_texts,
    task_accuracy,
)
from millennial.evaluate.stats import Proportion, gain_per_usd, pooled
from millennial.evaluate.sweep import sweep_points, sweep_row
from millennial.hybrid.injection import recursion_depth, trm_blocks
from millennial.params import ParamsError

SPLITS = ("train", "val", "test", "test_ood")
HELD_OUT = "test"  # general-text perplexity and in-distribution task perplexity use this split
log = logging.getLogger(__name__)
FLOPS_METHOD = ("the planner's forward FLOPs per token (base matmuls, LM head, attention over the "
                "mean sequence length, every TRM call at the depth run) x tokens processed")


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
    max_examples: int = 24  # per (task, split)
    max_new_tokens: int = 24
    batch_size: int = 64  # decoding is memory-bound on CPUs: wide batches are nearly free
    text_docs: int = 16  # held-out general-text documents for perplexity
    max_length: int = 128  # tokens per perplexity sequence
    ppl_batch_size: int = 4  # sequences per perplexity batch (full-vocabulary logits are big)
    speed_prompt_tokens: int = 32
    speed_new_tokens: int = 16
    speed_repeats: int = 3
    sweep: SweepConfig = field(default_factory=SweepConfig)
    fleet: str = "8xA100-80GB"  # the report's projection of the run onto a GPU fleet
    mfu: float = 0.40

    @classmethod
    def from_params(cls, raw: Any, where: str = "params.yaml") -> EvalConfig:
        top = Options(raw, "evaluate", where)
        top.only("seed", "splits", "max_examples", "max_new_tokens", "batch_size", "perplexity",
                 "speed", "sweep", "report")
        ppl = Options(top.get("perplexity", {}), "evaluate.perplexity", where)
        ppl.only("text_docs", "max_length", "batch_size")
        speed = Options(top.get("speed", {}), "evaluate.speed", where)
        speed.only("prompt_tokens", "new_tokens", "repeats")
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
            speed_prompt_tokens=speed.integer("prompt_tokens", d.speed_prompt_tokens, low=1),
            speed_new_tokens=speed.integer("new_tokens", d.speed_new_tokens, low=2),
            speed_repeats=speed.integer("repeats", d.speed_repeats, low=1),
            sweep=SweepConfig(
                cycles=_positive_ints(sweep, "cycles", s.cycles),
                latent_steps=_positive_ints(sweep, "latent_steps", s.latent_steps),
                max_examples=sweep.integer("max_examples", s.max_examples, low=1),
                splits=_splits(sweep, s.splits),
            ),
            fleet=report.text("fleet", d.fleet),
            mfu=report.number("mfu", d.mfu, low=1e-6, high=1.0),
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
    metrics: Path  # metrics/: training records and metrics/cost/<stage>.json are read here


@dataclass(frozen=True)
class EvalData:
    """Everything the arms are scored on, selected and tokenized once."""

    examples: list[TaskExample]
    prompts: list[list[int]]
    sweep_examples: list[TaskExample]
    sweep_prompts: list[list[int]]
    text: list[Encoded]  # held-out general text, every token scored
    task_text: list[Encoded]  # in-distribution task examples, answer and EOS scored
    speed_prompt: list[int]
    eos_id: int
    pad_id: int
    context: int  # mean length of the sequences scored: the attention term of the FLOP count


def prepare_data(documents: Path, tokenizer: PreTrainedTokenizerBase,
                 config: EvalConfig) -> EvalData:
    """Select the examples and texts (deterministically) and tokenize them as training did."""
    splits = sorted({*config.splits, *config.sweep.splits, HELD_OUT})
    rows = {split: read_split(documents, split) for split in splits}
    examples = select_examples(itertools.chain.from_iterable(rows[s] for s in config.splits),
                               config.max_examples)
    if not examples:
        raise DataError(f"{documents}: no task rows in splits {list(config.splits)}")
    longest = max(answer_tokens(examples, tokenizer))
    if longest > config.max_new_tokens:
        raise ParamsError(f"params.yaml: 'evaluate.max_new_tokens' is {config.max_new_tokens} "
                          f"but an answer needs {longest} tokens (EOS included): raise it")
    sweep_examples = select_examples(
        itertools.chain.from_iterable(rows[s] for s in config.sweep.splits),
        config.sweep.max_examples)
    if not sweep_examples:
        raise DataError(f"{documents}: no task rows in sweep splits {list(config.sweep.splits)}")
    texts = select_texts(rows[HELD_OUT], config.text_docs)
    if not texts:
        raise DataError(f"{documents}/{HELD_OUT}.parquet: no text rows for perplexity")
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos
    text = encode_scored(texts, tokenizer, eos, config.max_length)
    in_distribution = [e.record() for e in examples if e.split == HELD_OUT]
    stream = [token for sequence in text for token in sequence.ids]
    prompts = encode_prompts([e.prompt for e in examples], tokenizer, eos)
    sweep_prompts = encode_prompts([e.prompt for e in sweep_examples], tokenizer, eos)
    task_text = encode_scored(in_distribution, tokenizer, eos, config.max_length)
    speed_prompt = stream[: config.speed_prompt_tokens]
    lengths = [len(p) + config.max_new_tokens for p in (*prompts, *sweep_prompts)]
    lengths += [len(s.ids) for s in (*text, *task_text)]
    lengths.append(len(speed_prompt) + config.speed_new_tokens)
    return EvalData(
        examples=examples,
        prompts=prompts,
        sweep_examples=sweep_examples,
        sweep_prompts=sweep_prompts,
        text=text,
        task_text=task_text,
        speed_prompt=speed_prompt,
        eos_id=eos,
        pad_id=pad,
        context=round(sum(lengths) / len(lengths)),
    )


@dataclass(frozen=True)
class Measured:
    """What one arm scored (before comparison with the others)."""

    cells: dict[tuple[str, str], Proportion]
    ppl_text: float
    ppl_task: float | None
    tokens_per_s: float
    latency_ms: float
    tokens: int  # tokens processed, for the cost meter


def measure_arm(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                data: EvalData, config: EvalConfig) -> Measured:
    began = time.perf_counter()
    accuracy = task_accuracy(model, tokenizer, data.examples, data.prompts,
                             max_new_tokens=config.max_new_tokens,
                             batch_size=config.batch_size, pad_id=data.pad_id)
    decoded = time.perf_counter()
    ppl_text = perplexity(model, data.text, batch_size=config.ppl_batch_size,
                          pad_id=data.pad_id)
    ppl_task = (
        perplexity(model, data.task_text, batch_size=config.ppl_batch_size, pad_id=data.pad_id)
        if data.task_text else None
    )
    scored = time.perf_counter()
    speed = measure_speed(model, data.speed_prompt, new_tokens=config.speed_new_tokens,
                          repeats=config.speed_repeats, eos_id=data.eos_id, pad_id=data.pad_id)
    log.info("%s: accuracy %.3f (%.1f s), perplexity %.4g (%.1f s), %.3g ms/token (%.1f s)",
             name, pooled(accuracy.cells.values()).rate, decoded - began, ppl_text,
             scored - decoded, speed.latency_ms, time.perf_counter() - scored)
    tokens = (accuracy.generated.prompt_tokens + accuracy.generated.generated_tokens
              + sum(len(s.ids) for s in (*data.text, *data.task_text)) + speed.tokens)
    return Measured(accuracy.cells, ppl_text, ppl_task, speed.tokens_per_s, speed.latency_ms,
                    tokens)


def sweep_arm(arm: Arm, tokenizer: PreTrainedTokenizerBase, data: EvalData,
              config: EvalConfig) -> tuple[list[dict[str, Any]], int, float]:
    """Accuracy and latency of a TRM arm at each test-time depth; rows, tokens and FLOPs."""
    trained = arm.model.trm_config
    rows, tokens, flops = [], 0, 0.0
    for depth in sweep_points(trained, config.sweep.cycles, config.sweep.latent_steps):
        with recursion_depth(arm.model, depth):
            accuracy = task_accuracy(arm.model, tokenizer, data.sweep_examples,
                                     data.sweep_prompts, max_new_tokens=config.max_new_tokens,
                                     batch_size=config.batch_size, pad_id=data.pad_id)
            speed = measure_speed(arm.model, data.speed_prompt,
                                  new_tokens=config.speed_new_tokens,
                                  repeats=config.speed_repeats, eos_id=data.eos_id,
                                  pad_id=data.pad_id)
            per_token = flops_per_token(arm, data.context)
        overall = pooled(accuracy.cells.values()).to_dict()
        rows.append(sweep_row(arm.name, depth, trained, overall, speed.latency_ms))
        log.info("%s sweep T=%d n=%d: accuracy %.3f, %.3g ms/token (%.1f s)", arm.name,
                 depth.cycles, depth.latent_steps, overall["accuracy"], speed.latency_ms,
                 accuracy.generated.seconds)
        processed = (accuracy.generated.prompt_tokens + accuracy.generated.generated_tokens
                     + speed.tokens)
        tokens += processed
        flops += processed * per_token
    return rows, tokens, flops


def flops_per_token(arm: Arm, context: int) -> float:
    """Forward FLOPs per token as the planner counts them, at the depth the TRM blocks run now.

    The base arm runs no TRM call; the LoRA arm is merged into the base, so it costs the same.
    """
    blocks = [] if arm.trm_off else trm_blocks(arm.model)
    trm = blocks[0].config if blocks else None
    return forward_flops_per_token(model_shape(arm.model.config), context, trm).model


def nested_cells(cells: dict[tuple[str, str], Proportion]) -> dict[str, dict[str, Any]]:
    """{task: {split: {accuracy, low, high, n, correct}}}: flat enough for `dvc metrics show`."""
    tasks: dict[str, dict[str, Any]] = {}
    for (task, split), proportion in sorted(cells.items()):
        tasks.setdefault(task, {})[split] = proportion.to_dict()
    return tasks


def overall(cells: dict[tuple[str, str], Proportion]) -> dict[str, Any]:
    """Pooled accuracy per split and over everything ("all": the headline number)."""
    splits = sorted({split for _, split in cells})
    result = {split: pooled(p for (_, s), p in cells.items() if s == split).to_dict()
              for split in splits}
    result["all"] = pooled(cells.values()).to_dict()
    return result


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def assemble(measured: dict[str, Measured], training: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The per-arm results of `metrics/eval.json`, each compared with the base arm."""
    base = measured["base"]
    base_accuracy = pooled(base.cells.values()).rate
    arms = {}
    for name, m in measured.items():
        accuracy = pooled(m.cells.values()).rate
        gain = None if accuracy is None or base_accuracy is None else accuracy - base_accuracy
        arms[name] = {
            "tasks": nested_cells(m.cells),
            "overall": overall(m.cells),
            "accuracy_gain": gain,
            "accuracy_gain_per_usd": gain_per_usd(accuracy, base_accuracy,
                                                  training[name]["usd"]),
            "ppl_text": m.ppl_text,
            "ppl_text_vs_base": _ratio(m.ppl_text, base.ppl_text),
            "ppl_task": m.ppl_task,
            "tokens_per_s": m.tokens_per_s,
            "latency_ms_per_token": m.latency_ms,
            "latency_vs_base": _ratio(m.latency_ms, base.latency_ms),
            "training": training[name],
        }
    return arms


@dataclass(frozen=True)
class Evaluation:
    result: dict[str, Any]  # metrics/eval.json
    sweep: list[dict[str, Any]]  # metrics/eval_sweep.json


def run_evaluation(paths: EvalPaths, config: EvalConfig,
                   add_work: Callable[[int, float], None] | None = None) -> Evaluation:
    """Score every arm on the same data; `add_work(tokens, flops)` is told what each arm cost."""
    torch.manual_seed(config.seed)  # nothing samples; this pins any library-internal RNG use
    tokenizer = AutoTokenizer.from_pretrained(paths.arms.base)
    data = prepare_data(paths.documents, tokenizer, config)
    log.info("evaluating on %d task examples, %d text documents", len(data.examples),
             len(data.text))
    probe_ids, probe_mask = pad_batch(data.prompts[:4], data.pad_id, "left")
    measured: dict[str, Measured] = {}
    sweep: list[dict[str, Any]] = []
    trm_config: dict[str, Any] = {}
    for arm in iter_arms(paths.arms, probe_ids, probe_mask):
        with arm.active():
            measured[arm.name] = measure_arm(arm.name, arm.model, tokenizer, data, config)
            tokens = measured[arm.name].tokens
            flops = tokens * flops_per_token(arm, data.context)
            if arm.recursive:
                rows, sweep_tokens, sweep_flops = sweep_arm(arm, tokenizer, data, config)
                sweep += rows
                tokens += sweep_tokens
                flops += sweep_flops
                trm_config[arm.name] = arm.model.trm_config.to_dict()
        if add_work is not None:
            add_work(tokens, flops)
    training = {name: training_record(name, paths.metrics) for name in measured}
    examples: dict[str, dict[str, int]] = {}
    for example in data.examples:
        cell = examples.setdefault(example.task, {})
        cell[example.split] = cell.get(example.split, 0) + 1
    result = {
        "arms": assemble(measured, training),
        "examples": examples,
        "text_docs": len(data.text),
        "trm_config": trm_config,
        "settings": asdict(config),
        "flops_method": FLOPS_METHOD,
    }
    return Evaluation(result, sweep)
