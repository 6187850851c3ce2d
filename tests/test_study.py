"""Design studies: the grid file, the queued commands, collecting points, the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from millennial.params import ParamsError
from millennial.study import (
    Point,
    Variant,
    best_per_arm,
    collect_records,
    defaults_check,
    goal,
    known_experiments,
    load_study,
    plot,
    queue_commands,
    render,
)

GRID = {
    "name": "probe",
    "title": "A probe study",
    "question": "Does it work?",
    "variants": [
        {"name": "trm-fast", "arm": "phase1", "set": {"phase1.lr": 0.01}, "note": "faster"},
        {"name": "trm-slow", "arm": "phase1", "set": {"phase1.lr": 0.001}},
        {"name": "lora-fast", "arm": "lora", "set": {"lora.lr": 0.01}},
        {"name": "natural", "arm": "all", "set": {"curate.mixture": None}, "group": "mixture"},
    ],
}


def _write(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_the_grid_becomes_queued_experiments(tmp_path: Path) -> None:
    study = load_study(_write(tmp_path, GRID))
    assert [v.name for v in study.variants] == ["trm-fast", "trm-slow", "lora-fast", "natural"]
    assert study.variants[3].arms == ("phase1", "lora", "llama_pro")
    assert queue_commands(study)[0] == ["dvc", "exp", "run", "--queue", "-n", "probe-trm-fast",
                                        "-S", "phase1.lr=0.01"]
    assert Variant("v", "lora", {"curate.mixture": {"a": 0.5}}).set_args == [
        "-S", 'curate.mixture={"a": 0.5}']


@pytest.mark.parametrize("change,message", [
    ({"variants": []}, r"'study\.variants' must be a non-empty list"),
    ({"variants": [{"name": "x", "arm": "gpt", "set": {}}]},
     r"'study\.variants\[0\]\.arm' must be one of phase1, lora, llama_pro, all"),
    ({"variants": [{"name": "x", "arm": "lora", "set": ["lora.lr"]}]},
     r"'study\.variants\[0\]\.set' must be a mapping"),
    ({"variants": [{"name": "x", "arm": "lora"}, {"name": "x", "arm": "lora"}]},
     "name variants twice: x"),
    ({"typo": 1}, r"'study' has unknown key\(s\) typo"),
])
def test_bad_grids_name_the_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    path = _write(tmp_path, {**GRID, **change})
    with pytest.raises(ParamsError, match=message) as raised:
        load_study(path)
    assert str(path) in str(raised.value)


def _files(arms: tuple[str, ...], val: float, test: float, correct: int) -> dict[str, dict]:
    """The metric files of one experiment (the fields the study reads)."""
    cell = {"accuracy": correct / 100, "low": max(0.0, correct / 100 - 0.1),
            "high": min(1.0, correct / 100 + 0.1), "n": 100, "correct": correct}
    arm_eval = {"task_loss": {"test": test, "test_ood": test + 0.5},
                "overall": {"all": cell, "test_ood": cell},
                "tasks": {"pointer_chase": {"test_ood": {"exact": cell}}}}
    training = {"trainable_params": 1000, "flops_per_token": 2.0e8, "tokens": 20480,
                "val_task_loss_after": val}
    files = {"metrics/eval.json": {"arms": {arm: arm_eval for arm in arms}},
             **{f"metrics/train_{arm}.json": training for arm in arms}}
    if "phase1" in arms:
        files["metrics/eval/phase1.json"] = {"sweep": [
            {"cycles": c, "latent_steps": 2, "f_calls_per_token": 3 * c,
             "trained_depth": c == 2, "answer_loss": 1.0, **cell} for c in (1, 2, 4)]}
    return files


def _experiment(name: str, rev: str, state: str = "success") -> dict:
    """One experiment as `dvc exp show --json` lists it."""
    return {"name": name, "executor": {"state": state, "name": "dvc-task"},
            "revs": [{"rev": rev, "name": name, "error": None, "data": {}}]}


def _points(tmp_path: Path) -> tuple[list[Point], list[str]]:
    commits = {"a" * 40: _files(("phase1",), 1.0, 1.1, 40),
               "b" * 40: _files(("phase1",), 2.0, 0.9, 60),
               "c" * 40: _files(("phase1", "lora", "llama_pro"), 0.5, 0.5, 90)}
    shown = [{"rev": "workspace", "experiments": None},
             {"rev": "f" * 40, "experiments": [
                 _experiment("probe-trm-fast", "a" * 40),
                 _experiment("probe-trm-slow", "b" * 40),
                 _experiment("probe-lora-fast", "d" * 40, state="running"),
                 _experiment("probe-natural", "c" * 40),
             ]}]

    def read(rev: str, path: str) -> dict:
        if path not in commits.get(rev, {}):
            raise KeyError(path)
        return commits[rev][path]

    return collect_records(load_study(_write(tmp_path, GRID)), shown, read)


def test_queueing_again_skips_what_is_already_there() -> None:
    shown = [{"rev": "f" * 40, "experiments": [_experiment("a", "1" * 40),
                                                _experiment("b", "2" * 40, state="queued")]}]
    assert known_experiments(shown) == {"a": "success", "b": "queued"}


def test_points_come_from_dvc_exp_show_and_failures_are_listed(tmp_path: Path) -> None:
    points, missing = _points(tmp_path)
    assert [(p.variant, p.arm) for p in points] == [
        ("trm-fast", "phase1"), ("trm-slow", "phase1"), ("natural", "phase1"),
        ("natural", "lora"), ("natural", "llama_pro")]
    assert missing == ["lora-fast"]  # still running: listed, not dropped silently
    fast = points[0]
    assert fast.train_flops == pytest.approx(2.0e8 * 20480) and len(fast.sweep) == 3


def test_the_best_variant_is_chosen_on_validation_not_test(tmp_path: Path) -> None:
    points, _ = _points(tmp_path)
    best = best_per_arm(points)
    assert best["phase1"].variant == "trm-fast"  # val 1.0 beats 2.0, though its test is worse
    assert set(best) == {"phase1"}  # the mixture side study trained on other data
    check = defaults_check(best, {"phase1": {"lr": 0.001}})
    assert check == ["- TRM phase 1: params.yaml differs from the best variant `trm-fast`: "
                     "`phase1.lr` is 0.001, best 0.01."]
    assert "holds the best variant" in defaults_check(best, {"phase1": {"lr": 0.01}})[0]


def test_the_report_leads_with_the_verdict_and_plots(tmp_path: Path) -> None:
    points, missing = _points(tmp_path)
    lora = Point(**{**points[1].__dict__, "variant": "lora-fast", "arm": "lora",
                    "overrides": {"lora.lr": 0.01}, "sweep": [],
                    "exact": {"all": {"accuracy": 0.9, "low": 0.85, "high": 0.95, "n": 100}}})
    study = load_study(_write(tmp_path, GRID))
    text = render(study, [*points, lora], missing, "figures/probe.png", ["make run"], {})
    assert text.startswith("**The goal is not decided yet:** params.yaml does not hold both")
    assert "- **Best TRM variant (`trm-fast`) vs best LoRA (`lora-fast`): " \
           "fewer exact answers**" in text.splitlines()[1]
    assert "| TRM phase 1 | `trm-fast` **(best)** |" in text
    assert "## Recursion at test time" in text and "## Reproduce" in text
    assert "## Side study: mixture" in text and "| LoRA | `natural` |" in text
    assert "- `trm-fast`: faster" in text
    plot([*points, lora], tmp_path / "probe.png")
    assert (tmp_path / "probe.png").read_bytes().startswith(b"\x89PNG")


def _paired(difference: float, low: float, high: float, n: int = 300) -> dict:
    return {"difference": difference, "low": low, "high": high, "n": n,
            "established": low > 0 or high < 0}


@pytest.mark.parametrize(("loss", "ood", "expected"), [
    ((0.18, 0.15, 0.21), (0.02, -0.05, 0.09), "**The goal is not met.** At its best setting "
     "found (`trm-fast`) the TRM phase-1 arm loses against the best LoRA (`lora-fast`) on mean "
     "test task loss (+0.180 nats [+0.150, +0.210], n = 300), ties on exact match (+1.0 pts "
     "[-2.0, +4.0], n = 600) and beats it out of distribution on no task"),
    ((0.01, -0.02, 0.04), (0.12, 0.03, 0.2), "**The goal is met.** At its best setting found "
     "(`trm-fast`) the TRM phase-1 arm ties against the best LoRA (`lora-fast`) on mean test "
     "task loss (+0.010 nats [-0.020, +0.040], n = 300), ties on exact match (+1.0 pts [-2.0, "
     "+4.0], n = 600) and beats it out of distribution on pointer_chase"),
])
def test_the_goal_is_judged_on_the_paired_reference_comparison(
        tmp_path: Path, loss: tuple, ood: tuple, expected: str) -> None:
    points, _ = _points(tmp_path)
    trm = next(p for p in points if p.variant == "trm-fast")
    lora = Point(**{**trm.__dict__, "variant": "lora-fast", "arm": "lora",
                    "overrides": {"lora.lr": 0.01}})
    best = {"phase1": trm, "lora": lora}
    comparisons = {"phase1_vs_lora": {
        "exact": _paired(0.01, -0.02, 0.04, 600), "task_loss": {"test": _paired(*loss)},
        "exact_by_cell": {"pointer_chase": {"test_ood": _paired(*ood, 100)},
                          "addition": {"test_ood": _paired(0.0, -0.02, 0.02, 100)}}}}
    params = {"phase1": {"lr": 0.01}, "lora": {"lr": 0.01}}
    assert goal(best, params, comparisons)[0].startswith(expected)
    # Without the reference run holding both best variants there is nothing paired to judge.
    assert goal(best, {"phase1": {"lr": 0.01}, "lora": {"lr": 0.003}}, comparisons)[0] \
        .startswith("**The goal is not decided yet:**")
    assert goal(best, params, None)[0].startswith("**The goal is not decided yet:**")
    assert goal({"phase1": trm}, params, comparisons) == []
