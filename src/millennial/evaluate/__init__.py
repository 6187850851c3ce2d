"""Evaluation: was the injection worth it? Base vs TRM (phase 1, phase 2) vs LoRA vs LLaMA Pro.

Each arm is scored on its own (`evaluate_arm`, one DVC stage per arm, so a new TRM variant
re-scores only itself): every arm answers the same held-out examples, a hundred per (task,
split), with greedy decoding, and its per-example results are kept. `compare` then sets the arms
side by side: accuracy with Wilson intervals, the answer loss per task (the headline is the mean
over tasks), perplexity on general text (what the base kept), a recursion sweep of the TRM's
test-time depth, training cost, and each difference against the TRM with a paired interval.

Decode speed is timed inside each arm's stage against a reference that computes what the base
computes, interleaved run by run (`millennial.evaluate.speed` says why): a ratio across two
stages would compare two processes at different times.

`millennial.evaluate.report` renders the comparison; the `evaluate_<arm>` and `evaluate` stages
wire both to files.
"""

from __future__ import annotations

import itertools
import json
import logging
import statistics
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from millennial.atomic import write_json, write_parquet
from millennial.cost.planner import (
    GIB,
    forward_flops_per_token,
    inference_memory,
    model_shape,
    precision_name,
)
from millennial.cost.record import PlannedWork, WorkLog
from millennial.data import TEXT_KIND, DataError
from millennial.data.pack import Encoded
from millennial.evaluate.arms import (
    ARMS,
    RECURSIVE_ARMS,
    ArmPaths,
    SpeedReference,
    load_arm,
    speed_reference,
)
from millennial.evaluate.harness import (
    HarnessConfig,
    check_hub_reachable,
    harness_tokens_bound,
    run_harness,
)
from millennial.evaluate.metrics import (
    TaskExample,
    answer_ids,
    encode_prompts,
    perplexity,
    score_examples,
    scoring_tokens_bound,
    select_examples,
)
from millennial.evaluate.speed import Speed, SpeedConfig, Switch, measure_speed, speed_tokens
from millennial.evaluate.stats import (
    Proportion,
    gain_per_usd,
    paired_difference,
    paired_proportions,
    pooled,
)
from millennial.evaluate.sweep import sweep_points, sweep_row
from millennial.fingerprint import dtype_name
from millennial.heldout import as_record, encode_scored, first_by_hash, pad_batch, read_split
from millennial.hybrid.injection import Depth, mean_halting_cycles, recursion_depth, trm_blocks
from millennial.params import Options, ParamsError

SPLITS = ("train", "val", "test", "test_ood")
HELD_OUT = "test"  # general-text perplexity uses this split
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


@dataclass(frozen=True)
class EvalData:
    """Everything the arms are scored on, selected and tokenized once."""

    examples: list[TaskExample]
    sweep_examples: list[TaskExample]
    text: list[Encoded]  # held-out general text, every token scored
    speed_prompt: list[int]
    eos_id: int
    pad_id: int
    context: int  # mean length of the sequences scored: the attention term of the FLOP count


