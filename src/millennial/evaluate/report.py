"""Readable outputs of the evaluation: eval.md, charts, a model card, the run summary.

Renderers are pure (data in, Markdown out); `write_*` functions do the file I/O. The verdict
comes first in every document, and a loss is never softened: if the TRM arm scores below LoRA
or below the base, the first line says so.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from matplotlib.figure import Figure

from millennial.atomic import write_json, write_text

ARM_ORDER = ("base", "phase1", "phase2", "lora")
ARM_LABELS = {"base": "base (TRM off)", "phase1": "TRM phase 1", "phase2": "TRM phase 2",
              "lora": "LoRA"}
TRM_ARMS = ("phase1", "phase2")


def arm_names(result: dict[str, Any]) -> list[str]:
    return [name for name in ARM_ORDER if name in result["arms"]]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"x{value:.3f}"


def _per_usd(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.4g} pts/USD"


def _interval(cell: dict[str, Any]) -> str:
    return (f"{_pct(cell['accuracy'])} [{100 * cell['low']:.1f}, {100 * cell['high']:.1f}] "
            f"(n={cell['n']})")


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def verdict(result: dict[str, Any]) -> list[str]:
    """The first lines of every report: did each TRM arm beat the base and LoRA?"""
    lines = []
    arms = result["arms"]
    for trm in (name for name in TRM_ARMS if name in arms):
        mine = arms[trm]["overall"]["all"]
        rivals = [name for name in ("lora", "base") if name in arms]
        theirs = {name: arms[name]["overall"]["all"] for name in rivals}
        lost = [n for n in rivals if mine["accuracy"] < theirs[n]["accuracy"]]
        tied = [n for n in rivals if mine["accuracy"] == theirs[n]["accuracy"]]
        beat = [n for n in rivals if n not in lost and n not in tied]
        outcome = [f"LOST to {_names(lost)}"] if lost else []
        outcome += [f"tied with {_names(tied)}"] if tied else []
        outcome += [f"beat {_names(beat)}"] if beat else []
        described = ", ".join(f"{ARM_LABELS[n]} {_pct(theirs[n]['accuracy'])}" for n in rivals)
        lines.append(f"**{ARM_LABELS[trm]} {'; '.join(outcome)}**: task accuracy "
                     f"{_pct(mine['accuracy'])} against {described}.")
        within = [n for n in lost + beat if _overlap(mine, theirs[n])]
        if within:
            lines.append(f"The 95% intervals of {ARM_LABELS[trm]} and {_names(within)} overlap: "
                         "at this sample size that difference is not established.")
    return lines


def _names(arms: Sequence[str]) -> str:
    return " and ".join(ARM_LABELS[name] for name in arms)


def _points(gain: float | None) -> str:
    """An accuracy difference in percentage points."""
    return "-" if gain is None else f"{100 * gain:+.1f} pts"


# --------------------------------------------------------------------------- eval.md


def _summary_table(result: dict[str, Any]) -> list[str]:
    splits = sorted({split for splits in result["examples"].values() for split in splits})
    header = ["arm", "trainable params", "accuracy (all) [95% CI]", *splits,
              "ppl text (x base)", "ppl task answers", "tokens/s", "ms/token (x base)",
              "train USD", "gain / USD"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name in arm_names(result):
        arm = result["arms"][name]
        training = arm["training"]
        row = [
            ARM_LABELS[name],
            _num(training["trainable_params"]),
            _interval(arm["overall"]["all"]),
            *(_pct(arm["overall"][split]["accuracy"]) for split in splits),
            f"{_num(arm['ppl_text'])} ({_ratio(arm['ppl_text_vs_base'])})",
            _num(arm["ppl_task"]),
            _num(arm["tokens_per_s"], 3),
            f"{_num(arm['latency_ms_per_token'], 3)} ({_ratio(arm['latency_vs_base'])})",
            _num(training["usd"]),
            _per_usd(arm["accuracy_gain_per_usd"]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _cost_gaps(result: dict[str, Any]) -> list[str]:
    """Say which training cost records were missing or failed, instead of a silent "-"."""
    lines = []
    for name in arm_names(result):
        training = result["arms"][name]["training"]
        if training["missing"]:
            lines.append(f"- {ARM_LABELS[name]}: no cost record for "
                         f"{', '.join(training['missing'])} (metrics/cost/): cost and gain / USD "
                         "unknown.")
        if training["failed"]:
            lines.append(f"- {ARM_LABELS[name]}: stage(s) {', '.join(training['failed'])} "
                         "recorded as failed; their cost covers the run up to the failure.")
    return lines


def _task_table(result: dict[str, Any]) -> list[str]:
    names = arm_names(result)
    lines = ["| task | split | " + " | ".join(ARM_LABELS[n] for n in names) + " |",
             "|" + " --- |" * (2 + len(names))]
    for task, splits in sorted(result["examples"].items()):
        for split in sorted(splits):
            cells = [_interval(result["arms"][n]["tasks"][task][split]) for n in names]
            lines.append(f"| {task} | {split} | " + " | ".join(cells) + " |")
    return lines


def _sweep_table(sweep: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| arm | cycles T | latent steps n | f calls / token / block | accuracy [95% CI] "
             "| ms/token |", "| --- | --- | --- | --- | --- | --- |"]
    for row in sweep:
        marker = " (trained)" if row["trained_depth"] else ""
        lines.append(f"| {ARM_LABELS[row['arm']]}{marker} | {row['cycles']} | "
                     f"{row['latent_steps']} | {row['f_calls_per_token']} | {_interval(row)} | "
                     f"{_num(row['latency_ms'], 3)} |")
    return lines


def render_eval_markdown(result: dict[str, Any], sweep: Sequence[dict[str, Any]],
                         figures: dict[str, str]) -> str:
    """reports/eval.md; `figures` maps a caption to a path relative to the report."""
    settings = result["settings"]
    lines = [
        *verdict(result),
        "",
        "# Evaluation: base vs TRM vs LoRA",
        "",
        f"Greedy decoding (batched, left padding, KV cache, at most "
        f"{settings['max_new_tokens']} new tokens, stop at EOS); a prediction is correct when "
        "the decoded continuation, stripped, equals the answer. Every arm answers the same "
        f"examples: per (task, split) the first {settings['max_examples']} by content hash. "
        "Accuracy (all) pools every task example of every split. Intervals are 95% Wilson.",
        "",
        "## Summary",
        "",
        *_summary_table(result),
        "",
        "- ppl text: perplexity on "
        f"{result['text_docs']} held-out general-text documents (test split, first "
        f"{settings['max_length']} tokens each); x base is the ratio to the base arm "
        "(1.0 = nothing forgotten).",
        "- ppl task answers: perplexity of the answer tokens and EOS given the prompt "
        "(in-distribution test examples).",
        "- tokens/s and ms/token: batch 1, KV cache, median of "
        f"{settings['speed_repeats']} runs of {settings['speed_new_tokens']} new tokens; "
        "ms/token is the decode step after the first token. Wall-clock on shared machines: "
        "compare ratios, not absolutes.",
        "- LoRA is evaluated merged into its base, as it would be served.",
        "- gain / USD: (arm accuracy - base accuracy) in percentage points per training USD "
        "of the arm's stages (phase 2 includes phase 1).",
        *_cost_gaps(result),
        "",
        "## Per task",
        "",
        *_task_table(result),
        "",
    ]
    if sweep:
        sweep_settings = settings["sweep"]
        lines += [
            "## Test-time recursion depth",
            "",
            f"Each TRM arm at other depths than it was trained with, one knob at a time: "
            f"splits {', '.join(sweep_settings['splits'])}, first "
            f"{sweep_settings['max_examples']} examples per (task, split).",
            "",
            *_sweep_table(sweep),
            "",
        ]
    lines += ["## Figures", ""]
    lines += [f"![{caption}]({path})" for caption, path in figures.items()]
    lines += ["", f"FLOPs in the cost record: {result['flops_method']}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- charts


def plot_accuracy(result: dict[str, Any], path: Path) -> None:
    """Grouped bars: accuracy per (task, split) for each arm, Wilson intervals as error bars."""
    names = arm_names(result)
    cells = [(task, split) for task, splits in sorted(result["examples"].items())
             for split in sorted(splits)]
    figure = Figure(figsize=(max(6.0, 1.4 * len(cells) + 2), 4.0))
    axes = figure.subplots()
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        values = [result["arms"][name]["tasks"][t][s] for t, s in cells]
        heights = [v["accuracy"] or 0.0 for v in values]
        errors = [[h - v["low"] for h, v in zip(heights, values, strict=True)],
                  [v["high"] - h for h, v in zip(heights, values, strict=True)]]
        positions = [c + (index - (len(names) - 1) / 2) * width for c in range(len(cells))]
        axes.bar(positions, heights, width, yerr=errors, capsize=3, label=ARM_LABELS[name])
    axes.set_xticks(range(len(cells)), [f"{t}\n{s}" for t, s in cells])
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("exact-match accuracy")
    axes.set_title("Accuracy per task and split (95% Wilson intervals)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    _save(figure, path)


def plot_sweep(sweep: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy against cycles (at the trained n) and latent steps (at the trained T), and
    latency against total f calls."""
    figure = Figure(figsize=(12.0, 3.8))
    by_cycles, by_steps, by_calls = figure.subplots(1, 3)
    for arm in sorted({row["arm"] for row in sweep}, key=ARM_ORDER.index):
        rows = [row for row in sweep if row["arm"] == arm]
        trained = next(row for row in rows if row["trained_depth"])
        for axes, knob, fixed in ((by_cycles, "cycles", "latent_steps"),
                                  (by_steps, "latent_steps", "cycles")):
            line = sorted((r for r in rows if r[fixed] == trained[fixed]), key=lambda r: r[knob])
            accuracy = [r["accuracy"] or 0.0 for r in line]
            errors = [[a - r["low"] for a, r in zip(accuracy, line, strict=True)],
                      [r["high"] - a for a, r in zip(accuracy, line, strict=True)]]
            axes.errorbar([r[knob] for r in line], accuracy, yerr=errors, marker="o", capsize=3,
                          label=f"{ARM_LABELS[arm]} ({fixed} = {trained[fixed]})")
        calls = sorted(rows, key=lambda r: r["f_calls_per_token"])
        by_calls.plot([r["f_calls_per_token"] for r in calls], [r["latency_ms"] for r in calls],
                      marker="o", label=ARM_LABELS[arm])
    for axes, label in ((by_cycles, "test-time cycles T"), (by_steps, "test-time latent steps n")):
        axes.set_xlabel(label)
        axes.set_ylabel("exact-match accuracy")
        axes.set_ylim(0, 1.05)
        axes.legend(fontsize="small")
    by_calls.set_xlabel("f calls per token per block")
    by_calls.set_ylabel("ms per decoded token")
    by_calls.legend(fontsize="small")
    figure.tight_layout()
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, metadata={"Software": None})  # no version: stable bytes


