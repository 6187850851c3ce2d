"""The pipeline's stage graph, read from DVC itself: dvc.yaml stays the one DAG.

DVC 3.67 has no `dvc dag --json`, so this asks DVC's Python API for the same plan `dvc repro`
makes (its own collection of the root dvc.yaml, frozen stages cut loose from their deps, a
depth-first post-order walk). Anything that orders stages (the Prefect flow) calls this instead
of keeping a list of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _address(stage: Any, project_file: str) -> str:
    """What `dvc repro <target>` accepts, relative to the repo root.

    DVC's own `stage.addressing` is relative to the process's cwd, which is wrong for a caller
    that runs DVC in another directory.
    """
    path = stage.path_in_repo
    name = getattr(stage, "name", None)
    if name is None:  # a .dvc file stage
        return path
    return name if path == project_file else f"{path}:{name}"


def stage_order(repo_root: str | Path = ".") -> list[str]:
    """Stage addresses (`name`, `name@item`, `sub/dvc.yaml:name`) in `dvc repro` order."""
    # dvc takes ~1 s to import: pay only when the graph is needed.
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    with Repo(str(repo_root)) as repo:
        # A relative target resolves against the cwd, not the repo: give DVC the full path.
        targets = repo.stage.collect(os.path.join(repo.root_dir, PROJECT_FILE))
        plan = plan_repro(get_active_graph(repo.index.graph), targets)
        return [_address(stage, PROJECT_FILE) for stage in plan]
