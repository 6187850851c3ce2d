"""What a training run will cost, computed from the architecture alone.

Parameter counts are exact (every matrix, bias, norm and embedding a config implies). FLOPs are
counted per token and broken down by what runs: the base forward, the activation gradient that
must flow back through frozen layers to reach the lowest trainable point, weight gradients of
trainable parameters only, the TRM's recursive calls, and recomputation under gradient
checkpointing. Conventions (tested against `torch.utils.flop_counter.FlopCounterMode`):

- A matmul of an (m x k) by a (k x n) matrix is 2mkn FLOPs; embedding lookups, norms,
  activations, softmax and the loss are not counted.
- Attention scores use the full context per query (PaLM appendix B: 12 * L * d * ctx per token
  for training): QK^T and AV cost 4 * ctx * width per layer forward and twice that backward. A
  causal kernel that skips masked blocks does about half of this, so the figure is an upper bound.
- Backward of a matmul is two matmuls: the activation gradient (needed wherever anything below
  still needs gradient) and the weight gradient (only for trainable weights), each costing the
  forward's FLOPs. Layers below the lowest trainable point run no backward at all.
- A TRM block runs `cycles * (latent_steps + 1)` calls of its core f per token; all run forward,
  only the last `grad_cycles * (latent_steps + 1)` run backward.
- Time: GPU-hours = model FLOPs / (peak * MFU) / 3600, with MFU as PaLM defines it (model
  FLOPs only). Recomputation is reported as executed FLOPs; its time cost is part of what keeps
  MFU below hardware utilisation, so calibrate MFU on a run with the same checkpointing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from millennial.cost.hardware import CPU, Device
from millennial.cost.record import ComponentTimings
from millennial.hybrid.config import BaseDims, TRMConfig

PHASES = ("phase1", "phase2", "lora", "scratch")
SHARDINGS = ("ddp", "fsdp")
# Families whose shapes the planner models exactly (tests: parameter count and FLOPs against the
# real modules). Others are refused by name: MoE routing, parallel residuals and fused LayerNorm
# blocks (Mixtral, GPT-NeoX, Falcon, Gemma...) are not modelled yet.
LLAMA_LIKE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "phi3")
SUPPORTED_MODEL_TYPES = (*LLAMA_LIKE_MODEL_TYPES, "gpt2")
_LLAMA_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "vocab_size")
# What a config.json must state for its shape to be this model's and not transformers' defaults.
REQUIRED_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    **{model_type: _LLAMA_KEYS for model_type in LLAMA_LIKE_MODEL_TYPES},
    "gpt2": ("n_embd", "n_layer", "n_head", "vocab_size"),
}

BYTES_PER_FROZEN_PARAM = 2  # bf16 weight
BYTES_PER_TRAINABLE_PARAM = 16  # bf16 weight + fp32 master + bf16 grad + 2 fp32 AdamW moments
BYTES_PER_ACTIVATION = 2  # bf16
MFU_MULTI_GPU = 0.40  # reference.md s3: plan 35-45% tuned multi-GPU
MFU_SINGLE_GPU = 0.30  # reference.md s3: 25-35% single-GPU HF-style loops
POWER_UTILISATION = 0.8  # assumed average board draw under training, as a fraction of TDP
GRID_KG_CO2E_PER_KWH = 0.4  # assumed grid intensity (roughly a world average)
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022 compute-optimal budget for scratch
MAX_GPUS = 4096
GIB = 2**30  # device memory and memory plans are in GiB


@dataclass(frozen=True)
class Linear:
    """One weight matrix of a decoder layer."""

    name: str
    fan_in: int
    fan_out: int
    bias: bool = False
    reads_layer_input: bool = False  # its input is the (normed) stream entering the layer

    @property
    def params(self) -> int:
        return self.fan_in * self.fan_out + (self.fan_out if self.bias else 0)

    @property
    def macs(self) -> int:
        return self.fan_in * self.fan_out


@dataclass(frozen=True)
class ModelShape:
    """Everything about a decoder-only LM that sets its parameter count and FLOPs."""

    model_type: str
    hidden_size: int
    num_layers: int
    attention_width: int  # query heads * head dim
    kv_width: int  # key/value heads * head dim
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    position_embeddings: int  # rows of a learned position table (0 with rotary positions)
    norm_params: int  # parameters of one norm: H (RMSNorm) or 2H (LayerNorm with bias)
    gated_mlp: bool
    linears: tuple[Linear, ...]  # the weight matrices of one decoder layer, in execution order
    # Something after the last matmul saves tensors for backward (GPT-2's residual dropout
    # mask), so checkpoint recomputation cannot stop before that matmul.
    saves_after_last_matmul: bool = False
    num_heads: int = 1  # query heads (a pretrained TRM core copies them)
    qk_norm_params: int = 0  # per layer: Qwen3's per-head and OLMo 2's full-width q/k norms

    @property
    def layer_params(self) -> int:
        return (sum(linear.params for linear in self.linears) + 2 * self.norm_params
                + self.qk_norm_params)

    @property
    def layer_macs(self) -> int:
        return sum(linear.macs for linear in self.linears)


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _field(config: Any, name: str, default: Any = ...) -> Any:
    value = config.get(name, default) if isinstance(config, Mapping) else getattr(
        config, name, default
    )
    if value is ...:
        raise ValueError(f"base config: missing field {name!r}")
    return value


def model_shape(config: Any) -> ModelShape:
    """Shape of a `transformers` config object or a config.json mapping of a supported family."""
    config = _text_config(config)
    model_type = _field(config, "model_type")
    if model_type == "gpt2":
        return _gpt2_shape(config)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"base config: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    hidden = _field(config, "hidden_size")
    heads = _field(config, "num_attention_heads")
    kv_heads = _field(config, "num_key_value_heads", None) or heads
    head_dim = _field(config, "head_dim", None) or hidden // heads
    inner = _field(config, "intermediate_size")
    width, kv = heads * head_dim, kv_heads * head_dim
    attention_bias = bool(_field(config, "attention_bias", False))
    if model_type in ("llama", "granite", "qwen3", "olmo2"):
        qkv_bias = o_bias = attention_bias
        mlp_bias = bool(_field(config, "mlp_bias", False))
    else:  # qwen2 has q/k/v biases and no o bias; mistral and phi3 have none
        qkv_bias, o_bias, mlp_bias = model_type == "qwen2", False, False
    if model_type == "phi3":  # fused q/k/v and gate/up projections
        linears: tuple[Linear, ...] = (
            Linear("qkv_proj", hidden, width + 2 * kv, False, True),
            Linear("o_proj", width, hidden),
            Linear("gate_up_proj", hidden, 2 * inner, False, True),
            Linear("down_proj", inner, hidden),
        )
    else:
        linears = (
            Linear("q_proj", hidden, width, qkv_bias, True),
            Linear("k_proj", hidden, kv, qkv_bias, True),
            Linear("v_proj", hidden, kv, qkv_bias, True),
            Linear("o_proj", width, hidden, o_bias),
            Linear("gate_proj", hidden, inner, mlp_bias),
            Linear("up_proj", hidden, inner, mlp_bias),
            Linear("down_proj", inner, hidden, mlp_bias),
        )
    qk_norms = {"qwen3": 2 * head_dim, "olmo2": width + kv}.get(model_type, 0)
    return ModelShape(
        model_type=model_type,
        hidden_size=hidden,
        num_layers=_field(config, "num_hidden_layers"),
        attention_width=width,
        kv_width=kv,
        intermediate_size=inner,
        vocab_size=_field(config, "vocab_size"),
        tied_embeddings=bool(_field(config, "tie_word_embeddings", False)),
        position_embeddings=0,
        norm_params=hidden,
        gated_mlp=True,
        linears=linears,
        num_heads=heads,
        qk_norm_params=qk_norms,
    )


def _gpt2_shape(config: Any) -> ModelShape:
    hidden = _field(config, "n_embd")
    inner = _field(config, "n_inner", None) or 4 * hidden
    linears = (
        Linear("c_attn", hidden, 3 * hidden, True, True),
        Linear("attn.c_proj", hidden, hidden, True),
        Linear("c_fc", hidden, inner, True),
        Linear("mlp.c_proj", inner, hidden, True),
    )
    return ModelShape(
        model_type="gpt2",
        hidden_size=hidden,
        num_layers=_field(config, "n_layer"),
        attention_width=hidden,
        kv_width=hidden,
        intermediate_size=inner,
        vocab_size=_field(config, "vocab_size"),
        tied_embeddings=bool(_field(config, "tie_word_embeddings", True)),
        position_embeddings=_field(config, "n_positions"),
        norm_params=2 * hidden,
        gated_mlp=False,
        linears=linears,
        saves_after_last_matmul=float(_field(config, "resid_pdrop", 0.1)) > 0,
        num_heads=_field(config, "n_head"),
    )


# --------------------------------------------------------------------------- parameters


def base_parameters(shape: ModelShape) -> dict[str, int]:
    """Exact parameter count by part; a tied LM head shares the embedding and counts once."""
    parts = {
        "embeddings": shape.vocab_size * shape.hidden_size,
        "position_embeddings": shape.position_embeddings * shape.hidden_size,
        "decoder_layers": shape.num_layers * shape.layer_params,
        "final_norm": shape.norm_params,
        "lm_head": 0 if shape.tied_embeddings else shape.vocab_size * shape.hidden_size,
    }
    return {**parts, "total": sum(parts.values())}


def resolve_trm(shape: ModelShape, trm: TRMConfig) -> TRMConfig:
    """The TRM config with every width known on this base (a pretrained core copies the base's;
    the planner needs no check of the family, which `inject` does)."""
    heads = shape.num_heads
    dims = BaseDims(shape.hidden_size, heads, heads * shape.kv_width // shape.attention_width,
                    shape.intermediate_size)
    return trm.resolve(dims, shape.num_layers)


def trm_parameters(shape: ModelShape, trm: TRMConfig) -> dict[str, int]:
    """TRM parameters by part (the formula of `TRMConfig.parameter_count`)."""
    trm = resolve_trm(shape, trm)
    points = len(trm.resolve_layers(shape.num_layers))
    core = trm.core_parameter_count()
    per_point = trm.parameter_count(shape.hidden_size, 1) - core  # norm, down, up, halting head
    cores = 1 if trm.share_across_layers else points
    return {
        "injection_points": points,
        "per_point_projections": per_point,
        "core": core,
        "cores": cores,
        "total": points * per_point + cores * core,
    }


def lora_parameters(shape: ModelShape, rank: int) -> int:
    """LoRA on every weight matrix of every decoder layer: rank * (fan_in + fan_out) each."""
    return shape.num_layers * sum(rank * (lin.fan_in + lin.fan_out) for lin in shape.linears)


# --------------------------------------------------------------------------- what trains


@dataclass(frozen=True)
class Trainable:
    """Which parameters carry gradient; it decides which backward matmuls run."""

    base_layers_from: int | None = None  # decoder layers with index >= this train all weights
    embeddings: bool = False  # input embeddings (and so a tied head) train
    head: bool = False  # an untied LM head trains
    trm: TRMConfig | None = None  # TRM blocks train (when present)
    lora_rank: int = 0  # LoRA adapters on every decoder weight matrix
    # Whole decoder layers that train inside a frozen stack: LLaMA Pro's copied blocks, by their
    # index in the expanded model (whose shape is the one planned).
    new_layers: tuple[int, ...] = ()

    @classmethod
    def for_phase(cls, phase: str, trm: TRMConfig | None, lora_rank: int = 0) -> Trainable:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        if phase in ("phase1", "phase2") and trm is None:
            raise ValueError(f"{phase} trains TRM blocks: a TRM config is required")
        if phase == "lora" and lora_rank < 1:
            raise ValueError(f"lora needs a positive rank, got {lora_rank}")
        if phase == "phase1":
            return cls(trm=trm)
        if phase == "lora":
            return cls(lora_rank=lora_rank)
        return cls(base_layers_from=0, embeddings=True, head=True, trm=trm)


def backward_status(
    shape: ModelShape, trainable: Trainable, *, grad_checkpointing: bool = False
) -> list[str]:
    """Per decoder layer: 'full' backward, 'partial' (no gradient into its input) or 'none'.

    Gradient must reach the lowest trainable point. A TRM block at layer i adds to layer i's
    output, so layers above i need the activation gradient and layer i itself none. A trainable
    layer j needs its full backward (its norm weights train, so even q/k/v need input
    gradients); LoRA on a frozen layer 0 needs none into the frozen q/k/v inputs. Hugging Face
    gradient checkpointing makes the embedding output require grad
    (`enable_input_require_grads`), so with it every layer runs a full backward.
    """
    count = shape.num_layers
    if trainable.embeddings or grad_checkpointing:
        return ["full"] * count
    first_full = count if trainable.base_layers_from is None else trainable.base_layers_from
    if trainable.trm is not None:
        first_full = min(first_full, trainable.trm.resolve_layers(count)[0] + 1)
    if trainable.lora_rank:
        first_full = min(first_full, 1)
    if trainable.new_layers:
        first_full = min(first_full, min(trainable.new_layers))
    return [
        "full" if i >= first_full else "partial" if trainable.lora_rank and i == 0 else "none"
        for i in range(count)
    ]


# --------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopBreakdown:
    """FLOPs per token by origin. `model` excludes recomputation; `executed` includes it."""

    base_forward_matmul: float = 0.0
    base_forward_attention: float = 0.0
    base_activation_grad: float = 0.0
    base_weight_grad: float = 0.0
    trm_forward: float = 0.0
    trm_backward: float = 0.0
    lora_forward: float = 0.0
    lora_backward: float = 0.0
    recompute: float = 0.0

    @property
    def model(self) -> float:
        return self.executed - self.recompute

    @property
    def executed(self) -> float:
        return sum(asdict(self).values())

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "model": self.model, "executed": self.executed}


def attention_flops(width: int, context: int) -> int:
    """Forward QK^T and AV per token per layer, full context (see module docstring)."""
    return 4 * context * width


def _kv_width(trm: TRMConfig) -> int:
    return trm.kv_heads * (trm.width("hidden_size") // trm.width("num_heads"))


def trm_call_flops(trm: TRMConfig, context: int) -> tuple[int, int]:
    """(matmul, attention) forward FLOPs of one call of the core f, per token (resolved config).

    With `attention: input` the key/value projections are not per call (`trm_input_kv_flops`).
    """
    d, ffn = trm.width("hidden_size"), trm.width("ffn_size")
    matmul = 2 * trm.num_layers * (2 * d * d + 3 * d * ffn)
    return matmul + (0 if trm.attention == "input" else trm_kv_flops(trm)), (
        trm.num_layers * attention_flops(d, context))


def trm_kv_flops(trm: TRMConfig) -> int:
    """Forward FLOPs per token of f's key and value projections, all its layers, one pass."""
    return 2 * trm.num_layers * 2 * trm.width("hidden_size") * _kv_width(trm)