# --------------------------------------------------------------------------- model card


@dataclass(frozen=True)
class Provenance:
    """What the card and the summary say about the inputs: base, data, validation, params."""

    base: dict[str, Any]  # models/base/provenance.json
    validation: dict[str, Any] | None  # metrics/validation.json
    receipt: dict[str, Any] | None  # data/validated/receipt.json (absent: not validated)
    params: dict[str, Any]  # params.yaml
    sources: list[str]  # curated data sources the training split came from


def hub_id(name: str) -> str:
    """The Hub id a model card's `base_model` links to ("org/model" leading the provenance
    name, as for the packaged SmolLM2), else the name as it is."""
    first = name.split(maxsplit=1)[0] if name.strip() else name
    return first if re.fullmatch(r"[\w.-]+/[\w.-]+", first) else name


def validation_verdict(provenance: Provenance) -> str:
    validation, receipt = provenance.validation, provenance.receipt
    if receipt is None or not receipt.get("success"):
        return "NOT validated (no passing receipt in data/validated/receipt.json)"
    checks = ""
    if validation is not None:
        checks = (f", {validation['checks_total'] - validation['checks_failed']}/"
                  f"{validation['checks_total']} checks passed")
    return f"validated{checks}; data sha256 `{receipt['data_sha256']}`"


