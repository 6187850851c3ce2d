"""The arms under comparison, loaded by name (what each cost to train: `compare`).

- `base`: the untouched base.
- `phase1`: the trained TRM adapter on the frozen base. Before it is scored, the hybrid with
  its blocks switched off is checked to give logits bit-identical to the base, so the blocks are
  the only difference between the two rows.
- `phase2`: the fully fine-tuned hybrid, when that stage trained (not skipped).
- `lora`: the baseline, merged into its base (how it would be served: no extra latency).
- `llama_pro`: the other baseline, the base with its trained interleaved block copies.

Each arm's decode speed is timed against a reference that computes what the base computes, in
the same process (`speed_reference`; why: `millennial.evaluate.speed`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from millennial.base import load_base
from millennial.errors import UserError
from millennial.evaluate.config import ARMS, RECURSIVE_ARMS, ArmPaths
from millennial.evaluate.speed import Switch
from millennial.hybrid import load_trm, trm_disabled
from millennial.hybrid.adapter import PHASE2_SKIPPED_FILE, load_hybrid, load_lora
from millennial.hybrid.expansion import load_expansion


class BaseArmMismatch(UserError):
    """The hybrid with TRM disabled does not reproduce the base: every comparison is void."""


def phase2_trained(directory: Path) -> bool:
    """Phase 2 is optional: its stage writes `skipped.json` instead of a model when disabled."""
    return directory.is_dir() and not (directory / PHASE2_SKIPPED_FILE).exists()


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


def load_arm(name: str, paths: ArmPaths, probe_ids: torch.Tensor,
             probe_mask: torch.Tensor) -> PreTrainedModel | None:
    """The arm's model in eval mode, or None for a phase 2 that was not trained."""
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}; arms: {', '.join(ARMS)}")
    if name == "phase2":
        return load_hybrid(paths.phase2).eval() if phase2_trained(paths.phase2) else None
    base, _ = load_base(paths.base)
    if name == "base":
        return base.eval()
    if name == "phase1":
        plain, _ = load_base(paths.base)
        hybrid = load_trm(base, paths.phase1).eval()
        check_base_arm(hybrid, plain.eval(), probe_ids, probe_mask)
        return hybrid
    if name == "lora":
        return load_lora(base, paths.lora).eval()
    return load_expansion(base, paths.llama_pro).eval()


@dataclass(frozen=True)
class SpeedReference:
    """The base's computation, timed interleaved with an arm in the arm's own stage."""

    model: PreTrainedModel  # the arm's own model object when switching it costs no memory
    switch: Switch
    description: str  # for the report


def speed_reference(name: str, model: PreTrainedModel, paths: ArmPaths) -> SpeedReference | None:
    """What arm `name` (loaded as `model`) is timed against; None for the base, which is it.

    A TRM arm switches its own blocks off: exactly the base's computation (checked bit-identical
    for phase 1), at no extra memory. LoRA (merged: the base's shapes) and LLaMA Pro have no such
    switch, so the base is loaded beside them.
    """
    if name == "base":
        return None
    if name in RECURSIVE_ARMS:
        return SpeedReference(model, lambda: trm_disabled(model),
                              "the same hybrid with its TRM blocks off")
    base = load_base(paths.base)[0].eval()
    return SpeedReference(base, lambda: nullcontext(base), "models/base, loaded beside it")
