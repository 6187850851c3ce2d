"""Sweeps on a fleet: one deployment run per grid point, each a DVC experiment, side by side.

`sweep(grid)` submits one run of the `sweep-point` deployment per point (`run_deployment`) to
its work pool, all at once: each worker moves its own checkout to the sweep's baseline commit
(fetched from the git remote), pulls the baseline's outputs from the DVC remote (so only the
stages a point's params touch run again), runs `dvc exp run --temp -n <name> -S key=value ...`
and pushes the experiment (git refs and DVC outputs) to the shared remotes. The sweep then
pulls every finished point into its own checkout and publishes one comparison: a table of each
point's params, metrics and cost, and a PNG of the metric against the cost.
A failed point is listed with its error; the others go on. `dvc exp show` on any checkout
lists every point after `dvc exp pull`. Setup: README.md, "Sweeps on a fleet".
"""

from __future__ import annotations

import argparse
import contextvars
import itertools
import math
import re
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dvc.api
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.deployments import run_deployment

# A worker loads this file by path (the deployment's entrypoint): make its checkout importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flows.pipeline import STAGE_TIMEOUT_S, dvc_command, run_streamed, workspace_limit

POINT_DEPLOYMENT = "millennial-sweep-point/sweep-point"
TABLE_KEY = "sweep-comparison"
DEFAULT_METRIC = "arms.phase1.overall.all.accuracy"  # metrics/eval.json
DEFAULT_COST = "totals.usd"  # metrics/cost.json
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class SweepError(ValueError):
    """A grid that cannot be swept (empty, a key without values, a bad name), or a baseline
    the workers cannot reach."""


@dataclass(frozen=True)
class Point:
    """One grid point: its experiment name and the params it sets."""

    name: str
    overrides: dict[str, str]


@dataclass(frozen=True)
class PointResult:
    point: Point
    error: str | None  # None: the experiment ran and was pushed
    metric: float | None
    cost: float | None
    row: dict[str, Any]  # params, metrics and cost as `dvc exp show` reports them


def grid_points(grid: dict[str, Sequence[Any]], prefix: str) -> list[Point]:
    """Every combination of `grid`'s values, in key order, named `<prefix>-<i>`."""
    if not _NAME.fullmatch(prefix):
        raise SweepError(f"sweep name {prefix!r}: start with a letter; letters, digits, _ and -")
    if not grid:
        raise SweepError("the grid is empty: give at least one key with values")
    for key, values in grid.items():
        if not isinstance(values, list | tuple) or not values:
            raise SweepError(f"grid key {key!r}: a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [Point(f"{prefix}-{index:02d}", {k: _text(v) for k, v in zip(keys, combo,
                                                                         strict=True)})
            for index, combo in enumerate(itertools.product(*(grid[k] for k in keys)))]


