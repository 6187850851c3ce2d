"""The hybrid model: TRM blocks injected into a frozen Hugging Face causal LM."""

from millennial.hybrid.adapter import load_trm, save_trm
from millennial.hybrid.config import TRMConfig
from millennial.hybrid.inject import (
    SUPPORTED_MODEL_TYPES,
    freeze_base,
    inject,
    trm_disabled,
    trm_parameter_count,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "TRMConfig",
    "freeze_base",
    "inject",
    "load_trm",
    "save_trm",
    "trm_disabled",
    "trm_parameter_count",
]
