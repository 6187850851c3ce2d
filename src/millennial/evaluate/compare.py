"""The arms side by side: each arm's per-example scores summarised, every TRM arm against each
rival on the same examples with paired intervals, and what each arm cost to train. Reads and
writes the files the `evaluate_<arm>` stages leave; no model is loaded, so no torch here."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from millennial.atomic import write_json, write_parquet
from millennial.cost.record import CostRecord
from millennial.data import DataError
from millennial.evaluate.config import ARMS, RECURSIVE_ARMS, TRAINING_STAGES
from millennial.evaluate.stats import (
    Proportion,
    gain_per_usd,
    paired_difference,
    paired_proportions,
    pooled,
)

FLOPS_METHOD = ("the planner's forward FLOPs per token (base matmuls, LM head, attention over the "
                "mean sequence length, every TRM call at the depth run) x tokens processed")
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


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def training_record(arm: str, metrics_dir: Path) -> dict[str, Any]:
    """Trainable parameters (from the arm's last training stage) and the summed training cost
    of all its stages (from `metrics/cost/<stage>.json`); None where a record is missing."""
    stages = TRAINING_STAGES[arm]
    trainable: int | None = 0  # the base trains nothing
    training = None
    if stages:
        training = _read_json(metrics_dir / f"{stages[-1]}.json")
        trainable = training.get("trainable_params") if training else None
    paths = {stage: metrics_dir / "cost" / f"{stage}.json" for stage in stages}
    costs = {stage: CostRecord.read(path) if path.is_file() else None
             for stage, path in paths.items()}
    found = [cost for cost in costs.values() if cost is not None]
    complete = len(found) == len(stages)

    def total(key: str) -> float | None:
        values = [getattr(cost, key) for cost in found]
        if not complete or any(value is None for value in values):
            return None
        return float(sum(values))

    return {
        "trainable_params": trainable,
        "flops_per_token": training.get("flops_per_token") if training else None,
        "stages": list(stages),
        "usd": total("usd"),
        "device_hours": total("device_hours"),
        "gpu_hours": total("gpu_hours"),
        "flops": total("run_flops"),  # resumed runs: earlier invocations' work included
        "energy_kwh": total("energy_kwh"),
        "missing": [stage for stage, cost in costs.items() if cost is None],
        "failed": [stage for stage, cost in costs.items()
                   if cost is not None and cost.status == "failed"],
    }