def trm_input_kv_flops(trm: TRMConfig) -> int:
    """`attention: input`: the key/value projections of the block input, once per forward."""
    return trm_kv_flops(trm) if trm.attention == "input" else 0


def _projection_macs(shape: ModelShape, trm: TRMConfig) -> int:
    """Multiply-adds of one of a random core's down/up projections (a pretrained core has none)."""
    return 0 if trm.pretrained else shape.hidden_size * trm.width("hidden_size")


def forward_flops_per_token(
    shape: ModelShape, context: int, trm: TRMConfig | None = None
) -> FlopBreakdown:
    """One forward pass (evaluation, generation without cache): base plus every TRM call."""
    trm_forward = 0.0
    if trm is not None:
        trm = resolve_trm(shape, trm)
        trm_forward = len(trm.resolve_layers(shape.num_layers)) * _trm_block_forward(
            shape, trm, context
        )
    return FlopBreakdown(
        base_forward_matmul=2 * (shape.num_layers * shape.layer_macs
                                 + shape.hidden_size * shape.vocab_size),
        base_forward_attention=shape.num_layers * attention_flops(shape.attention_width, context),
        trm_forward=trm_forward,
    )


def _trm_block_forward(shape: ModelShape, trm: TRMConfig, context: int) -> float:
    matmul, attention = trm_call_flops(trm, context)
    projections = 2 * 2 * _projection_macs(shape, trm)  # down and up
    return (projections + trm.total_calls * (matmul + attention) + trm.cycles * _halt_flops(trm)
            + trm_input_kv_flops(trm))


