"""What each pipeline stage did cost: time, device-hours, energy, dollars, CO2e and MFU.

Every stage runs inside `meter(...)`; on exit it writes `metrics/cost/<stage>.json` atomically
when the stage succeeded, and `metrics/cost/failed/<stage>.json` (with its error) when it
failed, then re-raises. The failure record is nobody's DVC output or dep: the last good record
survives it (dvc.yaml marks cost records `persist`, so DVC does not delete them before a run),
and fixing the fault reruns only what changed. Energy comes from the best source available,
always labelled:

1. `nvml`: NVIDIA's cumulative board-energy counters (GPU only: CPU, RAM and host excluded).
2. `rapl`: the CPU package energy counters under /sys/class/powercap (whole socket, every
   process on it; unreadable without privileges on most machines).
3. `codecarbon`: codecarbon's OfflineEmissionsTracker. Without RAPL or NVML this is itself an
   estimate: CPU power from a TDP table times load, RAM power from a per-GB rule.
4. `tdp-estimate`: device-seconds x an assumed power (GPU: 0.8 x TDP; CPU: busy core-seconds x
   10 W). A guess, labelled as one.

A stage supplies the work it did with `m.add(tokens=..., flops=...)` (model FLOPs from the
planner's formulas for what actually ran), which gives achieved FLOP/s and MFU against the
device peak (for the CPU, a matmul peak measured once and cached).
"""

from __future__ import annotations

import logging
import math
import os
import re
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Protocol

from millennial.cost.hardware import (
    CPU,
    CPU_USD_PER_CORE_HOUR,
    CPU_WATTS_PER_CORE,
    GPUS,
    cpu_cores,
    cpu_peak_flops,
    gpu_kind_from_nvml_name,
)
from millennial.cost.planner import GRID_KG_CO2E_PER_KWH, POWER_UTILISATION, default_mfu
from millennial.cost.record import (
    CarriedForward,
    ComponentTimings,
    CostRecord,
    Planned,
    PlannedWork,
    now,
)
from millennial.params import Options, load_params

ENERGY_METHODS = ("nvml", "rapl", "codecarbon", "tdp")
RAPL_ROOT = Path("/sys/class/powercap")
_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
FAILED_DIR = "failed"
_JOULES_PER_KWH = 3.6e6
CPU_PLANNED_MFU = 0.3  # assumed where params give none: the reference run measured 0.29-0.45


# --------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class CostParams:
    """The `cost:` section of params.yaml (every key optional)."""

    usd_per_device_hour: dict[str, float] = field(default_factory=dict)
    grid_kg_co2e_per_kwh: float = GRID_KG_CO2E_PER_KWH
    country_iso_code: str = "USA"
    pue: float = 1.0
    planned_mfu: dict[str, float] = field(default_factory=dict)
    source: str = "defaults"


def load_cost_params(path: str | Path | None) -> CostParams:
    """Read `cost:` from a params file; no file or no section means the stated defaults."""
    if path is None or not Path(path).is_file():
        return CostParams(source=f"defaults ({path or 'no params file'} not found)")
    section = load_params(path).get("cost")
    if section is None:
        return CostParams(source=f"defaults ({path} has no cost: section)")
    options = Options(section, "cost", path)
    options.only("usd_per_device_hour", "grid_kg_co2e_per_kwh", "country_iso_code", "pue",
                 "planned_mfu")
    prices = options.child("usd_per_device_hour") if "usd_per_device_hour" in section else None
    mfus = options.child("planned_mfu") if "planned_mfu" in section else None
    country = options.text("country_iso_code", "USA")
    if len(country) != 3:
        raise options.error("country_iso_code", f"must be a 3-letter code, got {country!r}")
    return CostParams(
        usd_per_device_hour={} if prices is None else {
            str(kind): prices.number(kind, high=math.inf) for kind in prices.raw},
        grid_kg_co2e_per_kwh=options.number("grid_kg_co2e_per_kwh", GRID_KG_CO2E_PER_KWH,
                                            high=math.inf),
        country_iso_code=country,
        pue=options.number("pue", 1.0, low=1.0, high=math.inf),
        planned_mfu={} if mfus is None else {
            str(kind): mfus.number(kind, low=1e-6, high=1.0) for kind in mfus.raw},
        source=f"{path} (cost:)",
    )


