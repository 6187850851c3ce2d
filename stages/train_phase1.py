"""DVC stage `train_phase1`: TRM blocks on the frozen base -> models/phase1 (adapter only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from millennial.cost.record import WorkLog
from millennial.params import section
from millennial.train.arms import run_phase1
from millennial.train.config import TrainConfig
from millennial.train.settings import Phase1Settings
from stages._common import run_stage, training_paths, trm_config

STAGE = "train_phase1"
PATHS = training_paths(STAGE, "models/phase1")


def body(params: dict[str, Any], source: Path, work: WorkLog | None) -> dict[str, Any]:
    settings = Phase1Settings.from_params(params.get("phase1"), source)
    return run_phase1(PATHS, trm_config(params, source), settings,
                      TrainConfig.from_params(section(params, "train", source), f"{source}:train"),
                      work=work, where=source)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
