"""The reports never hide a loss: when the TRM arm loses, their first line says so."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from millennial.evaluate.compare import ArmEvaluation, compare, summarise
from millennial.evaluate.config import EvalConfig
from millennial.evaluate.report import (
    hub_id,
    outcome,
    plot_accuracy,
    plot_sweep,
    render_eval_markdown,
    speed_notes,
    verdict,
)
from millennial.evaluate.stats import paired_difference, paired_proportions
from millennial.evaluate.timing import Spread
from millennial.params import ParamsError

TASKS = ("addition", "pointer_chase")


def _rows(hits: dict[tuple[str, str], int], loss: float, n: int) -> list[dict]:
    """n examples per (task, split), the first `hits` of each answered exactly."""
    return [{"task": task, "split": split, "difficulty": 1, "content_hash": f"{task}{split}{i}",
             "answer": "1", "prediction": "1" if i < hits.get((task, split), 0) else "2",
             "exact": i < hits.get((task, split), 0), "prefix": i < hits.get((task, split), 0),
             "first_token": True, "answer_loss": loss + 0.01 * (i % 3)}
            for task in TASKS for split in ("test", "test_ood") for i in range(n)]


def _latency(ms: list[float], vs_base: list[float] | None) -> dict:
    """An arm's (or a sweep row's) latency fields, from its runs' samples."""
    ratio = Spread.of(vs_base, 1) if vs_base else None
    return {"latency_ms_per_token": Spread.of(ms, 1).median,
            "latency_ms_per_token_spread": Spread.of(ms, 1).to_dict(),
            "latency_vs_base": ratio.median if ratio else 1.0,
            "latency_vs_base_spread": ratio.to_dict() if ratio else None}


TIGHT_MS = [10.0, 10.1, 10.2, 10.3, 10.4]


def _result(arms: dict[str, tuple[dict[tuple[str, str], int], float]], n: int = 50,
            latency: dict[str, dict] | None = None) -> dict:
    evaluations = {}
    for name, (hits, loss) in arms.items():
        rows = _rows(hits, loss, n)
        speed = (latency or {}).get(name) or _latency(
            TIGHT_MS, None if name == "base" else [1.2, 1.21, 1.22, 1.23, 1.24])
        summary = {"arm": name, **summarise(rows), "ppl_text": 10.0, "text_docs": 3,
                   "tokens_per_s": 100.0, **speed,
                   "speed_reference": None if name == "base" else "the base",
                   "forward_flops_per_token": 1.0, "trm_config": None, "sweep": [],
                   "settings": asdict(EvalConfig())}
        evaluations[name] = ArmEvaluation(summary, rows)
    training = {name: {"trainable_params": 0, "flops_per_token": 1.0, "stages": [], "usd": 1.0,
                       "device_hours": 1.0, "gpu_hours": 1.0, "flops": 1.0, "energy_kwh": 1.0,
                       "missing": [], "failed": []} for name in arms}
    return compare(evaluations, training, seed=0)


def _even(hits: int) -> dict[tuple[str, str], int]:
    return {(task, split): hits for task in TASKS for split in ("test", "test_ood")}


def test_the_first_line_says_when_phase1_loses_to_lora() -> None:
    result = _result({"base": (_even(5), 2.0), "phase1": (_even(10), 1.0),
                      "lora": (_even(40), 0.5)})
    first = render_eval_markdown(result, [], {}).splitlines()[0]
    assert first.startswith("- **TRM phase 1 vs LoRA: LOST.** Exact match 20.0% vs 80.0%")
    lines = verdict(result)
    assert lines[1].startswith("  - Out of distribution, TRM phase 1 loses to LoRA on addition")
    assert lines[2].startswith("- **TRM phase 1 vs base: WON.**")


def test_a_difference_inside_the_interval_is_no_difference() -> None:
    result = _result({"base": (_even(10), 1.0), "phase1": (_even(11), 1.0)})
    comparison = result["comparisons"]["phase1_vs_base"]
    assert not comparison["exact"]["established"]
    assert outcome(comparison) == "NO DIFFERENCE"
    assert verdict(result)[0].startswith("- **TRM phase 1 vs base: NO DIFFERENCE.**")


def test_an_out_of_distribution_win_is_named_by_task() -> None:
    lora = _even(20)
    mine = {**lora, ("pointer_chase", "test_ood"): 45}
    result = _result({"base": (_even(0), 3.0), "phase1": (mine, 1.0), "lora": (lora, 1.0)})
    lines = verdict(result)
    assert lines[0].startswith("- **TRM phase 1 vs LoRA: WON.**")
    assert lines[1].startswith("  - Out of distribution, TRM phase 1 beats LoRA on pointer_chase")
    assert "addition" not in lines[1]


def test_better_loss_but_worse_answers_is_mixed() -> None:
    result = _result({"base": (_even(20), 1.0), "phase1": (_even(5), 0.2)})
    assert outcome(result["comparisons"]["phase1_vs_base"]) == "MIXED"


def test_a_win_is_reported_with_gain_and_gain_per_dollar() -> None:
    result = _result({"base": (_even(0), 2.0), "phase1": (_even(30), 1.0),
                      "lora": (_even(0), 2.0)})
    phase1 = result["arms"]["phase1"]
    assert phase1["overall"]["all"]["accuracy"] == pytest.approx(0.6)
    assert phase1["accuracy_gain"] == pytest.approx(0.6)
    assert phase1["accuracy_gain_per_usd"] == pytest.approx(0.6)
    assert phase1["ppl_text_vs_base"] == 1.0
    assert phase1["task_loss"]["test"] == pytest.approx(1.0098, abs=1e-3)
    assert phase1["tasks"]["addition"]["test"]["exact"]["n"] == 50


