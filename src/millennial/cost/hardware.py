"""Accelerator table and the measured CPU peak: the denominators of every cost and MFU figure.

GPU peaks are dense BF16 tensor-core FLOP/s (no sparsity) from reference.md section 3; the L40S
row is from NVIDIA's L40S datasheet. Prices are default rental list prices per device-hour; they
are assumptions, overridable on the command line and in params.yaml (`cost.usd_per_device_hour`).
The CPU has no datasheet figure that means anything for our kernels, so its peak is measured once
with a matmul probe and cached.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

from millennial.atomic import write_json

CPU = "cpu"
# Assumed average draw of one busy CPU core (a ~250-300 W server socket spread over 32 cores,
# plus uncore); only used when nothing measures CPU energy.
CPU_WATTS_PER_CORE = 10.0
# Assumed price of one CPU core-hour (cloud vCPU list prices are ~$0.02-0.05).
CPU_USD_PER_CORE_HOUR = 0.05
CACHE_ENV = "MILLENNIAL_CACHE_DIR"


@dataclass(frozen=True)
class Device:
    """One accelerator model. For `cpu`, peak, memory and power describe the whole host."""

    name: str
    peak_flops: float  # dense BF16 FLOP/s per device (cpu: measured FP32 matmul FLOP/s)
    memory_gb: float  # decimal GB
    tdp_w: float  # board power limit (cpu: busy cores x CPU_WATTS_PER_CORE)
    usd_per_hour: float  # default rental price per device-hour (cpu: the host, all cores)
    source: str


GPUS: dict[str, Device] = {
    "A100-40GB": Device("A100-40GB", 312e12, 40.0, 400.0, 1.2,
                        "reference.md s3 (A100 SXM 312 TFLOP/s, 400 W); price assumed"),
    "A100-80GB": Device("A100-80GB", 312e12, 80.0, 400.0, 1.8,
                        "reference.md s3; price: top of the $0.8-1.8/h neocloud range"),
    "H100": Device("H100", 989e12, 80.0, 700.0, 2.5,
                   "reference.md s3 (H100 SXM 989 TFLOP/s, 700 W); price assumed"),
    "H200": Device("H200", 989e12, 141.0, 700.0, 3.5,
                   "reference.md s3 (as H100 SXM with 141 GB); price assumed"),
    "L40S": Device("L40S", 362e12, 48.0, 350.0, 1.0,
                   "NVIDIA L40S datasheet (362 TFLOP/s dense BF16, 350 W); price assumed"),
}

# Substrings of NVML device names, most specific first.
_NVML_NAMES = (
    ("A100", "80GB", "A100-80GB"),
    ("A100", "", "A100-40GB"),
    ("H200", "", "H200"),
    ("H100", "", "H100"),
    ("L40S", "", "L40S"),
)


def device_names() -> list[str]:
    return [*GPUS, CPU]


def get_device(name: str, *, cache_dir: str | Path | None = None) -> Device:
    """Table entry for `name`; `cpu` is built from this host (its peak measured and cached)."""
    if name == CPU:
        return cpu_device(cache_dir=cache_dir)
    if name not in GPUS:
        raise ValueError(f"unknown device {name!r}; known: {', '.join(device_names())}")
    return GPUS[name]


def gpu_kind_from_nvml_name(nvml_name: str) -> str | None:
    """Map an NVML name such as 'NVIDIA A100-SXM4-80GB' to a table key, or None if unknown."""
    upper = nvml_name.upper()
    for model, variant, key in _NVML_NAMES:
        if model in upper and variant in upper:
            return key
    return None


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's socket count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def cpu_model_name() -> str:
    """The CPU model string (part of the peak cache key: another host must re-measure)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cache_dir_default() -> Path:
    """`$MILLENNIAL_CACHE_DIR`, else the platform's per-user cache directory."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("millennial"))


def measure_matmul_flops(size: int = 1024, repeats: int = 10) -> float:
    """Best FP32 matmul FLOP/s over repeated square products (all allowed threads).

    The best of several runs, so a busy machine lowers the figure less than an average would.
    """
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool and allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def cpu_peak_flops(*, cache_dir: str | Path | None = None, refresh: bool = False) -> float:
    """The host's matmul peak, measured once per (CPU model, core count) and cached as JSON."""
    path = Path(cache_dir or cache_dir_default()) / "cpu_peak.json"
    key = f"{cpu_model_name()}|cores={cpu_cores()}"
    cached: dict[str, float] = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            cached = {}  # a corrupt cache is re-measured and overwritten
    if not refresh and isinstance(cached.get(key), (int, float)):
        return float(cached[key])
    peak = measure_matmul_flops()
    write_json(path, {**cached, key: peak})
    return peak


def cpu_device(*, cache_dir: str | Path | None = None) -> Device:
    cores = cpu_cores()
    return Device(
        CPU,
        cpu_peak_flops(cache_dir=cache_dir),
        host_memory_gb(),
        cores * CPU_WATTS_PER_CORE,
        cores * CPU_USD_PER_CORE_HOUR,
        f"this host: {cores} cores, FP32 matmul peak measured (cached); "
        f"{CPU_WATTS_PER_CORE:g} W per busy core and ${CPU_USD_PER_CORE_HOUR}/core-hour assumed",
    )


def with_price(device: Device, usd_per_hour: float) -> Device:
    return replace(device, usd_per_hour=usd_per_hour)
