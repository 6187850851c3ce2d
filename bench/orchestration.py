"""Orchestration overhead on a fully cached pipeline: `dvc repro` vs the Prefect flow.

A scratch git+DVC copy of this repo with the tiny profile is run once to fill the cache; then a
no-op `dvc repro` and a Prefect flow run over the same pipeline are timed (the flow starts its
own ephemeral API server, whose start-up is reported separately as the flow's fixed cost).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._base import REPO
from millennial.profiles import apply_profile
from millennial.workspace import copy_project


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{args} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - start


def run() -> str:
    root = Path(tempfile.mkdtemp(prefix="millennial-orchestration-"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(root / ".prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    try:
        copy_project(REPO, root)
        apply_profile(root / "profiles/tiny.yaml", root / "params.yaml")
        _run(["git", "init", "-q"], root, env)
        _run(["git", "add", "-A"], root, env)
        _run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid",
              "commit", "-qm", "bench"], root, env)
        dvc = [sys.executable, "-m", "dvc"]
        first = _run([*dvc, "repro"], root, env)
        noop = min(_run([*dvc, "repro"], root, env) for _ in range(3))
        status = min(_run([*dvc, "status"], root, env) for _ in range(3))
        flow = _run([sys.executable, str(root / "flows/pipeline.py"), "--repo", str(root)],
                    root, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return "\n".join([
        "## Orchestration overhead on a fully cached pipeline",
        "",
        f"Tiny profile in a scratch copy; the first `dvc repro` (all stages) took {first:.0f} s.",
        "",
        "| command | seconds | vs no-op `dvc repro` |",
        "|---|---|---|",
        f"| `dvc status` | {status:.1f} | {status / noop:.2f} |",
        f"| no-op `dvc repro` | {noop:.1f} | 1.00 |",
        f"| Prefect flow (ephemeral server start + one task per stage) | {flow:.1f} "
        f"| {flow / noop:.2f} |",
    ])


if __name__ == "__main__":
    print(run())