def _text(value: Any) -> str:
    """A value as `-S key=value` wants it (YAML spelling, so true/false/null survive)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def read_grid(path: Path) -> dict[str, list[Any]]:
    """A grid file: a YAML mapping of dotted params keys to lists of values."""
    try:
        grid = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{path}: {err}") from err
    if not isinstance(grid, dict):
        raise SweepError(f"{path}: a mapping of params keys to lists of values")
    return grid


def git_output(args: Sequence[str], root: Path) -> str:
    """A git command's stdout; a SweepError with its stderr when it fails."""
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SweepError(f"git {' '.join(args)} in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


@task(task_run_name="checkout {baseline:.12}")
def checkout_baseline(root: str, git_remote: str, baseline: str) -> None:
    """Fetch `git_remote` and move this worker's checkout to `baseline` (detached): every point
    runs the code, data and params the sweep was launched from, not whatever the worker had."""
    logger = get_run_logger()
    for args in (["fetch", "-q", git_remote], ["checkout", "-q", "--detach", baseline]):
        code, tail = run_streamed(["git", *args], Path(root), STAGE_TIMEOUT_S, logger.info)
        if code != 0:
            raise SweepError(f"git {' '.join(args)} in {root} failed (is the baseline commit "
                             f"pushed to {git_remote}?): {' '.join(tail)}")


@flow(name="millennial-sweep-point")
def sweep_point(name: str, overrides: dict[str, str], repo_root: str = ".",
                git_remote: str = "origin", baseline: str | None = None,
                timeout_s: float = STAGE_TIMEOUT_S) -> str:
    """Run one point as a DVC experiment from this worker's checkout and push it (git refs to
    `git_remote`, outputs to the default DVC remote).

    With `baseline` (a commit) the checkout moves there first. `dvc pull` then brings the
    baseline's outputs from the DVC remote, so the experiment reruns only the stages its
    params reach (missing outputs are computed, not fatal). `--temp`: it runs in a temporary
    copy, so the checkout keeps its own params and every point starts from the same baseline
    (run in the workspace, a point would inherit the values the previous point set)."""
    root = str(Path(repo_root).resolve())
    limit = workspace_limit(Path(root))
    if baseline is not None:
        checkout_baseline(root, git_remote, baseline)
    dvc_command(f"pull {name}", ["pull", "--allow-missing"], root, limit, timeout_s)
    settings = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
    dvc_command(f"exp-run {name}", ["exp", "run", "--temp", "-n", name, *settings], root, limit,
                timeout_s)
    dvc_command(f"exp-push {name}", ["exp", "push", git_remote, name], root, limit, timeout_s)
    return name


def _number(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _run_point(point: Point, deployment: str, git_remote: str, baseline: str) -> str | None:
    """Submit one point and wait for it; None when it completed, else its error. The point
    runs in whichever worker's checkout takes it (the deployment's working directory)."""
    run = run_deployment(name=deployment, parameters={"name": point.name,
                                                      "overrides": point.overrides,
                                                      "git_remote": git_remote,
                                                      "baseline": baseline},
                         flow_run_name=point.name, timeout=None, as_subflow=True)
    state = run.state
    if state is not None and state.is_completed():
        return None
    return f"{state.name if state else 'no state'}: {state.message if state else ''}".strip()


def collect(root: Path, points: Sequence[Point], errors: dict[str, str | None],
            git_remote: str, metric: str, cost: str) -> list[PointResult]:
    """Pull every finished point into `root` and read its row from `dvc exp show`."""
    limit = workspace_limit(root)
    for point in points:
        if errors[point.name] is None:
            dvc_command(f"exp-pull {point.name}", ["exp", "pull", git_remote, point.name],
                        str(root), limit, STAGE_TIMEOUT_S)
    rows = {row.get("Experiment"): row for row in dvc.api.exp_show(repo=str(root))}
    results = []
    for point in points:
        row = rows.get(point.name, {})
        error = errors[point.name]
        if error is None and not row:
            error = "pushed, but `dvc exp show` does not list it after `dvc exp pull`"
        results.append(PointResult(point, error, _number(row, metric), _number(row, cost),
                                   row))
    return results


def _plot(results: Sequence[PointResult], metric: str, cost: str, out: Path) -> Path | None:
    """The metric against the cost, one labelled dot per finished point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if r.metric is not None and r.cost is not None]
    if not done:
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter([r.cost for r in done], [r.metric for r in done])
    for result in done:
        axes.annotate(result.point.name, (result.cost, result.metric), fontsize=8,
                      xytext=(4, 4), textcoords="offset points")
    axes.set_xlabel(cost)
    axes.set_ylabel(metric)
    axes.set_title("sweep: metric against cost")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


@flow(name="millennial-sweep")
def sweep(grid: dict[str, list[Any]], name: str = "sweep", repo_root: str = ".",
          deployment: str = POINT_DEPLOYMENT, git_remote: str = "origin",
          metric: str = DEFAULT_METRIC, cost: str = DEFAULT_COST) -> list[PointResult]:
    """Fan `grid` out over the work pool, one deployment run per point, and compare them.

    Every point starts from `repo_root`'s HEAD commit, which must be pushed to `git_remote`
    (and its outputs to the DVC remote, so workers rerun only what the grid changes)."""
    logger = get_run_logger()
    root = Path(repo_root).resolve()
    points = grid_points(grid, name)
    baseline = git_output(["rev-parse", "HEAD"], root)
    logger.info("sweep %s: %d points on %s from baseline %s", name, len(points), deployment,
                baseline)
    with ThreadPoolExecutor(max_workers=len(points)) as pool:  # each wait in its own thread
        futures = [pool.submit(contextvars.copy_context().run, _run_point, point, deployment,
                               git_remote, baseline) for point in points]
        outcomes = [future.result() for future in futures]
    errors = {point.name: error for point, error in zip(points, outcomes, strict=True)}
    results = collect(root, points, errors, git_remote, metric, cost)
    table = [{"point": r.point.name, **r.point.overrides, metric: r.metric, cost: r.cost,
              "error": r.error or ""} for r in results]
    create_table_artifact(table=table, key=TABLE_KEY,
                          description=f"Sweep {name}: params, {metric} and {cost} per point")
    figure = _plot(results, metric, cost, root / "reports" / "sweeps" / f"{name}.png")
    failed = [r for r in results if r.error]
    lines = [f"# Sweep {name}: {len(results) - len(failed)} of {len(results)} points done", ""]
    lines += [f"- {r.point.name} ({r.point.overrides}): FAILED: {r.error}" for r in failed]
    lines += ["", f"Figure: `{figure}`" if figure else "No point finished: no figure."]
    create_markdown_artifact(markdown="\n".join(lines), key=f"{TABLE_KEY}-summary",
                             description=f"Sweep {name}: failures and the figure")
    for result in failed:
        logger.error("sweep %s: %s failed: %s", name, result.point.name, result.error)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.sweep grid.yaml --name lr`: sweep a grid file over the work pool."""
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__)
    parser.add_argument("grid", type=Path, help="YAML: params key -> list of values")
    parser.add_argument("--name", default="sweep")
    parser.add_argument("--repo", default=".")
    parser.add_argument("--deployment", default=POINT_DEPLOYMENT)
    parser.add_argument("--git-remote", default="origin")
    parser.add_argument("--metric", default=DEFAULT_METRIC)
    parser.add_argument("--cost", default=DEFAULT_COST)
    args = parser.parse_args(argv)
    try:
        grid = read_grid(args.grid)
        grid_points(grid, args.name)
        git_output(["rev-parse", "HEAD"], Path(args.repo))  # the baseline: a commit
    except SweepError as err:
        parser.exit(2, f"sweep: {err}\n")
    results = sweep(grid, args.name, args.repo, args.deployment, args.git_remote, args.metric,
                    args.cost)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
