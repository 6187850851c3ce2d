"""DVC stage `train_phase2`: the whole hybrid from phase 1 -> models/phase2 (or a skip marker).

Disabled by default (`phase2.enabled: false`): the stage then finishes at once, writes
`models/phase2/skipped.json`, copies no weights and records a zero-cost, `skipped` cost record.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from millennial.atomic import atomic_dir, write_json
from millennial.cost.meter import write_skipped
from millennial.cost.record import WorkLog
from millennial.errors import run_reporting
from millennial.hybrid.adapter import PHASE2_SKIPPED_FILE
from millennial.params import load_params, section
from millennial.train.arms import run_phase2
from millennial.train.config import TrainConfig
from millennial.train.settings import Phase2Config
from stages._common import run_stage, training_paths

STAGE = "train_phase2"
PHASE1 = Path("models/phase1")
PATHS = training_paths(STAGE, "models/phase2")


def body(params: dict[str, Any], source: Path, work: WorkLog | None) -> dict[str, Any]:
    phase2 = Phase2Config.from_params(params.get("phase2"), source)
    config = TrainConfig.from_params(section(params, "train", source), f"{source}:train")
    return run_phase2(PATHS, PHASE1, phase2, config, work=work)


def skip(reason: str) -> None:
    with atomic_dir(PATHS.out) as tmp:
        marker = {"skipped": True, "reason": reason}
        (tmp / PHASE2_SKIPPED_FILE).write_text(json.dumps(marker) + "\n")
    write_skipped(STAGE, reason)
    write_json(Path("metrics") / f"{STAGE}.json", {"skipped": True, "tokens": 0})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    known, _ = parser.parse_known_args(argv)

    def work() -> int:
        params = load_params(known.params)
        enabled = Phase2Config.from_params(params.get("phase2"), known.params).enabled
        if not enabled:
            skip("phase2.enabled is false")
            return 0
        return run_stage(STAGE, argv, body)

    return run_reporting(STAGE, work)


if __name__ == "__main__":
    raise SystemExit(main())
