"""Generation speed and cache size: the hybrid vs its base, for each TRM attention variant.

Greedy decoding of the same prompt batch on the default base; each hybrid (a copy of the base)
carries the default TRM config with `attention` set to one variant and random (non-zero)
weights, so its blocks really run. Speed is timed as the evaluation times it
(`millennial.evaluate.speed`): one intra-op thread, each run's mean step after the first token
(prefill excluded), every (model, cache) run interleaved round by round after a warm-up round,
median and IQR over the kept rounds, and each ratio to the base taken within a round. Cache bytes
per token are measured from the cache `generate` returns, beside the planner's count.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from functools import partial

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from bench._base import REPO, default_base_dir
from millennial.cost.planner import kv_cache_bytes_per_token, model_shape
from millennial.evaluate.speed import clocked_decode, forced_decoding, intra_op_threads
from millennial.evaluate.timing import Spread, annotated, interleave, paired_ratios
from millennial.hybrid import TRMConfig, inject
from millennial.hybrid.config import ATTENTION_SOURCES
from millennial.hybrid.injection import trm_named_parameters
from millennial.params import load_params

BATCH, PROMPT, NEW_TOKENS = 2, 32, 24
WARMUP, REPEATS, THREADS = 1, 5, 1
MAX_RELATIVE_IQR = 0.10  # as params.yaml's evaluate.speed.max_relative_iqr


def cache_bytes_per_token(model: PreTrainedModel, ids: torch.Tensor) -> int:
    """Bytes the KV cache `generate` returns holds per token of one sequence."""
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True,
                             return_dict_in_generate=True)
    cache = out.past_key_values
    held = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers)
    return held * cache.layers[0].keys.element_size() // (BATCH * cache.get_seq_length())


def step_ms(model: PreTrainedModel, ids: torch.Tensor, use_cache: bool) -> float:
    """One clocked run: the mean decode step in milliseconds."""
    eos = int(model.config.eos_token_id)
    pad = model.config.pad_token_id
    config = forced_decoding(NEW_TOKENS, eos_id=eos, pad_id=eos if pad is None else int(pad),
                             use_cache=use_cache)
    return 1000 * clocked_decode(model, ids, config).step_seconds


def run() -> str:
    base_dir = default_base_dir()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    default = TRMConfig.from_dict(load_params(REPO / "params.yaml")["trm"])
    shape = model_shape(base.config)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, base.config.vocab_size, (BATCH, PROMPT), generator=generator)
    models: dict[str, PreTrainedModel] = {"base": base}
    configs: dict[str, TRMConfig | None] = {"base": None}
    for attention in ATTENTION_SOURCES:
        name, trm = f"hybrid ({attention})", replace(default, attention=attention)
        models[name], configs[name] = inject(copy.deepcopy(base), trm), trm
        with torch.no_grad():
            for parameter in trm_named_parameters(models[name]).values():
                parameter.normal_(0.0, 0.02, generator=generator)
    runs = {(name, cached): partial(step_ms, model, ids, cached)
            for name, model in models.items() for cached in (True, False)}
    with intra_op_threads(THREADS):
        samples = interleave(runs, repeats=REPEATS, warmup=WARMUP)
    base_bytes, base_planned = cache_bytes_per_token(base, ids), kv_cache_bytes_per_token(shape)
    lines = [
        "## Generation: hybrid vs base, per TRM attention variant",
        "",
        f"Base `{base_dir.relative_to(REPO)}` (fp32), TRM at layers "
        f"{list(default.injection_layers)} (width {default.hidden_size}, T={default.cycles}, "
        f"n={default.latent_steps}: {default.total_calls} core calls per token per block, "
        f"{default.num_layers} layers of f); greedy, batch {BATCH}, prompt {PROMPT} tokens, "
        f"{NEW_TOKENS} new tokens, {THREADS} intra-op thread. ms/token: each run's mean step "
        f"after the first token (prefill excluded), median (IQR) of {REPEATS} runs after "
        f"{WARMUP} warm-up, all six (model, cache) runs interleaved round by round; x base: the "
        "ratio to the base within each round, median (IQR). A figure whose IQR exceeds "
        f"{MAX_RELATIVE_IQR:.0%} of its median is too noisy to quote; a ratio whose IQR holds 1 "
        "is no measurable difference. Cache bytes per token are measured from the cache "
        "`generate` returns (fp32 here); the planner counts bf16, so compare ratios.",
        "",
        "| model | cached key/value sets per block | ms/token (cache) | x base (cache) "
        "| ms/token (no cache) | x base (no cache) | cache bytes/token | vs base "
        "| planner's ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in models.items():
        trm = configs[name]
        cells = []
        for cached in (True, False):
            cells.append(annotated(Spread.of(samples[name, cached], WARMUP), MAX_RELATIVE_IQR))
            ratio = Spread.of(paired_ratios(samples[name, cached], samples["base", cached]),
                              WARMUP)
            cells.append("x1 (is the base)" if trm is None
                         else annotated(ratio, MAX_RELATIVE_IQR, ratio=True))
        cache_bytes = cache_bytes_per_token(model, ids)
        planned = kv_cache_bytes_per_token(shape, trm)
        lines.append(f"| {name} | {'-' if trm is None else trm.cached_slots} | "
                     + " | ".join(cells) + f" | {cache_bytes:,} | {cache_bytes / base_bytes:.2f} "
                     f"| {planned / base_planned:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
