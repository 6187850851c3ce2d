"""The GPU benchmarks run where there is no GPU too: they say so, and the DDP-vs-FSDP script
works end to end on two CPU processes (its smoke mode), so it is ready when a GPU is lent."""

from __future__ import annotations

import pytest
import torch

from bench import gpu_mfu, gpu_parallel


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the real sections")
def test_without_a_gpu_the_sections_say_they_did_not_run() -> None:
    for module in (gpu_mfu, gpu_parallel):
        assert "Not run: no CUDA device" in module.run()


def test_ddp_and_fsdp_workers_run_on_two_cpu_processes() -> None:
    report = gpu_parallel.run(smoke=True)
    rows = [line for line in report.splitlines() if line.startswith(("| ddp", "| fsdp"))]
    assert [row.split("|")[1].strip() for row in rows] == ["ddp", "fsdp"]
    assert "2 processes; CPU smoke run" in report