def prepare_data(documents: Path, tokenizer: PreTrainedTokenizerBase,
                 config: EvalConfig, where: str = "params.yaml") -> EvalData:
    """Select the examples and texts (deterministically) and tokenize them as training did;
    `where` is the params file `config` came from (named when an answer outgrows it)."""
    splits = sorted({*config.splits, *config.sweep.splits, HELD_OUT})
    rows = {split: read_split(documents, split) for split in splits}
    examples = select_examples(itertools.chain.from_iterable(rows[s] for s in config.splits),
                               config.max_examples)
    if not examples:
        raise DataError(f"{documents}: no task rows in splits {list(config.splits)}")
    longest = max(len(ids) + 1 for ids in answer_ids(examples, tokenizer))
    if longest > config.max_new_tokens:
        raise ParamsError(f"{where}: 'evaluate.max_new_tokens' is {config.max_new_tokens} "
                          f"but an answer needs {longest} tokens (EOS included): raise it")
    sweep_examples = select_examples(
        itertools.chain.from_iterable(rows[s] for s in config.sweep.splits),
        config.sweep.max_examples)
    if not sweep_examples:
        raise DataError(f"{documents}: no task rows in sweep splits {list(config.sweep.splits)}")
    texts = first_by_hash(rows[HELD_OUT], lambda r: "text" if r["kind"] == TEXT_KIND else None,
                          config.text_docs).get("text", [])
    if not texts:
        raise DataError(f"{documents}/{HELD_OUT}.parquet: no text rows for perplexity")
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos
    text = encode_scored([as_record(r) for r in texts], tokenizer, eos, config.max_length)
    stream = [token for sequence in text for token in sequence.ids]
    speed_prompt = stream[: config.speed.prompt_tokens]
    answers = answer_ids([*examples, *sweep_examples], tokenizer)
    prompts = encode_prompts([e.prompt for e in (*examples, *sweep_examples)], tokenizer, eos)
    lengths = [len(p) + len(a) + 1 for p, a in zip(prompts, answers, strict=True)]
    lengths += [len(s.ids) for s in text]
    lengths.append(len(speed_prompt) + config.speed.new_tokens)
    return EvalData(
        examples=examples,
        sweep_examples=sweep_examples,
        text=text,
        speed_prompt=speed_prompt,
        eos_id=eos,
        pad_id=pad,
        context=round(sum(lengths) / len(lengths)),
    )


def flops_per_token(model: PreTrainedModel, context: int) -> float:
    """Forward FLOPs per token as the planner counts them, at the depth the TRM blocks run now.

    A merged LoRA costs what its base costs; an expanded base counts its added layers; switched
    off (`trm_disabled`), TRM blocks cost nothing.
    """
    blocks = [block for block in trm_blocks(model) if block.enabled]
    trm = blocks[0].config if blocks else None
    return forward_flops_per_token(model_shape(model.config), context, trm).model


EXAMPLE_SCHEMA = pa.schema([  # data/eval/<arm>.parquet: what each arm answered
    pa.field("task", pa.string()), pa.field("split", pa.string()),
    pa.field("difficulty", pa.int32()), pa.field("content_hash", pa.string()),
    pa.field("answer", pa.string()), pa.field("prediction", pa.string()),
    pa.field("exact", pa.bool_()), pa.field("prefix", pa.bool_()),
    pa.field("first_token", pa.bool_()), pa.field("answer_loss", pa.float64()),
])


@dataclass(frozen=True)
class ArmEvaluation:
    """One arm's scores: the summary (`metrics/eval/<arm>.json`) and one row per example
    (`data/eval/<arm>.parquet`), in the order of the examples."""

    summary: dict[str, Any]
    examples: list[dict[str, Any]]