def _halt_flops(trm: TRMConfig) -> int:
    """Forward FLOPs of the halting head, read after every cycle (resolved config)."""
    return 2 * trm.width("hidden_size") if trm.halting else 0


def training_flops_per_token(
    shape: ModelShape,
    context: int,
    trainable: Trainable,
    *,
    grad_checkpointing: bool = False,
) -> FlopBreakdown:
    """One forward and backward pass per token for what `trainable` says carries gradient."""
    forward = forward_flops_per_token(shape, context, trainable.trm)
    status = backward_status(shape, trainable, grad_checkpointing=grad_checkpointing)
    layer_attention = attention_flops(shape.attention_width, context)
    input_macs = sum(lin.macs for lin in shape.linears if lin.reads_layer_input)
    head_macs = shape.hidden_size * shape.vocab_size
    trm_points = (
        trainable.trm.resolve_layers(shape.num_layers) if trainable.trm is not None else ()
    )

    act_grad = 0.0
    for state in status:
        if state != "none":
            skipped = input_macs if state == "partial" else 0
            act_grad += 2 * (shape.layer_macs - skipped) + 2 * layer_attention
    if trainable.embeddings or trm_points or any(state != "none" for state in status):
        act_grad += 2 * head_macs

    weight_grad = 0.0
    if trainable.base_layers_from is not None:
        trained_layers = max(0, shape.num_layers - trainable.base_layers_from)
        weight_grad += 2 * trained_layers * shape.layer_macs
    weight_grad += 2 * len(trainable.new_layers) * shape.layer_macs
    head_trains = trainable.embeddings if shape.tied_embeddings else trainable.head
    if head_trains:
        weight_grad += 2 * head_macs

    lora_forward = lora_backward = 0.0
    rank = trainable.lora_rank
    if rank:
        for state in status:
            for lin in shape.linears:
                lora_forward += 2 * rank * (lin.fan_in + lin.fan_out)
                input_needs_grad = state == "full" or not lin.reads_layer_input
                # B: weight and activation gradient; A: weight gradient (+ input gradient).
                lora_backward += 2 * rank * (2 * lin.fan_out + lin.fan_in)
                lora_backward += 2 * rank * lin.fan_in if input_needs_grad else 0

    trm_backward = 0.0
    if trainable.trm is not None:
        trm = resolve_trm(shape, trainable.trm)
        matmul, attention = trm_call_flops(trm, context)
        projection = 2 * _projection_macs(shape, trm)
        # up and down each need dW and dX (the block's input norm weight trains, so the
        # gradient must pass through down even where the base below needs none).
        # The halting head's loss reads the last cycle only: its dW and dy.
        per_block = (trm.grad_calls * (2 * matmul + 2 * attention) + 4 * projection
                     + 2 * _halt_flops(trm) + 2 * trm_input_kv_flops(trm))
        trm_backward = len(trm_points) * per_block

    recompute = 0.0
    if grad_checkpointing:
        lora_layer = lora_forward / shape.num_layers if rank else 0.0
        recompute = shape.num_layers * _recomputed_layer(shape, context, rank, lora_layer)

    return FlopBreakdown(
        base_forward_matmul=forward.base_forward_matmul,
        base_forward_attention=forward.base_forward_attention,
        base_activation_grad=act_grad,
        base_weight_grad=weight_grad,
        trm_forward=forward.trm_forward,
        trm_backward=trm_backward,
        lora_forward=lora_forward,
        lora_backward=lora_backward,
        recompute=recompute,
    )