def test_paired_difference_is_tight_where_two_overlapping_wilson_intervals_are_not() -> None:
    """Same examples: arm a answers everything b does and 10 more of 200 (McNemar p = 0.002),
    although their Wilson intervals, [43, 57] and [48, 62], overlap."""
    b = [True] * 100 + [False] * 100
    a = [True] * 110 + [False] * 90
    diff = paired_proportions(a, b)
    assert diff.difference == pytest.approx(0.05) and diff.established
    assert diff.low == pytest.approx(0.0181, abs=1e-3) and diff.high == pytest.approx(0.0809,
                                                                                   abs=1e-3)
    few = paired_proportions([True] * 4 + [False] * 196, [False] * 200)  # McNemar p = 0.125
    assert few.difference == pytest.approx(0.02) and not few.established
    stratified = paired_difference([1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0],
                                   strata=["x", "x", "y", "y"])
    assert stratified.difference == pytest.approx(2.0)  # mean of per-stratum means
    with pytest.raises(ValueError, match="two equal, non-empty lists"):
        paired_difference([1.0], [1.0, 2.0])


def test_a_missing_cost_record_is_named_not_hidden() -> None:
    result = _result({"base": (_even(0), 2.0), "phase1": (_even(30), 1.0)})
    result["arms"]["phase1"]["training"] |= {"usd": None, "missing": ["train_phase1"]}
    markdown = render_eval_markdown(result, [], {})
    assert "TRM phase 1: no cost record for train_phase1" in markdown


def test_accuracy_chart_is_a_png(tmp_path: Path) -> None:
    plot_accuracy(_result({"base": (_even(3), 2.0), "phase1": (_even(9), 1.0),
                           "lora": (_even(7), 1.5)}), tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")


def test_model_card_base_model_is_the_hub_id_when_there_is_one() -> None:
    assert hub_id("HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert hub_id("tiny-random-llama (seed 0)") == "tiny-random-llama (seed 0)"


def test_evaluate_params_are_checked_and_errors_name_the_key() -> None:
    config = EvalConfig.from_params({"max_examples": 5, "sweep": {"cycles": [1, 2]}})
    assert config.max_examples == 5 and config.sweep.cycles == (1, 2)
    with pytest.raises(ParamsError, match=r"evaluate\.sweep\.cycles"):
        EvalConfig.from_params({"sweep": {"cycles": [0]}})
    with pytest.raises(ParamsError, match="unknown key"):
        EvalConfig.from_params({"max_exmaples": 5})
    with pytest.raises(ParamsError, match=r"evaluate\.splits"):
        EvalConfig.from_params({"splits": ["test", "holdout"]})


def test_a_speed_figure_too_noisy_to_quote_is_flagged_and_a_tight_one_is_not() -> None:
    noisy = _latency([57.0, 350.0, 640.0, 1060.0, 1700.0], [1.0, 4.0, 7.05, 9.0, 12.0])
    result = _result({"base": (_even(0), 2.0), "phase1": (_even(10), 1.0),
                      "lora": (_even(10), 1.0)}, latency={"phase1": noisy})
    notes = speed_notes(result, [])
    assert notes == [
        "- TRM phase 1, ms/token 640 (IQR 350-1,060): too noisy to quote (IQR 111% of the "
        "median, over the 10% limit).",
        "- TRM phase 1, x base x7.05 (IQR 4.00-9.00): too noisy to quote (IQR 71% of the "
        "median, over the 10% limit).",
    ]
    markdown = render_eval_markdown(result, [], {})
    assert ("| 640 (IQR 350-1,060), too noisy to quote | x7.05 (IQR 4.00-9.00), too noisy to "
            "quote |") in markdown
    assert "| 10.2 (IQR 10.1-10.3) | x1.22 (IQR 1.21-1.23) |" in markdown  # LoRA: quotable
    assert "| 10.2 (IQR 10.1-10.3) | x1 (is the base) |" in markdown
    assert all(note in markdown for note in notes)


def test_a_ratio_to_the_base_whose_iqr_holds_one_is_not_sold_as_a_slowdown(
        tmp_path: Path) -> None:
    same = _latency(TIGHT_MS, [0.97, 0.99, 1.01, 1.02, 1.04])
    result = _result({"base": (_even(0), 2.0), "lora": (_even(10), 1.0)}, latency={"lora": same})
    note = "- LoRA, x base x1.01 (IQR 0.99-1.02): no measurable difference (its IQR holds 1)."
    assert speed_notes(result, []) == [note]
    sweep = [{"arm": "phase1", "cycles": c, "latent_steps": 2, "trained_depth": c == 2,
              "f_calls_per_token": 3 * c, "accuracy": 0.5, "low": 0.3, "high": 0.7, "n": 10,
              "correct": 5, "answer_loss": 1.0,
              **_latency([10.0 * c, 10.5 * c, 11.0 * c], [c, c + 0.1, c + 0.2])}
             for c in (1, 2, 4)]
    assert speed_notes(result, sweep) == [note]  # T=1's ratio, IQR 1.05-1.15, excludes 1
    markdown = render_eval_markdown(result, sweep, {})
    assert "| 42.0 (IQR 41.0-43.0) | x4.10 (IQR 4.05-4.15) |" in markdown
    plot_sweep(sweep, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
