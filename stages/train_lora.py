"""DVC stage `train_lora`: the baseline users would pick instead -> models/lora (PEFT adapter).

LoRA on the same frozen base, rank matched to the TRM's trainable parameter count, same data and
the same token budget as phase 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from millennial.cost.record import WorkLog
from millennial.params import section
from millennial.train.arms import run_lora
from millennial.train.config import TrainConfig
from millennial.train.settings import LoraSettings
from stages._common import run_stage, training_paths, trm_config

STAGE = "train_lora"
PATHS = training_paths(STAGE, "models/lora")


def body(params: dict[str, Any], source: Path, work: WorkLog | None) -> dict[str, Any]:
    settings = LoraSettings.from_params(params.get("lora"), source)
    config = TrainConfig.from_params(section(params, "train", source), f"{source}:train")
    return run_lora(PATHS, trm_config(params, source), settings, config, work=work)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