def _yaml_block(data: Any) -> list[str]:
    return ["```yaml", yaml.safe_dump(data, sort_keys=False).rstrip(), "```"]


def render_model_card(result: dict[str, Any], provenance: Provenance,
                      lineage_markdown: str) -> str:
    """A Hugging Face model card for the phase-1 TRM adapter, its lineage last."""
    base = provenance.base
    front = {
        "license": "apache-2.0",
        "base_model": hub_id(base["name"]),
        "library_name": "millennial",
        "tags": ["trm", "tiny-recursive-model", "adapter", "recursive-reasoning"],
        "datasets": provenance.sources,
        "pipeline_tag": "text-generation",
    }
    phase1 = result["arms"]["phase1"]
    training = phase1["training"]
    params = provenance.params
    setup = {key: params[key] for key in ("trm", "train") if key in params}
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        "# TRM adapter (phase 1)", "",
        *verdict(result), "",
        "Tiny Recursive Model blocks injected into a frozen causal LM and trained alone. "
        "This artifact holds only the TRM weights (`trm.safetensors`, `trm_config.json`); load "
        "it onto its base with `millennial.hybrid.load_trm(base_model, directory)`, which "
        "refuses a base whose weights hash differently.", "",
        "## Base model", "",
        f"- name: {base['name']}",
        f"- revision: {base.get('revision') or '-'}",
        f"- parameters: {_num(base.get('parameters'))}",
        f"- weights sha256 (`state_sha256`): `{base['state_sha256']}`", "",
        "## Training data", "",
        f"- sources: {', '.join(provenance.sources) or '-'}",
        f"- validation: {validation_verdict(provenance)}", "",
        "## Training setup", "",
        f"- trainable parameters: {_num(training['trainable_params'])} (the base is frozen)",
        *_yaml_block(setup), "",
        "## Evaluation", "",
        "Exact match under greedy decoding, 95% Wilson intervals; see `reports/eval.md`.", "",
        *_task_table(result), "",
        f"- accuracy (all): {_interval(phase1['overall']['all'])}",
        f"- perplexity on held-out general text: {_num(phase1['ppl_text'])} "
        f"(base: {_num(result['arms']['base']['ppl_text'])})",
        f"- decode latency vs base: {_ratio(phase1['latency_vs_base'])}", "",
        "## Cost", "",
        f"- training stages: {', '.join(training['stages'])}",
        f"- USD: {_num(training['usd'])}; device-hours: {_num(training['device_hours'])}; "
        f"GPU-hours: {_num(training['gpu_hours'])}; energy: {_num(training['energy_kwh'])} kWh",
        f"- accuracy gained over the base: {_points(phase1['accuracy_gain'])}, "
        f"{_per_usd(phase1['accuracy_gain_per_usd'])}", "",
        "## Limitations", "",
        "- Evaluated on small synthetic task sets (tens of examples per cell): intervals are "
        "wide, and the tasks are probes, not a general benchmark.",
        "- Only useful on the exact base above; other bases are refused.",
        "- Every decoded token runs the recursion: decoding is slower than the base (see the "
        "latency ratio). Beam search and KV-cache cropping are not supported with TRM blocks.",
        "- Timings come from whatever machine ran the evaluation and are noisy on shared CPUs.",
        "", "## Lineage", "", lineage_markdown.rstrip(), "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- writers


