"""`millennial lineage`: traced from a real `dvc repro` of a small scratch pipeline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_command as run

from millennial.cli import main
from millennial.lineage import LineageError, lineage, render_markdown

COSTS = {"curate": 0.01, "validate": 0.02, "prepare_base": 0.5, "train": 12.25}
FAKE_STAGE = f"COSTS = {COSTS!r}\n" + """\
import json, pathlib, sys
stage = sys.argv[1]
params = __import__("yaml").safe_load(open("params.yaml"))
def write(path, text):
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(text)
if stage == "card":
    write("models/phase1/README.md", "card for " + open("models/phase1/adapter.txt").read())
    sys.exit()
from dataclasses import replace
from millennial.cost.record import CostRecord
pathlib.Path("metrics/cost").mkdir(parents=True, exist_ok=True)
replace(CostRecord.skipped(stage, ""), status="ok", reason=None, usd=COSTS[stage],
        wall_seconds=2.5, energy_kwh=0.125, energy_method="tdp-estimate", co2e_kg=0.05,
        device_count=1, started_at="2026-01-01T00:00:00+00:00",
        ).write(f"metrics/cost/{stage}.json")
if stage == "curate":
    text = open("raw/docs.txt").read()
    write("data/curated/docs.txt", text[: params["curate"]["max_chars"]])
elif stage == "validate":
    write("metrics/validation.json", json.dumps({"success": True, "checks": 1}))
    write("data/validated/receipt.json", json.dumps({"success": True}))
elif stage == "prepare_base":
    write("models/base/weights.txt", params["base"]["source"])
else:
    write("models/phase1/adapter.txt", str(params["trm"]["cycles"]))
"""

DVC_YAML = """\
stages:
  curate:
    cmd: python stages/fake.py curate
    deps:
      - stages/fake.py
      - raw/docs.txt
    params:
      - curate.max_chars
    outs:
      - data/curated
    metrics:
      - metrics/cost/curate.json:
          cache: false
  validate:
    cmd: python stages/fake.py validate
    deps:
      - stages/fake.py
      - data/curated
    outs:
      - data/validated/receipt.json
    metrics:
      - metrics/validation.json:
          cache: false
      - metrics/cost/validate.json:
          cache: false
  prepare_base:
    cmd: python stages/fake.py prepare_base
    deps:
      - stages/fake.py
    params:
      - base.source
    outs:
      - models/base
    metrics:
      - metrics/cost/prepare_base.json:
          cache: false
  train:
    cmd: python stages/fake.py train
    deps:
      - stages/fake.py
      - models/base
      - data/curated
      - data/validated/receipt.json
    params:
      - trm.cycles
      - train
    outs:
      - models/phase1/adapter.txt
    metrics:
      - metrics/cost/train.json:
          cache: false
  card:
    cmd: python stages/fake.py card
    deps:
      - stages/fake.py
      - models/phase1/adapter.txt
    outs:
      - models/phase1/README.md
"""

PARAMS = {"curate": {"max_chars": 5}, "base": {"source": "tiny-random"},
          "trm": {"cycles": 3}, "train": {"lr": 0.001, "steps": 2}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git+DVC repo with a 4-stage pipeline reproduced and committed."""
    root = tmp_path_factory.mktemp("lineage")
    (root / "stages").mkdir()
    (root / "stages/fake.py").write_text(FAKE_STAGE)
    (root / "raw").mkdir()
    (root / "raw/docs.txt").write_text("hello world, raw text")
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "repro", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "pipeline run"], root)
    return root


def test_lineage_of_the_model_lists_every_stage_upstream_first(repo: Path) -> None:
    info = lineage("models/phase1/adapter.txt", repo)
    names = [stage["stage"] for stage in info["stages"]]
    assert sorted(names) == sorted(COSTS) and names[-1] == "train"
    assert names.index("curate") < names.index("validate")
    for position, stage in enumerate(info["stages"]):
        assert all(names.index(up) < position for up in stage["upstream"])
    train = info["stages"][-1]
    assert train["upstream"] == ["curate", "validate", "prepare_base"]
    assert train["cmd"] == "python stages/fake.py train"
    assert info["output"]["stage"] == "train"
    assert info["artifact"] == "models/phase1/adapter.txt"