def planned_mfu(devices: Devices, params: CostParams) -> tuple[float, str]:
    """The MFU a stage's plan assumes on `devices`, and where it came from."""
    if devices.kind in params.planned_mfu:
        return params.planned_mfu[devices.kind], f"{params.source} planned_mfu"
    if devices.kind == CPU:
        return CPU_PLANNED_MFU, "assumed CPU figure (set cost.planned_mfu.cpu)"
    return default_mfu(devices.count), "planner default (reference.md s3)"


def price_for(kind: str, params: CostParams) -> tuple[float | None, str]:
    """USD per device-hour (cpu: per core-hour) and where the figure came from."""
    if kind in params.usd_per_device_hour:
        return params.usd_per_device_hour[kind], params.source
    if kind == CPU:
        return CPU_USD_PER_CORE_HOUR, "hardware table default (assumed)"
    if kind in GPUS:
        return GPUS[kind].usd_per_hour, "hardware table default (assumed)"
    return None, f"no price for {kind!r} in {params.source}"


# --------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Devices:
    kind: str  # a hardware table key, "cpu", or the raw NVML name of an unknown GPU
    name: str
    count: int
    nvml_indices: tuple[int, ...] = ()


def _import_nvml() -> ModuleType:
    import pynvml

    return pynvml


def _visible_indices(total: int) -> tuple[int, ...]:
    """Honour CUDA_VISIBLE_DEVICES when it lists integer indices (NVML ignores it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return tuple(range(total))
    items = [item.strip() for item in visible.split(",") if item.strip()]
    if all(item.isdigit() for item in items):
        return tuple(int(item) for item in items if int(item) < total)
    return tuple(range(total))  # UUIDs: count them all rather than guess


def detect_devices(requested: str = "auto", nvml: ModuleType | None = None) -> Devices:
    """GPUs NVML can see (auto), else this host's CPU. `requested='cpu'` forces the CPU."""
    cpu = Devices(CPU, f"{cpu_cores()}-core CPU", 1)
    if requested == CPU:
        return cpu
    if requested != "auto":
        raise ValueError(f"meter device must be 'auto' or 'cpu', got {requested!r}")
    try:
        nvml = nvml or _import_nvml()
    except ImportError:
        return cpu
    try:
        nvml.nvmlInit()  # fails without an NVIDIA driver
    except nvml.NVMLError:
        return cpu
    indices = _visible_indices(nvml.nvmlDeviceGetCount())
    if not indices:
        return cpu
    name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(indices[0]))
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Devices(gpu_kind_from_nvml_name(name) or name, name, len(indices), indices)


# --------------------------------------------------------------------------- energy


@dataclass(frozen=True)
class EnergyReading:
    kwh: float
    method: str
    detail: str


class EnergyProbe(Protocol):
    def start(self) -> None: ...

    def stop(self, wall_seconds: float, cpu_seconds: float) -> EnergyReading: ...


class Unavailable(RuntimeError):
    """This energy source cannot be used here (and the next one should be tried)."""


class NvmlProbe:
    """Difference of NVML's total-energy counters (millijoules since driver load)."""

    def __init__(self, devices: Devices, nvml: ModuleType | None = None) -> None:
        if devices.kind == CPU:
            raise Unavailable("no NVIDIA GPU in use")
        self.nvml = nvml or _import_nvml()
        self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in devices.nvml_indices]
        self.begin: list[int] = []

    def _read(self) -> list[int]:
        return [int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles]

    def start(self) -> None:
        try:
            self.begin = self._read()
        except self.nvml.NVMLError as err:  # e.g. NotSupported before Volta
            raise Unavailable(f"NVML energy counter: {err}") from err

    def stop(self, wall_seconds: float, cpu_seconds: float) -> EnergyReading:
        try:
            end = self._read()
        except self.nvml.NVMLError as err:
            raise Unavailable(f"NVML energy counter: {err}") from err
        millijoules = sum(e - b for b, e in zip(self.begin, end, strict=True))
        return EnergyReading(millijoules / 1000 / _JOULES_PER_KWH, "nvml",
                             f"NVML board energy of {len(self.handles)} GPU(s); CPU, RAM and "
                             "host not included")