@dataclass(frozen=True)
class EvalOutputs:
    metrics: Path  # metrics/eval.json
    sweep: Path  # metrics/eval_sweep.json
    markdown: Path  # reports/eval.md
    figures: Path  # reports/figures/
    model_card: Path  # models/phase1/README.md, beside the adapter it describes


def write_eval_outputs(result: dict[str, Any], sweep: Sequence[dict[str, Any]],
                       provenance: Provenance, out: EvalOutputs, lineage_markdown: str) -> None:
    write_json(out.metrics, result)
    write_json(out.sweep, list(sweep))
    figures = {"accuracy per task and split": out.figures / "eval_accuracy.png"}
    plot_accuracy(result, figures["accuracy per task and split"])
    if sweep:
        figures["accuracy and latency against recursion depth"] = out.figures / "eval_sweep.png"
        plot_sweep(sweep, figures["accuracy and latency against recursion depth"])
    relative = {caption: Path(os.path.relpath(path, out.markdown.parent)).as_posix()
                for caption, path in figures.items()}
    write_text(out.markdown, render_eval_markdown(result, sweep, relative))
    write_text(out.model_card, render_model_card(result, provenance, lineage_markdown))


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_provenance(base_dir: Path, validation: Path, receipt: Path, params: dict[str, Any],
                    documents: Path) -> Provenance:
    """Gather what the card and summary cite; a missing base provenance is an error."""
    base = _read_json(base_dir / "provenance.json")
    if base is None:
        raise FileNotFoundError(f"{base_dir}/provenance.json: not found; run prepare_base")
    train = documents / "train.parquet"
    sources = (sorted(set(pq.read_table(train, columns=["source"]).column("source").to_pylist()))
               if train.is_file() else [])
    return Provenance(base, _read_json(validation), _read_json(receipt), params, sources)


