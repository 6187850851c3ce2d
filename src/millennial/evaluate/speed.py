"""Decode speed: batch-1 greedy decoding with the KV cache, step by step, with its spread.

Each run forces `new_tokens` greedy steps (EOS suppressed) and a logits processor stamps the
moment each new token's logits are ready: the gaps between stamps are decode steps, measured
directly, with the prefill left out (the first stamp comes after it). One run gives one sample,
its mean step; the figure is the median over `repeats` runs after `warmup` discarded ones, with
its IQR (`millennial.evaluate.timing`).

Ratios come from one process. Each arm is its own DVC stage, so dividing one stage's figure by
another's compares two processes at different times on a machine that may have been busy for one
and idle for the other (the same hybrid read 1.28x and 7.05x its base that way). Instead every
variant of an arm (its recursion depths, say) runs interleaved with a reference that computes
what the base computes (the same hybrid with its TRM blocks off, or the base loaded beside the
arm), round by round, and the ratio is taken within each round, where drift hits both alike.

Timing runs on `threads` intra-op threads (1 by default): on a shared CPU a second thread that
waits for a descheduled sibling at every operation turns a neighbour's burst into a stall of ten
times the step, while one thread only loses its share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from millennial.evaluate.config import SpeedConfig
from millennial.evaluate.timing import Spread, interleave, paired_ratios

# Enter to run a variant: yields the model to decode with (switched as the variant needs).
Switch = Callable[[], AbstractContextManager[PreTrainedModel]]


class StepClock(LogitsProcessor):
    """Stamps the moment each new token's logits are ready (after the device finishes)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor,
                 scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.is_cuda:
            torch.cuda.synchronize(scores.device)
        self.stamps.append(time.perf_counter())
        return scores


@dataclass(frozen=True)
class DecodeRun:
    """One timed `generate` call."""

    seconds: float  # the whole call, prefill included
    step_seconds: float  # the mean gap between consecutive new tokens (prefill excluded)


def forced_decoding(new_tokens: int, *, eos_id: int, pad_id: int,
                    use_cache: bool = True) -> GenerationConfig:
    """Greedy decoding of exactly `new_tokens` tokens (EOS suppressed until then)."""
    return GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False, num_beams=1, eos_token_id=eos_id,
                            pad_token_id=pad_id, use_cache=use_cache)


def clocked_decode(model: PreTrainedModel, input_ids: torch.Tensor,
                   config: GenerationConfig) -> DecodeRun:
    """Run `generate` once under `config` (from `forced_decoding`), clocked step by step."""
    steps = config.max_new_tokens
    clock = StepClock()
    began = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       generation_config=config, logits_processor=LogitsProcessorList([clock]))
    seconds = time.perf_counter() - began
    if len(clock.stamps) < steps:
        raise RuntimeError(f"generate decoded {len(clock.stamps)} tokens, not the {steps} forced")
    return DecodeRun(seconds, (clock.stamps[steps - 1] - clock.stamps[0]) / (steps - 1))


@dataclass(frozen=True)
class Speed:
    """One variant's decode speed over its kept runs."""

    tokens_per_s: float  # median: new tokens / the whole generate call (prefill included)
    latency_ms: Spread  # per decoded token after the first: each run's mean step, in ms
    vs_reference: Spread | None  # latency / the reference's, round by round (None: no reference)
    tokens: int  # tokens processed while measuring, warm-up included (for the cost meter)


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Within this block torch runs on `threads` intra-op threads (None: leave it as it is)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_speed(variants: Mapping[str, Switch], prompt: Sequence[int], config: SpeedConfig, *,
                  eos_id: int, pad_id: int, reference: str | None = None) -> dict[str, Speed]:
    """Time every variant, interleaved run by run; with `reference` (one of the variants' keys),
    every other variant's latency is also divided by the reference's within each round."""
    if reference is not None and reference not in variants:
        raise ValueError(f"reference {reference!r} is not one of the variants {list(variants)}")
    ids = torch.tensor([list(prompt)], dtype=torch.long)
    generation = forced_decoding(config.new_tokens, eos_id=eos_id, pad_id=pad_id)

    def run(switch: Switch) -> Callable[[], DecodeRun]:
        def timed() -> DecodeRun:
            with switch() as model:
                return clocked_decode(model, ids, generation)
        return timed

    with intra_op_threads(config.threads):
        samples = interleave({key: run(switch) for key, switch in variants.items()},
                             repeats=config.repeats, warmup=config.warmup)
    steps_ms = {key: [1000 * r.step_seconds for r in runs] for key, runs in samples.items()}
    tokens = speed_tokens(len(prompt), config)
    return {
        key: Speed(
            tokens_per_s=Spread.of([config.new_tokens / r.seconds for r in runs]).median,
            latency_ms=Spread.of(steps_ms[key], config.warmup),
            vs_reference=None if reference is None or key == reference else Spread.of(
                paired_ratios(steps_ms[key], steps_ms[reference]), config.warmup),
            tokens=tokens,
        )
        for key, runs in samples.items()
    }


def speed_tokens(prompt_length: int, config: SpeedConfig) -> int:
    """Tokens `measure_speed` processes per variant: every run (warm-up included) reads the
    prompt and decodes `new_tokens`, counted as the rest of the evaluation counts them."""
    return config.runs * (prompt_length + config.new_tokens)