class RaplProbe:
    """Difference of the RAPL package counters (microjoules, wrapping at max_energy_range)."""

    def __init__(self, root: Path = RAPL_ROOT) -> None:
        self.domains = sorted(
            path for path in root.glob("intel-rapl:*")
            if path.name.count(":") == 1 and (path / "energy_uj").is_file()
        ) if root.is_dir() else []
        if not self.domains:
            raise Unavailable(f"no RAPL package domains under {root}")
        self.begin: list[int] = []

    def _read(self) -> list[int]:
        try:
            return [int((d / "energy_uj").read_text().strip()) for d in self.domains]
        except OSError as err:
            raise Unavailable(f"RAPL counters unreadable: {err}") from err

    def start(self) -> None:
        self.begin = self._read()

    def stop(self, wall_seconds: float, cpu_seconds: float) -> EnergyReading:
        total = 0
        for domain, begin, end in zip(self.domains, self.begin, self._read(), strict=True):
            if end < begin:  # the counter wrapped
                end += int((domain / "max_energy_range_uj").read_text().strip())
            total += end - begin
        return EnergyReading(total / 1e6 / _JOULES_PER_KWH, "rapl",
                             f"RAPL energy of {len(self.domains)} CPU package(s), whole socket "
                             "(every process on it); GPU and RAM not included")


class CodecarbonProbe:
    """codecarbon's offline tracker (never the online one: no network), with no output.

    The tracker insists that its `output_dir` exists, but with no output methods it writes
    nothing there: the system temp dir serves. A directory of our own would outlive every stage
    killed before `stop` (an OOM kill, a cancelled run)."""

    def __init__(self, country_iso_code: str) -> None:
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError as err:
            raise Unavailable(f"codecarbon not installed: {err}") from err
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code, output_methods=[],
            output_dir=tempfile.gettempdir(), log_level="error", tracking_mode="process",
            allow_multiple_runs=True,
        )

    def start(self) -> None:
        self.tracker.start()

    def stop(self, wall_seconds: float, cpu_seconds: float) -> EnergyReading:
        self.tracker.stop()
        data = self.tracker.final_emissions_data
        return EnergyReading(
            float(data.energy_consumed), "codecarbon",
            f"codecarbon {data.codecarbon_version} offline, tracking_mode=process: CPU "
            f"{data.cpu_power:.1f} W, RAM {data.ram_power:.1f} W, GPU {data.gpu_power:.1f} W; "
            "without RAPL/NVML these powers are codecarbon's estimates (TDP table x load, "
            "W per GB of RAM), not measurements",
        )


class TdpProbe:
    """Last resort: assumed power times device time."""

    def __init__(self, devices: Devices) -> None:
        self.devices = devices

    def start(self) -> None:
        return None

    def stop(self, wall_seconds: float, cpu_seconds: float) -> EnergyReading:
        if self.devices.kind in GPUS:
            watts = GPUS[self.devices.kind].tdp_w * POWER_UTILISATION
            joules = wall_seconds * self.devices.count * watts
            detail = (f"estimate: {self.devices.count} x {watts:g} W ({POWER_UTILISATION:g} x "
                      "TDP) x wall time; nothing measured")
        else:
            joules = cpu_seconds * CPU_WATTS_PER_CORE
            detail = (f"estimate: {cpu_seconds:.1f} busy core-seconds x {CPU_WATTS_PER_CORE:g} W "
                      "per core (assumed); nothing measured")
        return EnergyReading(joules / _JOULES_PER_KWH, "tdp-estimate", detail)


def start_energy_probe(
    devices: Devices, methods: Sequence[str], params: CostParams
) -> tuple[EnergyProbe, list[str]]:
    """Start the first available method in `methods`; also return why earlier ones were not."""
    skipped: list[str] = []
    for method in methods:
        if method not in ENERGY_METHODS:
            raise ValueError(f"unknown energy method {method!r}; known: {ENERGY_METHODS}")
        try:
            probe: EnergyProbe
            if method == "nvml":
                probe = NvmlProbe(devices)
            elif method == "rapl":
                probe = RaplProbe()
            elif method == "codecarbon":
                probe = CodecarbonProbe(params.country_iso_code)
            else:
                probe = TdpProbe(devices)
            probe.start()
            return probe, skipped
        except Unavailable as err:
            skipped.append(f"{method}: {err}")
    return TdpProbe(devices), skipped


# --------------------------------------------------------------------------- the meter


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _status_bytes(name: str) -> int | None:
    """A memory figure of this process from /proc/self/status (`VmRSS`, `VmHWM`; Linux)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def _rss_bytes() -> int | None:
    """This process's resident memory now (None where /proc is missing)."""
    return _status_bytes("VmRSS")