def test_a_directory_written_by_several_stages_traces_them_all(repo: Path) -> None:
    info = lineage("models/phase1", repo)  # adapter from `train`, its card from `card`
    names = [stage["stage"] for stage in info["stages"]]
    assert sorted(names) == sorted([*COSTS, "card"]) and names[-2:] == ["train", "card"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    locked = {out["path"]: out["md5"] for entry in lock.values() for out in entry["outs"]}
    assert info["output"] == {"path": "models/phase1", "md5": None, "stage": "card", "parts": [
        {"path": "models/phase1/adapter.txt", "stage": "train",
         "md5": locked["models/phase1/adapter.txt"]},
        {"path": "models/phase1/README.md", "stage": "card",
         "md5": locked["models/phase1/README.md"]}]}
    assert "Directory `models/phase1` holds outputs of several stages" in render_markdown(info)


def test_md5s_and_params_are_those_in_dvc_lock(repo: Path) -> None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    info = lineage("models/phase1/adapter.txt", repo)
    for stage in info["stages"]:
        locked = lock[stage["stage"]]
        assert {d["path"]: d["md5"] for d in stage["deps"]} == {
            d["path"]: d["md5"] for d in locked["deps"]}
        assert {o["path"]: o["md5"] for o in stage["outs"]} == {
            o["path"]: o["md5"] for o in locked["outs"]}
    by_name = {stage["stage"]: stage for stage in info["stages"]}
    assert by_name["train"]["params"] == {
        "params.yaml": {"trm.cycles": 3, "train": {"lr": 0.001, "steps": 2}}}
    assert by_name["prepare_base"]["params"] == {"params.yaml": {"base.source": "tiny-random"}}
    kinds = {d["path"]: d["kind"] for d in by_name["train"]["deps"]}
    assert kinds == {"stages/fake.py": "code", "models/base": "base-model",
                     "data/curated": "data", "data/validated/receipt.json": "data"}
    assert info["output"]["md5"] == next(
        o["md5"] for o in lock["train"]["outs"] if o["path"] == "models/phase1/adapter.txt")
    assert [s["path"] for s in info["raw_sources"]] == ["raw/docs.txt"]


def test_validation_cost_and_commit(repo: Path) -> None:
    info = lineage(str(repo / "models/phase1/adapter.txt"), repo)  # inside an output, absolute
    by_name = {stage["stage"]: stage for stage in info["stages"]}
    assert by_name["train"]["validation"] == {
        "stage": "validate", "source": "metrics/validation.json", "success": True,
        "matches_lock": True}
    assert by_name["prepare_base"]["validation"] is None
    assert by_name["curate"]["validation"] is None
    for name, usd in COSTS.items():
        cost = by_name[name]["cost"]
        assert cost["usd"] == usd and cost["wall_seconds"] == 2.5
        assert cost["energy_kwh"] == 0.125 and cost["status"] == "ok"
        assert cost["matches_lock"] is True  # the record of the run dvc.lock describes
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert info["git"] == {"commit": head, "dirty": False, "lock_committed": True}
    markdown = render_markdown(info)
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Raw sources"
    assert [h.split("`")[1] for h in headings[1:]] == [s["stage"] for s in info["stages"]]
    assert "PASSED by `validate`" in markdown and "$12.2500" in markdown and head[:12] in markdown


def test_cli_json_and_unknown_artifact(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lineage", "data/curated", "--repo", str(repo), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [stage["stage"] for stage in info["stages"]] == ["curate"]
    assert main(["lineage", "models/nothing", "--repo", str(repo)]) == 2
    assert "models/nothing: not an output of any stage" in capsys.readouterr().err
    with pytest.raises(LineageError, match=r"raw/docs\.txt: not an output"):
        lineage("raw/docs.txt", repo)  # a source, not an output
