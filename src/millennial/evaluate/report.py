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
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import yaml

from millennial.atomic import write_json, write_text
from millennial.evaluate.timing import Spread, annotated, caveat, quoted
from millennial.fingerprint import PROVENANCE_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ARM_ORDER = ("base", "phase1", "phase2", "lora", "llama_pro")
ARM_LABELS = {"base": "base", "phase1": "TRM phase 1", "phase2": "TRM phase 2",
              "lora": "LoRA", "llama_pro": "LLaMA Pro"}
TRM_ARMS = ("phase1", "phase2")
RIVALS = ("lora", "llama_pro", "base")


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


def _points_ci(diff: dict[str, Any]) -> str:
    """An exact-match difference in points with its interval."""
    return (f"{100 * diff['difference']:+.1f} pts [{100 * diff['low']:+.1f}, "
            f"{100 * diff['high']:+.1f}]")


def _nats_ci(diff: dict[str, Any]) -> str:
    return f"{diff['difference']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"


def _direction(diff: dict[str, Any], higher_is_better: bool) -> int:
    """+1 the TRM arm is better, -1 worse, 0 no established difference."""
    if not diff["established"]:
        return 0
    better = diff["difference"] > 0 if higher_is_better else diff["difference"] < 0
    return 1 if better else -1


def outcome(comparison: dict[str, Any]) -> str:
    """WON, LOST, MIXED or NO DIFFERENCE, from exact match over all examples and the mean
    in-distribution task loss; only differences whose 95% interval excludes zero count."""
    loss_split = "test" if "test" in comparison["task_loss"] else min(comparison["task_loss"])
    signs = {_direction(comparison["exact"], True),
             _direction(comparison["task_loss"][loss_split], False)} - {0}
    if not signs:
        return "NO DIFFERENCE"
    if signs == {1, -1}:
        return "MIXED"
    return "WON" if signs == {1} else "LOST"


def verdict(result: dict[str, Any]) -> list[str]:
    """The first lines of every report: did each TRM arm beat LoRA, LLaMA Pro and the base?"""
    lines = []
    arms = result["arms"]
    for trm in (name for name in TRM_ARMS if name in arms):
        for rival in (name for name in RIVALS if name in arms):
            comparison = result["comparisons"][f"{trm}_vs_{rival}"]
            exact, losses = comparison["exact"], comparison["task_loss"]
            split = "test" if "test" in losses else min(losses)
            mine, theirs = arms[trm], arms[rival]
            lines.append(
                f"- **{ARM_LABELS[trm]} vs {ARM_LABELS[rival]}: {outcome(comparison)}.** "
                f"Exact match {_pct(mine['overall']['all']['accuracy'])} vs "
                f"{_pct(theirs['overall']['all']['accuracy'])} ({_points_ci(exact)}, "
                f"n = {exact['n']}); mean {split} task loss "
                f"{_num(mine['task_loss'][split])} vs {_num(theirs['task_loss'][split])} "
                f"({_nats_ci(losses[split])} nats).")
            lines += _cell_lines(trm, rival, comparison)
    if lines:
        lines.append("Differences are paired (the same examples), with 95% intervals "
                     "(Agresti-Min for exact match, bootstrap for loss); an interval that holds "
                     "0 is no difference.")
    return lines


def _cell_lines(trm: str, rival: str, comparison: dict[str, Any]) -> list[str]:
    """Which out-of-distribution cells the TRM arm wins or loses outright."""
    won, lost = [], []
    for task, splits in sorted(comparison["exact_by_cell"].items()):
        for split, diff in sorted(splits.items()):
            if split != "test_ood":
                continue
            sign = _direction(diff, True)
            if sign:
                (won if sign > 0 else lost).append(f"{task} ({_points_ci(diff)})")
    if not won and not lost:
        return []
    parts = [f"beats {ARM_LABELS[rival]} on {', '.join(won)}"] if won else []
    parts += [f"loses to {ARM_LABELS[rival]} on {', '.join(lost)}"] if lost else []
    return [f"  - Out of distribution, {ARM_LABELS[trm]} {'; '.join(parts)}."]


def _points(gain: float | None) -> str:
    """An accuracy difference in percentage points."""
    return "-" if gain is None else f"{100 * gain:+.1f} pts"


# --------------------------------------------------------------------------- speed