def _torch_cuda() -> Any | None:
    """torch.cuda where the stage has imported torch and a GPU is there (never imports torch)."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def peak_memory(devices: Devices, start_rss: int | None) -> tuple[int | None, int | None, str]:
    """(peak bytes, start bytes, method): the GPU allocator's peak on this process's device, or
    the CPU process's peak RSS (`ru_maxrss`) with the RSS it started from."""
    cuda = _torch_cuda()
    if devices.kind != CPU and cuda is not None:
        return (int(cuda.max_memory_allocated()), 0,
                "torch.cuda.max_memory_allocated (this process's device; tensors only)")
    peak = _status_bytes("VmHWM")
    if peak is None:
        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return (peak, start_rss,
            "peak RSS of the stage process (VmHWM, ru_maxrss), and its RSS at the start")


def build_record(
    *,
    stage: str,
    error: BaseException | None,
    started_at: str,
    wall_seconds: float,
    cpu_seconds: float,
    cores: int,
    devices: Devices,
    energy: EnergyReading,
    energy_skipped: list[str],
    params: CostParams,
    tokens: int,
    flops: float,
    peak_flops: float | None,
    peak_source: str,
    planned: Planned | None,
    memory: tuple[int | None, int | None, str] = (None, None, "not measured"),
    carried_forward: CarriedForward | None = None,
    components: ComponentTimings | None = None,
) -> CostRecord:
    """The cost record of one stage run (pure: every measurement is an argument)."""
    is_cpu = devices.kind == CPU
    device_hours = wall_seconds * devices.count / 3600.0
    core_hours = wall_seconds * cores / 3600.0
    price, price_source = price_for(devices.kind, params)
    billed_hours = core_hours if is_cpu else device_hours
    achieved = flops / wall_seconds if wall_seconds > 0 else 0.0
    peak_bytes, start_bytes, memory_method = memory
    return CostRecord(
        stage=stage,
        status="failed" if error is not None else "ok",
        error=f"{type(error).__name__}: {error}" if error is not None else None,
        reason=None,
        started_at=started_at,
        finished_at=now(),
        host=socket.gethostname(),
        wall_seconds=wall_seconds,
        cpu_seconds=cpu_seconds,
        cpu_cores=cores,
        cpu_core_hours=core_hours,
        device_kind=devices.kind,
        device_name=devices.name,
        device_count=devices.count,
        device_hours=device_hours,
        gpu_hours=0.0 if is_cpu else device_hours,
        energy_kwh=energy.kwh,
        energy_method=energy.method,
        energy_detail=energy.detail,
        energy_methods_skipped=energy_skipped,
        pue=params.pue,
        grid_kg_co2e_per_kwh=params.grid_kg_co2e_per_kwh,
        co2e_kg=energy.kwh * params.pue * params.grid_kg_co2e_per_kwh,
        usd_per_device_hour=price,
        usd_billing="per CPU core-hour (cores x wall)" if is_cpu else "per device-hour",
        price_source=price_source,
        usd=billed_hours * price if price is not None else None,
        tokens=tokens,
        flops=flops,
        achieved_flops_per_s=achieved,
        peak_flops_per_s=peak_flops,
        peak_source=peak_source,
        mfu=achieved / peak_flops if peak_flops and flops else None,
        peak_memory_bytes=peak_bytes,
        start_memory_bytes=start_bytes,
        memory_method=memory_method,
        planned=planned,
        carried_forward=carried_forward,
        components=components,
    )


