"""LLaMA Pro block expansion (arXiv:2401.02415): the baseline that adds depth without recursion.

Copies of base decoder blocks are interleaved into the frozen stack, their attention and MLP
output projections zeroed, so the expanded model computes exactly what the base computes until
the new blocks train (zeroing a norm's scale instead would kill their gradient). Placement
follows the authors' `block_expansion.py`: the L layers form k equal groups and a copy of each
group's last layer follows it (interleaved; all at the bottom collapses in their ablation).

The artifact is adapter-sized, like a PEFT or TRM adapter: the new blocks' weights, where they
go, and the identity of the base, which `load_expansion` checks before it expands.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from millennial.atomic import atomic_dir
from millennial.hybrid.adapter import artifact_files, base_mismatch, base_record
from millennial.hybrid.injection import find_decoder_layers

WEIGHTS_FILE = "expansion.safetensors"
CONFIG_FILE = "expansion_config.json"
# What zeroing makes a copied block add nothing: the modules (or expert weight tensors) that write
# attention's and the MLP's results back to the residual stream, by name across families (LLaMA,
# Qwen, Gemma, Phi-3, OLMo 2, Mixtral's experts: o_proj / down_proj; GPT-2, StarCoder2: c_proj;
# GPT-NeoX, Falcon: dense / dense_4h_to_h). Post-norms of zero stay zero, so the copy is exact.
OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "c_proj", "dense", "dense_4h_to_h")


def is_output_projection(name: str) -> bool:
    """Is parameter `name` (a module's weight or bias, or an experts tensor) an output
    projection?"""
    parts = name.split(".")
    return parts[-1] in OUTPUT_PROJECTIONS or (len(parts) > 1 and parts[-2] in OUTPUT_PROJECTIONS)


@dataclass(frozen=True)
class Expansion:
    """Where the new blocks are: `hosts` are the base layers copied (original numbering),
    `positions` the new blocks' indices in the expanded stack."""

    hosts: tuple[int, ...]
    positions: tuple[int, ...]


def expansion_hosts(num_layers: int, blocks: int) -> tuple[int, ...]:
    """The base layers LLaMA Pro copies: the last layer of each of `blocks` equal groups."""
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be a positive int, got {blocks!r}")
    if num_layers % blocks:
        divisors = [k for k in range(1, num_layers + 1) if num_layers % k == 0]
        raise ValueError(f"blocks {blocks} must divide the base's {num_layers} layers into equal "
                         f"groups (LLaMA Pro's interleaving); possible: {divisors}")
    split = num_layers // blocks
    return tuple(split * (group + 1) - 1 for group in range(blocks))


def block_parameter_count(model: PreTrainedModel) -> int:
    """Parameters one copied block adds (every decoder layer of a base has the same count)."""
    _, layers = find_decoder_layers(model)
    return sum(p.numel() for p in layers[0].parameters())


def matched_block_count(num_layers: int, per_block: int, target: int) -> int:
    """The number of blocks (a divisor of the depth) whose count is closest to `target`."""
    divisors = [k for k in range(1, num_layers + 1) if num_layers % k == 0]
    return min(divisors, key=lambda k: (abs(k * per_block - target), k))


@torch.no_grad()
def expand(model: PreTrainedModel, blocks: int) -> Expansion:
    """Interleave `blocks` zero-output copies into `model`'s decoder stack, in place."""
    if getattr(model, "trm_config", None) is not None:
        raise ValueError("expand a base before injecting TRM blocks, not after")
    if getattr(model, "expansion", None) is not None:
        raise ValueError(f"{type(model).__name__} is already expanded")
    owner, layers = find_decoder_layers(model)
    outputs = [name for name, _ in layers[0].named_parameters() if is_output_projection(name)]
    if not outputs:
        raise ValueError(f"LLaMA Pro expansion cannot zero a copy of {type(layers[0]).__name__}: "
                         f"none of its parameters is an output projection "
                         f"({', '.join(OUTPUT_PROJECTIONS)})")
    hosts = expansion_hosts(len(layers), blocks)
    stacked: list[nn.Module] = []
    positions = []
    for index, layer in enumerate(layers):
        stacked.append(layer)
        if index in hosts:
            twin = copy.deepcopy(layer)
            for name in outputs:
                twin.get_parameter(name).zero_()
            positions.append(len(stacked))
            stacked.append(twin)
    attribute = next(name for name, child in owner.named_children() if child is layers)
    setattr(owner, attribute, nn.ModuleList(stacked))
    for depth, layer in enumerate(stacked):  # caches index layers by their position
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = depth
    text_config = model.config.get_text_config()
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None:  # a copy attends like its host (full or sliding window)
        text_config.layer_types = [kind for index, kind in enumerate(layer_types)
                                   for _ in range(2 if index in hosts else 1)]
    text_config.num_hidden_layers = len(stacked)
    model.expansion = Expansion(hosts, tuple(positions))
    return model.expansion


def expansion_named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The new blocks' parameters by their names in the expanded model."""
    expansion: Expansion | None = getattr(model, "expansion", None)
    if expansion is None:
        raise ValueError(f"{type(model).__name__} is not expanded: call expand() first")
    _, layers = find_decoder_layers(model)
    ids = {id(p) for position in expansion.positions for p in layers[position].parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) in ids}


