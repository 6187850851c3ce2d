"""Scratch copies of the project: its source files without what a pipeline run produced.

Tests and benchmarks run the real pipeline in such a copy, so a developer's own outputs (models,
metrics, dvc.lock) never leak into it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PRODUCTS = ("data", "models", "metrics", "reports", "runs", "dvclive", "dvc.lock")
INPUTS = ("data/sources/",)  # inside a product folder, but the pipeline's input: copied


def copy_project(repo: Path, destination: Path) -> None:
    """Copy the files git tracks or would track (uncommitted work included), minus products."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout
    for name in listed.splitlines():
        source = repo / name
        product = name.split("/")[0] in PRODUCTS and not name.startswith(INPUTS)
        if product or not source.is_file():
            continue
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination / name)
