"""`millennial cost`: totals are sums, every stage is reported, the fleet projection is the
planner's."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from millennial.cli import main
from millennial.cost.hardware import GPUS
from millennial.cost.planner import project
from millennial.cost.record import CostRecord, Planned
from millennial.cost.report import aggregate, load_stage_records, parse_fleet, write_cost_report


def record(stage: str, **overrides) -> dict:
    base = replace(
        CostRecord.skipped(stage, ""), status="ok", reason=None, wall_seconds=10.0,
        cpu_seconds=15.0, cpu_core_hours=20.0 / 3600, device_kind="cpu", device_count=1,
        device_hours=10.0 / 3600, gpu_hours=0.0, energy_kwh=1e-4, energy_method="codecarbon",
        usd=0.001, co2e_kg=4e-5, tokens=1000, flops=1e12, mfu=0.05)
    return {**base.to_json(), **overrides}


PLAN = Planned(tokens=50_000, flops=2.5e13, mfu=0.3, mfu_source="given", wall_seconds=80.0,
               peak_memory_bytes=2 * 2**30, memory_breakdown={"total": 2.0},
               basis="training steps only")


@pytest.fixture
def metrics(tmp_path: Path) -> Path:
    directory = tmp_path / "metrics" / "cost"
    directory.mkdir(parents=True)
    records = [
        record("prepare_base", flops=0.0, tokens=0, mfu=None),
        record("train_phase1", wall_seconds=100.0, energy_kwh=2e-3, usd=0.01, tokens=50_000,
               flops=3e13, planned=asdict(PLAN), peak_memory_bytes=4 * 2**30,
               start_memory_bytes=2**30),
        record("evaluate", status="failed", error="ValueError: bad eval set",
               device_kind="A100-80GB", device_count=2, device_hours=2 * 5.0 / 3600,
               gpu_hours=2 * 5.0 / 3600, energy_method="nvml", usd=None),
    ]
    for item in records:
        (directory / f"{item['stage']}.json").write_text(json.dumps(item))
    return directory


def test_totals_are_sums(metrics: Path) -> None:
    records = load_stage_records(metrics)
    totals = aggregate(records)
    for key in ("wall_seconds", "cpu_seconds", "cpu_core_hours", "gpu_hours", "energy_kwh",
                "co2e_kg", "flops"):
        assert totals[key] == pytest.approx(sum(getattr(r, key) for r in records)), key
    assert totals["tokens"] == 51_000
    assert totals["usd"] == pytest.approx(0.011)
    assert totals["unpriced"] == ["evaluate"] and totals["failed"] == ["evaluate"]
    assert totals["device_hours_by_kind"] == pytest.approx(
        {"cpu": 20.0 / 3600, "A100-80GB": 10.0 / 3600}
    )
    assert totals["energy_methods"] == ["codecarbon", "nvml"]


def test_report_mentions_every_stage_and_projects_to_a_fleet(metrics: Path, tmp_path) -> None:
    json_out, md_out = tmp_path / "metrics" / "cost.json", tmp_path / "reports" / "cost.md"
    totals = write_cost_report(metrics, json_out, md_out, fleet="8xH100", mfu=0.4,
                               params_path=None)
    text = md_out.read_text()
    for stage in ("prepare_base", "train_phase1", "evaluate"):
        assert f"| {stage} |" in text
    assert "ValueError: bad eval set" in text
    assert "| train_phase1 | model FLOPs | 2.5e+13 | 3e+13 | 1.2 |" in text
    assert "| train_phase1 | wall seconds | 80 | 100 | 1.25 |" in text
    assert "| train_phase1 | peak memory GiB | 2 | 3 | 1.5 |" in text  # above the start RSS
    assert "no prediction): evaluate, prepare_base" in text
    written = json.loads(json_out.read_text())
    expected = project(totals["flops"], GPUS["H100"], 8, 0.4)
    assert written["projection"]["wall_hours"] == pytest.approx(expected["wall_hours"])
    assert written["projection"]["usd"] == pytest.approx(expected["usd"])
    assert f"--fleet 8xH100 --mfu 0.4: {expected['wall_hours']:.4g} hours" in text
    assert set(written["stages"]) == {"prepare_base", "train_phase1", "evaluate"}
    assert written["totals"]["stages"] == 3


def test_cli_cost_uses_params_prices(metrics: Path, tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("cost:\n  usd_per_device_hour: {A100-80GB: 1.0}\n")
    out_json, out_md = tmp_path / "cost.json", tmp_path / "cost.md"
    assert main(["cost", "--metrics-dir", str(metrics), "--json-out", str(out_json),
                 "--md-out", str(out_md), "--fleet", "4xA100-80GB", "--params",
                 str(params)]) == 0
    assert "3 stages" in capsys.readouterr().out
    projection = json.loads(out_json.read_text())["projection"]
    assert projection["usd_per_gpu_hour"] == 1.0 and projection["gpus"] == 4


def test_broken_inputs_are_named(metrics: Path, tmp_path: Path, capsys) -> None:
    (metrics / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        load_stage_records(metrics)
    (metrics / "broken.json").write_text(json.dumps({"stage": "broken"}))
    with pytest.raises(ValueError, match=r"broken\.json: not a cost record of this version: "
                                         r"missing status"):
        load_stage_records(metrics)
    assert main(["cost", "--metrics-dir", str(tmp_path / "none")]) == 2
    assert "none: no such directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="COUNTxGPU"):
        parse_fleet("eight A100s")
    with pytest.raises(ValueError, match="unknown GPU"):
        parse_fleet("8xV100")
    assert parse_fleet("16xH200") == (16, "H200")
