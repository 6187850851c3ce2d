"""DVC stage `report`: cost, evaluation and lineage -> reports/summary.md (and the cost report).

Exit 0: written. Exit 2: params or an input missing, or `millennial.lineage` unavailable.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from millennial.atomic import write_text
from millennial.cost.report import write_cost_report
from millennial.evaluate import EvalConfig
from millennial.evaluate.report import read_provenance, render_summary
from millennial.params import ParamsError, load_params, section

STAGE = "report"
LINEAGE_OF = "models/phase1"


class LineageUnavailable(RuntimeError):
    """`millennial.lineage` is not in this checkout, so the summary cannot state lineage."""


def _lineage_section(artifact: str = LINEAGE_OF, repo_root: Path = Path(".")) -> str:
    """The lineage of `artifact` as Markdown, from `millennial.lineage` (imported only here, so
    the rest of the report does not depend on it; its absence is an error, never a silent gap)."""
    try:
        lineage = importlib.import_module("millennial.lineage")
    except ModuleNotFoundError as err:
        if err.name != "millennial.lineage":
            raise
        raise LineageUnavailable(
            "reports/summary.md needs millennial.lineage (lineage(), render_markdown()), which "
            "this checkout does not have"
        ) from err
    return lineage.render_markdown(lineage.lineage(artifact, repo_root=repo_root))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        config = EvalConfig.from_params(section(params, "evaluate", args.params), str(args.params))
        evaluation = Path("metrics/eval.json")
        if not evaluation.is_file():
            raise FileNotFoundError(f"{evaluation}: not found; run the evaluate stage first")
        result = json.loads(evaluation.read_text(encoding="utf-8"))
        provenance = read_provenance(Path("models/base"), Path("metrics/validation.json"),
                                     Path("data/validated/receipt.json"), params,
                                     Path("data/curated/documents"))
        lineage_markdown = _lineage_section()
        write_cost_report(metrics_dir=Path("metrics/cost"), json_out=Path("metrics/cost.json"),
                          md_out=Path("reports/cost.md"), fleet=config.fleet, mfu=config.mfu,
                          params_path=args.params)
        cost = json.loads(Path("metrics/cost.json").read_text(encoding="utf-8"))
        write_text(Path("reports/summary.md"),
                   render_summary(result, cost, provenance, lineage_markdown))
    except (ParamsError, FileNotFoundError, LineageUnavailable) as err:
        print(f"{STAGE}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
