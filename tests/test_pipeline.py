"""One slice of the real pipeline: `dvc repro` in a scratch copy of this repo, tiny profile
(the session's `tiny_reference`, shared with the sweep test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_tree
from conftest import run_command as run


@pytest.fixture
def workspace(tiny_reference: Path, tmp_path: Path) -> Path:
    """A copy of the session's tiny reference run (git history and DVC cache included)."""
    return copy_tree(tiny_reference, tmp_path / "workspace")


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def test_repro_runs_the_pipeline_and_a_second_repro_does_nothing(workspace: Path) -> None:
    provenance = json.loads((workspace / "models/base/provenance.json").read_text())
    assert provenance["source"] == "tiny-random"
    assert json.loads((workspace / "metrics/validation.json").read_text())["success"]
    phase1 = json.loads((workspace / "metrics/train_phase1.json").read_text())
    assert phase1["steps"] == 6 and phase1["trainable_params"] > 0
    assert (workspace / "models/phase1/trm.safetensors").is_file()
    assert (workspace / "models/phase2/skipped.json").is_file()
    assert (workspace / "models/lora/adapter_config.json").is_file()
    for stage in ("prepare_base", "seed_audit", "curate", "validate", "train_phase1", "train_lora",
                  "evaluate"):
        cost = json.loads((workspace / f"metrics/cost/{stage}.json").read_text())
        assert cost["status"] == "ok", stage
    evaluation = json.loads((workspace / "metrics/eval.json").read_text())
    assert {"base", "phase1", "lora"} <= set(evaluation["arms"])
    card = (workspace / "models/phase1/README.md").read_text()
    assert "train_phase1" in card.partition("\n## Lineage\n")[2]
    assert "train_phase1" in (workspace / "reports/summary.md").read_text()
    shown = run(dvc("metrics", "show", "--json"), workspace).stdout
    assert "metrics/cost/prepare_base.json" in shown and "metrics/validation.json" in shown
    status = run(dvc("status", "--json"), workspace)
    assert json.loads(status.stdout) == {}
    again = run(dvc("repro"), workspace)
    assert "didn't change" in again.stdout and "Running stage" not in again.stdout


def test_a_study_point_is_a_dvc_experiment_and_reaches_the_report(workspace: Path) -> None:
    study = {"name": "probe", "title": "Probe", "question": "Does a faster TRM learn more?",
             "variants": [{"name": "fast", "arm": "phase1", "set": {"phase1.lr": 0.02}}]}
    (workspace / "reports/probe.yaml").write_text(yaml.safe_dump(study))
    # what `millennial study queue` queues, run at once here (the queue's worker runs the same)
    run(dvc("exp", "run", "-n", "probe-fast", "-S", "phase1.lr=0.02"), workspace)
    run([sys.executable, "-m", "millennial.cli", "study", "report", "reports/probe.yaml",
         "--collect"], workspace)
    points = json.loads((workspace / "reports/probe.json").read_text())
    assert [(p["variant"], p["arm"], p["overrides"]) for p in points] == [
        ("fast", "phase1", {"phase1.lr": 0.02})]
    assert points[0]["val_task_loss"] > 0 and points[0]["sweep"]
    report = (workspace / "reports/probe.md").read_text()
    assert "| TRM phase 1 | `fast` **(best)** |" in report
    assert "params.yaml holds the best variant `fast`" in report  # exp run applied it
    assert (workspace / "reports/figures/probe.png").read_bytes().startswith(b"\x89PNG")


def test_exp_run_with_phase2_enabled_trains_the_whole_hybrid(workspace: Path) -> None:
    run(dvc("exp", "run", "-S", "phase2.enabled=true"), workspace)
    phase2 = json.loads((workspace / "metrics/train_phase2.json").read_text())
    assert phase2["steps"] == 2 and phase2["lr_groups"]["base"] > 0
    assert not (workspace / "models/phase2/skipped.json").exists()
    assert (workspace / "models/phase2/trm/trm.safetensors").is_file()
    cost = json.loads((workspace / "metrics/cost/train_phase2.json").read_text())
    assert cost["status"] == "ok" and cost["flops"] > 0
