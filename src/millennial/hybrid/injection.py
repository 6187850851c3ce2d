"""Injecting TRM blocks into a Hugging Face causal LM, in place.

Each block becomes a child module `trm` of its host decoder layer, and a forward hook adds the
block's output to the layer's output. The base's module tree, parameter names and classes are
untouched, so `generate`, `save_pretrained`, gradient checkpointing and device maps keep working.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.cache_utils import (
    BaseQuantizedLayer,
    Cache,
    CacheLayerMixin,
    DynamicLayer,
    StaticLayer,
)
from transformers.generation.configuration_utils import GenerationMode

from millennial.hybrid.block import RANDOM_CORE_NORM_EPS, CoreLayer, HaltStats, TRMBlock
from millennial.hybrid.config import BaseDims, TRMConfig

# Families whose injection contract the tests check on tiny random configs (identity at init,
# causality, left padding, every decoding mode, save/load, exact parameter count). Injection
# itself is generic: any decoder-only causal LM with one stack of decoder layers works.
TESTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "olmo2", "granite",
                      "gpt_neox", "falcon", "starcoder2", "mixtral", "qwen2_moe", "gpt2")
# Families that cannot work, and why: their layers carry recurrent state, not attention keys.
UNSUPPORTED_MODEL_TYPES = {
    name: "a state-space / recurrent model: its cache holds recurrent states, and the TRM's "
          "keys and values cannot be kept beside them"
    for name in ("mamba", "mamba2", "falcon_mamba", "rwkv", "recurrent_gemma", "xlstm")
} | {
    name: "a hybrid of attention and linear-attention/state-space layers, whose cache layers "
          "the TRM's cannot be appended to"
    for name in ("jamba", "zamba", "zamba2", "bamba", "granitemoehybrid", "lfm2", "qwen3_next",
                 "falcon_h1", "nemotron_h")
}
# Families whose decoder layers a pretrained core copies exactly (RMSNorm, rotary attention
# without biases, SwiGLU): qwen2 has q/k/v biases and gpt2 LayerNorm and a GELU MLP.
PRETRAINED_CORE_MODEL_TYPES = ("llama", "mistral")
_CACHE_ATTRIBUTE = "millennial_trm"  # block -> {slot: index of its layer in the HF cache}
# Decoding modes whose cached output the tests check token for token against uncached decoding.
# The others (contrastive search, DoLa, group and constrained beam search) are Hub
# `custom_generate` code in transformers 5 and are refused, as is any custom_generate.
VERIFIED_GENERATION_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE,
                             GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE,
                             GenerationMode.ASSISTED_GENERATION)
# Cache implementations that cannot hold the TRM's keys exactly: offloading prefetches the
# cache's layers in a ring that would run through the TRM's, and paged attention (continuous
# batching) packs sequences into one row, which the TRM's attention would read across.
REFUSED_CACHE_IMPLEMENTATIONS = {
    "paged": "continuous batching packs the batch's sequences into one row and keeps keys in a "
             "paged cache the TRM blocks cannot see",
    "offloaded": "offloading prefetches the cache's layers in a ring that the TRM's layers "
                 "would break",
}


@dataclass
class _StackInputs:
    """The padding mask of the current call of the decoder stack, shared by its blocks: 2-D as
    users pass it, or the 4-D mask (or dict of masks) `generate` builds for a static cache."""

    attention_mask: torch.Tensor | dict[str, torch.Tensor] | None = None


class TRMCache:
    """A block's keys and values of past tokens, kept as extra layers of the HF cache object.

    Each (call of f, layer of f) slot gets one cache layer of the base's own kind (dynamic or
    static), appended after the base's layers, so what `generate` does to the cache (beam
    reordering, cropping in assisted decoding, batch expansion and selection) does it to the
    TRM's keys and values too. Quantized caches are refused (lossy, so not exact), and so are
    static caches that keep only a sliding window (TRM blocks attend over the whole context).
    """

    def __init__(self, cache: Cache, block: TRMBlock, base_layers: int) -> None:
        self.cache = cache
        registry = cache.__dict__.setdefault(_CACHE_ATTRIBUTE, {})
        self.slots: dict[tuple[int, int], int] = registry.setdefault(id(block), {})
        first = next(iter(self.slots.values()), None)
        self.past = cache.layers[first].get_seq_length() if first is not None else 0
        self.base_layers = base_layers

    def key_length(self, seq: int) -> int:
        layer = self._template()
        return layer.max_cache_len if isinstance(layer, StaticLayer) else self.past + seq

    def update(self, slot: tuple[int, int], keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.slots.get(slot)
        if index is None:
            self._reserve_base_layers()
            index = len(self.cache.layers)
            template = self._template()
            self.cache.layers.append(StaticLayer(template.max_cache_len)
                                     if isinstance(template, StaticLayer) else DynamicLayer())
            self.slots[slot] = index
        return self.cache.layers[index].update(keys, values)

    def _reserve_base_layers(self) -> None:
        """A lazily grown cache gets its base layers first, so the TRM's come after them."""
        replicate = self.cache.layer_class_to_replicate
        while replicate is not None and len(self.cache.layers) < self.base_layers:
            self.cache.layers.append(replicate())

    def _template(self) -> CacheLayerMixin:
        """The kind of layer the TRM's keys go in: the base's widest."""
        layers = self.cache.layers[: self.base_layers]
        if any(isinstance(layer, BaseQuantizedLayer) for layer in layers):
            raise ValueError("TRM blocks do not support a quantized KV cache (it is lossy, so "
                             "cached decoding would not match uncached): use a dynamic or "
                             "static cache")
        static = [layer for layer in layers if isinstance(layer, StaticLayer)]
        if not static:
            return DynamicLayer()
        full = [layer for layer in static if not layer.is_sliding]
        if not full:
            raise ValueError("this static cache keeps only a sliding window, but TRM blocks "
                             "attend over the whole context: use a dynamic cache")
        return max(full, key=lambda layer: layer.max_cache_len)


