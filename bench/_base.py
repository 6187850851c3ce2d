"""The default base model for benchmarks: `models/base` if the pipeline made it, else a copy
prepared once from the packaged SmolLM2 into `bench/.cache/base` (so `make bench` works on a
fresh clone)."""

from __future__ import annotations

from pathlib import Path

from millennial.params import load_params

REPO = Path(__file__).resolve().parents[1]


def default_base_dir() -> Path:
    pipeline_base = REPO / "models/base"
    if (pipeline_base / "provenance.json").is_file():
        return pipeline_base
    cached = REPO / "bench/.cache/base"
    if not (cached / "provenance.json").is_file():
        from millennial.base import prepare_base

        prepare_base(load_params(REPO / "params.yaml")["base"], cached)
    return cached


def process_memory(name: str) -> int:
    """This process's `VmRSS` or `VmHWM` in bytes (Linux). VmHWM, unlike `ru_maxrss`, starts
    afresh at exec: a worker started by a large parent does not inherit the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {name}: the benchmark needs Linux")