def _max_relative_iqr(result: dict[str, Any]) -> float:
    return result["settings"]["speed"]["max_relative_iqr"]


def _speed_figures(figures: dict[str, Any]) -> list[tuple[str, Spread | None, bool]]:
    """(what, spread, is a ratio) for the latency of an arm or sweep row and its ratio to the
    base (no spread: the base itself)."""
    ratio = figures["latency_vs_base_spread"]
    return [("ms/token", Spread.from_dict(figures["latency_ms_per_token_spread"]), False),
            ("x base", Spread.from_dict(ratio) if ratio else None, True)]


def _speed_cell(spread: Spread | None, ratio: bool, limit: float) -> str:
    """`median (IQR q1-q3)`, with what keeps it from being quoted as it stands."""
    return "x1 (is the base)" if spread is None else annotated(spread, limit, ratio)


def _speed_cells(figures: dict[str, Any], limit: float) -> list[str]:
    return [_speed_cell(spread, ratio, limit) for _, spread, ratio in _speed_figures(figures)]


def speed_notes(result: dict[str, Any], sweep: Sequence[dict[str, Any]]) -> list[str]:
    """One plain sentence per speed figure that cannot be quoted as it stands: too noisy, or a
    ratio to the base that holds 1 (no measurable slowdown or speed-up)."""
    limit = _max_relative_iqr(result)
    labelled = [(ARM_LABELS[name], result["arms"][name]) for name in arm_names(result)]
    labelled += [(f"{ARM_LABELS[row['arm']]} at T={row['cycles']}, n={row['latent_steps']}",
                  row) for row in sweep if not row["trained_depth"]]  # that one is the arm's
    lines = []
    for label, figures in labelled:
        for what, spread, ratio in _speed_figures(figures):
            note = caveat(spread, limit, ratio) if spread is not None else None
            if note:
                lines.append(f"- {label}, {what} {quoted(spread, ratio)}: {note}.")
    return lines


# --------------------------------------------------------------------------- eval.md


