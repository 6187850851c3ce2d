"""Shared plumbing of the training stage entries: paths, params, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from millennial.atomic import write_json
from millennial.hybrid import TRMConfig
from millennial.params import ParamsError, load_params, section


def training_args(stage: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    return parser.parse_args(argv)


def run_stage(
    stage: str, argv: Sequence[str] | None, body: Callable[[dict[str, Any]], dict[str, Any]]
) -> int:
    """Load params, run `body`, write `metrics/<stage>.json`; user errors exit 2, no traceback."""
    args = training_args(stage, argv)
    try:
        params = load_params(args.params)
        metrics = body(params)
    except (ParamsError, FileNotFoundError) as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        return 2
    write_json(Path("metrics") / f"{stage}.json", metrics)
    return 0


def trm_config(params: dict[str, Any]) -> TRMConfig:
    """The `trm:` section as a TRMConfig; a bad value is a params error naming the section."""
    try:
        return TRMConfig.from_dict(section(params, "trm"))
    except ValueError as err:
        raise ParamsError(f"params.yaml: trm: {err}") from err
