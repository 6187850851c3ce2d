"""Orchestration overhead on a fully cached pipeline: `dvc repro` vs the Prefect flow.

A scratch git+DVC copy of this repo with the tiny profile is run once to fill the cache. Then,
side by side: a no-op `dvc repro`; the Prefect flow against a Prefect server that is already
running (a user's `make ui`, or a work pool's server); and the flow on its own, which starts an
ephemeral API server first (`python flows/pipeline.py` with no PREFECT_API_URL). The flow asks
DVC once which stages are stale, so on a cached pipeline it starts no stage subprocess.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench._base import REPO
from millennial.profiles import apply_profile
from millennial.workspace import copy_project

REPEATS = 3


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{args} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """`prefect server start` (API and UI), waited for until /api/health answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
         str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("prefect server did not answer /api/health within 180 s")


def run() -> str:
    root = Path(tempfile.mkdtemp(prefix="millennial-orchestration-"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(root / ".prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    env.pop("PREFECT_API_URL", None)
    server = None
    try:
        copy_project(REPO, root)
        apply_profile(root / "profiles/tiny.yaml", root / "params.yaml")
        _run(["git", "init", "-q"], root, env)
        _run(["git", "add", "-A"], root, env)
        _run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid",
              "commit", "-qm", "bench"], root, env)
        dvc = [sys.executable, "-m", "dvc"]
        flow = [sys.executable, str(root / "flows/pipeline.py"), "--repo", str(root)]
        first = _run([*dvc, "repro"], root, env)
        noop = statistics.median(_run([*dvc, "repro"], root, env) for _ in range(REPEATS))
        status = statistics.median(_run([*dvc, "status"], root, env) for _ in range(REPEATS))
        ephemeral = statistics.median(_run(flow, root, env) for _ in range(REPEATS))
        port = _free_port()
        server_env = {**env, "PREFECT_HOME": str(root / ".prefect-server")}
        started = time.perf_counter()
        server = _start_server(server_env, port)
        server_start = time.perf_counter() - started
        served = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        _run(flow, root, served)  # the server's first flow registers it and its tasks
        against_server = statistics.median(_run(flow, root, served) for _ in range(REPEATS))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    return "\n".join([
        "## Orchestration overhead on a fully cached pipeline",
        "",
        f"Tiny profile in a scratch copy; the first `dvc repro` (all stages) took {first:.0f} s. "
        f"Median of {REPEATS} runs each; a running `prefect server start` took "
        f"{server_start:.1f} s to answer.",
        "",
        "| command | seconds | vs no-op `dvc repro` |",
        "|---|---|---|",
        f"| `dvc status` | {status:.1f} | {status / noop:.2f} |",
        f"| no-op `dvc repro` | {noop:.1f} | 1.00 |",
        f"| Prefect flow against a running server | {against_server:.1f} "
        f"| {against_server / noop:.2f} |",
        f"| Prefect flow, ephemeral server started by the flow | {ephemeral:.1f} "
        f"| {ephemeral / noop:.2f} |",
    ])


if __name__ == "__main__":
    print(run())
