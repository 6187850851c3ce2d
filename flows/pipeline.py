"""The Prefect flow over the DVC pipeline: DVC decides what runs, Prefect schedules and reports.

The stage order comes from DVC (`millennial.dag.stage_plan`), never from a list kept here. DVC
is asked once which stages are stale (changed, or downstream of a changed one); each of those is
one task running `dvc repro --single-item <stage>` in a subprocess, so DVC records what ran in
dvc.lock (and still skips a stage whose inputs turn out unchanged). Up-to-date stages cost no
subprocess: the flow logs them and lists them in the cost table with their last run's cost.
Param overrides (and `phase2`) go through one `dvc exp run -S key=value` task instead, so DVC
records them as an experiment. See README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import TaskRun
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.states import State

from millennial.cost.meter import failure_path
from millennial.cost.planner import GIB
from millennial.cost.record import CostRecord, ratio
from millennial.dag import StagePlan, stage_order, stage_plan
from millennial.lineage import LineageError, lineage, render_markdown

# dvc/lock.py (the repo lock) and dvc/rwlock.py (per-path locks) word contention like this.
LOCK_CONTENTION = ("Unable to acquire lock", "is busy, it is being blocked by")
STAGE_TIMEOUT_S = 48 * 3600.0  # a phase-1 run on 8xA100 is planned in hours, not days
KILL_GRACE_S = 30.0  # after SIGTERM, time for DVC to release its locks before SIGKILL
TAIL_LINES = 20
COSTS_KEY = "stage-costs"
SUMMARY_KEY = "pipeline-summary"
LINEAGE_OF = "models/phase1"
RUNNING = re.compile(r"^Running stage '(.+)':")


class StageFailed(RuntimeError):
    """A DVC command exited non-zero; the message names the stage and ends with its stderr.

    `ran` lists the stages DVC had started, the failing one last (for the cost table).
    """

    def __init__(self, stage: str, returncode: int, stderr_tail: Sequence[str],
                 ran: Sequence[str] = ()) -> None:
        self.stage = stage
        self.returncode = returncode
        self.stderr_tail = list(stderr_tail)
        self.ran = list(ran)
        tail = "\n".join(self.stderr_tail) or "(no stderr)"
        super().__init__(f"DVC stage {stage!r} failed (exit {returncode}):\n{tail}")


class StageTimeout(StageFailed):
    """The stage ran past its timeout; its process group was killed."""


def is_lock_contention(stderr: str) -> bool:
    """True if DVC failed only because another DVC process holds the workspace lock."""
    return any(marker in stderr for marker in LOCK_CONTENTION)


def retry_on_lock_contention(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """Prefect retry condition: retry lock contention, never a stage's own failure."""
    error = state.result(raise_on_failure=False)
    return (isinstance(error, StageFailed) and not isinstance(error, StageTimeout)
            and is_lock_contention("\n".join(error.stderr_tail)))


