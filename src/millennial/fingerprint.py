"""Content fingerprints of model weights, so adapters and reports can name their base exactly."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of `tensors`, in sorted-name order.

    Independent of file layout and sharding: the same weights give the same digest whether they
    come from one safetensors file, several shards, or a model in memory.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parameters_sha256(model: torch.nn.Module) -> str:
    """The digest of a model's parameters, tied weights once: what adapters name their base by."""
    return tensors_sha256(dict(model.named_parameters()))
