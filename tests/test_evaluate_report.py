"""The reports never hide a loss: when the TRM arm loses, their first line says so."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from millennial.evaluate import EvalConfig, Measured, assemble
from millennial.evaluate.report import hub_id, plot_accuracy, render_eval_markdown, verdict
from millennial.evaluate.stats import Proportion
from millennial.params import ParamsError


def _result(correct: dict[str, int], n: int = 40) -> dict:
    measured = {
        arm: Measured(cells={("addition", "test"): Proportion(hits, n),
                             ("addition", "test_ood"): Proportion(hits // 2, n)},
                      ppl_text=10.0, ppl_task=5.0, tokens_per_s=100.0, latency_ms=10.0, tokens=1)
        for arm, hits in correct.items()
    }
    training = {arm: {"trainable_params": 0, "stages": [], "usd": 1.0, "device_hours": 1.0,
                      "gpu_hours": 1.0, "energy_kwh": 1.0, "missing": [], "failed": []}
                for arm in correct}
    return {"arms": assemble(measured, training), "examples": {"addition": {"test": n,
                                                                            "test_ood": n}},
            "text_docs": 3, "settings": asdict(EvalConfig()), "flops_method": "2ND"}


def test_the_first_line_says_when_phase1_loses_to_lora() -> None:
    result = _result({"base": 10, "phase1": 12, "lora": 30})
    first = render_eval_markdown(result, [], {}).splitlines()[0]
    assert first.startswith("**TRM phase 1 LOST to LoRA; beat base (TRM off)**")
    assert "TRM phase 1 LOST to LoRA" in verdict(result)[0]


def test_a_loss_to_the_base_is_named_even_within_the_intervals() -> None:
    lines = verdict(_result({"base": 12, "phase1": 11, "phase2": 30, "lora": 5}))
    assert lines[0].startswith("**TRM phase 1 LOST to base (TRM off); beat LoRA**")
    assert "not established" in lines[1]  # 11/40 vs 12/40: the intervals overlap
    assert lines[2].startswith("**TRM phase 2 beat LoRA and base (TRM off)**")


def test_a_win_is_reported_with_gain_and_gain_per_dollar() -> None:
    result = _result({"base": 0, "phase1": 40, "lora": 0})
    phase1 = result["arms"]["phase1"]
    assert phase1["overall"]["all"]["accuracy"] == pytest.approx(0.75)
    assert phase1["accuracy_gain"] == pytest.approx(0.75)
    assert phase1["accuracy_gain_per_usd"] == pytest.approx(0.75)
    assert phase1["ppl_text_vs_base"] == 1.0
    assert verdict(result)[0].startswith("**TRM phase 1 beat LoRA and base (TRM off)**")


def test_a_missing_cost_record_is_named_not_hidden() -> None:
    result = _result({"base": 0, "phase1": 40, "lora": 0})
    result["arms"]["phase1"]["training"] |= {"usd": None, "missing": ["train_phase1"]}
    markdown = render_eval_markdown(result, [], {})
    assert "TRM phase 1: no cost record for train_phase1" in markdown


def test_accuracy_chart_is_a_png(tmp_path: Path) -> None:
    plot_accuracy(_result({"base": 3, "phase1": 9, "lora": 7}), tmp_path / "a.png")
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
