"""The hybrid model: TRM blocks injected into a frozen Hugging Face causal LM.

Names resolve lazily (PEP 562): `TRMConfig` alone needs no torch, so planning stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TRMConfig": "millennial.hybrid.config",
    "TESTED_MODEL_TYPES": "millennial.hybrid.injection",
    "deep_supervision": "millennial.hybrid.injection",
    "freeze_base": "millennial.hybrid.injection",
    "inject": "millennial.hybrid.injection",
    "remove_trm": "millennial.hybrid.injection",
    "trm_disabled": "millennial.hybrid.injection",
    "trm_parameter_count": "millennial.hybrid.injection",
    "load_trm": "millennial.hybrid.adapter",
    "save_trm": "millennial.hybrid.adapter",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
