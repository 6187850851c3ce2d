"""The injected TRM block: a recursive core f and what connects it to its host layer.

Readable in one sitting on purpose (nanoGPT style). Shapes: B batch, S new tokens, H base width,
d TRM width. The recursion is TRM's (arXiv:2510.04871) adapted to a causal LM:

    x = down(norm(h))                      # random core: narrow width d
    repeat T cycles:                       # all but the last `grad_cycles` under no_grad
        repeat n times: z = f(x + y + z)
        y = f(y + z)
    h_out = h + up(y)                      # up is zero-initialised: the hybrid starts as the base

f is a small pre-norm transformer with causal attention that honours padding, rotary positions
taken from the base's own position ids, grouped-query attention and a SwiGLU MLP. With
`attention: input` its attention reads keys/values computed once per forward from x (each layer
of f its own), so a decoding cache holds one set per layer of f instead of one per call.

A pretrained core (LLaMA Pro's initialisation) is a copy of the host's own layers at the base's
width, output projections zeroed, and f(u) is what those layers add to u. The answer y is the
residual stream itself, updated like a residual layer:

    x = y = h, z = 0
    repeat T cycles: n times z = f(x + y + z); then y = y + f(y + z)
    h_out = y                              # f is 0 at init: again the hybrid starts as the base

With z = 0 and one answer update this is exactly LLaMA Pro's copied block, h + f(h).

A halting head (TRM's Q-head, `halting: true`) reads y after every cycle and predicts, per token,
whether the hybrid's next-token prediction from this state is right. Training keeps the last
cycle's logit for its loss (`millennial.hybrid.injection.halting_loss`); evaluation stops a token
once sigmoid(q) > `halt_threshold` and keeps its (y, z) through the remaining cycles. A token's
halting depends only on its own state, which depends only on earlier tokens, so cached decoding
stays exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from millennial.hybrid.config import TRMConfig

RANDOM_CORE_NORM_EPS = 1e-6
HALT_INIT_BIAS = -5.0  # TRM's: the head starts out predicting "not done" for every token


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = RANDOM_CORE_NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float()  # one fp32 copy, kept once for backward (bf16 runs)
        variance = wide.pow(2).mean(-1, keepdim=True)
        return (wide * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def rotary_tables(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (B, 1, S, head_dim) for integer `positions` of shape (B, S)."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = 1.0 / (theta ** (exponents / head_dim))
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class KVStore(Protocol):
    """Keys and values of past tokens for every (call of f, layer of f) of one block.

    The recursion at a position depends only on earlier positions, so each call's keys and values
    for past tokens never change: caching them makes incremental decoding exact. The store
    (`millennial.hybrid.injection.TRMCache`) keeps them inside the HF cache object.
    """

    past: int  # tokens cached before this forward

    def key_length(self, seq: int) -> int:
        """Length of the keys `update` returns for `seq` new tokens (a static cache: all slots)."""
        ...

    def update(self, slot: tuple[int, int], keys: torch.Tensor,
               values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' keys/values (B, heads, S, head_dim); return all of them."""
        ...


@dataclass
class Attend:
    """What every attention call in one block forward shares: positions, mask, cache."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None  # (B, 1, S, keys) bool, True = may attend; None = plain causal
    cache: KVStore | None
    # attention: input: each layer of f's keys/values from the block input, computed once
    input_keys: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class HaltStats:
    """Cycles the tokens of evaluation forwards ran before halting (mean = cycles / tokens)."""

    tokens: int = 0
    cycles: int = 0

    @property
    def mean_cycles(self) -> float | None:
        return self.cycles / self.tokens if self.tokens else None


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        width = config.width("hidden_size")
        self.num_heads, self.num_kv_heads = config.width("num_heads"), config.kv_heads
        kv_width = self.num_kv_heads * (width // self.num_heads)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, kv_width, bias=False)
        self.v_proj = nn.Linear(width, kv_width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)

    def _heads(self, t: torch.Tensor, count: int) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], count, -1).transpose(1, 2)

    def keys_values(self, x: torch.Tensor, attend: Attend,
                    slot: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of `x`'s tokens, with the cached ones of past tokens before them."""
        k = apply_rotary(self._heads(self.k_proj(x), self.num_kv_heads), attend.cos, attend.sin)
        v = self._heads(self.v_proj(x), self.num_kv_heads)
        return attend.cache.update(slot, k, v) if attend.cache is not None else (k, v)

    def forward(self, x: torch.Tensor, attend: Attend, slot: tuple[int, int]) -> torch.Tensor:
        batch, seq, width = x.shape
        q = apply_rotary(self._heads(self.q_proj(x), self.num_heads), attend.cos, attend.sin)
        if attend.input_keys is not None:
            k, v = attend.input_keys[slot[1]]
        else:
            k, v = self.keys_values(x, attend, slot)
        grouped = self.num_kv_heads != self.num_heads
        if attend.mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1, enable_gqa=grouped)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend.mask,
                                                 enable_gqa=grouped)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, width))


