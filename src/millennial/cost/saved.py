"""Measure what autograd keeps for backward, per module: the ground truth of the memory model.

`measure_saved(model, run, parts)` runs `run()` (a forward pass) under
`torch.autograd.graph.saved_tensors_hooks` and attributes every tensor autograd saves to the
innermost of `parts` running at the time (decoder layers, TRM blocks; the rest is "other").
A storage is counted once, where it was first saved; parameters are weights, not activations,
and are left out. Tests and `bench/` hold the planner's per-layer formulas against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

OTHER = "other"


@dataclass
class SavedBytes:
    """Bytes autograd saved for backward, by part name (`other`: outside every part)."""

    by_part: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_part.values())

    def part(self, name: str) -> int:
        return self.by_part.get(name, 0)


def measure_saved(model: nn.Module, run: Callable[[], object],
                  parts: Mapping[str, nn.Module]) -> SavedBytes:
    """Saved-activation bytes of `run()` by part; each part's calls add to its entry."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    stack: list[str] = []
    result = SavedBytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in params and pointer not in seen and storage.nbytes():
            seen.add(pointer)
            name = stack[-1] if stack else OTHER
            result.by_part[name] = result.by_part.get(name, 0) + storage.nbytes()
        return tensor

    def enter(name: str) -> Callable[..., None]:
        return lambda *_: stack.append(name)

    def leave(*_: object) -> None:
        stack.pop()

    handles = []
    for name, module in parts.items():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            run()
    finally:
        for handle in handles:
            handle.remove()
    return result