def _cell_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(rows),
        "exact": Proportion(sum(r["exact"] for r in rows), len(rows)).to_dict(),
        "prefix": Proportion(sum(r["prefix"] for r in rows), len(rows)).to_dict(),
        "first_token": Proportion(sum(r["first_token"] for r in rows), len(rows)).to_dict(),
        "answer_loss": statistics.fmean(r["answer_loss"] for r in rows),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per (task, split) scores, the mean answer loss over tasks per split, pooled accuracy."""
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        cells.setdefault(row["task"], {}).setdefault(row["split"], []).append(row)
    tasks = {task: {split: _cell_summary(members) for split, members in sorted(splits.items())}
             for task, splits in sorted(cells.items())}
    splits = sorted({row["split"] for row in rows})
    task_loss = {split: statistics.fmean(t[split]["answer_loss"] for t in tasks.values()
                                         if split in t) for split in splits}
    overall = {split: pooled(Proportion(t[split]["exact"]["correct"], t[split]["n"])
                             for t in tasks.values() if split in t).to_dict() for split in splits}
    overall["all"] = Proportion(sum(r["exact"] for r in rows), len(rows)).to_dict()
    return {"tasks": tasks, "task_loss": task_loss, "overall": overall}


ARM_SPEED = "arm"  # the arm as loaded (a TRM arm: at its trained depth)
BASE_SPEED = "base"  # what the arm is timed against (millennial.evaluate.arms.speed_reference)


def trained_depth(model: PreTrainedModel) -> Depth:
    return Depth(model.trm_config.cycles, model.trm_config.latent_steps)


def sweep_depths(name: str, model: PreTrainedModel, config: EvalConfig) -> list[Depth]:
    """The test-time depths a TRM arm is scored and timed at; none for other arms."""
    if name not in RECURSIVE_ARMS:
        return []
    return sweep_points(model.trm_config, config.sweep.cycles, config.sweep.latent_steps)


def depth_speed_key(depth: Depth, trained: Depth) -> str:
    """The variant timing `depth`: the trained depth is the arm itself, timed once."""
    if depth == trained:
        return ARM_SPEED
    return f"cycles={depth.cycles} latent_steps={depth.latent_steps}"


def speed_variants(model: PreTrainedModel, reference: SpeedReference | None,
                   depths: Sequence[Depth]) -> dict[str, Switch]:
    """What one arm's stage times, interleaved in one session: the arm, its reference, and a
    TRM arm at each other depth of the sweep (so the sweep's latencies compare too)."""
    variants: dict[str, Switch] = {ARM_SPEED: lambda: nullcontext(model)}
    if reference is not None:
        variants[BASE_SPEED] = reference.switch
    for depth in depths:  # only TRM arms have depths, and a trained one
        key = depth_speed_key(depth, trained_depth(model))
        if key != ARM_SPEED:
            variants[key] = partial(recursion_depth, model, depth)
    return variants


def speed_flops(variants: dict[str, Switch], tokens: int, context: int) -> float:
    """FLOPs of timing: each variant's tokens at what it runs (depth, or blocks switched off)."""
    total = 0.0
    for switch in variants.values():
        with switch() as timed:
            total += tokens * flops_per_token(timed, context)
    return total


def latency_fields(speed: Speed) -> dict[str, Any]:
    """A latency and its ratio to the base as `metrics/eval/<arm>.json` and the sweep keep them:
    each median beside its spread (no reference: the base itself, x1 exactly)."""
    ratio = speed.vs_reference
    return {"latency_ms_per_token": speed.latency_ms.median,
            "latency_ms_per_token_spread": speed.latency_ms.to_dict(),
            "latency_vs_base": 1.0 if ratio is None else ratio.median,
            "latency_vs_base_spread": None if ratio is None else ratio.to_dict()}


def sweep_arm(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
              data: EvalData, config: EvalConfig,
              speeds: dict[str, Speed]) -> tuple[list[dict[str, Any]], int, float]:
    """Accuracy of a TRM arm at each test-time depth, beside the latency `speeds` timed there;
    rows, and the tokens and FLOPs of the scoring."""
    trained = trained_depth(model)
    rows, tokens, flops = [], 0, 0.0
    for depth in sweep_depths(name, model, config):
        with recursion_depth(model, depth):
            mean_halting_cycles(model)  # count this point's scoring alone
            scored = score_examples(model, tokenizer, data.sweep_examples,
                                    max_new_tokens=config.max_new_tokens,
                                    batch_size=config.batch_size, pad_id=data.pad_id)
            halting_cycles = mean_halting_cycles(model)
            per_token = flops_per_token(model, data.context)
        accuracy = Proportion(sum(s.exact for s in scored.scores), len(scored.scores))
        speed = speeds[depth_speed_key(depth, trained)]
        row = sweep_row(name, depth, trained, accuracy.to_dict(), latency_fields(speed))
        row["answer_loss"] = statistics.fmean(s.answer_loss for s in scored.scores)
        row["halting_mean_cycles"] = halting_cycles
        rows.append(row)
        log.info("%s sweep T=%d n=%d: accuracy %.3f, %.3g ms/token (%.1f s)", name,
                 depth.cycles, depth.latent_steps, accuracy.rate or 0.0, speed.latency_ms.median,
                 scored.seconds)
        processed = scored.prompt_tokens + scored.generated_tokens + scored.scored_tokens
        tokens += processed
        flops += processed * per_token
    return rows, tokens, flops


def plan_evaluation(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    data: EvalData, config: EvalConfig, variants: dict[str, Switch],
                    reference: SpeedReference | None) -> PlannedWork:
    """The planner's prediction for scoring one arm, made before it runs: tokens at most
    (every decode at its full budget), their FLOPs at each depth scored, and peak memory (a
    reference loaded beside the arm included)."""
    timed = speed_tokens(len(data.speed_prompt), config.speed)
    tokens = (scoring_tokens_bound(data.examples, tokenizer, config.max_new_tokens)
              + sum(len(s.ids) for s in data.text)
              + harness_tokens_bound(data.examples, tokenizer, config.splits, config.harness,
                                     config.max_new_tokens))
    flops = tokens * flops_per_token(model, data.context)
    point = scoring_tokens_bound(data.sweep_examples, tokenizer, config.max_new_tokens)
    for depth in sweep_depths(name, model, config):
        with recursion_depth(model, depth):
            flops += point * flops_per_token(model, data.context)
        tokens += point
    tokens += timed * len(variants)
    flops += speed_flops(variants, timed, data.context)
    parameter = next(model.parameters())
    prompts = encode_prompts([e.prompt for e in (*data.examples, *data.sweep_examples)],
                             tokenizer, data.eos_id)
    blocks = trm_blocks(model)
    weights = [model]
    if reference is not None and reference.model is not model:
        weights.append(reference.model)  # the base, loaded beside the arm to time it against
    memory = inference_memory(
        model_shape(model.config), blocks[0].config if blocks else None,
        weight_bytes=sum(p.numel() * p.element_size() for m in weights for p in m.parameters()),
        bytes_per_value=parameter.element_size(), decode_rows=config.batch_size,
        decode_tokens=max(map(len, prompts)) + config.max_new_tokens,
        score_rows=max(config.batch_size, config.ppl_batch_size),
        score_tokens=max(max(map(len, prompts)) + config.max_new_tokens, config.max_length))
    return PlannedWork(tokens=tokens, flops=flops, peak_memory_bytes=memory["total"] * GIB,
                       memory_breakdown=memory,
                       basis=f"evaluation of {name}: decoding at its full budget (an upper "
                             "bound), teacher-forced scoring, perplexity, speed, the harness's "
                             "shipped tasks",
                       precision=precision_name(dtype_name(parameter.dtype)))


def evaluate_arm(name: str, paths: EvalPaths, config: EvalConfig,
                 work: WorkLog | None = None, where: str = "params.yaml") -> ArmEvaluation | None:
    """Score one arm on the shared examples (None: a phase 2 that was not trained); `work`
    (the stage's meter) hears the plan before scoring and what scoring cost after."""
    check_hub_reachable(config.harness, where)
    torch.manual_seed(config.seed)  # nothing samples; this pins any library-internal RNG use
    tokenizer = AutoTokenizer.from_pretrained(paths.arms.base)
    data = prepare_data(paths.documents, tokenizer, config, where)
    probe = encode_prompts([e.prompt for e in data.examples[:4]], tokenizer, data.eos_id)
    model = load_arm(name, paths.arms, *pad_batch(probe, data.pad_id, "left"))
    if model is None:
        return None
    log.info("%s: %d task examples, %d text documents", name, len(data.examples), len(data.text))
    reference = speed_reference(name, model, paths.arms)
    variants = speed_variants(model, reference, sweep_depths(name, model, config))
    if work is not None:
        work.plan(plan_evaluation(name, model, tokenizer, data, config, variants, reference))
    mean_halting_cycles(model)  # count the scoring alone
    scored = score_examples(model, tokenizer, data.examples, max_new_tokens=config.max_new_tokens,
                            batch_size=config.batch_size, pad_id=data.pad_id)
    halting_cycles = mean_halting_cycles(model)
    ppl_text = perplexity(model, data.text, batch_size=config.ppl_batch_size, pad_id=data.pad_id)
    per_token = flops_per_token(model, data.context)
    tokens = (scored.prompt_tokens + scored.generated_tokens + scored.scored_tokens
              + sum(len(s.ids) for s in data.text))
    harness = None
    if config.harness.enabled:
        ours = {(e.split, e.content_hash): s.exact
                for e, s in zip(data.examples, scored.scores, strict=True)}
        harness = run_harness(model, tokenizer, data.examples, ours, config.splits,
                              config.harness, max_new_tokens=config.max_new_tokens,
                              batch_size=config.batch_size, seed=config.seed)
        tokens += harness.tokens
    flops = tokens * per_token
    speeds = measure_speed(variants, data.speed_prompt, config.speed, eos_id=data.eos_id,
                           pad_id=data.pad_id,
                           reference=None if reference is None else BASE_SPEED)
    timed = speed_tokens(len(data.speed_prompt), config.speed)
    tokens += sum(speed.tokens for speed in speeds.values())
    flops += speed_flops(variants, timed, data.context)
    speed = speeds[ARM_SPEED]
    sweep: list[dict[str, Any]] = []
    if name in RECURSIVE_ARMS:
        sweep, sweep_tokens, sweep_flops = sweep_arm(name, model, tokenizer, data, config,
                                                     speeds)
        tokens, flops = tokens + sweep_tokens, flops + sweep_flops
    if work is not None:
        work.add(tokens=tokens, flops=flops)
    rows = [{"task": e.task, "split": e.split, "difficulty": e.difficulty,
             "content_hash": e.content_hash, "answer": e.answer, **asdict(s)}
            for e, s in zip(data.examples, scored.scores, strict=True)]
    summary = {
        "arm": name,
        **summarise(rows),
        "ppl_text": ppl_text,
        "text_docs": len(data.text),
        "tokens_per_s": speed.tokens_per_s,
        **latency_fields(speed),
        "speed_reference": None if reference is None else reference.description,
        "forward_flops_per_token": per_token,
        "trm_config": model.trm_config.to_dict() if name in RECURSIVE_ARMS else None,
        "halting_mean_cycles": halting_cycles,  # None without halting heads
        "sweep": sweep,
        "harness": asdict(harness) if harness else None,
        "tokens": tokens,
        "flops": flops,
        "settings": asdict(config),
    }
    log.info("%s: exact %.3f, task loss %s, perplexity %.4g, %.3g ms/token (IQR %.3g) (%.1f s)",
             name, summary["overall"]["all"]["accuracy"], summary["task_loss"], ppl_text,
             speed.latency_ms.median, speed.latency_ms.iqr, scored.seconds)
    return ArmEvaluation(summary, rows)


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


COMPARED = ("lora", "llama_pro", "base")  # what each TRM arm is set against


def compare_arms(mine: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]],
                 seed: int) -> dict[str, Any]:
    """Paired differences (mine - theirs) on the same examples: exact match over all, the mean
    answer loss over tasks per split, and exact match per (task, split)."""
    keys = [(r["task"], r["split"], r["content_hash"]) for r in mine]
    if keys != [(r["task"], r["split"], r["content_hash"]) for r in theirs]:
        raise DataError("two arms were scored on different examples: re-run their "
                        "evaluate stages on the same data")
    exact = paired_proportions([r["exact"] for r in mine], [r["exact"] for r in theirs])
    splits = sorted({r["split"] for r in mine})
    task_loss = {}
    by_cell: dict[str, dict[str, Any]] = {}
    for split in splits:
        index = [i for i, r in enumerate(mine) if r["split"] == split]
        task_loss[split] = paired_difference(
            [mine[i]["answer_loss"] for i in index], [theirs[i]["answer_loss"] for i in index],
            strata=[mine[i]["task"] for i in index], seed=seed).to_dict()
        for task in sorted({mine[i]["task"] for i in index}):
            cell = [i for i in index if mine[i]["task"] == task]
            by_cell.setdefault(task, {})[split] = paired_proportions(
                [mine[i]["exact"] for i in cell], [theirs[i]["exact"] for i in cell]).to_dict()
    return {"exact": exact.to_dict(), "task_loss": task_loss, "exact_by_cell": by_cell}


