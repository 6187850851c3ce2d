"""DVC stages `evaluate_<arm>`: score one arm -> metrics/eval/<arm>.json, data/eval/<arm>.parquet.

`python -m stages.evaluate_arm phase1`. One stage per arm (base, phase1, phase2, lora,
llama_pro), so retraining one arm re-scores only that arm. Exit 2: params or an input missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from millennial.cost.meter import Meter, write_skipped
from millennial.errors import run_reporting
from millennial.evaluate.arms import phase2_trained
from millennial.evaluate.compare import write_arm
from millennial.evaluate.config import ARMS, ArmPaths, EvalConfig, EvalPaths
from millennial.evaluate.scoring import evaluate_arm
from millennial.params import load_params, section

PATHS = EvalPaths(
    arms=ArmPaths(base=Path("models/base"), phase1=Path("models/phase1"),
                  phase2=Path("models/phase2"), lora=Path("models/lora"),
                  llama_pro=Path("models/llama_pro")),
    documents=Path("data/curated/documents"),
)
SUMMARIES = Path("metrics/eval")
EXAMPLES = Path("data/eval")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate_arm", description=__doc__)
    parser.add_argument("arm", choices=ARMS)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--cost-dir", type=Path, default=Path("metrics/cost"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    stage = f"evaluate_{args.arm}"

    def work() -> int:
        params = load_params(args.params)
        config = EvalConfig.from_params(section(params, "evaluate", args.params), str(args.params))
        if args.arm == "phase2" and not phase2_trained(PATHS.arms.phase2):
            write_arm(None, args.arm, SUMMARIES / f"{args.arm}.json",
                      EXAMPLES / f"{args.arm}.parquet")
            write_skipped(stage, "phase 2 was not trained (phase2.enabled: false)",
                          out_dir=args.cost_dir)
            print(f"{stage}: phase 2 was not trained (skipped)", file=sys.stderr)
            return 0
        with Meter(stage, params_path=args.params, out_dir=args.cost_dir) as meter:
            evaluation = evaluate_arm(args.arm, PATHS, config, work=meter,
                                      where=str(args.params))
            write_arm(evaluation, args.arm, SUMMARIES / f"{args.arm}.json",
                      EXAMPLES / f"{args.arm}.parquet")
        return 0

    return run_reporting(stage, work)


if __name__ == "__main__":
    raise SystemExit(main())
