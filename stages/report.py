"""DVC stage `report`: cost, evaluation and lineage -> reports/summary.md (and the cost report).

Exit 0: written. Exit 2: params or an input missing, or models/phase1 not traceable in dvc.lock.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from millennial.atomic import write_text
from millennial.cost.report import write_cost_report
from millennial.errors import run_reporting
from millennial.evaluate.config import EvalConfig
from millennial.evaluate.report import demote_headings, read_provenance, render_summary
from millennial.lineage import lineage, render_markdown
from millennial.params import load_params, section
from millennial.receipt import RECEIPT

STAGE = "report"
LINEAGE_OF = "models/phase1"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    def work() -> int:
        params = load_params(args.params)
        config = EvalConfig.from_params(section(params, "evaluate", args.params), str(args.params))
        evaluation = Path("metrics/eval.json")
        if not evaluation.is_file():
            raise FileNotFoundError(f"{evaluation}: not found; run the evaluate stage first")
        result = json.loads(evaluation.read_text(encoding="utf-8"))
        provenance = read_provenance(Path("models/base"), Path("metrics/validation.json"),
                                     RECEIPT, params,
                                     Path("data/curated/documents"))
        lineage_markdown = demote_headings(render_markdown(lineage(LINEAGE_OF)))
        write_cost_report(metrics_dir=Path("metrics/cost"), json_out=Path("metrics/cost.json"),
                          md_out=Path("reports/cost.md"), fleet=config.fleet, mfu=config.mfu,
                          params_path=args.params)
        cost = json.loads(Path("metrics/cost.json").read_text(encoding="utf-8"))
        write_text(Path("reports/summary.md"),
                   render_summary(result, cost, provenance, lineage_markdown))
        return 0

    return run_reporting(STAGE, work)


if __name__ == "__main__":
    raise SystemExit(main())
