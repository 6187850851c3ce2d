"""Generation speed and cache size: the hybrid vs its base, for each TRM attention variant.

Greedy decoding of the same prompt batch on the default base; the hybrid carries the default TRM
config (with `attention` set to each variant) and random (non-zero) weights, so its blocks really
run. Reported as tokens/s, KV-cache bytes per token (measured from the cache `generate` returns,
and the planner's), and ratios to the base.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM

from bench._base import REPO, default_base_dir
from millennial.cost.planner import kv_cache_bytes_per_token, model_shape
from millennial.hybrid import TRMConfig, inject, remove_trm
from millennial.hybrid.config import ATTENTION_SOURCES
from millennial.hybrid.injection import trm_named_parameters
from millennial.params import load_params

BATCH, PROMPT, NEW_TOKENS, REPEATS = 2, 32, 24, 2


def decode(model: torch.nn.Module, ids: torch.Tensor, use_cache: bool) -> tuple[float, int]:
    """(tokens/s, cache bytes per token): best of REPEATS runs of greedy decoding."""
    best, cache_bytes = float("inf"), 0
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=use_cache,
                             return_dict_in_generate=True)
        best = min(best, time.perf_counter() - start)
        if out.sequences.shape[1] != PROMPT + NEW_TOKENS:
            raise RuntimeError(f"generated {out.sequences.shape[1] - PROMPT} tokens, "
                               f"not {NEW_TOKENS}")
        if use_cache:
            cache = out.past_key_values
            held = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers)
            cache_bytes = held * cache.layers[0].keys.element_size() // (
                BATCH * cache.get_seq_length())
    return BATCH * NEW_TOKENS / best, cache_bytes


def run() -> str:
    base_dir = default_base_dir()
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    default = TRMConfig.from_dict(load_params(REPO / "params.yaml")["trm"])
    shape = model_shape(model.config)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, PROMPT), generator=generator)
    rows = []
    with torch.no_grad():
        base_speed, base_bytes = decode(model, ids, True)
        base_uncached, _ = decode(model, ids, False)
        rows.append(("base", "-", base_speed, base_uncached, base_bytes,
                     kv_cache_bytes_per_token(shape)))
        for attention in ATTENTION_SOURCES:
            trm = replace(default, attention=attention)
            inject(model, trm)
            for parameter in trm_named_parameters(model).values():
                parameter.normal_(0.0, 0.02, generator=generator)
            speed, cache_bytes = decode(model, ids, True)
            uncached, _ = decode(model, ids, False)
            rows.append((f"hybrid ({attention})", str(trm.cached_slots), speed, uncached,
                         cache_bytes, kv_cache_bytes_per_token(shape, trm)))
            remove_trm(model)
    base_planned = rows[0][5]
    lines = [
        "## Generation: hybrid vs base, per TRM attention variant",
        "",
        f"Base `{base_dir.relative_to(REPO)}` (fp32), TRM at layers "
        f"{list(default.injection_layers)} (width {default.hidden_size}, T={default.cycles}, "
        f"n={default.latent_steps}: {default.total_calls} core calls per token per block, "
        f"{default.num_layers} layers of f); greedy, batch {BATCH}, prompt {PROMPT} tokens, "
        f"{NEW_TOKENS} new tokens, best of {REPEATS}. Cache bytes per token are measured from "
        "the cache `generate` returns (fp32 here); the planner counts bf16, so compare ratios.",
        "",
        "| model | cached key/value sets per block | tokens/s (cache) | tokens/s (no cache) "
        "| speed vs base (cache) | cache bytes/token | vs base | planner's ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, slots, speed, uncached, cache_bytes, planned in rows:
        lines.append(f"| {name} | {slots} | {speed:.1f} | {uncached:.1f} | "
                     f"{speed / base_speed:.2f} | {cache_bytes:,} | "
                     f"{cache_bytes / base_bytes:.2f} | {planned / base_planned:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