def find_decoder_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """Return (stack owner, layer list) found from the model's own structure.

    The stack is the one ModuleList whose items are the model's declared decoder-layer class
    (`_no_split_modules`) and whose length is the config's layer count.
    """
    name = type(model).__name__
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"TRM injection needs a transformers PreTrainedModel, got {name}")
    if model_type in UNSUPPORTED_MODEL_TYPES:
        raise ValueError(f"TRM injection cannot support {name} (model_type={model_type!r}): "
                         f"{UNSUPPORTED_MODEL_TYPES[model_type]}")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"TRM injection needs a decoder-only causal LM; {name} "
                         f"(model_type={model_type!r}) is an encoder-decoder")
    if model.get_output_embeddings() is None:
        raise ValueError(f"TRM injection needs a causal LM with an LM head; {name} has none")
    depth = config.get_text_config().num_hidden_layers
    layer_classes = set(model._no_split_modules or ())
    stacks = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == depth
        and all(type(layer).__name__ in layer_classes for layer in module)
    ]
    if len(stacks) != 1:
        raise ValueError(
            f"cannot locate the decoder layer stack of {name}: found {len(stacks)} candidate "
            f"lists of {depth} layers of {sorted(layer_classes)}"
        )
    path, layers = stacks[0]
    owner = model.get_submodule(path.rpartition(".")[0])
    return owner, layers


def rope_theta(config: PretrainedConfig) -> float:
    """The base's rotary base frequency, so f's positions live on the base's scale."""
    parameters = getattr(config, "rope_parameters", None) or {}
    theta = parameters.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta) if theta is not None else 10000.0


def base_dims(model_config: PretrainedConfig) -> BaseDims:
    """The widths of one decoder layer of a base (what a pretrained core copies)."""
    text = model_config.get_text_config()
    heads = text.num_attention_heads
    return BaseDims(text.hidden_size, heads, getattr(text, "num_key_value_heads", None) or heads,
                    getattr(text, "intermediate_size", None) or 4 * text.hidden_size)


def resolve_config(model_config: PretrainedConfig, config: TRMConfig) -> TRMConfig:
    """`config` with every width known for this base; a pretrained core must be copyable."""
    text = model_config.get_text_config()
    if config.pretrained:
        model_type = getattr(model_config, "model_type", None)
        if model_type not in PRETRAINED_CORE_MODEL_TYPES:
            families = ", ".join(PRETRAINED_CORE_MODEL_TYPES)
            raise ValueError(
                f"core_init: pretrained copies LLaMA-style layers ({families}); {model_type!r} "
                "layers (biases, LayerNorm or a GELU MLP) do not fit the core")
        if getattr(text, "attention_bias", False) or getattr(text, "mlp_bias", False):
            raise ValueError("core_init: pretrained cannot copy layers with biases")
        head_dim = getattr(text, "head_dim", None)
        if head_dim is not None and head_dim != text.hidden_size // text.num_attention_heads:
            raise ValueError(f"core_init: pretrained needs head_dim = hidden_size / heads; the "
                             f"base has head_dim {head_dim}")
    return config.resolve(base_dims(model_config), text.num_hidden_layers)