def compare(evaluations: dict[str, ArmEvaluation], training: dict[str, dict[str, Any]],
            seed: int) -> dict[str, Any]:
    """`metrics/eval.json`: every arm beside the base, and each TRM arm against each rival.

    Latency against the base is each arm's own, timed in its stage (not one stage's median over
    another's)."""
    if "base" not in evaluations:
        raise DataError("no evaluation of the base arm: run the evaluate_base stage")
    base = evaluations["base"].summary
    base_accuracy = base["overall"]["all"]["accuracy"]
    arms = {}
    for name, evaluation in evaluations.items():
        summary = evaluation.summary
        accuracy = summary["overall"]["all"]["accuracy"]
        arms[name] = {
            key: summary[key] for key in ("tasks", "task_loss", "overall", "ppl_text",
                                          "tokens_per_s", "latency_ms_per_token",
                                          "latency_ms_per_token_spread", "latency_vs_base",
                                          "latency_vs_base_spread", "speed_reference",
                                          "forward_flops_per_token")
        } | {
            "accuracy_gain": accuracy - base_accuracy,
            "accuracy_gain_per_usd": gain_per_usd(accuracy, base_accuracy,
                                                  training[name]["usd"]),
            "ppl_text_vs_base": _ratio(summary["ppl_text"], base["ppl_text"]),
            "training": training[name],
            "harness": summary.get("harness"),
        }
    comparisons = {
        f"{mine}_vs_{rival}": compare_arms(evaluations[mine].examples,
                                           evaluations[rival].examples, seed)
        for mine in RECURSIVE_ARMS if mine in evaluations
        for rival in COMPARED if rival in evaluations
    }
    examples: dict[str, dict[str, int]] = {}
    for row in evaluations["base"].examples:
        cell = examples.setdefault(row["task"], {})
        cell[row["split"]] = cell.get(row["split"], 0) + 1
    return {
        "arms": arms,
        "comparisons": comparisons,
        "examples": examples,
        "text_docs": base["text_docs"],
        "trm_config": {name: evaluations[name].summary["trm_config"]
                       for name in RECURSIVE_ARMS if name in evaluations},
        "settings": base["settings"],
        "flops_method": FLOPS_METHOD,
    }


