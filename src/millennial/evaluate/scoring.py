"""Scoring one arm (the `evaluate_<arm>` stages): load it, answer the shared held-out examples with
greedy decoding, score the answers' loss and general-text perplexity, cross-check with the
harness, time decoding against the base, and sweep a TRM arm's test-time depth."""

from __future__ import annotations

import itertools
import logging
import statistics
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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
from millennial.evaluate.arms import SpeedReference, load_arm, speed_reference
from millennial.evaluate.compare import ArmEvaluation, summarise
from millennial.evaluate.config import RECURSIVE_ARMS, EvalConfig, EvalPaths
from millennial.evaluate.harness import (
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
from millennial.evaluate.speed import Speed, Switch, measure_speed, speed_tokens
from millennial.evaluate.stats import (
    Proportion,
)
from millennial.evaluate.sweep import sweep_points, sweep_row
from millennial.fingerprint import dtype_name
from millennial.heldout import as_record, encode_scored, first_by_hash, pad_batch, read_split
from millennial.hybrid.injection import Depth, mean_halting_cycles, recursion_depth, trm_blocks
from millennial.params import ParamsError

HELD_OUT = "test"  # general-text perplexity uses this split
log = logging.getLogger(__name__)


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