def _kill_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM the stage's whole process group, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # already gone
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _child_env() -> dict[str, str]:
    """This interpreter's bin dir first, so stage commands (`python -m ...`) use this venv."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1"}


def run_streamed(
    command: Sequence[str], cwd: Path, timeout_s: float, on_line: Callable[[str], None]
) -> tuple[int, list[str]]:
    """Run `command`, passing each output line to `on_line` as it comes.

    Returns the exit code and the last stderr lines. On timeout (or if this process is
    interrupted, e.g. a cancelled flow run) the whole process group is killed: a blocking task
    is not stopped by Prefect's own `timeout_seconds`.
    """
    process = subprocess.Popen(
        list(command), cwd=cwd, env=_child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1, start_new_session=True,
    )
    stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)

    def pump(stream: IO[str], tail: deque[str] | None) -> None:
        for raw in stream:
            line = raw.rstrip("\r\n").rsplit("\r", 1)[-1]  # a progress bar: its last state
            if tail is not None:
                tail.append(line)
            on_line(line)

    readers = [threading.Thread(target=pump, args=(process.stdout, None), daemon=True),
               threading.Thread(target=pump, args=(process.stderr, stderr_tail), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            _kill_group(process)
        for reader in readers:
            reader.join(timeout=10)
    return process.returncode, list(stderr_tail)


@task(task_run_name="{label}", retries=5, retry_delay_seconds=[10, 30, 60, 120, 300],
      retry_condition_fn=retry_on_lock_contention)
def dvc_command(label: str, args: list[str], repo_root: str, limit: str,
                timeout_s: float) -> list[str]:
    """Run one DVC command in the workspace, holding its one-DVC-at-a-time slot.

    Returns the stages DVC actually ran (it skips those whose deps and params are unchanged).
    """
    logger = get_run_logger()
    ran: list[str] = []

    def on_line(line: str) -> None:
        logger.info("%s", line)
        match = RUNNING.match(line)
        if match:
            ran.append(match.group(1))

    command = [sys.executable, "-m", "dvc", *args]
    with concurrency(limit, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        logger.info("$ dvc %s", " ".join(args))
        try:
            returncode, stderr_tail = run_streamed(command, Path(repo_root), timeout_s, on_line)
        except subprocess.TimeoutExpired:
            killed = [f"killed after the {timeout_s:g} s timeout"]
            raise StageTimeout(label, -signal.SIGKILL, killed, ran) from None
    if returncode != 0:  # under `exp run` the failing stage is the last one DVC started
        raise StageFailed(label if label in ran or not ran else ran[-1], returncode,
                          stderr_tail, ran)
    return ran


def workspace_limit(root: Path) -> str:
    """Create (idempotently) the global concurrency limit of 1 guarding this workspace.

    DVC's repo lock is per checkout, so the key is this host and path: two checkouts run in
    parallel, two runs in one checkout queue instead of failing on the lock.
    """
    digest = hashlib.sha256(f"{socket.gethostname()}:{root}".encode()).hexdigest()[:12]
    name = f"dvc-workspace-{digest}"
    # ObjectAlreadyExists: another run created it between upsert's read and its create.
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return name


def _read_cost(root: Path, stage: str, failed: bool = False) -> CostRecord | str:
    """The stage's cost record, or why there is none to show."""
    name, directory = stage.rsplit(":", 1)[-1], root / "metrics" / "cost"
    path = failure_path(directory, name) if failed else directory / f"{name}.json"
    if not path.is_file():
        return "no cost record"
    try:
        return CostRecord.read(path)
    except ValueError as err:
        return f"unreadable: {err}"


def publish_costs(root: Path, stages: Sequence[str], ran: Sequence[str],
                  failed: str | None = None) -> None:
    """The `stage-costs` table: one row per stage so far, measured beside the planner's
    prediction where the stage made one; each call is a new version."""
    rows = []
    for stage in stages:
        record = _read_cost(root, stage, failed=stage == failed)
        this_run = ("failed" if stage == failed else "ran" if stage in ran
                    else "up to date (cost of its last run)")
        if isinstance(record, str):
            rows.append({"stage": stage, "this_run": this_run, "status": record})
            continue
        plan = record.planned
        rows.append({
            "stage": stage,
            "this_run": this_run,
            "status": record.status,
            "usd": record.usd,
            "wall_seconds": record.wall_seconds,
            "planned_wall_seconds": plan.wall_seconds if plan else None,
            "wall_measured_over_planned": ratio(record.wall_seconds,
                                                plan.wall_seconds if plan else None),
            "flops": record.flops,
            "planned_flops": plan.flops if plan else None,
            "memory_gib": (record.stage_memory_bytes / GIB
                           if record.stage_memory_bytes is not None else None),
            "planned_memory_gib": (plan.peak_memory_bytes / GIB
                                   if plan and plan.peak_memory_bytes is not None else None),
            "energy_kwh": record.energy_kwh,
            "energy_method": record.energy_method,
            "device": f"{record.device_count} x {record.device_kind}",
            "started_at": record.started_at,
        })
    create_table_artifact(table=rows, key=COSTS_KEY,
                          description="Per-stage cost from `metrics/cost/{stage}.json`, beside "
                                      "the planner's prediction")


def _read_cost_totals(path: Path) -> dict[str, Any]:
    """`totals` of the cost report; empty if absent or unreadable (the summary is a courtesy)."""
    if not path.is_file():
        return {}
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    totals = report.get("totals") if isinstance(report, dict) else None
    return totals if isinstance(totals, dict) else {}


