"""DVC stage `train_llama_pro`: the second baseline -> models/llama_pro (new blocks only).

LLaMA Pro block expansion (arXiv:2401.02415) on the same frozen base: interleaved copies of base
blocks with zeroed output projections, only they train, same data and token budget as phase 1;
`llama_pro.blocks: auto` takes the block count closest to the TRM's trainable size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from millennial.cost.record import WorkLog
from millennial.params import section
from millennial.train.arms import run_llama_pro
from millennial.train.config import TrainConfig
from millennial.train.settings import LlamaProSettings
from stages._common import run_stage, training_paths, trm_config

STAGE = "train_llama_pro"
PATHS = training_paths(STAGE, "models/llama_pro")


def body(params: dict[str, Any], source: Path, work: WorkLog | None) -> dict[str, Any]:
    settings = LlamaProSettings.from_params(params.get("llama_pro"), source)
    config = TrainConfig.from_params(section(params, "train", source), f"{source}:train")
    return run_llama_pro(PATHS, trm_config(params, source), settings, config, work=work,
                         where=source)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(STAGE, argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