# --------------------------------------------------------------------------- summary.md


def demote_headings(markdown: str) -> str:
    """One level down, so an embedded document's title becomes a section of the host (for
    Markdown without fenced code, whose `#` lines would be touched too)."""
    return "\n".join(f"#{line}" if line.startswith("#") else line
                     for line in markdown.splitlines())


def render_summary(result: dict[str, Any], cost: dict[str, Any], provenance: Provenance,
                   lineage_markdown: str) -> str:
    """reports/summary.md: what was trained, on what, what it cost, whether it beat LoRA, and
    `lineage_markdown` (sections of level 2 and below) last."""
    base = provenance.base
    totals = cost["totals"]
    lines = [
        *verdict(result), "",
        "# Run summary", "",
        "## What was trained", "",
        "| arm | stages | trainable params |", "| --- | --- | --- |",
    ]
    for name in arm_names(result):
        training = result["arms"][name]["training"]
        lines.append(f"| {ARM_LABELS[name]} | {', '.join(training['stages']) or '-'} | "
                     f"{_num(training['trainable_params'])} |")
    lines += [
        "", "## On what", "",
        f"- base: {base['name']} (revision {base.get('revision') or '-'}), "
        f"{_num(base.get('parameters'))} parameters, weights sha256 `{base['state_sha256']}`",
        f"- data: {validation_verdict(provenance)}",
        f"- sources: {', '.join(provenance.sources) or '-'}", "",
        "## What it cost", "",
        "| stage | status | wall s | GPU-hours | kWh | USD |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for stage, record in sorted(cost["stages"].items()):
        lines.append(f"| {stage} | {record['status']} | {_num(record['wall_seconds'])} | "
                     f"{_num(record['gpu_hours'])} | {_num(record['energy_kwh'])} | "
                     f"{_num(record['usd'])} |")
    lines += [
        f"| **total** | {len(totals['failed'])} failed | {_num(totals['wall_seconds'])} | "
        f"{_num(totals['gpu_hours'])} | {_num(totals['energy_kwh'])} | {_num(totals['usd'])} |",
        "", "Details and a GPU-fleet projection: `reports/cost.md`.", "",
        "## Did it beat the baseline?", "",
        "| arm | accuracy (all) [95% CI] | gain over base | gain / USD |",
        "| --- | --- | --- | --- |",
    ]
    for name in arm_names(result):
        arm = result["arms"][name]
        lines.append(f"| {ARM_LABELS[name]} | {_interval(arm['overall']['all'])} | "
                     f"{_points(arm['accuracy_gain'])} | "
                     f"{_per_usd(arm['accuracy_gain_per_usd'])} |")
    lines += ["", "Per task, perplexity, speed and the recursion sweep: `reports/eval.md`.", "",
              lineage_markdown.rstrip(), ""]
    return "\n".join(lines)