def freeze_all_but_expansion(model: nn.Module) -> int:
    """Only the new blocks train; return how many parameters that is."""
    trainable = expansion_named_parameters(model)
    ids = {id(p) for p in trainable.values()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in ids)
    return sum(p.numel() for p in trainable.values())


def save_expansion(model: nn.Module, path: str | Path, *, base_sha256s: dict[str, str],
                   base_name: str | None, base_revision: str | None,
                   tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the new blocks' weights and where they go, atomically (`tensors`: gathered from a
    sharded model; `base_sha256s`: the base's digests, as `save_trm` takes them)."""
    expansion: Expansion = model.expansion
    own = expansion_named_parameters(model)
    tensors = own if tensors is None else tensors
    if set(tensors) != set(own):
        raise ValueError(f"tensors must be exactly the new blocks' parameters; differ on "
                         f"{sorted(set(tensors) ^ set(own))[:5]}")
    meta = {"base": base_record(base_name, base_revision, base_sha256s),
            "expansion": {"blocks": len(expansion.hosts), **asdict(expansion)}}
    with atomic_dir(path) as tmp:
        save_file({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()},
                  str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(path)


def load_expansion(model: PreTrainedModel, path: str | Path) -> PreTrainedModel:
    """Expand `model` as the artifact at `path` says and load its blocks; a base that is not
    the one they were trained on (as it was, or cast to bf16/fp16) is refused."""
    config_path, weights_path = artifact_files(Path(path), CONFIG_FILE, WEIGHTS_FILE,
                                               "an expansion")
    meta = json.loads(config_path.read_text(encoding="utf-8"))
    mismatch = base_mismatch(meta["base"], model, config_path)
    if mismatch is not None:
        raise ValueError(mismatch)
    expansion = expand(model, int(meta["expansion"]["blocks"]))
    if list(expansion.hosts) != meta["expansion"]["hosts"]:
        raise ValueError(f"{config_path}: hosts {meta['expansion']['hosts']} differ from "
                         f"{list(expansion.hosts)}")
    saved = load_file(str(weights_path))
    own = expansion_named_parameters(model)
    if set(saved) != set(own):
        raise ValueError(f"{weights_path}: tensors differ from the expanded model's new blocks "
                         f"on {sorted(set(saved) ^ set(own))[:5]}")
    with torch.no_grad():
        for name, tensor in saved.items():
            if own[name].shape != tensor.shape:
                raise ValueError(f"{weights_path}: {name} has shape {tuple(tensor.shape)}, the "
                                 f"model expects {tuple(own[name].shape)}")
            own[name].copy_(tensor)
    return model
