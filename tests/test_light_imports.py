"""Stages that load no model must not import torch or transformers: their import alone takes
~4 s, which every `dvc repro` of such a stage (and every Prefect task running it) would pay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")


def heavy_imports(module: str) -> str:
    """The heavy modules that importing `module` in a fresh interpreter loads, comma-joined."""
    check = (f"import sys, {module}; "
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("module", ["stages.curate", "stages.validate", "stages.seed_audit",
                                    "stages.evaluate", "stages.report"])
def test_stage_without_a_model_imports_no_torch(module: str) -> None:
    loaded = heavy_imports(module)
    assert loaded == "", f"{module} imports {loaded}"


def test_the_check_sees_a_heavy_import() -> None:
    """The check above can fail: a stage that loads a model is caught."""
    assert heavy_imports("stages.evaluate_arm") == "torch,transformers"
