"""Cost accounting: plan what a run will cost, meter what each stage did cost, report both.

`planner` (parameters, FLOPs, memory, hours, dollars from a config), `meter` (a context manager
each stage runs in), `report` (`millennial cost`), `audit` (the seed document's claims).
Submodules are imported on first use so `millennial --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "meter": "millennial.cost.meter",
    "Meter": "millennial.cost.meter",
    "plan": "millennial.cost.planner",
    "Plan": "millennial.cost.planner",
    "model_shape": "millennial.cost.planner",
    "write_cost_report": "millennial.cost.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'millennial.cost' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
