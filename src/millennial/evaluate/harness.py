"""EleutherAI's lm-evaluation-harness on every arm, through its Hugging Face model interface.

The harness scores the very model object our own scoring used (`HFLM(pretrained=model)`: no
second copy of the weights). Offline, it runs the task YAMLs shipped in `harness_tasks/`, one per
held-out split, over a prefix of each (task, split) cell of our examples, written to a local
JSON-lines file the YAML reads; its exact match is checked, example by example, against ours
(`agreement`): the two measure the same thing, so any disagreement is a bug in one of them.
On a networked machine `evaluate.harness.hub_tasks` adds the harness's own tasks (hellaswag,
arc_easy, gsm8k, ...); asked for offline they fail at once, before any model is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from millennial.evaluate.config import HarnessConfig
from millennial.evaluate.metrics import TaskExample
from millennial.params import ParamsError

TASKS_DIR = Path(__file__).with_name("harness_tasks")
LOCAL_PREFIX = "millennial_"  # shipped task `millennial_<split>` scores held-out split <split>
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
log = logging.getLogger(__name__)


def local_task(split: str) -> Path:
    return TASKS_DIR / f"{LOCAL_PREFIX}{split}.yaml"


def check_hub_reachable(config: HarnessConfig, where: str) -> None:
    """Hub tasks on an offline machine: refuse before any work starts."""
    if not (config.enabled and config.hub_tasks):
        return
    offline = [name for name in OFFLINE_VARIABLES if os.environ.get(name, "") not in ("", "0")]
    if offline:
        raise ParamsError(
            f"{where}: 'evaluate.harness.hub_tasks' lists {list(config.hub_tasks)}, but this "
            f"machine is offline ({', '.join(f'{n}=1' for n in offline)}): their datasets come "
            "from the Hub. Empty the list here, or run on a networked machine with "
            f"{' and '.join(OFFLINE_VARIABLES)} unset")


@dataclass(frozen=True)
class HarnessResult:
    """What the harness measured on one arm (`metrics/eval/<arm>.json` under "harness")."""

    tasks: dict[str, dict[str, float]]  # task -> metric -> value ("exact_match", its stderr, n)
    agreement: dict[str, dict[str, int]]  # local task -> {"n", "same"}: its exact vs ours
    tokens: int  # prompt and generated tokens the harness processed
    seconds: float
    lm_eval_version: str = field(default="")


def harness_examples(examples: Sequence[TaskExample], splits: Sequence[str],
                     max_examples: int) -> dict[str, list[TaskExample]]:
    """Per shipped split, the first `max_examples` of each (task, split) cell, in order."""
    chosen: dict[str, list[TaskExample]] = {}
    taken: dict[tuple[str, str], int] = {}
    for example in examples:
        if example.split not in splits or not local_task(example.split).is_file():
            continue
        if taken.get(example.cell, 0) < max_examples:
            taken[example.cell] = taken.get(example.cell, 0) + 1
            chosen.setdefault(example.split, []).append(example)
    return chosen


def _task_config(split: str, data_file: Path, max_new_tokens: int) -> dict[str, Any]:
    """A shipped task YAML pointed at this run's examples and decode cap."""
    config = yaml.safe_load(local_task(split).read_text(encoding="utf-8"))
    config["dataset_kwargs"] = {"data_files": {config["test_split"]: str(data_file)}}
    config["generation_kwargs"] = {**config["generation_kwargs"], "max_gen_toks": max_new_tokens}
    return config


def _write_documents(path: Path, examples: Sequence[TaskExample], eos_text: str) -> None:
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps({"context": f"{eos_text}{example.prompt}",
                                  "answer": example.answer, "task": example.task,
                                  "split": example.split,
                                  "content_hash": example.content_hash}) + "\n")


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    """The harness's "metric,filter" keys as plain metric names (numbers only)."""
    metrics = {}
    for key, value in values.items():
        name, comma, _ = key.partition(",")
        if comma and isinstance(value, int | float) and not isinstance(value, bool):
            metrics[name] = float(value)
    return metrics


