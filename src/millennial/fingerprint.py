"""Content fingerprints of model weights, so adapters and reports can name their base exactly,
and of file trees (data, code). torch is imported where tensors are hashed, so the data stages
that hash files only do not pay its import."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PROVENANCE_FILE = "provenance.json"  # in a prepared base's directory: what it is, these digests


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of `tensors`, in sorted-name order.

    Independent of file layout and sharding: the same weights give the same digest whether they
    come from one safetensors file, several shards, or a model in memory.
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parameters_sha256(model: torch.nn.Module) -> str:
    """The digest of a model's parameters, tied weights once: what adapters name their base by."""
    return tensors_sha256(dict(model.named_parameters()))


def parameters_sha256s(model: torch.nn.Module) -> dict[str, str]:
    """`dtype_sha256s` of a model's parameters (tied weights once)."""
    return dtype_sha256s(dict(model.named_parameters()))


# Serving dtypes an adapter trained on a wider base accepts: the trained weights cast to these.
SERVING_DTYPES = ("bfloat16", "float16")
IDENTITY_RULE = (
    "sha256 of the base's parameters in the dtype they are loaded in, compared with the trained "
    "weights' own digest or with the digest of those weights cast (round to nearest, as "
    "transformers' `dtype=` loading does) to bfloat16 or float16"
)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weights_dtype(tensors: Mapping[str, torch.Tensor]) -> str:
    """The dtype of the floating-point weights (the first one's: models hold one)."""
    floating = [t.dtype for t in tensors.values() if t.is_floating_point()]
    return dtype_name(floating[0]) if floating else "none"


def dtype_sha256s(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Digest of `tensors` as they are, and cast to each serving dtype narrower than theirs:
    what an adapter trained on them accepts as the same base (IDENTITY_RULE)."""
    import torch

    own = weights_dtype(tensors)
    digests = {own: tensors_sha256(tensors)}
    if own == "float32":
        for name in SERVING_DTYPES:
            dtype = getattr(torch, name)
            digests[name] = tensors_sha256(
                {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()})
    return digests


def tree_sha256(directory: str | Path, pattern: str = "*") -> str:
    """sha256 over the names and bytes of every file under `directory` matching `pattern`,
    in sorted order."""
    digest = hashlib.sha256()
    directory = Path(directory)
    for path in sorted(p for p in directory.rglob(pattern) if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_sha256() -> str:
    """The library's source (every .py file of `millennial`): part of a training run's identity,
    so a code change trains afresh instead of resuming another code's checkpoints."""
    return tree_sha256(Path(__file__).parent, "*.py")