def inject(model: PreTrainedModel, config: TRMConfig) -> PreTrainedModel:
    """Add one TRM block after each configured decoder layer of `model`, in place."""
    if getattr(model, "trm_config", None) is not None:
        raise ValueError(f"{type(model).__name__} already has TRM blocks injected")
    owner, layers = find_decoder_layers(model)
    text_config = model.config.get_text_config()
    config = resolve_config(model.config, config)
    positions = config.resolve_layers(len(layers))
    norm_eps = (float(getattr(text_config, "rms_norm_eps", RANDOM_CORE_NORM_EPS))
                if config.pretrained else RANDOM_CORE_NORM_EPS)
    stack_inputs = _StackInputs()
    signature = inspect.signature(owner.forward)
    handles = [owner.register_forward_pre_hook(
        partial(_capture_stack_inputs, stack_inputs, signature), with_kwargs=True
    )]
    shared_core = None
    for index in positions:
        host = layers[index]
        reference = next(host.parameters())
        block = TRMBlock(text_config.hidden_size, config, rope_theta(text_config), shared_core,
                         norm_eps)
        block.to(device=reference.device, dtype=reference.dtype).train(host.training)
        if config.pretrained:
            copy_base_layers(block, layers[index - config.num_layers + 1 : index + 1])
        if config.share_across_layers:
            shared_core = block.core
        host.add_module("trm", block)
        handles.append(host.register_forward_hook(
            partial(_run_block, block, stack_inputs, len(layers)), with_kwargs=True))
    model.trm_config = config
    model.trm_hooks = handles
    model.generate = partial(_checked_generate, model, model.generate)
    return model


def remove_trm(model: PreTrainedModel) -> PreTrainedModel:
    """Take the TRM blocks and their hooks out of `model`, in place: what is left is the base,
    untouched (its parameters were never replaced), and `inject` works on it again."""
    if getattr(model, "trm_config", None) is None:
        raise ValueError(f"{type(model).__name__} has no TRM blocks to remove")
    for handle in model.trm_hooks:
        handle.remove()
    _, layers = find_decoder_layers(model)
    for layer in layers:
        if isinstance(getattr(layer, "trm", None), TRMBlock):
            del layer.trm
    del model.trm_config, model.trm_hooks, model.generate
    return model


def _checked_generate(model: PreTrainedModel, generate: Any, *args: Any, **kwargs: Any) -> Any:
    """`generate`, after refusing a mode the hybrid's cache cannot serve exactly."""
    refuse_unverified_generation(model, kwargs)
    return generate(*args, **kwargs)


def refuse_unverified_generation(model: PreTrainedModel, kwargs: dict[str, Any]) -> None:
    """Raise before any token when `generate(**kwargs)` asks for a mode that is not exact on a
    TRM hybrid (see VERIFIED_GENERATION_MODES and REFUSED_CACHE_IMPLEMENTATIONS)."""
    if kwargs.get("custom_generate") is not None:
        raise ValueError("custom_generate runs decoding code outside what the TRM hybrid is "
                         "tested against (cached output equal to uncached): it is refused")
    config = copy.deepcopy(kwargs.get("generation_config") or model.generation_config)
    config.update(**{k: v for k, v in kwargs.items() if k != "generation_config"})
    implementation = str(config.cache_implementation or "")
    for refused, reason in REFUSED_CACHE_IMPLEMENTATIONS.items():
        if implementation.startswith(refused):
            raise ValueError(f"cache_implementation={implementation!r} is refused on a TRM "
                             f"hybrid: {reason}; use 'dynamic' or 'static'")
    mode = config.get_generation_mode(kwargs.get("assistant_model"))
    if mode not in VERIFIED_GENERATION_MODES:
        raise ValueError(f"{mode.value.replace('_', ' ')} is not verified on a TRM hybrid (its "
                         "cached output is not tested equal to uncached) and is refused; use "
                         "greedy, sampling, beam search or assisted decoding")


