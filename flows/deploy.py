"""`make serve`: a local scheduled deployment of the pipeline flow, served by this process.

`flow.serve` needs no work pool or worker: this process polls the Prefect API and runs each
scheduled (or UI-triggered) run itself, in this checkout. For the A100 fleet use the work-pool
deployment in prefect.yaml instead (`prefect deploy --all`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from flows.pipeline import pipeline

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NAME = "millennial-local"
DEFAULT_CRON = "0 2 * * *"  # nightly; DVC makes an unchanged pipeline a quick no-op


def serve(name: str = DEFAULT_NAME, cron: str = DEFAULT_CRON, repo_root: Path = ROOT) -> None:
    """Serve the flow on `cron` until interrupted; one run at a time (one DVC workspace)."""
    pipeline.serve(name=name, cron=cron, parameters={"repo_root": str(repo_root)},
                   global_limit=1, tags=["millennial", "local"],
                   description=f"DVC pipeline in {repo_root}, served by `make serve`")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__)
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--cron", default=DEFAULT_CRON, help="5-field cron, server time zone")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the DVC workspace to run in")
    args = parser.parse_args(argv)
    serve(args.name, args.cron, args.repo.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
