"""Accelerator table and the measured CPU peak: the denominators of every cost and MFU figure.

GPU peaks are dense BF16 tensor-core FLOP/s (no sparsity) from reference.md section 3 and the
vendors' datasheets (each row names its source); memory is what the driver reports, in GiB.
Prices are default rental list prices per device-hour; they are assumptions, overridable on the
command line and in params.yaml (`cost.usd_per_device_hour`). The CPU has no datasheet figure
that means anything for our kernels, so its peak is measured once with a matmul probe and cached.
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
    memory_gib: float  # what the driver reports (GiB, 2**30 bytes; marketing "80GB" is 80 GiB)
    tdp_w: float  # board power limit (cpu: busy cores x CPU_WATTS_PER_CORE)
    usd_per_hour: float  # default rental price per device-hour (cpu: the host, all cores)
    source: str


def _gpu(name: str, tflops: float, gib: float, watts: float, usd: float, source: str) -> Device:
    return Device(name, tflops * 1e12, gib, watts, usd, f"{source}; price assumed")


# Dense BF16 (no sparsity). PCIe and NVL cards have their own peaks and power limits; SXM
# figures do not transfer to them.
GPUS: dict[str, Device] = {device.name: device for device in (
    _gpu("A100-40GB", 312, 40.0, 400, 1.2, "reference.md s3 (A100 SXM4, 400 W)"),
    _gpu("A100-80GB", 312, 80.0, 400, 1.8, "reference.md s3 (A100 SXM4 80GB, 400 W)"),
    _gpu("A100-40GB-PCIe", 312, 40.0, 250, 1.0, "NVIDIA A100 datasheet (PCIe, 250 W)"),
    _gpu("A100-80GB-PCIe", 312, 80.0, 300, 1.5, "NVIDIA A100 datasheet (PCIe 80GB, 300 W)"),
    _gpu("H100", 989, 79.6, 700, 2.5, "reference.md s3 (H100 SXM5, 700 W, 81,559 MiB)"),
    _gpu("H100-PCIe", 756, 79.6, 350, 2.0, "NVIDIA H100 datasheet (PCIe, 350 W)"),
    _gpu("H100-NVL", 835, 93.6, 400, 2.3, "NVIDIA H100 NVL datasheet (94 GB, 350-400 W)"),
    _gpu("H800", 989, 79.6, 700, 2.0, "NVIDIA H800 SXM5 (H100 compute, 400 GB/s NVLink)"),
    _gpu("H200", 989, 140.4, 700, 3.5, "reference.md s3 (H200 SXM, 700 W, 143,771 MiB)"),
    _gpu("H200-NVL", 835, 140.4, 600, 3.0, "NVIDIA H200 NVL datasheet (600 W)"),
    _gpu("B200", 2250, 179.1, 1000, 5.0, "NVIDIA HGX B200 (2.25 PFLOP/s dense, 1,000 W, "
         "180 GB)"),
    _gpu("L40S", 362, 44.4, 350, 1.0, "NVIDIA L40S datasheet (48 GB GDDR6 with ECC, 350 W)"),
    _gpu("MI300X", 1307.4, 192.0, 750, 2.5, "AMD Instinct MI300X datasheet (192 GB, 750 W); "
         "not detected by the meter (NVML only)"),
)}

# Substrings an NVML device name must all contain (upper case), most specific first.
_NVML_NAMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("A100", "PCIE", "80GB"), "A100-80GB-PCIe"),
    (("A100", "PCIE"), "A100-40GB-PCIe"),
    (("A100", "80GB"), "A100-80GB"),
    (("A100",), "A100-40GB"),
    (("H200", "NVL"), "H200-NVL"),
    (("H200",), "H200"),
    (("H100", "NVL"), "H100-NVL"),
    (("H100", "PCIE"), "H100-PCIe"),
    (("H100",), "H100"),
    (("H800",), "H800"),
    (("B200",), "B200"),
    (("L40S",), "L40S"),
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
    for parts, key in _NVML_NAMES:
        if all(part in upper for part in parts):
            return key
    return None


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's socket count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


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
    """The host's matmul peak: the best of every probe on this (CPU model, core count), kept
    as JSON. Each call probes again (a fraction of a second) and keeps the higher figure, so a
    probe that ran while the machine was busy (which reads low, and would make every later MFU
    read high) is corrected by the next quiet one; `refresh` forgets the kept figure."""
    path = Path(cache_dir or cache_dir_default()) / "cpu_peak.json"
    key = f"{cpu_model_name()}|cores={cpu_cores()}"
    cached: dict[str, float] = {}
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            cached = {}  # a corrupt cache is re-measured and overwritten
    kept = cached.get(key)
    peak = measure_matmul_flops()
    if not refresh and isinstance(kept, int | float) and kept > peak:
        return float(kept)
    write_json(path, {**cached, key: peak})
    return peak


def cpu_device(*, cache_dir: str | Path | None = None) -> Device:
    cores = cpu_cores()
    return Device(
        CPU,
        cpu_peak_flops(cache_dir=cache_dir),
        host_memory_gib(),
        cores * CPU_WATTS_PER_CORE,
        cores * CPU_USD_PER_CORE_HOUR,
        f"this host: {cores} cores, FP32 matmul peak measured (cached); "
        f"{CPU_WATTS_PER_CORE:g} W per busy core and ${CPU_USD_PER_CORE_HOUR}/core-hour assumed",
    )


def with_price(device: Device, usd_per_hour: float) -> Device:
    return replace(device, usd_per_hour=usd_per_hour)