@torch.no_grad()
def copy_base_layers(block: TRMBlock, source: nn.ModuleList | list[nn.Module],
                     zero_outputs: bool = True) -> None:
    """Initialise a pretrained core from LLaMA-style base layers, LLaMA Pro style: the same
    weights, with the attention and MLP output projections zeroed so f adds nothing at first."""
    targets: list[CoreLayer] = list(block.core.layers)
    for target, layer in zip(targets, source, strict=True):
        attention, mlp = layer.self_attn, layer.mlp
        pairs = [
            (target.attn_norm.weight, layer.input_layernorm.weight),
            (target.attn.q_proj.weight, attention.q_proj.weight),
            (target.attn.k_proj.weight, attention.k_proj.weight),
            (target.attn.v_proj.weight, attention.v_proj.weight),
            (target.attn.o_proj.weight, attention.o_proj.weight),
            (target.mlp_norm.weight, layer.post_attention_layernorm.weight),
            (target.mlp.gate_proj.weight, mlp.gate_proj.weight),
            (target.mlp.up_proj.weight, mlp.up_proj.weight),
            (target.mlp.down_proj.weight, mlp.down_proj.weight),
        ]
        for mine, theirs in pairs:
            mine.copy_(theirs)
        if zero_outputs:
            target.attn.o_proj.weight.zero_()
            target.mlp.down_proj.weight.zero_()


def _capture_stack_inputs(
    stack_inputs: _StackInputs,
    signature: inspect.Signature,
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    bound = signature.bind_partial(*args, **kwargs).arguments
    if kwargs.get("cu_seq_lens_q") is not None:
        raise ValueError("packed sequences (cu_seq_lens_q: continuous batching, or a flattening "
                         "collator) are refused on a TRM hybrid: its blocks would attend across "
                         "the sequences packed in one row; pass a padded batch")
    if getattr(bound.get("past_key_values"), "offloading", False):
        raise ValueError(f"an offloading cache is refused on a TRM hybrid: "
                         f"{REFUSED_CACHE_IMPLEMENTATIONS['offloaded']}")
    stack_inputs.attention_mask = bound.get("attention_mask")


def _run_block(
    block: TRMBlock,
    stack_inputs: _StackInputs,
    base_layers: int,
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: torch.Tensor | tuple[Any, ...],
) -> torch.Tensor | tuple[Any, ...] | None:
    if not block.enabled:
        return None
    hidden = output[0] if isinstance(output, tuple) else output
    batch, seq = hidden.shape[:2]
    base_cache = next(
        (v for v in (*args, *kwargs.values()) if isinstance(v, Cache)), None
    )
    cache = None
    if base_cache is not None:
        cache = TRMCache(base_cache, block, base_layers)
        if base_cache.get_seq_length() != cache.past + seq:
            raise RuntimeError(
                f"the base KV cache holds {base_cache.get_seq_length()} tokens but the TRM cache "
                f"holds {cache.past} + {seq} new: the cache was filled before injection, or "
                "edited behind the hybrid's back"
            )
    past = cache.past if cache is not None else 0
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(past, past + seq, device=hidden.device)
    positions = positions.reshape(-1, seq).expand(batch, seq)
    key_padding = _key_padding(stack_inputs.attention_mask, batch, past + seq)
    new_hidden = block(hidden, positions, key_padding, cache)
    return (new_hidden, *output[1:]) if isinstance(output, tuple) else new_hidden


def _key_padding(mask: torch.Tensor | dict[str, torch.Tensor] | None, batch: int,
                 length: int) -> torch.Tensor | None:
    """(B, past + S) True for real tokens, from the mask the stack was called with.

    A 4-D mask (B, 1, S, keys) is the base's own, causal and padded: its last row is the newest
    token's, which sees every real key before it (bool True, or an additive 0, = may attend).
    """
    if isinstance(mask, dict):  # per attention type (full / sliding): the full one
        mask = mask.get("full_attention", next(iter(mask.values()), None))
    if mask is None:
        return None
    if mask.dim() == 4 and mask.shape[0] == batch and mask.shape[-1] >= length:
        row = mask[:, 0, -1, :length]
        return row if row.dtype == torch.bool else row == 0
    if mask.dim() == 2 and mask.shape == (batch, length):
        return mask
    raise ValueError(
        f"TRM blocks need a 2-D attention mask of shape ({batch}, {length}) or the base's 4-D "
        f"mask over at least {length} keys; got {tuple(mask.shape)}"
    )


def trm_blocks(model: nn.Module) -> list[TRMBlock]:
    return [module for module in model.modules() if isinstance(module, TRMBlock)]


def trm_named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """TRM parameters by their name in `model` (a shared core appears once)."""
    ids = {id(p) for block in trm_blocks(model) for p in block.parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) in ids}


def base_named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    trm = {id(p) for p in trm_named_parameters(model).values()}
    return {name: p for name, p in model.named_parameters() if id(p) not in trm}


def zero_initialised(name: str, config: TRMConfig) -> bool:
    """Is TRM parameter `name` one of the block's ways out, the weights that start at zero
    (`up` of a random core; the copied layers' attention and MLP output projections)?"""
    if config.pretrained:
        return ".attn.o_proj." in name or ".mlp.down_proj." in name
    return ".trm.up." in name or name.startswith("trm.up.")


