"""Whole trainable tensors and optimizer state, however the model is wrapped (plain, DDP, FSDP2).

Checkpoints and saved artifacts need full tensors keyed by parameter name. Under FSDP every
parameter is a shard, so gathering goes through torch.distributed.checkpoint's state-dict API.
`gather_*` are collectives: every process calls them, and only the main process receives the
tensors (CPU copies); the others get empty dicts. Loading is not a collective in that sense: each
process passes the whole state it read from disk and keeps its own shard.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

_GATHER_TRAINABLE = StateDictOptions(full_state_dict=True, cpu_offload=True,
                                     ignore_frozen_params=True)
_GATHER_ALL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True, strict=False)


def _unwrap(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def gather_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the parameters that require grad (tied frozen aliases left out)."""
    names = trainable_names(model)
    return {k: v for k, v in get_model_state_dict(model, options=_GATHER_TRAINABLE).items()
            if k in names}


def gather_all(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of every parameter and persistent buffer (to save a whole model)."""
    return get_model_state_dict(model, options=_GATHER_ALL)


def gather_training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Trainable weights and the optimizer state keyed by parameter name (not position)."""
    names = trainable_names(model)
    weights, optimizer_state = get_state_dict(model, _unwrap(optimizer),
                                              options=_GATHER_TRAINABLE)
    return {k: v for k, v in weights.items() if k in names}, optimizer_state


def load_training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Inverse of `gather_training_state`; every trainable parameter must be in `weights`.

    torch distributes the given state in place (tensors become shards): `optimizer_state` is
    consumed, `weights` is copied first so callers may keep using it.
    """
    missing = trainable_names(model) - set(weights)
    if missing:
        raise KeyError(f"checkpoint lacks trainable parameters: {sorted(missing)[:5]}")
    set_state_dict(model, _unwrap(optimizer), model_state_dict=dict(weights),
                   optim_state_dict=optimizer_state, options=_LOAD)


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Whole trainable tensors into the (maybe sharded) parameters; each process keeps its own."""
    missing = trainable_names(model) - set(weights)
    if missing:
        raise KeyError(f"state lacks trainable parameters: {sorted(missing)[:5]}")
    set_model_state_dict(model, dict(weights), options=_LOAD)
