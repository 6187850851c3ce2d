"""The pipeline's stage graph, read from DVC itself: dvc.yaml stays the one DAG.

DVC 3.67 has no `dvc dag --json`, so this asks DVC's Python API for the same plan `dvc repro`
makes (its own collection of the root dvc.yaml, frozen stages cut loose from their deps, a
depth-first post-order walk). Anything that orders stages (the Prefect flow) calls this instead
of keeping a list of its own. `stage_plan` also says, in one DVC call, which stages a
`dvc repro` would have to look at again: the changed ones and everything downstream of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class StagePlan:
    """The stages in `dvc repro` order, and those that are stale: changed (deps, params, outs,
    the stage itself, or always changed) or downstream of a changed one, whose deps may change
    when it runs. The rest are up to date: `dvc repro` would skip them."""

    order: list[str]
    stale: frozenset[str]

    @property
    def up_to_date(self) -> list[str]:
        return [stage for stage in self.order if stage not in self.stale]


def stage_order(repo_root: str | Path = ".") -> list[str]:
    """Stage addresses (`name`, `name@item`, `sub/dvc.yaml:name`) in `dvc repro` order."""
    return _plan(repo_root, with_status=False).order


def stage_plan(repo_root: str | Path = ".") -> StagePlan:
    """The order and which stages are stale, from one DVC repository object (what `dvc
    status` computes, without a process per stage)."""
    return _plan(repo_root, with_status=True)


def _plan(repo_root: str | Path, with_status: bool) -> StagePlan:
    # dvc takes ~1 s to import: pay only when the graph is needed.
    import networkx as nx
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo import Repo
    from dvc.repo.reproduce import get_active_graph, plan_repro

    with Repo(str(repo_root)) as repo:
        # A relative target resolves against the cwd, not the repo: give DVC the full path.
        targets = repo.stage.collect(os.path.join(repo.root_dir, PROJECT_FILE))
        graph = get_active_graph(repo.index.graph)
        plan = plan_repro(graph, targets)
        stale: set[Any] = set()
        if with_status:
            with repo.lock:
                changed = [stage for stage in plan if stage.status()]
            for stage in changed:  # edges point from a stage to the stages it depends on
                stale |= {stage, *nx.ancestors(graph, stage)}
        return StagePlan([_address(stage, PROJECT_FILE) for stage in plan],
                         frozenset(_address(stage, PROJECT_FILE) for stage in stale))