class SwiGLU(nn.Module):
    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        width, inner = config.width("hidden_size"), config.width("ffn_size")
        self.gate_proj = nn.Linear(width, inner, bias=False)
        self.up_proj = nn.Linear(width, inner, bias=False)
        self.down_proj = nn.Linear(inner, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class CoreLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TRMConfig, norm_eps: float) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.width("hidden_size"), norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = RMSNorm(config.width("hidden_size"), norm_eps)
        self.mlp = SwiGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attend: Attend, slot: tuple[int, int]) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), attend, slot))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class RecursiveCore(nn.Module):
    """The network f, called T*(n+1) times per block.

    A random core ends in a norm that keeps states bounded over many calls. A pretrained core
    returns only what its layers add to the residual stream (zero while its output projections
    are), so its states live on the base's scale.
    """

    def __init__(self, config: TRMConfig, norm_eps: float = RANDOM_CORE_NORM_EPS) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CoreLayer(config, norm_eps) for _ in range(config.num_layers))
        self.norm = None if config.pretrained else RMSNorm(config.width("hidden_size"))

    def forward(self, x: torch.Tensor, attend: Attend, call: int) -> torch.Tensor:
        out = x
        for index, layer in enumerate(self.layers):
            out = layer(out, attend, (call, index))
        return out - x if self.norm is None else self.norm(out)

    def input_keys(self, x: torch.Tensor,
                   attend: Attend) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys/values of the block input (attention: input), cached in slot 0."""
        return {index: layer.attn.keys_values(layer.attn_norm(x), attend, (0, index))
                for index, layer in enumerate(self.layers)}


class TRMBlock(nn.Module):
    """One injection point: projections to and from the TRM width around a (maybe shared) core."""

    def __init__(
        self,
        base_width: int,
        config: TRMConfig,
        rope_theta: float,
        core: RecursiveCore | None,
        norm_eps: float = RANDOM_CORE_NORM_EPS,
    ) -> None:
        super().__init__()
        self.config = config
        self.rope_theta = rope_theta
        self.enabled = True
        # Deep supervision (TRM's N_sup steps per batch) carries the detached (y, z) of one step
        # into the next; `carry` is None outside it, and the recursion starts afresh.
        self.keep_carry = False
        self.carry: tuple[torch.Tensor, torch.Tensor] | None = None
        # The halting head; in training the last cycle's logits (B, S) wait here for the loss.
        self.halt: nn.Linear | None = None
        self.halt_logits: torch.Tensor | None = None
        self.halt_stats = HaltStats()
        if config.halting:
            self.halt = nn.Linear(config.width("hidden_size"), 1)
            nn.init.zeros_(self.halt.weight)
            nn.init.constant_(self.halt.bias, HALT_INIT_BIAS)
        self.core = core if core is not None else RecursiveCore(config, norm_eps)
        # A random core is narrow: projections to and from its width, the way out starting at 0.
        self.norm: RMSNorm | None = None
        self.down: nn.Linear | None = None
        self.up: nn.Linear | None = None
        if not config.pretrained:
            width = config.width("hidden_size")
            self.norm = RMSNorm(base_width)
            self.down = nn.Linear(base_width, width, bias=False)
            self.up = nn.Linear(width, base_width, bias=False)
            nn.init.zeros_(self.up.weight)

    def _halting(self, y: torch.Tensor, halted: torch.Tensor | None,
                 last: bool) -> torch.Tensor | None:
        """Training: keep the last cycle's logits. Evaluation: count the cycle each token ran and
        return which tokens stop now."""
        logits = self.halt(y).float()
        if self.training:
            if last:
                self.halt_logits = logits.squeeze(-1)
            return None
        if halted is None:  # the first cycle: every token ran it
            halted = torch.zeros_like(logits, dtype=torch.bool)
            self.halt_stats.tokens += halted.numel()
        self.halt_stats.cycles += int((~halted).sum())
        threshold = self.config.halt_threshold
        return halted | (logits > math.log(threshold / (1.0 - threshold)))

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        key_padding: torch.Tensor | None,
        cache: KVStore | None,
    ) -> torch.Tensor:
        """Run the recursion on `hidden` (B, S, H) and return the host's new output.

        `positions` are the base's position ids of the new tokens; `key_padding` (B, past + S or
        more) is True for real tokens; `cache` holds past keys/values during incremental decoding.
        """
        dtype = next(self.core.parameters()).dtype
        if self.down is None:  # pretrained core: y is the residual stream, z a latent update
            x = hidden.to(dtype)
            start = (x, torch.zeros_like(x))
        else:
            x = self.down(self.norm(hidden.to(dtype)))
            start = (torch.zeros_like(x), torch.zeros_like(x))
        head_dim = self.config.width("hidden_size") // self.config.width("num_heads")
        cos, sin = rotary_tables(positions, head_dim, self.rope_theta, dtype)
        seq = hidden.shape[1]
        past = cache.past if cache is not None else 0
        keys = cache.key_length(seq) if cache is not None else seq
        mask = attention_mask(key_padding, seq, past, hidden.device, keys)
        attend = Attend(cos, sin, mask, cache)
        if self.config.attention == "input":  # before the no-grad cycles: k/v projections train
            attend.input_keys = self.core.input_keys(x, attend)
        y, z = self.carry if self.carry is not None else start
        call = 0
        halted: torch.Tensor | None = None  # (B, S, 1) True = stopped (evaluation only)
        for cycle in range(self.config.cycles):
            with torch.set_grad_enabled(
                torch.is_grad_enabled() and cycle >= self.config.cycles - self.config.grad_cycles
            ):
                before = (y, z)
                for _ in range(self.config.latent_steps):
                    z = self.core(x + y + z, attend, call)
                    call += 1
                update = self.core(y + z, attend, call)
                y = update if self.up is not None else y + update
                call += 1
                if halted is not None:  # halted tokens keep their state
                    y, z = torch.where(halted, before[0], y), torch.where(halted, before[1], z)
                if self.halt is not None:
                    halted = self._halting(y, halted, last=cycle == self.config.cycles - 1)
        if self.keep_carry:
            self.carry = (y.detach(), z.detach())
        if self.up is None:
            return y.to(hidden.dtype)
        return hidden + self.up(y).to(hidden.dtype)


def attention_mask(
    key_padding: torch.Tensor | None, seq: int, past: int, device: torch.device,
    keys: int | None = None,
) -> torch.Tensor | None:
    """Boolean (B, 1, S, keys) mask: causal by index and blind to padded keys.

    `keys` defaults to past + S; a static cache returns more (its unfilled slots, masked as
    future positions; `key_padding` shorter than `keys` is padded with False). A query always
    sees itself, so rows of padding tokens stay finite (their outputs are unused). Returns None
    when plain causal attention is exact (no padding, nothing cached).
    """
    keys = past + seq if keys is None else keys
    real = key_padding is None or bool(key_padding.all())
    if past == 0 and keys == seq and real:
        return None
    query_index = torch.arange(past, past + seq, device=device)[:, None]
    key_index = torch.arange(keys, device=device)[None, :]
    causal = key_index <= query_index
    if key_padding is None:
        return causal[None, None]
    padding = F.pad(key_padding.bool(), (0, keys - key_padding.shape[1]), value=False)
    mask = causal[None, None] & padding[:, None, None, :]
    return mask | (key_index == query_index)[None, None]
