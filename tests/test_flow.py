"""The Prefect flow end to end on a temporary Prefect server and a fake 3-stage DVC pipeline.

The workspace is a scratch git+DVC copy of the repo whose dvc.yaml is replaced by three trivial
stages, listed in reverse so the order can only have come from DVC.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import psutil
import pytest
import yaml
import zc.lockfile
from conftest import run_command
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_HOME, temporary_settings
from prefect.states import Failed
from prefect.testing.utilities import prefect_test_harness

from millennial.workspace import copy_project

REPO = Path(__file__).resolve().parents[1]
ORDER = ["prepare", "validate", "train"]

FAKE_STAGE = """\
import json, pathlib, sys
stage = sys.argv[1]
fake = __import__("yaml").safe_load(open("params.yaml"))["fake"]
def write(path, text):
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(text)
print(f"fake {stage}: working", flush=True)
from dataclasses import asdict, replace
from millennial.cost.record import CostRecord, Planned
plan = Planned(tokens=0, flops=0.0, mfu=0.3, mfu_source="x", wall_seconds=1.0,
               peak_memory_bytes=None, memory_breakdown={}, basis="fake")
cost = replace(CostRecord.skipped(stage, ""), status="ok", reason=None, usd=0.25,
               wall_seconds=1.5, energy_kwh=0.01, energy_method="tdp-estimate",
               device_count=1, planned=plan).to_json()
if stage == "validate" and fake["fail"]:
    write("metrics/validation.json", json.dumps({"success": False}))
    write("metrics/cost/failed/validate.json", json.dumps({**cost, "status": "failed"}))
    print("validate: 3 of 7 checks failed (fake)", file=sys.stderr)
    sys.exit(1)
write(f"out/{stage}.txt", stage)
write(f"metrics/cost/{stage}.json", json.dumps(cost))
if stage == "validate":
    write("metrics/validation.json", json.dumps({"success": True}))
if stage == "train":
    write("models/phase1/adapter.txt", str(fake["cycles"]))
    write("reports/summary.md", "fake accuracy 0.5")
    write("metrics/cost.json", json.dumps({"totals": {"usd": 0.75, "failed": []}}))
"""

# Listed train-first on purpose: DVC's graph, not this listing, must give the order.
FAKE_DVC_YAML = """\
stages:
  train:
    cmd: python fake_stage.py train
    deps:
      - fake_stage.py
      - out/validate.txt
    params:
      - fake.cycles
    outs:
      - out/train.txt
      - models/phase1
  validate:
    cmd: python fake_stage.py validate
    deps:
      - fake_stage.py
      - out/prepare.txt
    params:
      - fake.fail
    outs:
      - out/validate.txt
    metrics:
      - metrics/validation.json:
          cache: false
  prepare:
    cmd: python fake_stage.py prepare
    deps:
      - fake_stage.py
    outs:
      - out/prepare.txt
"""


def git(args: list[str], cwd: Path) -> str:
    return run_command(["git", *args], cwd, timeout=60).stdout


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A temporary Prefect API (SQLite) for this module; ~25 s to start on 2 cores."""
    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(home))
        patch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with temporary_settings({PREFECT_HOME: home}), prefect_test_harness(
            server_startup_timeout=120
        ):
            yield


@pytest.fixture(scope="module")
def flows() -> Iterator[ModuleType]:
    """`flows.pipeline`, imported from the repo root (it is not an installed package)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("flows.pipeline")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git+DVC copy of the repo with the fake pipeline in place of dvc.yaml."""
    root = tmp_path_factory.mktemp("flow-workspace")
    copy_project(REPO, root)
    (root / "dvc.yaml").write_text(FAKE_DVC_YAML)
    (root / "fake_stage.py").write_text(FAKE_STAGE)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["fake"] = {"fail": False, "cycles": 2}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(["init", "-q"], root)
    git(["add", "-A"], root)
    git(["commit", "-qm", "workspace"], root)
    return root


