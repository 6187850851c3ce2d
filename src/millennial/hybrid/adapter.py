"""Adapter-only artifacts: TRM weights plus the identity of the base they were trained on.

Like a PEFT adapter, the artifact is small and useless without its base, so it records the base's
name, revision and a content hash of its weights, and refuses to load onto a different base.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from millennial.atomic import atomic_dir
from millennial.fingerprint import tensors_sha256
from millennial.hybrid.config import TRMConfig
from millennial.hybrid.injection import base_named_parameters, inject, trm_named_parameters

WEIGHTS_FILE = "trm.safetensors"
CONFIG_FILE = "trm_config.json"


def base_weights_sha256(model: nn.Module) -> str:
    """Content hash of the base (non-TRM) parameters: `state_sha256` in the base's provenance."""
    return tensors_sha256(base_named_parameters(model))


def artifact_files(directory: Path, config: str, weights: str, kind: str) -> tuple[Path, Path]:
    """The config and weights files of an adapter-style artifact; a missing one names itself."""
    paths = directory / config, directory / weights
    for required in paths:
        if not required.is_file():
            raise FileNotFoundError(f"{required}: not found; is {directory} {kind} directory?")
    return paths


def save_trm(
    model: nn.Module,
    path: str | Path,
    *,
    base_name: str | None = None,
    base_revision: str | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
    base_sha256: str | None = None,
) -> Path:
    """Write `trm.safetensors` and `trm_config.json` to directory `path`, atomically.

    A model sharded across processes (FSDP) holds no whole tensors: pass its gathered TRM
    `tensors` and the hash of its base weights (`base_sha256`) instead of reading them here.
    """
    config = getattr(model, "trm_config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no TRM blocks: nothing to save")
    identity = {
        "name": base_name or getattr(model.config, "name_or_path", None),
        "revision": base_revision,
        "weights_sha256": base_sha256 or base_weights_sha256(model),
    }
    own = trm_named_parameters(model)
    if tensors is None:
        tensors = own
    elif set(tensors) != set(own):
        raise ValueError(f"tensors must be exactly the TRM parameters; differ on "
                         f"{sorted(set(tensors) ^ set(own))[:5]}")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        meta = {"base": identity, "trm": config.to_dict()}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(path)


def load_trm(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Inject (if needed) and load a saved TRM adapter into `model`.

    A base whose weights hash differently from the one the adapter was trained on is an error,
    unless `strict=False`, which loads anyway with a warning.
    """
    config_path, weights_path = artifact_files(Path(path), CONFIG_FILE, WEIGHTS_FILE,
                                               "a TRM adapter")
    meta = json.loads(config_path.read_text(encoding="utf-8"))
    config = TRMConfig.from_dict(meta["trm"])
    current = getattr(model, "trm_config", None)
    if current is None:
        inject(model, config)
    elif current != config:
        raise ValueError(
            f"{config_path}: adapter config {config} differs from the model's {current}"
        )
    expected = meta["base"]["weights_sha256"]
    actual = base_weights_sha256(model)
    if actual != expected:
        message = (
            f"{config_path}: adapter was trained on base {meta['base']['name']!r} with weights "
            f"sha256 {expected}, but this model's base weights hash to {actual}"
        )
        if strict:
            raise ValueError(message + "; pass strict=False to load it anyway")
        warnings.warn(message, stacklevel=2)
    saved = load_file(str(weights_path))
    own = trm_named_parameters(model)
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise ValueError(f"{weights_path}: missing tensors {missing}, unexpected {unexpected}")
    for name, tensor in saved.items():
        if own[name].shape != tensor.shape:
            raise ValueError(
                f"{weights_path}: {name} has shape {tuple(tensor.shape)}, "
                f"model expects {tuple(own[name].shape)}"
            )
        own[name].data.copy_(tensor)
    return model
