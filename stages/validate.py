"""DVC stage `validate`: the Great Expectations gate over data/curated/documents.

Exit 0: all checks passed (receipt written). Exit 1: checks failed (metrics/validation.json
records which; no receipt). Exit 2: params or input missing or unusable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from millennial.cost.meter import Meter
from millennial.errors import run_reporting
from millennial.receipt import RECEIPT
from millennial.validate import validate_from_params

STAGE = "validate"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.validate", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--documents", type=Path, default=Path("data/curated/documents"))
    parser.add_argument("--packed", type=Path, default=Path("data/curated/packed"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/validation.json"))
    parser.add_argument("--receipt", type=Path, default=RECEIPT)
    parser.add_argument("--docs", type=Path, default=Path("reports/data_docs"))
    parser.add_argument("--cost-dir", type=Path, default=Path("metrics/cost"))
    args = parser.parse_args(argv)

    def work() -> int:
        with Meter(STAGE, params_path=args.params, out_dir=args.cost_dir,
                   unmodelled="data validation"):
            report = validate_from_params(args.params, args.documents, args.packed, args.metrics,
                                          args.receipt, args.docs)
        print(report.summary(), file=sys.stderr)
        if not report.success:
            print(f"validate: details in {args.metrics}; Data Docs in {args.docs}", file=sys.stderr)
            return 1
        return 0

    return run_reporting(STAGE, work)


if __name__ == "__main__":
    raise SystemExit(main())