def sweep_rows(evaluations: dict[str, ArmEvaluation]) -> list[dict[str, Any]]:
    """`metrics/eval_sweep.json`: every TRM arm's test-time depth sweep."""
    return [row for name in RECURSIVE_ARMS if name in evaluations
            for row in evaluations[name].summary["sweep"]]


def write_arm(evaluation: ArmEvaluation | None, name: str, summary_path: Path,
              examples_path: Path) -> None:
    """Write one arm's outputs atomically; an arm that was not trained writes a skip record
    (and an empty examples file, so every declared output exists)."""
    summary = evaluation.summary if evaluation else {"arm": name, "skipped": True}
    rows = evaluation.examples if evaluation else []
    write_parquet(examples_path, pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA))
    write_json(summary_path, summary)


def read_arms(summaries: Path, examples: Path) -> dict[str, ArmEvaluation]:
    """Every arm scored under `summaries/<arm>.json` (skipped ones left out), in arm order."""
    evaluations = {}
    for name in ARMS:
        path = summaries / f"{name}.json"
        if not path.is_file():
            continue
        summary = json.loads(path.read_text(encoding="utf-8"))
        if summary.get("skipped"):
            continue
        table = examples / f"{name}.parquet"
        if not table.is_file():
            raise FileNotFoundError(f"{table}: not found; re-run the evaluate_{name} stage")
        evaluations[name] = ArmEvaluation(summary, pq.read_table(table).to_pylist())
    return evaluations
