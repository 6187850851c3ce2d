"""DVC stage `prepare_base`: params.yaml `base` -> models/base/ (weights, tokenizer, provenance)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from millennial.base import prepare_base_from_params
from millennial.cost.meter import Meter
from millennial.errors import run_reporting

STAGE = "prepare_base"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.prepare_base", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("models/base"))
    parser.add_argument("--cost-dir", type=Path, default=Path("metrics/cost"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def work() -> int:
        with Meter(STAGE, params_path=args.params, out_dir=args.cost_dir,
                   unmodelled="copying the base"):
            prepare_base_from_params(args.params, args.out)
        return 0

    return run_reporting(STAGE, work)


if __name__ == "__main__":
    raise SystemExit(main())