def _summary_table(result: dict[str, Any]) -> list[str]:
    splits = sorted({split for splits in result["examples"].values() for split in splits})
    header = ["arm", "trainable params", "train FLOPs/token", "exact (all) [95% CI]",
              *(f"exact {split}" for split in splits), *(f"task loss {s}" for s in splits),
              "ppl text (x base)", "ms/token", "ms/token x base", "train USD", "gain / USD"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    limit = _max_relative_iqr(result)
    for name in arm_names(result):
        arm = result["arms"][name]
        training = arm["training"]
        row = [
            ARM_LABELS[name],
            _num(training["trainable_params"]),
            _num(training["flops_per_token"], 3),
            _interval(arm["overall"]["all"]),
            *(_pct(arm["overall"][split]["accuracy"]) for split in splits),
            *(_num(arm["task_loss"][split]) for split in splits),
            f"{_num(arm['ppl_text'])} ({_ratio(arm['ppl_text_vs_base'])})",
            *_speed_cells(arm, limit),
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


def _task_table(result: dict[str, Any], metric: str = "exact") -> list[str]:
    """One row per (task, split): `metric` (exact, prefix or first_token) with its interval,
    or the mean answer loss."""
    names = arm_names(result)
    lines = ["| task | split | " + " | ".join(ARM_LABELS[n] for n in names) + " |",
             "|" + " --- |" * (2 + len(names))]
    for task, splits in sorted(result["examples"].items()):
        for split in sorted(splits):
            cells = [result["arms"][n]["tasks"][task][split] for n in names]
            shown = ([_num(c["answer_loss"]) for c in cells] if metric == "answer_loss"
                     else [_interval(c[metric]) for c in cells])
            lines.append(f"| {task} | {split} | " + " | ".join(shown) + " |")
    return lines


def _sweep_table(sweep: Sequence[dict[str, Any]], limit: float) -> list[str]:
    lines = ["| arm | cycles T | latent steps n | f calls / token / block | exact [95% CI] "
             "| answer loss | ms/token | ms/token x base |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sweep:
        marker = " (trained)" if row["trained_depth"] else ""
        lines.append(f"| {ARM_LABELS[row['arm']]}{marker} | {row['cycles']} | "
                     f"{row['latent_steps']} | {row['f_calls_per_token']} | {_interval(row)} | "
                     f"{_num(row['answer_loss'])} | " + " | ".join(_speed_cells(row, limit))
                     + " |")
    return lines


def _comparison_table(result: dict[str, Any]) -> list[str]:
    """Every TRM arm against every rival: exact match and task loss per split, paired."""
    lines = ["| comparison | outcome | exact (all) | " + " | ".join(
        f"task loss {split}" for split in sorted(result["settings"]["splits"])) + " |"]
    lines.append("|" + " --- |" * (3 + len(result["settings"]["splits"])))
    for key, comparison in result["comparisons"].items():
        mine, rival = key.split("_vs_")
        losses = [_nats_ci(comparison["task_loss"][split])
                  for split in sorted(result["settings"]["splits"])]
        lines.append(f"| {ARM_LABELS[mine]} - {ARM_LABELS[rival]} | {outcome(comparison)} | "
                     f"{_points_ci(comparison['exact'])} | " + " | ".join(losses) + " |")
    return lines


def _harness_table(result: dict[str, Any]) -> list[str]:
    """lm-evaluation-harness scores per arm and task, with n and (for our own tasks) how many
    examples its exact match agrees with ours on."""
    names = [n for n in arm_names(result) if result["arms"][n].get("harness")]
    if not names:
        return ["The harness did not run (`evaluate.harness.enabled: false`)."]
    tasks = sorted({task for n in names for task in result["arms"][n]["harness"]["tasks"]})
    lines = ["| task | " + " | ".join(ARM_LABELS[n] for n in names) + " |",
             "|" + " --- |" * (1 + len(names))]
    for task in tasks:
        shown = []
        for name in names:
            harness = result["arms"][name]["harness"]
            scores = harness["tasks"].get(task, {})
            main = next((k for k in ("exact_match", "acc_norm", "acc") if k in scores), None)
            agree = harness["agreement"].get(task)
            text = (f"{main} {_pct(scores[main])} (n={int(scores.get('n', 0))})" if main
                    else "-")
            shown.append(text + (f", agrees {agree['same']}/{agree['n']}" if agree else ""))
        lines.append(f"| {task} | " + " | ".join(shown) + " |")
    return lines


def _threads(threads: int | None) -> str:
    if threads is None:
        return "torch's default threads"
    return f"{threads} thread" + ("s" if threads > 1 else "")


def render_eval_markdown(result: dict[str, Any], sweep: Sequence[dict[str, Any]],
                         figures: dict[str, str]) -> str:
    """reports/eval.md; `figures` maps a caption to a path relative to the report."""
    settings = result["settings"]
    speed = settings["speed"]
    lines = [
        *verdict(result),
        "",
        "# Evaluation: base vs TRM vs LoRA vs LLaMA Pro",
        "",
        "Greedy decoding (batched, left padding, KV cache, stop at EOS; each (task, split) "
        "decodes what its longest answer needs plus two tokens). Every arm answers the same "
        f"examples: per (task, split) the first {settings['max_examples']} by content hash, "
        "each prompt alone after EOS, as training packed it. Scores: **exact** (the continuation "
        "up to EOS, stripped, is the answer), **prefix** (it starts with the answer but may not "
        "stop), **first token** (the first generated token is the answer's), and the **task "
        "loss** (mean NLL of the answer and EOS given the prompt, averaged over examples and "
        "then over tasks, each task weighing the same). Accuracy intervals are 95% Wilson.",
        "",
        "## Summary",
        "",
        *_summary_table(result),
        "",
        "- train FLOPs/token: the planner's count for what the arm's training ran (forward, the "
        "activation gradient down to the lowest trainable point, weight gradients of what "
        "trains).",
        "- ppl text: perplexity on "
        f"{result['text_docs']} held-out general-text documents (test split, first "
        f"{settings['max_length']} tokens each); x base is the ratio to the base arm "
        "(1.0 = nothing forgotten).",
        f"- ms/token: batch 1, KV cache, {_threads(speed['threads'])}; each run decodes "
        f"{speed['new_tokens']} tokens after a {speed['prompt_tokens']}-token prompt and gives "
        "its mean gap between consecutive tokens (prefill excluded); median and IQR (the middle "
        f"half) of {speed['repeats']} runs after {speed['warmup']} warm-up. x base: the arm "
        "against the base's computation timed in the same stage, interleaved run by run (TRM "
        "arms: the same hybrid with its blocks off; LoRA and LLaMA Pro: the base loaded beside "
        "them), median and IQR of the per-round ratios: a ratio of two stages' figures would "
        "compare two processes at different times. Wall-clock: compare ratios, not absolutes. "
        f"A figure whose IQR exceeds {speed['max_relative_iqr']:.0%} of its median is too "
        "noisy to quote; a ratio whose IQR holds 1 is no measurable difference.",
        "- LoRA is evaluated merged into its base, as it would be served.",
        "- gain / USD: (arm accuracy - base accuracy) in percentage points per training USD "
        "of the arm's stages (phase 2 includes phase 1).",
        *_cost_gaps(result),
        *speed_notes(result, sweep),
        "",
        "## Paired differences (TRM arm minus rival)",
        "",
        *_comparison_table(result),
        "",
        "Exact match in percentage points (positive: the TRM arm answers more; Agresti-Min "
        "interval for matched proportions), task loss in nats (negative: the TRM arm is "
        "better; paired bootstrap within each task). 95% intervals.",
        "",
        "## Per task: exact match",
        "",
        *_task_table(result, "exact"),
        "",
        "## Per task: answer starts right (prefix) and first token right",
        "",
        *_task_table(result, "prefix"),
        "",
        *_task_table(result, "first_token"),
        "",
        "## Per task: answer loss",
        "",
        *_task_table(result, "answer_loss"),
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
            *_sweep_table(sweep, _max_relative_iqr(result)),
            "",
        ]
    lines += [
        "## lm-evaluation-harness",
        "",
        "EleutherAI's harness on the same model objects (`HFLM(pretrained=model)`). "
        "`millennial_<split>`: the task YAMLs shipped in `src/millennial/evaluate/harness_tasks/` "
        f"over the first {settings['harness']['max_examples']} examples of each (task, split); "
        "\"agrees\" counts the examples whose harness exact match equals ours (they measure the "
        "same thing). Hub tasks (`evaluate.harness.hub_tasks`) run on networked machines only.",
        "",
        *_harness_table(result),
        "",
        "## Figures", "",
    ]
    lines += [f"![{caption}]({path})" for caption, path in figures.items()]
    lines += ["", f"FLOPs in the cost record: {result['flops_method']}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- charts


def plot_accuracy(result: dict[str, Any], path: Path) -> None:
    """Grouped bars per (task, split) for each arm: exact match with Wilson intervals above,
    the mean answer loss below."""
    names = arm_names(result)
    cells = [(task, split) for task, splits in sorted(result["examples"].items())
             for split in sorted(splits)]
    from matplotlib.figure import Figure  # ~0.5 s to import: only the stage that plots pays

    figure = Figure(figsize=(max(6.0, 1.4 * len(cells) + 2), 7.0))
    accuracy_axes, loss_axes = figure.subplots(2, 1, sharex=True)
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        values = [result["arms"][name]["tasks"][t][s] for t, s in cells]
        exact = [v["exact"] for v in values]
        heights = [v["accuracy"] or 0.0 for v in exact]
        errors = [[h - v["low"] for h, v in zip(heights, exact, strict=True)],
                  [v["high"] - h for h, v in zip(heights, exact, strict=True)]]
        positions = [c + (index - (len(names) - 1) / 2) * width for c in range(len(cells))]
        accuracy_axes.bar(positions, heights, width, yerr=errors, capsize=3,
                          label=ARM_LABELS[name])
        loss_axes.bar(positions, [v["answer_loss"] for v in values], width,
                      label=ARM_LABELS[name])
    loss_axes.set_xticks(range(len(cells)), [f"{t}\n{s}" for t, s in cells])
    accuracy_axes.set_ylim(0, 1.05)
    accuracy_axes.set_ylabel("exact match")
    accuracy_axes.set_title("Exact match per task and split (95% Wilson intervals)")
    accuracy_axes.legend(fontsize="small")
    loss_axes.set_ylabel("answer loss (nats / token)")
    loss_axes.set_title("Mean answer loss given the prompt (lower is better)")
    figure.tight_layout()
    _save(figure, path)


def plot_sweep(sweep: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy against cycles (at the trained n) and latent steps (at the trained T), and
    latency (median, IQR as error bars) against total f calls."""
    from matplotlib.figure import Figure

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
        spreads = [Spread.from_dict(r["latency_ms_per_token_spread"]) for r in calls]
        by_calls.errorbar([r["f_calls_per_token"] for r in calls], [s.median for s in spreads],
                          yerr=[[s.median - s.q1 for s in spreads],
                                [s.q3 - s.median for s in spreads]],
                          marker="o", capsize=3, label=ARM_LABELS[arm])
    for axes, label in ((by_cycles, "test-time cycles T"), (by_steps, "test-time latent steps n")):
        axes.set_xlabel(label)
        axes.set_ylabel("exact-match accuracy")
        axes.set_ylim(0, 1.05)
        axes.legend(fontsize="small")
    by_calls.set_xlabel("f calls per token per block")
    by_calls.set_ylabel("ms per decoded token (median, IQR)")
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


def _model_index(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Phase 1's exact match per (task, split), then its lm-evaluation-harness scores, in the
    Hub's `model-index` form."""
    phase1 = result["arms"]["phase1"]
    cells = phase1["tasks"]
    results = [{"task": {"type": "text-generation", "name": f"{task} ({split})"},
                "dataset": {"type": f"millennial/{task}", "name": task, "split": split},
                "metrics": [{"type": "exact_match", "name": "exact match (greedy)",
                             "value": cells[task][split]["exact"]["accuracy"]}]}
               for task, splits in sorted(cells.items()) for split in sorted(splits)]
    harness = phase1.get("harness") or {"tasks": {}}
    for task, scores in sorted(harness["tasks"].items()):
        metrics = [{"type": name, "name": f"lm-eval {name}", "value": value}
                   for name, value in sorted(scores.items())
                   if name != "n" and not name.endswith("_stderr")]
        if metrics:
            results.append({"task": {"type": "text-generation", "name": f"lm-eval {task}"},
                            "dataset": {"type": task, "name": task},
                            "metrics": metrics})
    return results


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
    front["model-index"] = [{"name": "trm-phase1", "results": _model_index(result)}]
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
        "refuses a base whose weights hash differently:", "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "from millennial.hybrid import load_trm",
        "model = load_trm(AutoModelForCausalLM.from_pretrained(\"models/base\"), "
        "\"models/phase1\")",
        "```", "",
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
        f"- exact match (all): {_interval(phase1['overall']['all'])}",
        "- mean task loss: " + ", ".join(f"{split} {_num(value)}" for split, value
                                          in phase1["task_loss"].items()),
        f"- perplexity on held-out general text: {_num(phase1['ppl_text'])} "
        f"(base: {_num(result['arms']['base']['ppl_text'])})",
        "- decode latency vs base (timed interleaved with the same hybrid, its blocks off): "
        + _speed_cell(Spread.from_dict(phase1["latency_vs_base_spread"]), True,
                      _max_relative_iqr(result)), "",
        "## Cost", "",
        f"- training stages: {', '.join(training['stages'])}",
        f"- USD: {_num(training['usd'])}; device-hours: {_num(training['device_hours'])}; "
        f"GPU-hours: {_num(training['gpu_hours'])}; energy: {_num(training['energy_kwh'])} kWh",
        f"- model FLOPs of training: {_num(training['flops'])} (every step of the run, "
        "interrupted invocations included)",
        f"- accuracy gained over the base: {_points(phase1['accuracy_gain'])}, "
        f"{_per_usd(phase1['accuracy_gain_per_usd'])}", "",
        "## Limitations", "",
        "- Evaluated on synthetic task sets (about a hundred examples per cell): the tasks "
        "are probes of multi-step reasoning, not a general benchmark.",
        "- Only useful on the exact base above; other bases are refused.",
        "- Every decoded token runs the recursion: decoding is slower than the base (see the "
        "latency ratio). Beam search and KV-cache cropping are not supported with TRM blocks.",
        "- Timings come from whatever machine ran the evaluation: compare the ratio to the base "
        "(timed in the same process), not absolute times; `reports/eval.md` gives each "
        "figure's IQR and flags those too noisy to quote.",
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
    base = _read_json(base_dir / PROVENANCE_FILE)
    if base is None:
        raise FileNotFoundError(f"{base_dir / PROVENANCE_FILE}: not found; run prepare_base")
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
