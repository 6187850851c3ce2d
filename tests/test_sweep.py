"""A sweep on a fleet, end to end: a Prefect server, a process work pool, two workers in two
clones, a bare git repository and a directory DVC remote; a third clone pulls every point.

The pipeline is a fake two-stage DVC pipeline (seconds per point) so the fleet mechanics, not
training, fill the time; `test_pipeline.py` runs the real stages.
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
import yaml
from conftest import run_command
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from millennial.workspace import copy_project

REPO = Path(__file__).resolve().parents[1]
POOL = "a100-pool"  # what prefect.yaml's sweep-point deployment names

FAKE_STAGE = """\
import json, pathlib, sys
fake = __import__("yaml").safe_load(open("params.yaml"))["fake"]
out = pathlib.Path(sys.argv[1])
if fake["fail"]:
    sys.exit("fake train: told to fail")
for path in ("out", "metrics"):
    pathlib.Path(path).mkdir(exist_ok=True)
pathlib.Path("out/model.txt").write_text(f"{fake['cycles']} x {fake['width']}")
score = fake["cycles"] / 10 + fake["width"] / 100
pathlib.Path("metrics/eval.json").write_text(json.dumps(
    {"arms": {"phase1": {"overall": {"all": {"accuracy": score}}}}}))
pathlib.Path("metrics/cost.json").write_text(json.dumps(
    {"totals": {"usd": fake["cycles"] * fake["width"] / 1000}}))
"""

FAKE_DVC_YAML = """\
stages:
  train:
    cmd: python fake_stage.py out
    deps:
      - fake_stage.py
    params:
      - fake
    outs:
      - out
    metrics:
      - metrics/eval.json:
          cache: false
      - metrics/cost.json:
          cache: false
"""


def git(args: list[str], cwd: Path) -> str:
    return run_command(["git", *args], cwd, timeout=120).stdout


def dvc(args: list[str], cwd: Path) -> str:
    return run_command([sys.executable, "-m", "dvc", *args], cwd, timeout=300).stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Remotes, an origin checkout, two workers' clones with a worker each, a Prefect API."""
    base = tmp_path_factory.mktemp("fleet")
    remote, storage = base / "remote.git", base / "dvc-remote"
    git(["init", "-q", "--bare", "-b", "main", str(remote)], base)
    origin = base / "origin"
    origin.mkdir()
    copy_project(REPO, origin)
    (origin / "dvc.yaml").write_text(FAKE_DVC_YAML)
    (origin / "fake_stage.py").write_text(FAKE_STAGE)
    params = yaml.safe_load((origin / "params.yaml").read_text())
    params["fake"] = {"fail": False, "cycles": 1, "width": 8}
    (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(["init", "-q", "-b", "main"], origin)
    dvc(["remote", "add", "-d", "shared", str(storage)], origin)
    dvc(["repro"], origin)
    dvc(["push"], origin)
    git(["add", "-A"], origin)
    git(["commit", "-qm", "fake pipeline"], origin)
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
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                     "--limit", "1", "--name", name],
                    env={**env, "MILLENNIAL_ROOT": str(clones[name])}, cwd=clones[name],
                    stdout=log, stderr=subprocess.STDOUT))
            try:
                yield {"origin": origin, **clones, "base": base}
            finally:
                for worker in workers:
                    worker.terminate()
                for worker in workers:
                    worker.wait(timeout=60)


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
    results = sweep_module.sweep({"fake.cycles": [1, 2], "fake.width": [8, 16]}, "grid",
                                 repo_root=str(fleet["origin"]))
    assert [r.error for r in results] == [None] * 4, [r.error for r in results]
    assert [r.metric for r in results] == pytest.approx([0.18, 0.26, 0.28, 0.36])
    assert [r.cost for r in results] == pytest.approx([0.008, 0.016, 0.016, 0.032])
    assert (fleet["origin"] / "reports/sweeps/grid.png").read_bytes().startswith(b"\x89PNG")
    hosts = {log for log in ("w1", "w2") if "grid-" in (fleet["base"] / f"{log}.log").read_text(
        errors="replace")}
    assert hosts == {"w1", "w2"}, "both workers should have taken points"
    for name in ("w1", "w2"):  # each point ran from the baseline, not the previous point
        assert git(["status", "--porcelain"], fleet[name]) == ""
    third = fleet["w3"]
    dvc(["exp", "pull", "origin", "grid-00", "grid-01", "grid-02", "grid-03"], third)
    shown = json.loads(dvc(["exp", "show", "--json"], third))
    names = {exp.get("name") for commit in shown for exp in commit.get("experiments") or []}
    assert {"grid-00", "grid-01", "grid-02", "grid-03"} <= names
    dvc(["exp", "apply", "grid-03"], third)
    dvc(["pull"], third)
    assert (third / "out/model.txt").read_text() == "2 x 16"  # its outputs, from the remote


def test_a_failing_point_is_listed_and_the_others_finish(
        fleet: dict[str, Path], sweep_module: ModuleType) -> None:
    results = sweep_module.sweep({"fake.fail": [False, True], "fake.cycles": [3]}, "faulty",
                                 repo_root=str(fleet["origin"]))
    good, bad = results
    assert good.error is None and good.metric == pytest.approx(0.38)
    assert bad.error is not None and bad.metric is None