def freeze_base(model: nn.Module) -> int:
    """Make only TRM parameters trainable; return how many parameters that is."""
    trainable = trm_named_parameters(model)
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no TRM blocks: call inject() first")
    for parameter in base_named_parameters(model).values():
        parameter.requires_grad_(False)
    for parameter in trainable.values():
        parameter.requires_grad_(True)
    return sum(p.numel() for p in trainable.values())


@contextmanager
def trm_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within this block the hybrid computes exactly its base model (the evaluation's base arm)."""
    blocks = trm_blocks(model)
    previous = [block.enabled for block in blocks]
    for block in blocks:
        block.enabled = False
    try:
        yield model
    finally:
        for block, enabled in zip(blocks, previous, strict=True):
            block.enabled = enabled


@contextmanager
def deep_supervision(model: nn.Module) -> Iterator[nn.Module]:
    """Within this block each forward starts from the (y, z) the previous forward ended with.

    TRM's deep supervision: several forward/backward/optimizer steps on one batch, the recursion
    state detached and carried between them. Leaving the block drops the carried state.
    """
    blocks = trm_blocks(model)
    for block in blocks:
        block.keep_carry, block.carry = True, None
    try:
        yield model
    finally:
        for block in blocks:
            block.keep_carry, block.carry = False, None


HALT_LOSS_WEIGHT = 0.5  # TRM's weight on the halting head's binary cross-entropy


def halting_loss(model: nn.Module, logits: torch.Tensor, input_ids: torch.Tensor,
                 loss_weight: torch.Tensor) -> torch.Tensor | None:
    """TRM's halting loss for the forward that produced `logits`; None without halting heads.

    Each block's last-cycle logit at position t is trained to say whether the model's next-token
    prediction there is right (argmax = the token at t + 1): binary cross-entropy weighted by
    the scored tokens' loss weight, averaged over blocks, times HALT_LOSS_WEIGHT. The sum is on
    the same scale as the cross-entropy sum it is added to.
    """
    heads = [b.halt_logits for b in trm_blocks(model) if b.halt_logits is not None]
    if not heads:
        return None
    correct = (logits[:, :-1].argmax(-1) == input_ids[:, 1:]).float()
    weight = loss_weight[:, 1:]
    total = sum((F.binary_cross_entropy_with_logits(q[:, :-1], correct, reduction="none")
                 * weight).sum() for q in heads)
    for block in trm_blocks(model):
        block.halt_logits = None
    return HALT_LOSS_WEIGHT * total / len(heads)


def mean_halting_cycles(model: nn.Module) -> float | None:
    """Mean cycles a token ran in the evaluation forwards since the blocks were built or last
    asked (over blocks with a halting head; None without any), and start counting afresh."""
    stats = [block.halt_stats for block in trm_blocks(model) if block.halt is not None]
    tokens, cycles = sum(s.tokens for s in stats), sum(s.cycles for s in stats)
    for block in trm_blocks(model):
        block.halt_stats = HaltStats()
    return cycles / tokens if tokens else None


def trm_parameter_count(model_config: PretrainedConfig, trm_config: TRMConfig) -> int:
    """Exact TRM parameter count from the base's config alone (works for 70B bases on a laptop)."""
    text_config = model_config.get_text_config()
    resolved = resolve_config(model_config, trm_config)
    points = resolved.resolve_layers(text_config.num_hidden_layers)
    return resolved.parameter_count(text_config.hidden_size, len(points))


@dataclass(frozen=True)
class Depth:
    """How deep the TRM blocks recurse: cycles T and latent steps n."""

    cycles: int
    latent_steps: int


@contextmanager
def recursion_depth(model: nn.Module, depth: Depth) -> Iterator[nn.Module]:
    """Within this block every TRM block of `model` recurses `depth` deep (test-time depth, or a
    training curriculum).

    `grad_cycles` is capped at the new `cycles` (the config requires it). The original configs
    are restored on exit, also after an error.
    """
    blocks = trm_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no TRM blocks: nothing to change")
    originals = [block.config for block in blocks]
    try:
        for block, config in zip(blocks, originals, strict=True):
            block.config = replace(config, cycles=depth.cycles, latent_steps=depth.latent_steps,
                                   grad_cycles=min(config.grad_cycles, depth.cycles))
        yield model
    finally:
        for block, config in zip(blocks, originals, strict=True):
            block.config = config