def _recomputed_layer(shape: ModelShape, context: int, rank: int, lora_layer: float) -> float:
    """FLOPs per token gradient checkpointing re-runs of one decoder layer in backward: its
    forward but the last matmul (LoRA's B when adapted). PyTorch's non-reentrant checkpoint
    stops once the tensors backward needs are rebuilt; TRM blocks run in forward hooks outside
    the checkpointed `forward`, so they are not re-run."""
    last = shape.linears[-1]
    skipped = 0 if shape.saves_after_last_matmul else (
        2 * rank * last.fan_out if rank else 2 * last.macs
    )
    return (2 * shape.layer_macs + attention_flops(shape.attention_width, context) + lora_layer
            - skipped)


# --------------------------------------------------------------------------- step time


@dataclass(frozen=True)
class ComponentRates:
    """How fast each part of a phase-1 step runs on one machine, learnt from one measured step.

    One MFU for the whole step mispredicts across base sizes: the TRM's matmuls are narrow (its
    width, not the base's) and it runs many small ops per token, so it achieves far less than
    the base; and a base layer costs, beyond its matmuls, norms, activations and per-op dispatch
    that do not shrink with its width (on a CPU, or any small model). So: the base's FLOPs at
    the machine's matmul rate (probed) plus a fixed time per decoder layer (calibrated), and the
    TRM's FLOPs at the rate its blocks achieved timed alone. Learnt where the TRM dominates, this
    carries to bases where it does not.
    """

    matmul: float  # FLOP/s of this machine's matmuls at the step's shapes (a probe)
    layer_seconds: float  # per base decoder layer per step, beyond its matmuls (calibrated)
    trm: float  # FLOP/s of the TRM blocks, timed alone

    @classmethod
    def calibrate(cls, timings: ComponentTimings) -> ComponentRates:
        """From one measured micro-batch (its tokens, layers and FLOPs per token), the TRM
        blocks' share of its time, and the matmul rate probed on the same machine."""
        tokens, step = timings.micro_batch_tokens, timings.micro_batch_seconds
        base_flops, trm_flops = timings.base_flops_per_token, timings.trm_flops_per_token
        base_seconds = step - timings.trm_seconds
        if base_seconds <= 0 or (trm_flops > 0 and timings.trm_seconds <= 0):
            raise ValueError(f"TRM time {timings.trm_seconds:.3g} s must be within the step's "
                             f"{step:.3g} s")
        beyond = base_seconds - base_flops * tokens / timings.matmul_flops_per_s
        if beyond < 0:
            raise ValueError(f"the base ran faster than its FLOPs at the probed matmul rate "
                             f"({timings.matmul_flops_per_s / 1e9:.3g} GFLOP/s): the probe read "
                             "low, probe again on a quiet machine")
        trm_rate = trm_flops * tokens / timings.trm_seconds if trm_flops > 0 else math.inf
        return cls(timings.matmul_flops_per_s, beyond / timings.layers, trm_rate)

    def step_seconds(self, flops: FlopBreakdown, tokens: float, layers: int) -> float:
        base_flops, trm_flops = component_flops(flops)
        trm = trm_flops * tokens / self.trm if trm_flops else 0.0
        return base_flops * tokens / self.matmul + layers * self.layer_seconds + trm


def component_flops(flops: FlopBreakdown) -> tuple[float, float]:
    """(base, TRM) model FLOPs per token of a step (recomputation counts with the base)."""
    trm = flops.trm_forward + flops.trm_backward
    return flops.executed - trm, trm


def component_timings(flops: FlopBreakdown, *, micro_batch_tokens: int, layers: int,
                      micro_batch_seconds: float, steps_timed: int, trm_seconds: float,
                      matmul_flops_per_s: float) -> ComponentTimings:
    """A measured micro-batch, with the planner's split of its FLOPs, as `calibrate` takes it."""
    base, trm = component_flops(flops)
    return ComponentTimings(micro_batch_tokens=micro_batch_tokens,
                            micro_batch_seconds=micro_batch_seconds,
                            steps_timed=steps_timed, trm_seconds=trm_seconds,
                            matmul_flops_per_s=matmul_flops_per_s, layers=layers,
                            base_flops_per_token=base, trm_flops_per_token=trm)


# --------------------------------------------------------------------------- frozen prefix


@dataclass(frozen=True)
class PrefixCachePlan:
    """What caching the frozen base below the lowest TRM block saves and costs (phase 1).

    A replayed token skips `flops_saved_per_token` and reads `bytes_per_token` instead; the
    first epoch computes and stores every block, each later epoch saves `saved_flops_per_epoch`.
    It pays off when reading a token's stored state is faster than recomputing it and the
    store fits `max_bytes`.
    """

    layer: int  # decoder layer whose output is stored: the lowest injection point
    flops_saved_per_token: float
    bytes_per_token: int
    dataset_tokens: float  # distinct training tokens: what the store holds
    storage_bytes: float
    saved_flops_per_epoch: float  # every epoch after the first
    recompute_seconds_per_token: float  # at the device's peak x MFU
    read_seconds_per_token: float  # at `read_bytes_per_s`
    max_bytes: float
    pays_off: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def frozen_prefix_flops_per_token(shape: ModelShape, context: int, layer: int, *,
                                  grad_checkpointing: bool = False) -> float:
    """Training FLOPs per token a replayed micro-batch does not run: the forward of decoder
    layers 0..`layer` (with gradient checkpointing, which makes every layer run a full
    backward, also their activation gradient and recomputation)."""
    layers = layer + 1
    attention = attention_flops(shape.attention_width, context)
    saved = layers * (2 * shape.layer_macs + attention)
    if grad_checkpointing:
        saved += layers * (2 * shape.layer_macs + 2 * attention
                           + _recomputed_layer(shape, context, 0, 0.0))
    return float(saved)


def prefix_cache_plan(shape: ModelShape, trm: TRMConfig, context: int, *,
                      dataset_tokens: float, value_bytes: int, peak_flops: float, mfu: float,
                      read_bytes_per_s: float, max_bytes: float,
                      grad_checkpointing: bool = False) -> PrefixCachePlan:
    """The economics of the frozen-prefix cache for a phase-1 run over `dataset_tokens`
    distinct tokens whose hidden states are `value_bytes` per value."""
    layer = resolve_trm(shape, trm).resolve_layers(shape.num_layers)[0]
    saved = frozen_prefix_flops_per_token(shape, context, layer,
                                          grad_checkpointing=grad_checkpointing)
    per_token = shape.hidden_size * value_bytes
    storage = dataset_tokens * per_token
    recompute = saved / (peak_flops * mfu)
    read = per_token / read_bytes_per_s
    if storage > max_bytes:
        pays, reason = False, (f"the store would take {storage / GIB:.2f} GiB, over the "
                               f"{max_bytes / GIB:.2f} GiB allowed")
    elif read >= recompute:
        pays, reason = False, (f"reading a token's state ({read * 1e6:.3g} us) is not faster "
                               f"than recomputing layers 0..{layer} ({recompute * 1e6:.3g} us)")
    else:
        pays, reason = True, (f"reading a token's state takes {read / recompute:.2g}x the time "
                              f"of recomputing layers 0..{layer}")
    return PrefixCachePlan(layer, saved, per_token, dataset_tokens, storage,
                           saved * dataset_tokens, recompute, read, max_bytes, pays, reason)


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class Precision:
    """Bytes per value of each kind of tensor a training run holds."""

    name: str
    activation: int  # a saved activation
    frozen_param: int  # a frozen weight
    trainable_param: int  # weight + master copy + gradient + 2 AdamW moments
    grad: int  # one gradient value (DDP's bucket copy, FSDP's unsharded layer gradient)


