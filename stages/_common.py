"""Shared plumbing of the stage entries: params, the cost meter, metrics, exit codes."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from transformers import AutoConfig

from millennial.atomic import write_json
from millennial.cost.meter import Meter
from millennial.cost.record import WorkLog
from millennial.errors import run_reporting
from millennial.hybrid import TRMConfig
from millennial.hybrid.injection import resolve_config
from millennial.params import ParamsError, load_params, section
from millennial.receipt import RECEIPT
from millennial.train.arms import Paths

BASE = Path("models/base")  # what prepare_base wrote: every training stage's base


def run_stage(
    stage: str, argv: Sequence[str] | None,
    body: Callable[[dict[str, Any], Path, WorkLog | None], dict[str, Any]],
) -> int:
    """Load params, run `body` inside the cost meter, write `metrics/<stage>.json`.

    `body(params, source, meter)` tells the meter its plan before its work and returns the
    stage's metrics; their `tokens_this_run` and `flops` feed the meter. Under a multi-process
    launch only rank 0 meters (`meter` is None elsewhere) and writes: the others would race.
    """
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    main_process = int(os.environ.get("RANK", "0")) == 0

    def work() -> int:
        params = load_params(args.params)
        with Meter(stage, params_path=args.params) if main_process else nullcontext() as meter:
            metrics = body(params, args.params, meter)
            if meter is not None:
                meter.add(tokens=metrics.get("tokens_this_run", 0),
                          flops=metrics.get("flops", 0.0))
        if main_process:
            write_json(Path("metrics") / f"{stage}.json", metrics)
        return 0

    return run_reporting(stage, work)


def trm_config(params: dict[str, Any], source: Path, base: Path = BASE) -> TRMConfig:
    """The `trm:` section as a TRMConfig, checked against the prepared base where there is one
    (injection layers in range, a pretrained core copyable): before training starts, a bad
    value is a params error naming the file."""
    try:
        config = TRMConfig.from_dict(section(params, "trm", source))
        if (base / "config.json").is_file():
            model_config = AutoConfig.from_pretrained(base)
            resolve_config(model_config, config).resolve_layers(
                model_config.get_text_config().num_hidden_layers)
        return config
    except ParamsError:
        raise
    except ValueError as err:
        raise ParamsError(f"{source}: trm: {err}") from err


def training_paths(stage: str, out: str) -> Paths:
    """Where every training stage reads (base, curated blocks) and writes (model, run, dvclive)."""
    curated = Path("data/curated")
    return Paths(base=BASE, train_data=curated / "packed/train.parquet",
                 documents=curated / "documents", out=Path(out), run=Path("runs") / stage,
                 live=Path("dvclive") / stage, receipt=RECEIPT)
