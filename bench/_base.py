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
