"""The stage meter: complete records on success and failure, labelled energy, MFU, prices."""

import json
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest

from millennial.cost import hardware
from millennial.cost.meter import (
    CodecarbonProbe,
    CostParams,
    Devices,
    EnergyReading,
    NvmlProbe,
    RaplProbe,
    Unavailable,
    build_record,
    detect_devices,
    load_cost_params,
    meter,
)
from millennial.cost.record import ComponentTimings, CostRecord, PlannedWork
from millennial.params import ParamsError

RECORD_KEYS = {f.name for f in fields(CostRecord)}


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text("cost:\n  usd_per_device_hour: {cpu: 0.1, H100: 2.0}\n"
                    "  grid_kg_co2e_per_kwh: 0.5\n  country_iso_code: FRA\n"
                    "  planned_mfu: {cpu: 0.5}\n")
    return path


@pytest.fixture
def fake_peak(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """A CPU peak of 1e10 FLOP/s without running the probe; counts probe runs."""
    calls: list[int] = []

    def measure() -> float:
        calls.append(1)
        return 1e10

    monkeypatch.setattr(hardware, "measure_matmul_flops", measure)
    monkeypatch.setenv(hardware.CACHE_ENV, str(tmp_path / "cache"))
    return calls


def read(path: Path) -> dict:
    return json.loads(path.read_text())


TIMINGS = ComponentTimings(micro_batch_tokens=64, micro_batch_seconds=0.5, steps_timed=3,
                           trm_seconds=0.1, matmul_flops_per_s=1e9, layers=2,
                           base_flops_per_token=1e6, trm_flops_per_token=2e5)


def test_success_writes_a_complete_record(tmp_path: Path, params: Path, fake_peak) -> None:
    out = tmp_path / "metrics" / "cost"
    with meter("train_phase1", params_path=params, out_dir=out, device="cpu",
               energy_methods=("tdp",)) as m:
        sum(i * i for i in range(200_000))
        m.add(tokens=100, flops=2e8)
        m.add(tokens=28, flops=0.5e8)
        m.plan(PlannedWork(tokens=128, flops=2.5e8, peak_memory_bytes=1e6,
                           memory_breakdown={"total": 1e6 / 2**30}, basis="test"))
        m.time_components(TIMINGS)
    record = read(out / "train_phase1.json")
    assert set(record) == RECORD_KEYS
    assert record["status"] == "ok" and record["error"] is None
    assert record["tokens"] == 128 and record["flops"] == 2.5e8
    assert record["device_kind"] == "cpu" and record["gpu_hours"] == 0.0
    assert record["cpu_core_hours"] == pytest.approx(
        record["wall_seconds"] * record["cpu_cores"] / 3600
    )
    assert record["usd"] == pytest.approx(record["cpu_core_hours"] * 0.1)
    assert record["price_source"].endswith("(cost:)")
    assert record["energy_method"] == "tdp-estimate" and "estimate" in record["energy_detail"]
    assert record["co2e_kg"] == pytest.approx(record["energy_kwh"] * 0.5)
    assert record["mfu"] == pytest.approx(2.5e8 / record["wall_seconds"] / 1e10)
    planned = record["planned"]
    assert planned["flops"] == 2.5e8 and planned["tokens"] == 128
    assert planned["mfu"] == 0.5 and "planned_mfu" in planned["mfu_source"]
    assert planned["wall_seconds"] == pytest.approx(2.5e8 / (1e10 * 0.5))
    assert planned["peak_memory_bytes"] == 1e6 and planned["basis"] == "test"
    # memory is measured: the peak RSS, above the RSS the stage started from
    assert record["peak_memory_bytes"] >= record["start_memory_bytes"] > 0
    assert "ru_maxrss" in record["memory_method"]
    assert m.record is not None and m.record.to_json() == record
    assert CostRecord.read(out / "train_phase1.json") == m.record
    assert m.record.components == TIMINGS  # what `plan --calibrate` learns from


def test_failure_is_recorded_and_re_raised(tmp_path: Path, params: Path) -> None:
    with pytest.raises(RuntimeError, match="disk on fire"):  # noqa: SIM117
        with meter("validate", params_path=params, out_dir=tmp_path, device="cpu",
                   energy_methods=("tdp",)) as m:
            m.add(tokens=5)
            raise RuntimeError("disk on fire")
    assert not (tmp_path / "validate.json").exists()  # the last good record is not replaced
    record = read(tmp_path / "failed/validate.json")
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: disk on fire"
    assert record["tokens"] == 5 and record["wall_seconds"] >= 0
    assert set(record) == RECORD_KEYS


def test_writes_are_atomic(tmp_path: Path, params: Path) -> None:
    out = tmp_path / "out"
    for _ in range(2):
        with meter("curate", params_path=params, out_dir=out, device="cpu",
                   energy_methods=("tdp",)):
            pass
    assert [p.name for p in out.iterdir()] == ["curate.json"]


def test_default_energy_source_is_labelled(tmp_path: Path) -> None:
    """On a machine without NVML or RAPL this is codecarbon's offline tracker."""
    with meter("eval", params_path=None, out_dir=tmp_path, device="cpu"):
        sum(range(100_000))
    record = read(tmp_path / "eval.json")
    assert record["energy_method"] in ("rapl", "codecarbon")
    assert record["energy_kwh"] >= 0 and record["energy_detail"]
    assert any(s.startswith("nvml:") for s in record["energy_methods_skipped"])
    if record["energy_method"] == "codecarbon":
        assert "estimates" in record["energy_detail"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]  # no tracker output


def test_codecarbon_leaves_nothing_in_the_temp_dir(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """Not even while it runs: a stage killed before `stop` must not strand a directory."""
    pytest.importorskip("codecarbon")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    probe = CodecarbonProbe("USA")
    probe.start()
    assert list(tmp_path.iterdir()) == []
    reading = probe.stop(wall_seconds=0.1, cpu_seconds=0.1)
    assert reading.method == "codecarbon" and reading.kwh >= 0
    assert list(tmp_path.iterdir()) == []


def test_rapl_counters_with_wraparound(tmp_path: Path) -> None:
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (tmp_path / "intel-rapl:0:0").mkdir()  # a subdomain: not a package, not counted
    (domain / "max_energy_range_uj").write_text("10000000\n")
    (domain / "energy_uj").write_text("9000000\n")
    probe = RaplProbe(tmp_path)
    probe.start()
    (domain / "energy_uj").write_text("2600000\n")  # wrapped: 1.0 J + 2.6 J
    reading = probe.stop(1.0, 1.0)
    assert reading.method == "rapl"
    assert reading.kwh == pytest.approx(3.6 / 3.6e6)
    with pytest.raises(Unavailable):
        RaplProbe(tmp_path / "missing")


class FakeNVML:
    class NVMLError(Exception):
        pass

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.energy = {0: 1_000_000, 1: 5_000_000}  # millijoules

    def nvmlInit(self) -> None:
        if self.fail:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        self.energy[handle] += 1_800_000  # 1.8 kJ per read
        return self.energy[handle]


def test_nvml_devices_and_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNVML()
    devices = detect_devices(nvml=nvml)
    assert devices == Devices("H100", "NVIDIA H100 80GB HBM3", 2, (0, 1))
    probe = NvmlProbe(devices, nvml)
    probe.start()
    reading = probe.stop(1.0, 1.0)
    assert reading.method == "nvml" and "CPU, RAM and host not included" in reading.detail
    assert reading.kwh == pytest.approx(2 * 1800 / 3.6e6)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert detect_devices(nvml=nvml).count == 1
    assert detect_devices(nvml=FakeNVML(fail=True)).kind == "cpu"


def test_mfu_and_gpu_hours_from_supplied_flops() -> None:
    record = build_record(
        stage="train", error=None, started_at="t0", wall_seconds=3600.0, cpu_seconds=10.0,
        cores=16, devices=Devices("H100", "NVIDIA H100", 2, (0, 1)),
        energy=EnergyReading(1.0, "nvml", "x"), energy_skipped=[],
        params=CostParams(usd_per_device_hour={"H100": 2.0}, grid_kg_co2e_per_kwh=0.3),
        tokens=1000, flops=2 * 989e12 * 3600 * 0.25, peak_flops=2 * 989e12,
        peak_source="table", planned=None,
    )
    assert record.mfu == pytest.approx(0.25)
    assert record.gpu_hours == record.device_hours == pytest.approx(2.0)
    assert record.usd == pytest.approx(4.0)
    assert record.co2e_kg == pytest.approx(0.3)


def test_cpu_peak_keeps_the_best_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe on a busy machine reads low; the kept peak is the best one seen, so a busy
    probe can neither stick (the next quiet one raises it) nor lower it."""
    probes = iter([5e9, 1.2e10, 4e9, 3e9])  # busy, quiet, busy, busy (then refresh)
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda: next(probes))
    cache = tmp_path / "peak"
    assert hardware.cpu_peak_flops(cache_dir=cache) == 5e9
    assert hardware.cpu_peak_flops(cache_dir=cache) == 1.2e10
    assert hardware.cpu_peak_flops(cache_dir=cache) == 1.2e10
    assert json.loads((cache / "cpu_peak.json").read_text()) == {
        f"{hardware.cpu_model_name()}|cores={hardware.cpu_cores()}": 1.2e10}
    assert hardware.cpu_peak_flops(cache_dir=cache, refresh=True) == 3e9


def test_the_real_matmul_probe_measures_something() -> None:
    assert 1e8 < hardware.measure_matmul_flops(size=256, repeats=2) < 1e13


def test_cost_params(tmp_path: Path, params: Path) -> None:
    loaded = load_cost_params(params)
    assert loaded.usd_per_device_hour == {"cpu": 0.1, "H100": 2.0}
    assert loaded.country_iso_code == "FRA" and loaded.grid_kg_co2e_per_kwh == 0.5
    assert "not found" in load_cost_params(tmp_path / "none.yaml").source
    bad = tmp_path / "bad.yaml"
    bad.write_text("cost:\n  usd_per_device_hour: {cpu: cheap}\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml: 'cost\.usd_per_device_hour\.cpu'"):
        meter("x", params_path=bad)
    for section, match in [
        ("{usd_per_devce_hour: {cpu: 1}}", r"'cost' has unknown key\(s\) usd_per_devce_hour"),
        ("{usd_per_device_hour: {cpu: -1}}", r"'cost\.usd_per_device_hour\.cpu' must be a "
                                             r"finite number in \[0\.0, inf\], got -1"),
        ("{pue: .nan}", r"'cost\.pue' must be a finite number in \[1\.0, inf\], got nan"),
        ("{grid_kg_co2e_per_kwh: -0.4}", r"'cost\.grid_kg_co2e_per_kwh' must be a finite"),
        ("{country_iso_code: FR}", r"'cost\.country_iso_code' must be a 3-letter code"),
    ]:
        bad.write_text(f"cost: {section}\n")
        with pytest.raises(ParamsError, match=rf"bad\.yaml: {match}"):
            load_cost_params(bad)
    with pytest.raises(ValueError, match="stage name"):
        meter("../escape", params_path=None)


def test_a_counter_lost_mid_stage_still_records(tmp_path: Path, monkeypatch) -> None:
    from millennial.cost import meter as meter_module

    domain = tmp_path / "rapl" / "intel-rapl:0"
    domain.mkdir(parents=True)
    (domain / "energy_uj").write_text("5\n")
    monkeypatch.setattr(meter_module, "RaplProbe", lambda: RaplProbe(tmp_path / "rapl"))
    with meter("train", params_path=None, out_dir=tmp_path, device="cpu",
               energy_methods=("rapl",)):
        (domain / "energy_uj").unlink()
    record = read(tmp_path / "train.json")
    assert record["status"] == "ok" and record["energy_method"] == "tdp-estimate"
    assert record["energy_methods_skipped"][-1].startswith("stopped: RAPL")
