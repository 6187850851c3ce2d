"""The arms under comparison, loaded one at a time, and what each cost to train.

- `base`: the phase-1 hybrid with its TRM blocks switched off. It must compute exactly what the
  untouched base computes; `check_base_arm` proves that on real inputs before anything is scored,
  so "base" in the tables is the base, not an approximation of it.
- `phase1`: the same model with its blocks on (trained TRM, frozen base).
- `phase2`: the fully fine-tuned hybrid, when that stage trained (not skipped).
- `lora`: the baseline, merged into its base (how it would be served: no extra latency).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from millennial.hybrid import load_trm, trm_disabled
from millennial.train.arms import load_base, load_hybrid

TRAINING_STAGES: dict[str, tuple[str, ...]] = {
    "base": (),
    "phase1": ("train_phase1",),
    "phase2": ("train_phase1", "train_phase2"),  # phase 2 starts from phase 1: both are paid
    "lora": ("train_lora",),
}


class BaseArmMismatch(RuntimeError):
    """The hybrid with TRM disabled does not reproduce the base: every comparison is void."""


@dataclass(frozen=True)
class ArmPaths:
    base: Path  # models/base
    phase1: Path  # models/phase1 (TRM adapter)
    phase2: Path  # models/phase2 (full hybrid, or skipped.json)
    lora: Path  # models/lora (PEFT adapter)


@dataclass(frozen=True)
class Arm:
    name: str
    model: PreTrainedModel
    recursive: bool  # has TRM blocks whose depth the sweep can vary
    trm_off: bool = False  # the base arm: the hybrid with its blocks disabled

    def active(self) -> AbstractContextManager[Any]:
        """Wrap every use of `model` for this arm in this context."""
        return trm_disabled(self.model) if self.trm_off else nullcontext(self.model)


def phase2_trained(directory: Path) -> bool:
    """Phase 2 is optional: its stage writes `skipped.json` instead of a model when disabled."""
    return directory.is_dir() and not (directory / "skipped.json").exists()


def load_phase1(paths: ArmPaths) -> PreTrainedModel:
    """The frozen base with the trained TRM adapter (refuses an adapter made for another base)."""
    model, _ = load_base(paths.base)
    return load_trm(model, paths.phase1).eval()


def load_lora(paths: ArmPaths) -> PreTrainedModel:
    model, _ = load_base(paths.base)
    return PeftModel.from_pretrained(model, paths.lora).merge_and_unload().eval()


def check_base_arm(hybrid: PreTrainedModel, base: PreTrainedModel, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> None:
    """Raise unless `hybrid` under `trm_disabled` gives logits identical to `base`'s."""
    with torch.inference_mode():
        expected = base(input_ids=input_ids, attention_mask=attention_mask).logits
        with trm_disabled(hybrid):
            actual = hybrid(input_ids=input_ids, attention_mask=attention_mask).logits
    if not torch.equal(expected, actual):
        difference = float((expected - actual).abs().max())
        raise BaseArmMismatch(
            f"the phase-1 hybrid with TRM disabled differs from models/base (max |logit "
            f"difference| {difference:.3g}): the base arm would not be the base"
        )


def iter_arms(paths: ArmPaths, probe_ids: torch.Tensor,
              probe_mask: torch.Tensor) -> Iterator[Arm]:
    """Yield base, phase1, phase2 (if trained), lora, each loaded only when the previous one is
    done with.

    The base arm is checked against a freshly loaded base on `probe_ids` first.
    """
    hybrid = load_phase1(paths)
    plain, _ = load_base(paths.base)
    check_base_arm(hybrid, plain.eval(), probe_ids, probe_mask)
    del plain
    yield Arm("base", hybrid, recursive=False, trm_off=True)
    yield Arm("phase1", hybrid, recursive=True)
    del hybrid
    if phase2_trained(paths.phase2):
        yield Arm("phase2", load_hybrid(paths.phase2).eval(), recursive=True)
    yield Arm("lora", load_lora(paths), recursive=False)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def training_record(arm: str, metrics_dir: Path) -> dict[str, Any]:
    """Trainable parameters (from the arm's last training stage) and the summed training cost
    of all its stages (from `metrics/cost/<stage>.json`); None where a record is missing."""
    stages = TRAINING_STAGES[arm]
    trainable: int | None = 0  # the base trains nothing
    if stages:
        training = _read_json(metrics_dir / f"{stages[-1]}.json")
        trainable = training.get("trainable_params") if training else None
    costs = {stage: _read_json(metrics_dir / "cost" / f"{stage}.json") for stage in stages}
    found = [cost for cost in costs.values() if cost is not None]
    complete = len(found) == len(stages)

    def total(key: str) -> float | None:
        values = [cost.get(key) for cost in found]
        if not complete or any(value is None for value in values):
            return None
        return float(sum(values))

    return {
        "trainable_params": trainable,
        "stages": list(stages),
        "usd": total("usd"),
        "device_hours": total("device_hours"),
        "gpu_hours": total("gpu_hours"),
        "energy_kwh": total("energy_kwh"),
        "missing": [stage for stage, cost in costs.items() if cost is None],
        "failed": [stage for stage, cost in costs.items()
                   if cost is not None and cost.get("status") == "failed"],
    }
