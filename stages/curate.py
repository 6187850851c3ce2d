"""DVC stage `curate`: params.yaml `curate` -> data/curated/, metrics/data.json, data card."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from millennial.cost.meter import Meter
from millennial.data.curate import curate_from_params
from millennial.errors import run_reporting

STAGE = "curate"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.curate", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("data/curated"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/data.json"))
    parser.add_argument("--card", type=Path, default=Path("reports/data_card.md"))
    parser.add_argument("--cost-dir", type=Path, default=Path("metrics/cost"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def work() -> int:
        with Meter(STAGE, params_path=args.params, out_dir=args.cost_dir,
                   unmodelled="data curation") as meter:
            result = curate_from_params(args.params, args.out, args.metrics, args.card)
            meter.add(tokens=result.metrics["tokens"]["total"])
        splits = result.manifest["splits"]
        print("curate: " + ", ".join(f"{split} {info['documents']} documents"
                                     for split, info in splits.items()), file=sys.stderr)
        return 0

    return run_reporting(STAGE, work)


if __name__ == "__main__":
    raise SystemExit(main())