def summary_markdown(root: Path, stages: Sequence[str], ran: Sequence[str],
                     settings: dict[str, str]) -> str:
    """Evaluation summary, total cost and lineage of the trained blocks, from files on disk."""
    lines = ["# MillennialAi pipeline run", "",
             f"Stages in DVC order: {' -> '.join(f'`{s}`' for s in stages)}.",
             f"Ran now: {', '.join(ran) or 'none (all up to date)'}."]
    if settings:
        sets = ", ".join(f"`{key}={value}`" for key, value in settings.items())
        lines.append(f"Params set through `dvc exp run`: {sets}.")
    lines += ["", "## Evaluation", ""]
    summary, evaluation = root / "reports" / "summary.md", root / "metrics" / "eval.json"
    if summary.is_file():
        lines.append(summary.read_text(encoding="utf-8"))
    elif evaluation.is_file():
        lines += ["```json", evaluation.read_text(encoding="utf-8").strip(), "```"]
    else:
        lines.append("No evaluation yet (neither reports/summary.md nor metrics/eval.json).")
    lines += ["", "## Total cost", ""]
    totals = _read_cost_totals(root / "metrics" / "cost.json")
    if totals:
        lines += ["| total | value |", "|---|---|"]
        lines += [f"| {key} | {totals[key]} |" for key in
                  ("usd", "wall_seconds", "gpu_hours", "energy_kwh", "co2e_kg", "failed",
                   "unpriced", "energy_methods") if key in totals]
    else:
        lines.append("metrics/cost.json not written yet (see the stage-costs table).")
    lines += ["", f"## Lineage of {LINEAGE_OF}", ""]
    try:
        report = render_markdown(lineage(LINEAGE_OF, root))
        lines.append("\n".join("#" + line if line.startswith("#") else line
                               for line in report.splitlines()))
    except LineageError as err:
        lines.append(f"Not available: {err}")
    return "\n".join(lines) + "\n"


@task(task_run_name="plan")
def plan_stages(repo_root: str, limit: str) -> StagePlan:
    """Ask DVC once, in this process, which stages are stale (holding the workspace's slot, so
    no other run changes it meanwhile)."""
    with concurrency(limit, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        return stage_plan(repo_root)


@flow(name="millennial-pipeline")
def pipeline(repo_root: str = ".", phase2: bool = False, overrides: dict[str, str] | None = None,
             stage_timeout_s: float = STAGE_TIMEOUT_S) -> list[str]:
    """Run the DVC pipeline in `repo_root`; returns the stages DVC actually ran.

    Without overrides each stale stage is its own task (`dvc repro --single-item`) and the
    up-to-date ones are skipped without one; with `overrides` (e.g. {"trm.cycles": "4"}) or
    `phase2` the whole pipeline is one `dvc exp run -S ...` task. A failing stage fails the flow
    and no later stage runs.
    """
    logger = get_run_logger()
    root = Path(repo_root).resolve()
    limit = workspace_limit(root)
    settings = {**(overrides or {}), **({"phase2.enabled": "true"} if phase2 else {})}
    ran: list[str] = []
    if settings:
        stages = stage_order(root)
        logger.info("DVC stage order: %s (workspace slot %s)", " -> ".join(stages), limit)
        args = ["exp", "run", *(a for k, v in settings.items() for a in ("-S", f"{k}={v}"))]
        try:
            ran += dvc_command("exp-run", args, str(root), limit,
                               stage_timeout_s * max(len(stages), 1))
        except StageFailed as error:  # the meter records failed stages too: show them
            publish_costs(root, stages, error.ran, error.ran[-1] if error.ran else None)
            raise
        publish_costs(root, stages, ran)
        logger.warning("params.yaml in %s now holds %s (dvc exp run applies them to the "
                       "workspace); later runs use them until `git checkout params.yaml`",
                       root, ", ".join(f"{k}={v}" for k, v in settings.items()))
    else:
        plan = plan_stages(str(root), limit)
        stages = plan.order
        logger.info("DVC stage order: %s (workspace slot %s); up to date, not run: %s",
                    " -> ".join(stages), limit, ", ".join(plan.up_to_date) or "none")
        published = 0  # the cost table grows as stages run: each version is a new artifact
        for done, stage in enumerate(stages, start=1):
            if stage not in plan.stale:
                continue
            try:
                ran += dvc_command(stage, ["repro", "--single-item", stage], str(root), limit,
                                   stage_timeout_s)
            except StageFailed:
                publish_costs(root, stages[:done], ran, failed=stage)
                raise
            publish_costs(root, stages[:done], ran)
            published = done
        if published < len(stages):
            publish_costs(root, stages, ran)
    create_markdown_artifact(markdown=summary_markdown(root, stages, ran, settings),
                             key=SUMMARY_KEY, description="Evaluation, total cost and lineage")
    return ran


def main(argv: Sequence[str] | None = None) -> int:
    """`python flows/pipeline.py [--phase2] [--set key=value ...]`: one run, no deployment."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default=".", help="DVC workspace root")
    parser.add_argument("--phase2", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="param override, applied with `dvc exp run -S`")
    args = parser.parse_args(argv)
    bad = [item for item in args.set if "=" not in item]
    if bad:
        parser.error(f"--set expects KEY=VALUE, got {bad}")
    overrides = dict(item.split("=", 1) for item in args.set)
    state = pipeline(repo_root=args.repo, phase2=args.phase2, overrides=overrides,
                     return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
