"""DVC stage `evaluate`: the scored arms side by side -> metrics/eval.json, reports, model card.

Reads what the `evaluate_<arm>` stages wrote (no model is loaded here), compares every TRM arm
with LoRA, LLaMA Pro and the base on the same examples, and writes the verdict first.
Exit 0: compared (the verdict is printed; a TRM loss is a result, not a failure). Exit 2: params
or an input missing or unusable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from millennial.cost.meter import Meter
from millennial.errors import run_reporting
from millennial.evaluate.compare import compare, read_arms, sweep_rows, training_record
from millennial.evaluate.config import EvalConfig
from millennial.evaluate.report import (
    EvalOutputs,
    demote_headings,
    read_provenance,
    verdict,
    write_eval_outputs,
)
from millennial.lineage import LineageError, lineage, render_markdown
from millennial.params import load_params, section
from millennial.receipt import RECEIPT

STAGE = "evaluate"
SUMMARIES = Path("metrics/eval")
EXAMPLES = Path("data/eval")
METRICS = Path("metrics")  # training records and metrics/cost/<stage>.json
DOCUMENTS = Path("data/curated/documents")
OUTPUTS = EvalOutputs(
    metrics=Path("metrics/eval.json"),
    sweep=Path("metrics/eval_sweep.json"),
    markdown=Path("reports/eval.md"),
    figures=Path("reports/figures"),
    model_card=Path("models/phase1/README.md"),
)
ADAPTER_WEIGHTS = "models/phase1/trm.safetensors"  # the card's own entry is not locked yet
VALIDATION = Path("metrics/validation.json")


def phase1_lineage() -> str:
    """The adapter's lineage for its model card; outside a DVC run the card says why it has none
    (under `dvc repro`, train_phase1's lock entry is written before this stage starts)."""
    try:
        info = lineage(ADAPTER_WEIGHTS)
        return demote_headings(demote_headings(render_markdown(info)))
    except LineageError as err:
        return f"Not available: {err}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--cost-dir", type=Path, default=Path("metrics/cost"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def work() -> int:
        params = load_params(args.params)
        config = EvalConfig.from_params(section(params, "evaluate", args.params), str(args.params))
        provenance = read_provenance(Path("models/base"), VALIDATION, RECEIPT, params,
                                     DOCUMENTS)
        with Meter(STAGE, params_path=args.params, out_dir=args.cost_dir,
                   unmodelled="comparing the arms' scores"):
            evaluations = read_arms(SUMMARIES, EXAMPLES)
            training = {name: training_record(name, METRICS) for name in evaluations}
            result = compare(evaluations, training, config.seed)
            write_eval_outputs(result, sweep_rows(evaluations), provenance, OUTPUTS,
                               phase1_lineage())
        print("\n".join(verdict(result)), file=sys.stderr)
        return 0

    return run_reporting(STAGE, work)


if __name__ == "__main__":
    raise SystemExit(main())