PRECISIONS = {
    # bf16 weights and activations, fp32 master weights and AdamW moments (the GPU plan).
    "bf16": Precision("bf16", 2, BYTES_PER_FROZEN_PARAM, BYTES_PER_TRAINABLE_PARAM, 2),
    # fp32 throughout (the CPU default): weight 4 + gradient 4 + 2 moments 8.
    "fp32": Precision("fp32", 4, 4, 16, 4),
    # fp32 weights under bf16 autocast (accelerate's mixed_precision: bf16): activations mostly
    # bf16, norms and the loss in fp32 as in "bf16". Not checked against saved tensors yet.
    "bf16-autocast": Precision("bf16-autocast", 2, 4, 16, 4),
}
FP32 = 4


def precision_name(dtype: str, bf16_autocast: bool = False) -> str:
    """The planner's precision for weights of `dtype` ('float32', 'bfloat16')."""
    if dtype == "bfloat16":
        return "bf16"
    if dtype == "float32":
        return "bf16-autocast" if bf16_autocast else "fp32"
    raise ValueError(f"no planner precision for {dtype} weights (known: bfloat16, float32)")
CUDA_CONTEXT_BYTES = GIB  # CUDA context, cuBLAS workspace and NCCL buffers per GPU (assumed)
ADAMW_TEMPORARY_BYTES = 4  # per trainable parameter: foreach AdamW's fp32 sqrt(v) temporary
FSDP_GATHERED_LAYERS = 2  # the layer running and the one prefetched, unsharded


def _norm_bytes(width: int, a: int, *, weight_trains: bool, output_saved: bool) -> int:
    """An RMSNorm computed in fp32 (Hugging Face's and ours) keeps its fp32 input (in fp32 runs,
    the input itself); its normed value before the weight when the weight trains; its output
    when the next matmul's weight (or a LoRA adapter on it) trains."""
    return FP32 * width + a * width * (int(weight_trains) + int(output_saved))


def _layer_bytes(width: int, attention: int, kv: int, inner: int, a: int, kind: str,
                 gated: bool = True) -> int:
    """Bytes per token one pre-norm decoder layer saves for backward.

    `kind`: 'trainable' (all weights train), 'lora' (frozen weights, adapters train),
    'frozen' (no weight trains, the gradient passes through). Attention keeps q, k, v and its
    output (SDPA's memory-efficient kernels keep no score matrix; `o_proj` reads a view of the
    output); a SwiGLU MLP keeps gate, silu(gate) and up, and the product when `down_proj`
    trains. GPT-2: LayerNorms keep their input, GELU its input and output (tanh form).
    """
    weights, inputs = kind == "trainable", kind != "frozen"
    if gated:
        norm = _norm_bytes(width, a, weight_trains=weights, output_saved=inputs)
        mlp = a * inner * (3 + int(inputs))
    else:
        norm = a * width * (1 + int(inputs))
        mlp = a * inner * (GELU_SAVED_PER_INNER + int(inputs))
    return 2 * norm + a * (2 * attention + 2 * kv) + mlp


GELU_SAVED_PER_INNER = 3  # GPT-2's tanh GELU in eager ops: x, x^3 term and tanh output


def decoder_layer_bytes(shape: ModelShape, precision: Precision, kind: str,
                        lora_rank: int = 0) -> int:
    """Saved bytes per token of one base decoder layer of `kind` (see `_layer_bytes`)."""
    if kind == "none":
        return 0
    a = precision.activation
    saved = _layer_bytes(shape.hidden_size, shape.attention_width, shape.kv_width,
                         shape.intermediate_size, a, "frozen" if kind == "lora" else kind,
                         shape.gated_mlp)
    if kind == "lora":
        # PEFT keeps adapters in fp32 (autocast_adapter_dtype) and casts each adapter's input
        # to it: in fp32 runs the casts are no-ops and the inputs are shared; in bf16 every
        # adapter keeps its own fp32 copy. Each keeps its A output for B's gradient.
        if a == FP32:
            saved += FP32 * (2 * shape.hidden_size + shape.attention_width
                             + shape.intermediate_size)
        else:
            saved += FP32 * sum(linear.fan_in for linear in shape.linears)
        saved += FP32 * lora_rank * len(shape.linears)
    return saved


def trm_block_bytes(shape: ModelShape, trm: TRMConfig, precision: Precision) -> int:
    """Saved bytes per token of one TRM block: every layer of f in each gradient-carrying call,
    the random core's closing norm per call, and its down/up projections once."""
    trm = resolve_trm(shape, trm)
    a = precision.activation
    d = trm.width("hidden_size")
    layer = _layer_bytes(d, d, _kv_width(trm), trm.width("ffn_size"), a, "trainable")
    per_call = trm.num_layers * layer
    once = 0
    if not trm.pretrained:
        per_call += _norm_bytes(d, a, weight_trains=True, output_saved=False)
        once = _norm_bytes(shape.hidden_size, a, weight_trains=True, output_saved=True) + a * d
    if trm.halting:
        once += trm.grad_cycles * a * d
    return trm.grad_calls * per_call + once


def head_bytes(shape: ModelShape, precision: Precision, trains: bool) -> int:
    """Saved bytes per token of the final norm, LM head and loss: the fp32 log-softmax over
    the vocabulary, the norm's fp32 input, and the norm's values when norm and head train."""
    return (FP32 * shape.vocab_size
            + _norm_bytes(shape.hidden_size, precision.activation, weight_trains=trains,
                          output_saved=trains))


def layer_kinds(shape: ModelShape, trainable: Trainable,
                grad_checkpointing: bool = False) -> list[str]:
    """Per base decoder layer, what it saves: 'none' (no gradient reaches it), 'frozen',
    'lora' or 'trainable' (see `backward_status`)."""
    kinds = []
    for index, state in enumerate(backward_status(shape, trainable,
                                                  grad_checkpointing=grad_checkpointing)):
        trains = (trainable.base_layers_from is not None and index >= trainable.base_layers_from
                  ) or index in trainable.new_layers
        if state == "none" and not trains:
            kinds.append("none")
        elif trains:
            kinds.append("trainable")
        else:
            kinds.append("lora" if trainable.lora_rank else "frozen")
    return kinds


