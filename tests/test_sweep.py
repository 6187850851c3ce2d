"""A sweep on a fleet, end to end: a Prefect server, a process work pool, two workers in two
clones, a bare git repository and a directory DVC remote; a third clone pulls every point.

The pipeline is the real one on the tiny profile: the origin is the session's tiny reference
run (`tiny_reference`), pushed to both remotes; each point pulls it and reruns only the stages
its params reach (phase 1's training and evaluation, the comparison and the report).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import copy_tree, run_command
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.testing.utilities import prefect_test_harness

REPO = Path(__file__).resolve().parents[1]
POOL = "a100-pool"  # what prefect.yaml's sweep-point deployment names
GRID = {"phase1.lr": [0.002, 0.02], "phase1.out_lr_multiplier": [1.0, 10.0]}


def git(args: list[str], cwd: Path) -> str:
    return run_command(["git", *args], cwd, timeout=120).stdout


def dvc(args: list[str], cwd: Path) -> str:
    return run_command([sys.executable, "-m", "dvc", *args], cwd, timeout=300).stdout


@pytest.fixture(scope="module")
def fleet(tiny_reference: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, Path]]:
    """Remotes, an origin checkout, two workers' clones with a worker each, a Prefect API."""
    base = tmp_path_factory.mktemp("fleet")
    remote, storage = base / "remote.git", base / "dvc-remote"
    git(["init", "-q", "--bare", "-b", "main", str(remote)], base)
    origin = copy_tree(tiny_reference, base / "origin")
    dvc(["remote", "add", "-d", "shared", str(storage)], origin)
    dvc(["push"], origin)
    git(["commit", "-qam", "the shared DVC remote"], origin)
    git(["remote", "add", "origin", str(remote)], origin)
    git(["push", "-q", "origin", "main"], origin)
    clones = {}
    for name in ("w1", "w2", "w3"):
        git(["clone", "-q", str(remote), str(base / name)], base)
        clones[name] = base / name
    home = base / "prefect-home"
    workers: list[subprocess.Popen[bytes]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(home))
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with temporary_settings({PREFECT_HOME: home}), prefect_test_harness(
            server_startup_timeout=120
        ):
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
            env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
            subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name",
                            "sweep-point"], cwd=clones["w1"], env=env, check=True,
                           capture_output=True, timeout=300)
            for name in ("w1", "w2"):
                log = (base / f"{name}.log").open("wb")
                # Two workers share this machine's cores: one thread each, as one host each
                # would have its own (two 2-thread workers on 2 cores slow each op many-fold);
                # they poll for runs every second, not every 10.
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                     "--limit", "1", "--name", name],
                    env={**env, "MILLENNIAL_ROOT": str(clones[name]), "OMP_NUM_THREADS": "1",
                         "PREFECT_WORKER_QUERY_SECONDS": "1"},
                    cwd=clones[name], stdout=log, stderr=subprocess.STDOUT))
            try:
                yield {"origin": origin, **clones, "base": base}
            finally:
                for worker in workers:
                    worker.terminate()
                for worker in workers:
                    try:
                        worker.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        # Its graceful exit can hang on a heartbeat to the test server while
                        # that server's SQLite is locked (seen under full load in CI): after
                        # every point has finished, a stuck worker is killed, not waited on.
                        worker.kill()
                        worker.wait(timeout=30)


@pytest.fixture(scope="module")
def sweep_module() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("flows.sweep")


def test_grid_points_and_bad_grids(sweep_module: ModuleType, tmp_path: Path) -> None:
    points = sweep_module.grid_points({"trm.cycles": [2, 3], "phase1.lr": [1e-3, 0.01]}, "lr")
    assert [p.name for p in points] == ["lr-00", "lr-01", "lr-02", "lr-03"]
    assert points[1].overrides == {"trm.cycles": "2", "phase1.lr": "0.01"}
    assert sweep_module.grid_points({"phase2.enabled": [True]}, "p")[0].overrides == {
        "phase2.enabled": "true"}
    for grid, message in (({}, "empty"), ({"trm.cycles": []}, "non-empty list"),
                          ({"trm.cycles": 3}, "non-empty list")):
        with pytest.raises(sweep_module.SweepError, match=message):
            sweep_module.grid_points(grid, "s")
    with pytest.raises(sweep_module.SweepError, match="start with a letter"):
        sweep_module.grid_points({"a": [1]}, "1st")
    bad = tmp_path / "grid.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(SystemExit) as exit_info:
        sweep_module.main([str(bad)])
    assert exit_info.value.code == 2


def test_a_grid_fans_out_over_two_workers_and_a_third_clone_sees_every_point(
        fleet: dict[str, Path], sweep_module: ModuleType) -> None:
    results = sweep_module.sweep(GRID, "grid", repo_root=str(fleet["origin"]))
    assert [r.error for r in results] == [None] * 4, [r.error for r in results]
    assert all(r.metric is not None and 0 <= r.metric <= 1 for r in results)
    assert all(r.cost is not None and r.cost > 0 for r in results)
    assert (fleet["origin"] / "reports/sweeps/grid.png").read_bytes().startswith(b"\x89PNG")
    logs = {name: (fleet["base"] / f"{name}.log").read_text(errors="replace")
            for name in ("w1", "w2")}
    assert all("grid-" in log for log in logs.values()), "both workers should have taken points"
    # the baseline's outputs came from the DVC remote: a point reruns only what its params reach
    for log in logs.values():
        assert "Running stage 'train_phase1'" in log
        assert "Running stage 'curate'" not in log and "Running stage 'train_lora'" not in log
    for name in ("w1", "w2"):  # each point ran from the baseline, not the previous point
        assert git(["status", "--porcelain"], fleet[name]) == ""
        assert git(["rev-parse", "HEAD"], fleet[name]) == git(["rev-parse", "HEAD"],
                                                              fleet["origin"])
    third = fleet["w3"]
    names = [f"grid-{i:02d}" for i in range(4)]
    dvc(["exp", "pull", "origin", *names], third)
    shown = json.loads(dvc(["exp", "show", "--json"], third))
    experiments = {exp["name"]: exp for commit in shown
                   for exp in commit.get("experiments") or [] if exp.get("name")}
    assert set(names) <= set(experiments)
    for result in results:
        data = experiments[result.point.name]["revs"][0]["data"]
        phase1 = data["params"]["params.yaml"]["data"]["phase1"]
        assert (str(phase1["lr"]), str(phase1["out_lr_multiplier"])) == (
            result.point.overrides["phase1.lr"], result.point.overrides["phase1.out_lr_multiplier"])
        assert "metrics/eval.json" in data["metrics"]
    dvc(["exp", "apply", "grid-03"], third)
    dvc(["pull"], third)  # its outputs, from the remote
    trained = json.loads((third / "metrics/train_phase1.json").read_text())
    assert trained["lr_groups"] == pytest.approx({"trm": 0.02, "trm_out": 0.2})
    assert (third / "models/phase1/trm.safetensors").stat().st_size > 0


def test_a_failing_point_is_listed_and_the_others_finish(
        fleet: dict[str, Path], sweep_module: ModuleType) -> None:
    # A params key only the report stage reads: the good point reruns one stage.
    results = sweep_module.sweep({"evaluate.report.mfu": [0.3, -1.0]}, "faulty",
                                 repo_root=str(fleet["origin"]))
    good, bad = results
    assert good.error is None and good.metric is not None
    assert bad.error is not None and bad.metric is None
    assert "report" in bad.error and "evaluate.report.mfu" in bad.error
