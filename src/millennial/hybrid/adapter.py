"""Adapter-only artifacts: TRM weights plus the identity of the base they were trained on.

Like a PEFT adapter, the artifact is small and useless without its base, so it records the base's
name, revision and content hashes of its weights, and refuses to load onto a different base. The
same base served in half precision is the same base: an adapter trained on fp32 weights also
records their bf16 and fp16 casts (`fingerprint.IDENTITY_RULE`, written into the artifact).
The LoRA baseline's PEFT adapter gets the same record beside it (`save_lora`/`load_lora`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from millennial.atomic import atomic_dir, write_json
from millennial.errors import UserError
from millennial.fingerprint import IDENTITY_RULE, dtype_sha256s, tensors_sha256, weights_dtype
from millennial.hybrid.config import TRMConfig
from millennial.hybrid.injection import base_named_parameters, inject, trm_named_parameters

WEIGHTS_FILE = "trm.safetensors"
CONFIG_FILE = "trm_config.json"


def base_weights_sha256(model: nn.Module) -> str:
    """Content hash of the base (non-TRM) parameters: `state_sha256` in the base's provenance."""
    return tensors_sha256(base_named_parameters(model))


def base_record(name: str | None, revision: str | None, digests: dict[str, str]) -> dict[str, Any]:
    """The `base` entry of an artifact: `digests` maps dtype -> sha256, the trained dtype first
    (`fingerprint.dtype_sha256s`)."""
    dtype = next(iter(digests))
    return {"name": name, "revision": revision, "dtype": dtype,
            "weights_sha256": digests[dtype], "weights_sha256_by_dtype": digests,
            "identity": IDENTITY_RULE}


def base_mismatch(recorded: dict[str, Any], model: nn.Module, source: Path) -> str | None:
    """Why `model`'s base is not the one `recorded` (None: it is). Artifacts without per-dtype
    digests (written before them) compare the trained digest alone."""
    weights = base_named_parameters(model)
    dtype = weights_dtype(weights)
    accepted = recorded.get("weights_sha256_by_dtype") or {
        recorded.get("dtype", dtype): recorded["weights_sha256"]}
    if dtype not in accepted:
        return (f"{source}: trained on base {recorded['name']!r} in {recorded.get('dtype')}; it "
                f"loads onto that base in {', '.join(sorted(accepted))}, but this model's base "
                f"weights are {dtype}")
    actual = tensors_sha256(weights)
    if actual != accepted[dtype]:
        return (f"{source}: trained on base {recorded['name']!r} whose {dtype} weights hash to "
                f"sha256 {accepted[dtype]}, but this model's base weights hash to {actual}")
    return None


LORA_BASE_FILE = "base.json"  # beside a PEFT adapter: the base it was trained on
PHASE2_SKIPPED_FILE = "skipped.json"  # a phase-2 directory whose training was switched off


def save_lora(model: nn.Module, directory: Path, tensors: dict[str, torch.Tensor],
              provenance: dict[str, Any]) -> None:
    """A PEFT LoRA adapter, plus the identity of its base (PEFT records only a name)."""
    model.save_pretrained(directory, state_dict=tensors)  # PEFT keeps the adapter's keys
    write_json(directory / LORA_BASE_FILE,
               base_record(provenance["name"], provenance["revision"],
                           provenance["state_sha256_by_dtype"]))


def load_lora(base: nn.Module, directory: Path) -> nn.Module:
    """The LoRA adapter merged into `base` (how it is served), refused on a different base."""
    record_path = directory / LORA_BASE_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: not found; is {directory} a LoRA adapter "
                                "written by train_lora?")
    mismatch = base_mismatch(json.loads(record_path.read_text()), base, record_path)
    if mismatch is not None:
        raise BaseIdentityError(mismatch)
    from peft import PeftModel  # ~2 s to import: only the stages that load LoRA pay for it

    return PeftModel.from_pretrained(base, directory).merge_and_unload()


class BaseIdentityError(UserError):
    """An adapter offered a base other than the one it was trained on."""


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
    base_sha256s: dict[str, str] | None = None,
) -> Path:
    """Write `trm.safetensors` and `trm_config.json` to directory `path`, atomically.

    A model sharded across processes (FSDP) holds no whole tensors: pass its gathered TRM
    `tensors` and its base's digests (`base_sha256s`: dtype -> sha256, trained dtype first,
    `state_sha256_by_dtype` in the base's provenance) instead of reading them here.
    """
    config = getattr(model, "trm_config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no TRM blocks: nothing to save")
    identity = base_record(base_name or getattr(model.config, "name_or_path", None),
                           base_revision,
                           base_sha256s or dtype_sha256s(base_named_parameters(model)))
    own = trm_named_parameters(model)
    if tensors is None:
        tensors = own
    elif set(tensors) != set(own):
        raise ValueError(f"tensors must be exactly the TRM parameters; differ on "
                         f"{sorted(set(tensors) ^ set(own))[:5]}")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_dir(path, keep_others=True) as tmp:  # a model card, DVC's .gitignore stay
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        meta = {"base": identity, "trm": config.to_dict()}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(path)


def load_trm(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Inject (if needed) and load a saved TRM adapter into `model`.

    A base that is not the one the adapter was trained on (as it was, or cast to bf16/fp16) is
    an error, unless `strict=False`, which loads anyway with a warning. The blocks take the
    base's dtype.
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
    message = base_mismatch(meta["base"], model, config_path)
    if message is not None:
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


def save_hybrid(model: PreTrainedModel, weights: dict[str, torch.Tensor], base_dir: Path,
                out: Path) -> None:
    """Base weights (sharded safetensors, loadable by plain from_pretrained) + TRM adapter.

    `weights` are the model's full tensors (from `gather_all`: a sharded model has no whole
    tensors of its own).
    """
    trm_names = set(trm_named_parameters(model))
    base_state = {name: weights[name] for name in base_named_parameters(model)}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, state_dict=base_state, safe_serialization=True,
                              max_shard_size="200MB")
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
        save_trm(model, tmp / "trm", tensors={n: weights[n] for n in trm_names},
                 base_sha256s=dtype_sha256s(base_state), base_name=str(out),
                 base_revision="phase2")


def load_hybrid(directory: Path) -> PreTrainedModel:
    """A phase-2 hybrid saved by `save_hybrid`."""
    return load_trm(AutoModelForCausalLM.from_pretrained(directory), directory / "trm")