def activation_bytes_per_token(
    shape: ModelShape, trainable: Trainable, *, grad_checkpointing: bool = False,
    precision: Precision = PRECISIONS["bf16"],
) -> dict[str, float]:
    """Activation memory per token of micro-batch, by part (checked against autograd's saved
    tensors on real modules: tests/test_memory_model.py).

    With (Hugging Face) checkpointing each decoder layer keeps only its input and one is
    rebuilt at a time; TRM blocks sit outside the checkpoint and keep everything.
    """
    kinds = layer_kinds(shape, trainable, grad_checkpointing)
    per_layer = [decoder_layer_bytes(shape, precision, kind, trainable.lora_rank)
                 for kind in kinds]
    if grad_checkpointing:
        kept = sum(kind != "none" for kind in kinds)
        base = precision.activation * shape.hidden_size * kept + max(per_layer, default=0)
    else:
        base = sum(per_layer)
    trm_points = (
        trainable.trm.resolve_layers(shape.num_layers) if trainable.trm is not None else ()
    )
    trm_bytes = (trm_block_bytes(shape, trainable.trm, precision) * len(trm_points)
                 if trainable.trm is not None else 0)
    head = head_bytes(shape, precision, trainable.head or trainable.embeddings)
    return {
        "base_layers": float(base),
        "trm_blocks": float(trm_bytes),
        "logits": float(head),
        "total": float(base + trm_bytes + head),
    }


def memory_per_gpu(
    *,
    frozen_params: int,
    trainable_params: int,
    activation_bytes_per_token: float,
    micro_batch_tokens: int,
    gpus: int,
    sharding: str,
    layer_params: int = 0,
    precision: Precision = PRECISIONS["bf16"],
    device_is_gpu: bool = True,
) -> dict[str, float]:
    """GiB per device, by named term. DDP replicates weights and optimizer state and keeps a
    bucket copy of the gradients; FSDP/ZeRO-3 shards both and unshards `FSDP_GATHERED_LAYERS`
    layers at a time. AdamW's foreach temporaries and (GPU) the CUDA/NCCL context are headroom
    every run needs."""
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {', '.join(SHARDINGS)}, got {sharding!r}")
    shards = gpus if sharding == "fsdp" else 1
    terms = {
        "frozen_weights": frozen_params * precision.frozen_param / shards,
        "trainable_weights_grads_adamw": trainable_params * precision.trainable_param / shards,
        "activations": activation_bytes_per_token * micro_batch_tokens,
        "adamw_temporaries": trainable_params * ADAMW_TEMPORARY_BYTES / shards,
        "communication_buffers": (
            (FSDP_GATHERED_LAYERS * layer_params * precision.frozen_param
             + min(trainable_params, layer_params) * precision.grad) if sharding == "fsdp"
            and gpus > 1 else trainable_params * precision.grad if gpus > 1 else 0),
        "cuda_context": CUDA_CONTEXT_BYTES if device_is_gpu else 0,
    }
    gib = {name: value / GIB for name, value in terms.items()}
    return {**gib, "total": sum(gib.values())}


def min_gpus(
    *,
    frozen_params: int,
    trainable_params: int,
    activation_bytes_per_token: float,
    micro_batch_tokens: int,
    memory_gib: float,
    sharding: str,
    layer_params: int = 0,
    precision: Precision = PRECISIONS["bf16"],
) -> int | None:
    """Fewest GPUs whose memory holds the run (None if none up to MAX_GPUS does).

    More DDP replicas never lower per-GPU memory, so DDP fits on one GPU or on none; FSDP's
    per-GPU need only falls with more GPUs, so the first count that fits is the answer.
    """
    def need(gpus: int) -> float:
        return memory_per_gpu(
            frozen_params=frozen_params, trainable_params=trainable_params,
            activation_bytes_per_token=activation_bytes_per_token,
            micro_batch_tokens=micro_batch_tokens, gpus=gpus, sharding=sharding,
            layer_params=layer_params, precision=precision)["total"]

    if need(1) <= memory_gib:
        return 1
    if sharding == "ddp" or need(MAX_GPUS) > memory_gib:
        return None
    low, high = 2, MAX_GPUS  # need() falls with gpus: bisect for the first that fits
    while low < high:
        middle = (low + high) // 2
        if need(middle) <= memory_gib:
            high = middle
        else:
            low = middle + 1
    return low


# --------------------------------------------------------------------------- time and money


def default_mfu(gpus: int) -> float:
    return MFU_MULTI_GPU if gpus > 1 else MFU_SINGLE_GPU


def gpu_hours_for(flops: float, device: Device, mfu: float) -> float:
    return flops / (device.peak_flops * mfu) / 3600.0


def tokens_for_gpu_hours(
    gpu_hours: float, flops_per_token: float, device: Device, mfu: float
) -> float:
    """Tokens a budget of device-hours buys at an MFU: the inverse of `gpu_hours_for`."""
    return gpu_hours * 3600.0 * device.peak_flops * mfu / flops_per_token