def _sample_tokens(sample: dict[str, Any], tokenizer: PreTrainedTokenizerBase,
                   budget: int | None) -> int:
    """Tokens one logged harness sample processed: each request's context, plus what it
    scored (a loglikelihood continuation) or decoded (the response and its stop token, at
    most the decode `budget` where known; the harness does not log token counts)."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    tokens = 0
    for arguments, response in zip(sample["arguments"], sample["resps"], strict=True):
        context, second = arguments[0], arguments[1] if len(arguments) > 1 else None
        if isinstance(second, str):  # (context, continuation): one forward pass, no decoding
            tokens += count(str(context)) + count(second)
        else:
            generated = str(response[0]) if response else ""
            decoded = count(generated) + 1
            tokens += count(str(context)) + (min(decoded, budget) if budget else decoded)
    return tokens


def run_harness(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                examples: Sequence[TaskExample], our_exact: dict[tuple[str, str], bool],
                splits: Sequence[str], config: HarnessConfig, *, max_new_tokens: int,
                batch_size: int, seed: int) -> HarnessResult:
    """Run the shipped tasks (and any Hub tasks) on `model`; `our_exact` is our own exact
    match per (split, content_hash), to which the harness's is compared example by example."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    chosen = harness_examples(examples, splits, config.max_examples)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="millennial-harness-") as scratch:
        tasks: list[str | dict[str, Any]] = []
        for split, members in chosen.items():
            data_file = Path(scratch) / f"{split}.jsonl"
            _write_documents(data_file, members, str(tokenizer.eos_token))
            tasks.append(_task_config(split, data_file, max_new_tokens))
        tasks += list(config.hub_tasks)
        if not tasks:
            raise ParamsError(f"evaluate.harness: no shipped task for splits {list(splits)} "
                              f"(shipped: {sorted(p.stem for p in TASKS_DIR.glob('*.yaml'))}) "
                              "and no hub_tasks")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                  max_length=model.config.max_position_embeddings)
        manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=bool(config.hub_tasks))
        output = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, log_samples=True, bootstrap_iters=0,
            limit=config.hub_limit if config.hub_tasks else None, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if output is None:
        raise RuntimeError("lm-evaluation-harness returned no results (not rank 0?)")
    scores = {name: _metrics(values) for name, values in output["results"].items()}
    for name, samples in output["samples"].items():
        scores.setdefault(name, {})["n"] = float(len(samples))
    agreement = {}
    tokens = sum(_sample_tokens(sample, tokenizer,
                                max_new_tokens if name.startswith(LOCAL_PREFIX) else None)
                 for name, samples in output["samples"].items() for sample in samples)
    for name, samples in output["samples"].items():
        if name.startswith(LOCAL_PREFIX):
            same = sum(bool(sample["exact_match"]) == our_exact[(sample["doc"]["split"],
                                                                  sample["doc"]["content_hash"])]
                       for sample in samples)
            agreement[name] = {"n": len(samples), "same": same}
    seconds = time.perf_counter() - started
    log.info("lm-evaluation-harness: %s (%.1f s)", {k: v.get("exact_match") for k, v in
                                                    scores.items()}, seconds)
    return HarnessResult(scores, agreement, tokens, seconds, lm_eval.__version__)


def harness_tokens_bound(examples: Sequence[TaskExample], tokenizer: PreTrainedTokenizerBase,
                         splits: Sequence[str], config: HarnessConfig,
                         max_new_tokens: int) -> int:
    """At most the tokens the shipped tasks process (each decoding its full budget); Hub tasks
    are not planned (their size is the Hub's)."""
    if not config.enabled:
        return 0
    chosen = [e for members in harness_examples(examples, splits,
                                                config.max_examples).values() for e in members]
    prompts = tokenizer([e.prompt for e in chosen], add_special_tokens=False)["input_ids"]
    return sum(len(p) + 1 + max_new_tokens for p in prompts)
