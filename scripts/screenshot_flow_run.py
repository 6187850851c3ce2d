"""Browser check: a headless-Chromium screenshot of a pipeline flow run in the Prefect UI.

With a Prefect server up (`make ui`) and at least one run of the `millennial-pipeline` flow done,
this asks the Prefect API for the latest run (or `--flow-run-id`), opens
`<ui>/runs/flow-run/<id>` in headless Chromium and saves a PNG (default
reports/prefect_flow_run.png), then the run's pipeline-summary artifact (evaluation, cost and
lineage) beside it (`<out>_summary.png`). It proves the UI renders the run, its task runs, logs and
artifacts offline.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "apt-get install -y chromium   (Debian/Ubuntu; as root)"
FLOW_NAME = "millennial-pipeline"
SUMMARY_KEY = "pipeline-summary"  # flows/pipeline.py publishes it at the end of every run
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                  "--virtual-time-budget=10000")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def latest_flow_run(flow_name: str) -> UUID:
    """The most recent run of `flow_name` on the server PREFECT_API_URL points at."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            sort=FlowRunSort.START_TIME_DESC, limit=1,
        )
    if not runs:
        raise SystemExit(f"no run of flow {flow_name!r} on {PREFECT_API_URL.value()}: run the "
                         "pipeline flow once first")
    return runs[0].id


def summary_artifact(run_id: UUID) -> UUID:
    """The pipeline-summary artifact the run published (a run that failed early has none)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            key=ArtifactFilterKey(any_=[SUMMARY_KEY])))
    if not found:
        raise SystemExit(f"flow run {run_id} published no {SUMMARY_KEY!r} artifact: did it "
                         "finish?")
    return found[-1].id


def ui_url() -> str:
    """The UI base URL: PREFECT_UI_URL, else the API URL without its /api suffix."""
    configured = PREFECT_UI_URL.value()
    if configured:
        return str(configured).rstrip("/")
    api = PREFECT_API_URL.value()
    if not api:
        raise SystemExit("PREFECT_API_URL is not set: start `make ui` and export "
                         "PREFECT_API_URL=http://127.0.0.1:4200/api")
    return str(api).rstrip("/").removesuffix("/api")


def check_ui_api(ui: str) -> None:
    """Fail early if the UI would call another API than ours (a blank page with an error toast).

    The server tells its UI where the API is via /ui-settings; on a port other than 4200 it
    needs PREFECT_UI_API_URL set when the server starts.
    """
    api = str(PREFECT_API_URL.value()).rstrip("/")
    try:
        served = httpx.get(f"{ui}/ui-settings", timeout=10).raise_for_status().json()["api_url"]
    except httpx.HTTPError as err:
        raise SystemExit(f"no Prefect UI at {ui}: {err} (start it with `make ui`)") from err
    if str(served).rstrip("/") != api:
        raise SystemExit(f"the UI at {ui} calls the API at {served}, not {api}: restart the "
                         f"server with PREFECT_UI_API_URL={api}")


def screenshot(browser: str, url: str, out: Path, timeout_s: float) -> None:
    """Chromium's own --screenshot; a throwaway profile so no user state leaks in or out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="millennial-chromium-") as profile:
        command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                   f"--screenshot={out.resolve()}", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed (exit {done.returncode}):\n{done.stderr[-2000:]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flow-run-id", type=UUID, help="default: the latest pipeline run")
    parser.add_argument("--flow-name", default=FLOW_NAME)
    parser.add_argument("--out", type=Path, default=Path("reports/prefect_flow_run.png"))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for chromium")
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(f"screenshot_flow_run: no Chromium found ({', '.join(BROWSERS)}); install it "
              f"with:\n  {INSTALL_HINT}", file=sys.stderr)
        return 2
    ui = ui_url()
    check_ui_api(ui)
    run_id = args.flow_run_id or latest_flow_run(args.flow_name)
    pages = {f"{ui}/runs/flow-run/{run_id}": args.out,
             f"{ui}/artifacts/artifact/{summary_artifact(run_id)}":
                 args.out.with_name(f"{args.out.stem}_summary{args.out.suffix}")}
    for url, out in pages.items():
        screenshot(browser, url, out, args.timeout)
        print(f"{url} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