def project(
    flops: float,
    device: Device,
    gpus: int,
    mfu: float,
    *,
    usd_per_gpu_hour: float | None = None,
    grid_kg_co2e_per_kwh: float = GRID_KG_CO2E_PER_KWH,
    pue: float = 1.0,
    power_utilisation: float = POWER_UTILISATION,
) -> dict[str, float]:
    """Hours, dollars, energy and CO2e of executing `flops` on `gpus` devices at `mfu`."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    price = device.usd_per_hour if usd_per_gpu_hour is None else usd_per_gpu_hour
    hours = gpu_hours_for(flops, device, mfu)
    kwh = hours * device.tdp_w * power_utilisation / 1000.0 * pue
    return {
        "gpu_hours": hours,
        "wall_hours": hours / gpus,
        "usd_per_gpu_hour": price,
        "usd": hours * price,
        "energy_kwh": kwh,
        "co2e_kg": kwh * grid_kg_co2e_per_kwh,
    }


@dataclass(frozen=True)
class Calibration:
    """The MFU a metered run achieved, how its conditions differ from the plan's, and what a
    phase-1 run measured of its parts (None for other stages and older records)."""

    mfu: float
    mismatches: list[str]
    components: ComponentTimings | None = None


def mfu_from_calibration(path: str | Path, *, device: str, gpus: int, precision: str,
                         sharding: str) -> Calibration:
    """The `mfu` of a successful metered run (`metrics/cost/<stage>.json`), with every way its
    device kind, device count, precision and sharding differ from the plan's: an MFU measured
    on a 2-core CPU in fp32 says nothing about 16 A100s in bf16."""
    from millennial.cost.record import CostRecord

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: calibration file not found")
    record = CostRecord.read(path)
    if record.status != "ok":
        raise ValueError(f"{path}: a {record.status} run cannot calibrate (status must be ok)")
    mfu = record.mfu
    if mfu is None or not 0 < mfu <= 1:
        raise ValueError(f"{path}: key 'mfu' must be a number in (0, 1], got {mfu!r}")
    mismatches = []
    if record.device_kind != device:
        mismatches.append(f"device {record.device_kind} vs the plan's {device}")
    if record.device_count != gpus:
        mismatches.append(f"{record.device_count} device(s) vs the plan's {gpus}")
    planned = record.planned
    if planned is None or planned.precision is None:
        mismatches.append("its precision and sharding are not recorded")
    else:
        if planned.precision != precision:
            mismatches.append(f"precision {planned.precision} vs the plan's {precision}")
        if gpus > 1 and planned.sharding != sharding:
            mismatches.append(f"sharding {planned.sharding} vs the plan's {sharding}")
    return Calibration(mfu, mismatches, record.components)


def mfu_from_components(timings: ComponentTimings, shape: ModelShape, trm: TRMConfig, *,
                        seq_len: int, micro_batch_size: int, grad_checkpointing: bool,
                        peak_flops: float) -> float:
    """The MFU a phase-1 micro-batch of `shape` would achieve on the machine `timings` were
    measured on, predicted per component (`ComponentRates`): one MFU learnt on one base
    mispredicts others, as the TRM's share of the FLOPs and a layer's fixed cost change."""
    rates = ComponentRates.calibrate(timings)
    flops = training_flops_per_token(shape, seq_len, Trainable.for_phase("phase1", trm),
                                     grad_checkpointing=grad_checkpointing)
    tokens = micro_batch_size * seq_len
    achieved = flops.executed * tokens / rates.step_seconds(flops, tokens, shape.num_layers)
    mfu = achieved / peak_flops
    if not 0 < mfu <= 1:
        raise ValueError(f"per-component rates predict {achieved / 1e9:.3g} GFLOP/s, "
                         f"{mfu:.3g} of the device's peak: calibrate on a quiet machine")
    return mfu


# --------------------------------------------------------------------------- the plan


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class ServingCost:
    """What one generated token costs the base and the hybrid: forward FLOPs at a context, and
    the bytes it adds to the KV cache (bf16 keys and values)."""

    context: int
    base_flops_per_token: float
    hybrid_flops_per_token: float
    base_kv_bytes_per_token: int
    hybrid_kv_bytes_per_token: int  # the base's plus the TRM blocks'
    trm_attention: str | None

    @property
    def flops_ratio(self) -> float:
        return self.hybrid_flops_per_token / self.base_flops_per_token

    @property
    def kv_ratio(self) -> float:
        return self.hybrid_kv_bytes_per_token / self.base_kv_bytes_per_token

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops_ratio": self.flops_ratio, "kv_ratio": self.kv_ratio}


def kv_cache_bytes_per_token(shape: ModelShape, trm: TRMConfig | None = None,
                             bytes_per_value: int = BYTES_PER_ACTIVATION) -> int:
    """Bytes one token adds to the decoding cache: keys and values of every base layer, plus
    every cached slot of every TRM block (`TRMConfig.cached_slots`)."""
    base = shape.num_layers * 2 * shape.kv_width * bytes_per_value
    if trm is None:
        return base
    trm = resolve_trm(shape, trm)
    points = len(trm.resolve_layers(shape.num_layers))
    return base + points * trm.cached_slots * 2 * _kv_width(trm) * bytes_per_value


def inference_memory(shape: ModelShape, trm: TRMConfig | None, *, weight_bytes: int,
                     bytes_per_value: int, decode_rows: int, decode_tokens: int,
                     score_rows: int, score_tokens: int) -> dict[str, float]:
    """GiB an evaluation holds at its peak: the weights, the KV cache of one decoding batch,
    and the logits of one scoring batch (in the model's dtype, an fp32 copy and the fp32
    log-softmax of the loss)."""
    terms = {
        "weights": weight_bytes,
        "kv_cache": decode_rows * decode_tokens * kv_cache_bytes_per_token(shape, trm,
                                                                           bytes_per_value),
        "logits": score_rows * score_tokens * shape.vocab_size * (bytes_per_value + 2 * FP32),
    }
    gib = {name: value / GIB for name, value in terms.items()}
    return {**gib, "total": sum(gib.values())}


def serving_cost(shape: ModelShape, trm: TRMConfig | None, context: int) -> ServingCost:
    """Decode FLOPs and KV-cache bytes per token of the base and the hybrid at `context`."""
    return ServingCost(
        context=context,
        base_flops_per_token=forward_flops_per_token(shape, context).model,
        hybrid_flops_per_token=forward_flops_per_token(shape, context, trm).model,
        base_kv_bytes_per_token=kv_cache_bytes_per_token(shape),
        hybrid_kv_bytes_per_token=kv_cache_bytes_per_token(shape, trm),
        trm_attention=trm.attention if trm is not None else None,
    )


@dataclass(frozen=True)
class Plan:
    """A costed training run; `to_dict` is the JSON `millennial plan --json` prints."""

    base: str
    phase: str
    seq_len: int
    base_params: int
    base_params_breakdown: dict[str, int]
    trm_params: int
    trm_params_breakdown: dict[str, int] | None
    lora_params: int
    trainable_params: int
    frozen_params: int
    flops_per_token: float  # model FLOPs (no recomputation)
    executed_flops_per_token: float  # with recomputation
    flops_per_token_breakdown: dict[str, float]
    tokens: float
    tokens_source: str
    total_flops: float  # model FLOPs: what the MFU is taken against
    executed_flops: float
    gpu: str
    gpus: int
    peak_flops_per_s: float
    mfu: float
    mfu_source: str
    gpu_hours: float
    wall_hours: float
    usd_per_gpu_hour: float
    usd: float
    energy_kwh: float
    co2e_kg: float
    sharding: str
    grad_checkpointing: bool
    micro_batch_tokens: int
    precision: str
    memory_per_gpu_gib: float
    memory_breakdown_gib: dict[str, float]  # named terms, headroom included
    activation_bytes_per_token: dict[str, float]
    device_memory_gib: float
    fits: bool
    min_gpus: int | None
    trm: dict[str, Any] | None
    serving: dict[str, Any]  # ServingCost at seq_len: decode FLOPs and KV bytes per token
    prefix_cache: dict[str, Any] | None  # phase 1: PrefixCachePlan over the dataset's tokens
    assumptions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(
    shape: ModelShape,
    *,
    phase: str,
    device: Device,
    trm: TRMConfig | None = None,
    lora_rank: int = 0,
    tokens: float | None = None,
    budget_gpu_hours: float | None = None,
    seq_len: int = 4096,
    micro_batch_size: int = 1,
    gpus: int = 1,
    usd_per_gpu_hour: float | None = None,
    mfu: float | None = None,
    mfu_source: str | None = None,
    sharding: str = "fsdp",
    grad_checkpointing: bool = False,
    grid_kg_co2e_per_kwh: float = GRID_KG_CO2E_PER_KWH,
    pue: float = 1.0,
    base_name: str = "",
    precision: str = "bf16",
    dataset_tokens: float | None = None,
    prefix_read_bytes_per_s: float = 2 * GIB,
    prefix_max_bytes: float = 8 * GIB,
) -> Plan:
    """Cost one training run. Tokens come from `tokens`, from a GPU-hour budget, or (scratch
    only) from the Chinchilla budget of 20 tokens per trained parameter. For phase 1 the plan
    includes the frozen-prefix cache over `dataset_tokens` distinct tokens (default: every
    token is distinct, one epoch, so nothing would be reused)."""
    trm = trm if phase in ("phase1", "phase2") else None
    trainable = Trainable.for_phase(phase, trm, lora_rank)
    base = base_parameters(shape)
    trm_parts = trm_parameters(shape, trm) if trm is not None else None
    trm_total = trm_parts["total"] if trm_parts else 0
    lora_total = lora_parameters(shape, lora_rank) if phase == "lora" else 0
    if phase in ("phase2", "scratch"):
        trainable_params, frozen_params = base["total"] + trm_total, 0
    else:
        trainable_params, frozen_params = trm_total + lora_total, base["total"]

    flops = training_flops_per_token(
        shape, seq_len, trainable, grad_checkpointing=grad_checkpointing
    )
    chosen_mfu = default_mfu(gpus) if mfu is None else mfu
    source = mfu_source or (
        "given" if mfu is not None else
        f"default {'multi' if gpus > 1 else 'single'}-GPU figure (reference.md s3)"
    )
    if device.name == CPU and mfu is None:
        source += "; a GPU figure applied to a CPU: pass --mfu or --calibrate"
    if tokens is not None and budget_gpu_hours is not None:
        raise ValueError("give tokens or a GPU-hour budget, not both")
    if tokens is not None:
        tokens_source = "given"
    elif budget_gpu_hours is not None:
        tokens = tokens_for_gpu_hours(budget_gpu_hours, flops.model, device, chosen_mfu)
        tokens_source = f"bought by {budget_gpu_hours:,.0f} GPU-hours"
    elif phase == "scratch":
        tokens = CHINCHILLA_TOKENS_PER_PARAM * float(trainable_params)
        tokens_source = f"Chinchilla: {CHINCHILLA_TOKENS_PER_PARAM} tokens per parameter"
    else:
        raise ValueError(f"{phase}: give a token count (only scratch defaults to Chinchilla)")
    total = tokens * flops.model
    cost = project(
        total, device, gpus, chosen_mfu, usd_per_gpu_hour=usd_per_gpu_hour,
        grid_kg_co2e_per_kwh=grid_kg_co2e_per_kwh, pue=pue,
    )

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    bytes_of = PRECISIONS[precision]
    act = activation_bytes_per_token(shape, trainable, grad_checkpointing=grad_checkpointing,
                                     precision=bytes_of)
    micro_tokens = micro_batch_size * seq_len
    sizes = dict(frozen_params=frozen_params, trainable_params=trainable_params,
                 activation_bytes_per_token=act["total"], micro_batch_tokens=micro_tokens,
                 sharding=sharding, layer_params=shape.layer_params, precision=bytes_of)
    memory = memory_per_gpu(gpus=gpus, device_is_gpu=device.name != CPU, **sizes)
    fewest = min_gpus(memory_gib=device.memory_gib, **sizes)
    return Plan(
        base=base_name,
        phase=phase,
        seq_len=seq_len,
        base_params=base["total"],
        base_params_breakdown=base,
        trm_params=trm_total,
        trm_params_breakdown=trm_parts,
        lora_params=lora_total,
        trainable_params=trainable_params,
        frozen_params=frozen_params,
        flops_per_token=flops.model,
        executed_flops_per_token=flops.executed,
        flops_per_token_breakdown=flops.to_dict(),
        tokens=tokens,
        tokens_source=tokens_source,
        total_flops=total,
        executed_flops=tokens * flops.executed,
        gpu=device.name,
        gpus=gpus,
        peak_flops_per_s=device.peak_flops,
        mfu=chosen_mfu,
        mfu_source=source,
        gpu_hours=cost["gpu_hours"],
        wall_hours=cost["wall_hours"],
        usd_per_gpu_hour=cost["usd_per_gpu_hour"],
        usd=cost["usd"],
        energy_kwh=cost["energy_kwh"],
        co2e_kg=cost["co2e_kg"],
        sharding=sharding,
        grad_checkpointing=grad_checkpointing,
        micro_batch_tokens=micro_tokens,
        precision=precision,
        memory_per_gpu_gib=memory["total"],
        memory_breakdown_gib=memory,
        activation_bytes_per_token=act,
        device_memory_gib=device.memory_gib,
        fits=memory["total"] <= device.memory_gib,
        min_gpus=fewest,
        trm=trm.to_dict() if trm is not None else None,
        serving=serving_cost(shape, trm, seq_len).to_dict(),
        prefix_cache=prefix_cache_plan(
            shape, trm, seq_len, dataset_tokens=min(dataset_tokens or tokens, tokens),
            value_bytes=bytes_of.frozen_param, peak_flops=device.peak_flops, mfu=chosen_mfu,
            read_bytes_per_s=prefix_read_bytes_per_s, max_bytes=prefix_max_bytes,
            grad_checkpointing=grad_checkpointing).to_dict() if phase == "phase1" and trm
        else None,
        assumptions={
            "device": device.source,
            "price": "given" if usd_per_gpu_hour is not None else "device table default",
            "power": f"{POWER_UTILISATION:g} x TDP average draw, PUE {pue:g}",
            "grid_kg_co2e_per_kwh": grid_kg_co2e_per_kwh,
            "bytes_per_param": f"{precision}: frozen {bytes_of.frozen_param}, trainable "
                               f"{bytes_of.trainable_param} (weight, master copy, grad, 2 AdamW "
                               "moments)",
            "attention": "full-context QK^T and AV (PaLM convention; causal kernels do ~half)",
            "mfu": "model FLOPs / (time x peak), PaLM definition: recomputation excluded",
            "supervision": "one supervision step per batch (no TRM deep supervision)",
            "memory": f"GiB; headroom named in memory_breakdown_gib: CUDA/NCCL context "
                      f"{CUDA_CONTEXT_BYTES / GIB:g} GiB per GPU, AdamW foreach temporaries "
                      f"{ADAMW_TEMPORARY_BYTES} B per trainable parameter, FSDP's "
                      f"{FSDP_GATHERED_LAYERS} unsharded layers plus one layer's gradient, "
                      "DDP's gradient buckets; allocator fragmentation not included",
        },
    )