class Meter:
    """Context manager recording one stage's cost to `<out_dir>/<stage>.json`, or to
    `<out_dir>/failed/<stage>.json` when the stage fails."""

    def __init__(
        self,
        stage: str,
        *,
        params_path: str | Path | None = "params.yaml",
        out_dir: str | Path = "metrics/cost",
        device: str = "auto",
        energy_methods: Sequence[str] = ENERGY_METHODS,
        cache_dir: str | Path | None = None,
        unmodelled: str | None = None,
    ) -> None:
        """`unmodelled` says why a stage has no plan beyond "no model FLOPs" (data and
        report stages): its record then says so instead of carrying no plan at all."""
        if not _STAGE_NAME.fullmatch(stage):
            raise ValueError(f"stage name {stage!r}: use letters, digits, '_', '.', '-'")
        self.stage = stage
        self.path = Path(out_dir) / f"{stage}.json"
        self.failed_path = failure_path(out_dir, stage)
        self.params = load_cost_params(params_path)  # fail before the work, not after it
        self.device = device
        self.energy_methods = tuple(energy_methods)
        self.cache_dir = cache_dir
        self.tokens = 0
        self.flops = 0.0
        self.planned: Planned | None = None
        self.carried_forward: CarriedForward | None = None
        self.components: ComponentTimings | None = None
        self.record: CostRecord | None = None
        self.unmodelled = unmodelled

    def add(self, *, tokens: int = 0, flops: float = 0.0) -> None:
        """Count work done: tokens processed and the model FLOPs they took."""
        if tokens < 0 or flops < 0:
            raise ValueError(f"meter.add: tokens and flops must be >= 0, got {tokens}, {flops}")
        self.tokens += int(tokens)
        self.flops += float(flops)

    def plan(self, work: PlannedWork) -> None:
        """Record the planner's prediction for this stage before its work runs; the time is
        the planned FLOPs at this device's peak and the planned MFU (`cost.planned_mfu`)."""
        peak = self._peak()[0] if work.flops else None
        mfu, source = planned_mfu(self.devices, self.params)
        self.planned = Planned(
            tokens=work.tokens, flops=work.flops, mfu=mfu, mfu_source=source,
            wall_seconds=work.flops / (peak * mfu) if peak else None,
            peak_memory_bytes=work.peak_memory_bytes, memory_breakdown=work.memory_breakdown,
            basis=work.basis, precision=work.precision, sharding=work.sharding)

    def carry_forward(self, earlier: CarriedForward | None) -> None:
        """Work earlier invocations of a resumed run did (their cost is in their own record)."""
        self.carried_forward = earlier

    def time_components(self, timings: ComponentTimings) -> None:
        """What phase 1 measured of its own parts, for `millennial plan --calibrate`."""
        self.components = timings

    def __enter__(self) -> Meter:
        self.devices = detect_devices(self.device)
        self.cores = cpu_cores()
        self.started_at = now()
        self.probe, self.skipped = start_energy_probe(
            self.devices, self.energy_methods, self.params
        )
        self.start_rss = _rss_bytes()
        cuda = _torch_cuda()
        if cuda is not None and self.devices.kind != CPU:
            cuda.reset_peak_memory_stats()
        if self.unmodelled is not None:
            self.plan(PlannedWork(tokens=0, flops=0.0, peak_memory_bytes=None,
                                  memory_breakdown={},
                                  basis=f"no model FLOPs ({self.unmodelled}); time and memory "
                                        "not modelled"))
        self.cpu_start = _cpu_seconds()
        self.wall_start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        wall = time.perf_counter() - self.wall_start
        cpu = _cpu_seconds() - self.cpu_start
        try:
            energy = self.probe.stop(wall, cpu)
        except Unavailable as err:  # a counter vanished mid-stage: still record the cost
            self.skipped.append(f"stopped: {err}")
            energy = TdpProbe(self.devices).stop(wall, cpu)
        peak, peak_source = self._peak() if self.flops else (None, "no FLOPs reported")
        self.record = build_record(
            stage=self.stage, error=exc, started_at=self.started_at, wall_seconds=wall,
            cpu_seconds=cpu, cores=self.cores, devices=self.devices, energy=energy,
            energy_skipped=self.skipped, params=self.params, tokens=self.tokens,
            flops=self.flops, peak_flops=peak, peak_source=peak_source, planned=self.planned,
            memory=peak_memory(self.devices, self.start_rss),
            carried_forward=self.carried_forward, components=self.components,
        )
        if exc is None:
            self.record.write(self.path)
            self.failed_path.unlink(missing_ok=True)  # fixed: the old failure is history
        else:
            self.record.write(self.failed_path)
        return False  # never swallow the stage's exception

    def _peak(self) -> tuple[float | None, str]:
        if self.devices.kind == CPU:
            return cpu_peak_flops(cache_dir=self.cache_dir), "cpu matmul probe (cached)"
        if self.devices.kind in GPUS:
            gpu = GPUS[self.devices.kind]
            return gpu.peak_flops * self.devices.count, f"{self.devices.count} x {gpu.source}"
        return None, f"no peak known for {self.devices.kind!r}"


def failure_path(out_dir: str | Path, stage: str) -> Path:
    """Where a failed run of `stage` records its cost and error (beside the last good record)."""
    return Path(out_dir) / FAILED_DIR / f"{stage}.json"


def write_skipped(stage: str, reason: str, out_dir: str | Path = "metrics/cost") -> CostRecord:
    """Record a stage that ran but did no work (e.g. phase 2 disabled): zero cost, by design."""
    record = CostRecord.skipped(stage, reason)
    record.write(Path(out_dir) / f"{stage}.json")
    return record


def meter(stage: str, **options: Any) -> Meter:
    """`with meter("train_phase1") as m: ...; m.add(tokens=n, flops=f)`."""
    return Meter(stage, **options)
