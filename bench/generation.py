"""Generation speed: the hybrid vs its base, with and without the KV cache.

Greedy decoding of the same prompt batch on the default base; the hybrid carries the default TRM
config with random (non-zero) weights, so its blocks really run. Reported as tokens/s and as
ratios to the base with cache.
"""

from __future__ import annotations

import time

import torch
from transformers import AutoModelForCausalLM

from bench._base import REPO, default_base_dir
from millennial.hybrid import TRMConfig, inject, trm_disabled
from millennial.hybrid.injection import trm_named_parameters
from millennial.params import load_params

BATCH, PROMPT, NEW_TOKENS, REPEATS = 2, 32, 24, 2


def tokens_per_second(model: torch.nn.Module, ids: torch.Tensor, use_cache: bool) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=use_cache)
        best = min(best, time.perf_counter() - start)
        if out.shape[1] != PROMPT + NEW_TOKENS:
            raise RuntimeError(f"generated {out.shape[1] - PROMPT} tokens, not {NEW_TOKENS}")
    return BATCH * NEW_TOKENS / best


def run() -> str:
    base_dir = default_base_dir()
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    trm = TRMConfig.from_dict(load_params(REPO / "params.yaml")["trm"])
    inject(model, trm)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in trm_named_parameters(model).values():
            parameter.normal_(0.0, 0.02, generator=generator)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, PROMPT), generator=generator)
    rows = {}
    with torch.no_grad():
        for use_cache in (True, False):
            with trm_disabled(model):
                rows[("base", use_cache)] = tokens_per_second(model, ids, use_cache)
            rows[("hybrid", use_cache)] = tokens_per_second(model, ids, use_cache)
    reference = rows[("base", True)]
    lines = [
        "## Generation: hybrid vs base, with and without KV cache",
        "",
        f"Base `{base_dir.relative_to(REPO)}`, TRM at layers {list(trm.injection_layers)} "
        f"(width {trm.hidden_size}, T={trm.cycles}, n={trm.latent_steps}: "
        f"{trm.total_calls} core calls per token per block); greedy, batch {BATCH}, prompt "
        f"{PROMPT} tokens, {NEW_TOKENS} new tokens, best of {REPEATS}.",
        "",
        "| model | KV cache | tokens/s | vs base with cache |",
        "|---|---|---|---|",
    ]
    for (name, use_cache), speed in rows.items():
        lines.append(f"| {name} | {'yes' if use_cache else 'no'} | {speed:.1f} "
                     f"| {speed / reference:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