def task_runs(flow_run_id: UUID) -> list[Any]:
    """The flow run's task runs, in the order they started."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda run: run.start_time or run.expected_start_time)


def latest_artifact(flow_run_id: UUID, key: str) -> Any:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]),
                                           flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            sort=ArtifactSort.CREATED_DESC,
        )
    assert artifacts, f"no {key!r} artifact for flow run {flow_run_id}"
    return artifacts[0]


def test_lock_contention_is_the_only_failure_retried(flows: ModuleType) -> None:
    locked = ("ERROR: Unable to acquire lock. Most likely another DVC process is running or was "
              "terminated abruptly.")
    failed = "ERROR: failed to reproduce 'validate': failed to run: python ..., exited with 1"
    assert flows.is_lock_contention(locked)
    assert flows.is_lock_contention("'data/curated' is busy, it is being blocked by:")
    assert not flows.is_lock_contention(failed)

    def retried(error: Exception) -> bool:
        return flows.retry_on_lock_contention(None, None, Failed(data=error))

    assert retried(flows.StageFailed("prepare", 255, [locked]))
    assert not retried(flows.StageFailed("validate", 255, ["validate: checks failed", failed]))
    assert not retried(flows.StageTimeout("train", -9, [locked]))
    assert not retried(RuntimeError(locked))


def test_a_timed_out_stage_loses_its_whole_process_group(flows: ModuleType,
                                                         tmp_path: Path) -> None:
    script = "sleep 60 & echo $! > child.pid; echo started; wait"
    lines: list[str] = []
    begin = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        flows.run_streamed(["sh", "-c", script], tmp_path, 1.0, lines.append)
    assert time.monotonic() - begin < 20 and lines == ["started"]
    child = int((tmp_path / "child.pid").read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_flow_runs_dvc_stages_in_dvc_order_and_publishes_artifacts(
    prefect_server: None, flows: ModuleType, workspace: Path
) -> None:
    assert flows.stage_order(workspace) == ORDER
    assert flows.stage_plan(workspace).stale == set(ORDER)  # nothing has run yet
    state = flows.pipeline(repo_root=str(workspace), return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == ORDER  # a fresh workspace: DVC ran every stage
    flow_run_id = state.state_details.flow_run_id
    assert [run.name for run in task_runs(flow_run_id)] == ["plan", *ORDER]

    costs = json.loads(latest_artifact(flow_run_id, flows.COSTS_KEY).data)
    assert [row["stage"] for row in costs] == ORDER
    assert all(row["usd"] == 0.25 and row["this_run"] == "ran" for row in costs)
    assert all(row["planned_wall_seconds"] == 1.0 and row["wall_measured_over_planned"] == 1.5
               for row in costs)
    summary = latest_artifact(flow_run_id, flows.SUMMARY_KEY).data
    assert "fake accuracy 0.5" in summary and "| usd | 0.75 |" in summary
    assert "## Lineage of models/phase1" in summary
    assert "PASSED by `validate`" in summary  # the lineage section, gated by the fake validate

    APILogHandler().flush()  # logs ship in background batches: wait until they are sent
    with get_client(sync_client=True) as client:  # stage output reached the run logger
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        limit = client.read_global_concurrency_limit_by_name(flows.workspace_limit(workspace))
    assert {f"fake {stage}: working" for stage in ORDER} <= {log.message for log in logs}
    assert limit.limit == 1


def test_an_up_to_date_stage_costs_no_task_and_a_change_reruns_what_is_downstream(
    prefect_server: None, flows: ModuleType, workspace: Path
) -> None:
    flows.pipeline(repo_root=str(workspace))  # whatever the earlier tests left: now cached
    assert flows.stage_plan(workspace).stale == frozenset()
    state = flows.pipeline(repo_root=str(workspace), return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == []
    flow_run_id = state.state_details.flow_run_id
    assert [run.name for run in task_runs(flow_run_id)] == ["plan"]  # no stage subprocess
    costs = json.loads(latest_artifact(flow_run_id, flows.COSTS_KEY).data)
    assert [(row["stage"], row["this_run"]) for row in costs] == [
        (stage, "up to date (cost of its last run)") for stage in ORDER]

    params_file = workspace / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["fake"]["fail"] = None  # validate's param: validate and train (downstream) are stale
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        plan = flows.stage_plan(workspace)
        assert plan.stale == {"validate", "train"} and plan.up_to_date == ["prepare"]
        state = flows.pipeline(repo_root=str(workspace), return_state=True)
        assert state.is_completed(), state.message
        assert state.result() == ["validate"]  # train's inputs turned out unchanged: DVC skips
        names = [run.name for run in task_runs(state.state_details.flow_run_id)]
        assert names == ["plan", "validate", "train"]
    finally:
        params_file.write_text(original)
        flows.pipeline(repo_root=str(workspace))


def test_a_stage_that_meets_the_lock_is_retried(
    prefect_server: None, flows: ModuleType, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = flows.workspace_limit(workspace)
    (workspace / ".dvc/tmp").mkdir(exist_ok=True)
    lock = zc.lockfile.LockFile(str(workspace / ".dvc/tmp/lock"))  # as another dvc would
    judged: list[str] = []

    def release_once_judged(stderr: str) -> bool:  # the other dvc finishes after attempt 1
        judged.append(stderr)
        if len(judged) == 1:
            lock.close()
        return is_lock_contention(stderr)

    is_lock_contention = flows.is_lock_contention
    monkeypatch.setattr(flows, "is_lock_contention", release_once_judged)
    task = flows.dvc_command.with_options(retry_delay_seconds=0)
    state = task("prepare", ["repro", "--single-item", "prepare"], str(workspace), limit, 120.0,
                 return_state=True)
    assert state.is_completed(), state.message
    assert len(judged) == 1 and "Unable to acquire lock" in judged[0]
    with get_client(sync_client=True) as client:
        assert client.read_task_run(state.state_details.task_run_id).run_count == 2


def test_overrides_run_as_one_dvc_experiment(
    prefect_server: None, flows: ModuleType, workspace: Path
) -> None:
    state = flows.pipeline(repo_root=str(workspace), overrides={"fake.cycles": "5"},
                           return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == ["train"]  # only the stage reading fake.cycles
    assert [run.name for run in task_runs(state.state_details.flow_run_id)] == ["exp-run"]
    assert (workspace / "models/phase1/adapter.txt").read_text() == "5"
    assert git(["for-each-ref", "refs/exps"], workspace).strip()  # recorded by DVC


def test_a_failing_stage_fails_the_flow_and_stops_it(
    prefect_server: None, flows: ModuleType, workspace: Path
) -> None:
    params_file = workspace / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["fake"]["fail"] = True
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    trained = (workspace / "out/train.txt").stat().st_mtime_ns

    state = flows.pipeline(repo_root=str(workspace), return_state=True)
    assert state.is_failed()
    assert "DVC stage 'validate' failed" in state.message
    assert "3 of 7 checks failed" in state.message  # the stage's own stderr
    flow_run_id = state.state_details.flow_run_id
    runs = task_runs(flow_run_id)
    assert [run.name for run in runs] == ["plan", "validate"]  # prepare up to date, train never
    assert runs[1].state.is_failed() and runs[1].run_count == 1  # not retried
    assert (workspace / "out/train.txt").stat().st_mtime_ns == trained
    costs = json.loads(latest_artifact(flow_run_id, flows.COSTS_KEY).data)
    assert [(row["stage"], row["this_run"], row["status"]) for row in costs] == [
        ("prepare", "up to date (cost of its last run)", "ok"), ("validate", "failed", "failed")]
