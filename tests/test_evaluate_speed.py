"""Decode speed on tiny random models: what is timed, what it costs, and its params.

No assertion here depends on how fast anything ran.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch
from conftest import perturb_trm, tiny_causal_lm

from millennial.evaluate.config import EvalConfig, SpeedConfig
from millennial.evaluate.speed import (
    clocked_decode,
    forced_decoding,
    measure_speed,
    speed_tokens,
)
from millennial.hybrid import TRMConfig, inject, trm_disabled
from millennial.hybrid.injection import Depth, recursion_depth
from millennial.params import ParamsError

TRM = TRMConfig(injection_layers=[-1], hidden_size=16, num_heads=2, num_layers=1,
                latent_steps=2, cycles=2, ffn_size=32)
CONFIG = SpeedConfig(prompt_tokens=5, new_tokens=4, repeats=3, warmup=1, threads=1)
PROMPT = [3, 7, 11, 5, 9]


def _count_generated(model: torch.nn.Module, patch: pytest.MonkeyPatch) -> list[int]:
    """Record, per `generate` call, the tokens it returns: the prompt and every new token."""
    seen: list[int] = []
    generate = model.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        out = generate(*args, **kwargs)
        seen.append(out.shape[1] if isinstance(out, torch.Tensor) else out.sequences.shape[1])
        return out

    patch.setattr(model, "generate", counted)
    return seen


def test_speed_tokens_are_the_tokens_generate_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    hybrid = inject(tiny_causal_lm("llama"), TRM)
    perturb_trm(hybrid)
    seen = _count_generated(hybrid, monkeypatch)
    variants = {"arm": lambda: nullcontext(hybrid), "base": lambda: trm_disabled(hybrid),
                "deeper": lambda: recursion_depth(hybrid, Depth(4, 2))}
    speeds = measure_speed(variants, PROMPT, CONFIG, eos_id=1, pad_id=0, reference="base")
    runs = len(variants) * (CONFIG.warmup + CONFIG.repeats)
    assert seen == [len(PROMPT) + CONFIG.new_tokens] * runs  # each run forced to new_tokens
    per_variant = speed_tokens(len(PROMPT), CONFIG)
    assert per_variant * len(variants) == sum(seen)
    assert all(speed.tokens == per_variant for speed in speeds.values())


def test_every_variant_gets_a_spread_and_a_ratio_to_the_reference() -> None:
    hybrid = inject(tiny_causal_lm("llama"), TRM)
    threads = torch.get_num_threads()
    speeds = measure_speed({"arm": lambda: nullcontext(hybrid),
                            "base": lambda: trm_disabled(hybrid)}, PROMPT, CONFIG, eos_id=1,
                           pad_id=0, reference="base")
    assert torch.get_num_threads() == threads  # the timing's thread count is put back
    arm, base = speeds["arm"], speeds["base"]
    assert base.vs_reference is None and arm.vs_reference is not None
    for spread in (arm.latency_ms, base.latency_ms, arm.vs_reference):
        assert (spread.n, spread.warmup) == (CONFIG.repeats, CONFIG.warmup)
        assert 0 < spread.q1 <= spread.median <= spread.q3
    assert arm.tokens_per_s > 0
    alone = measure_speed({"base": lambda: nullcontext(tiny_causal_lm("llama"))}, PROMPT,
                          CONFIG, eos_id=1, pad_id=0)
    assert alone["base"].vs_reference is None
    with pytest.raises(ValueError, match="reference 'base' is not one of the variants"):
        measure_speed({"arm": lambda: nullcontext(hybrid)}, PROMPT, CONFIG, eos_id=1, pad_id=0,
                      reference="base")


def test_a_run_decodes_exactly_the_forced_tokens_even_past_eos() -> None:
    model = tiny_causal_lm("llama")
    ids = torch.tensor([PROMPT])
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                            do_sample=False)
    first = int(greedy[0, -1])  # make the first greedy token EOS: decoding must go on anyway
    seen: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        seen = _count_generated(model, patch)
        run = clocked_decode(model, ids, forced_decoding(6, eos_id=first, pad_id=0))
    assert seen == [len(PROMPT) + 6]
    assert 0 < run.step_seconds < run.seconds


def test_speed_params_are_checked_and_errors_name_the_key() -> None:
    defaults = EvalConfig.from_params({}).speed
    assert defaults == SpeedConfig() and defaults.runs == defaults.warmup + defaults.repeats
    assert EvalConfig.from_params({"speed": {"threads": None}}).speed.threads is None
    assert EvalConfig.from_params({"speed": {"max_relative_iqr": 0.25}}).speed.max_relative_iqr \
        == 0.25
    for bad, key in (({"repeats": 2}, "repeats"), ({"repeats": 5.0}, "repeats"),
                     ({"warmup": 0}, "warmup"), ({"threads": 0}, "threads"),
                     ({"threads": "one"}, "threads"), ({"new_tokens": 1}, "new_tokens"),
                     ({"max_relative_iqr": -0.1}, "max_relative_iqr"),
                     ({"max_relative_iqr": "10%"}, "max_relative_iqr"),
                     ({"max_relative_iqr": float("nan")}, "max_relative_iqr")):
        with pytest.raises(ParamsError, match=rf"^custom\.yaml: 'evaluate\.speed\.{key}'"):
            EvalConfig.from_params({"speed": bad}, "custom.yaml")
    with pytest.raises(ParamsError, match=r"'evaluate\.speed' has unknown key\(s\) repeat\b"):
        EvalConfig.from_params({"speed": {"repeat": 5}})
