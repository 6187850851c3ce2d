"""Shared plumbing of the stage entries: params, the cost meter, metrics, exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from millennial.atomic import write_json
from millennial.cost.meter import Meter
from millennial.errors import USER_ERRORS
from millennial.hybrid import TRMConfig
from millennial.params import ParamsError, load_params, section
from millennial.receipt import RECEIPT
from millennial.train.arms import Paths


def run_stage(
    stage: str, argv: Sequence[str] | None,
    body: Callable[[dict[str, Any], Path], dict[str, Any]],
) -> int:
    """Load params, run `body` inside the cost meter, write `metrics/<stage>.json`.

    `body` returns the stage's metrics; its `tokens_this_run` and `flops` feed the meter. Under a
    multi-process launch only rank 0 meters and writes (the others would race for the files).
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        params = load_params(args.params)
        with Meter(stage, params_path=args.params) if main_process else nullcontext() as meter:
            metrics = body(params, args.params)
            if meter is not None:
                meter.add(tokens=metrics.get("tokens_this_run", 0),
                          flops=metrics.get("flops", 0.0))
    except USER_ERRORS as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        return 2
    if main_process:
        write_json(Path("metrics") / f"{stage}.json", metrics)
    return 0


def trm_config(params: dict[str, Any], source: Path) -> TRMConfig:
    """The `trm:` section as a TRMConfig; a bad value is a params error naming the file."""
    try:
        return TRMConfig.from_dict(section(params, "trm", source))
    except ParamsError:
        raise
    except ValueError as err:
        raise ParamsError(f"{source}: trm: {err}") from err


def training_paths(stage: str, out: str) -> Paths:
    """Where every training stage reads (base, curated blocks) and writes (model, run, dvclive)."""
    curated = Path("data/curated")
    return Paths(base=Path("models/base"), train_data=curated / "packed/train.parquet",
                 documents=curated / "documents", out=Path(out), run=Path("runs") / stage,
                 live=Path("dvclive") / stage, receipt=RECEIPT)
