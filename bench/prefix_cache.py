"""Phase-1 step time with and without the frozen-prefix cache, on the default base.

The default TRM sits at layers 10 and 15 of SmolLM2's 30, so a phase-1 step's forward runs
layers 0..10 on inputs whose output never changes. Here the same micro-batches are stepped with
the cache off and on (its store filled by a first pass, as an epoch would), interleaved round
by round, each step a forward, backward and AdamW update of the TRM blocks. Beside the measured
ratio: the planner's, the step's FLOPs without layers 0..10 over all of them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bench._base import REPO, default_base_dir
from millennial.cost.planner import (
    Trainable,
    frozen_prefix_flops_per_token,
    model_shape,
    training_flops_per_token,
)
from millennial.evaluate.timing import Spread, annotated, interleave, paired_ratios
from millennial.hybrid import TRMConfig, freeze_base, inject
from millennial.params import load_params
from millennial.train.loop import weighted_loss
from millennial.train.prefix import PrefixCache, PrefixKey

BATCH, SEQ, BATCHES, REPEATS = 4, 128, 3, 5
MAX_RELATIVE_IQR = 0.1


def run() -> str:
    base = default_base_dir()
    trm = TRMConfig.from_dict(load_params(REPO / "params.yaml")["trm"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    inject(model, trm)
    freeze_base(model)
    model.train()
    layer = model.trm_config.resolve_layers(model.config.num_hidden_layers)[0]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (BATCH * BATCHES, SEQ))
    weight = torch.ones(BATCH * BATCHES, SEQ)
    batches = [list(range(i * BATCH, (i + 1) * BATCH)) for i in range(BATCHES)]
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as scratch:
        key = PrefixKey("bench", "bench", layer, SEQ, BATCH, model.config.hidden_size, "cpu", "no")
        cache = PrefixCache(model, Path(scratch), key, BATCH * BATCHES)

        def step(rows: list[int], cached: bool) -> float:
            start = time.perf_counter()
            optimizer.zero_grad()
            if cached:
                with cache.serving(rows) as replayed:
                    loss = weighted_loss(model, ids[rows], weight[rows])
                if not replayed:
                    raise RuntimeError("the cache did not replay a stored micro-batch")
            else:
                loss = weighted_loss(model, ids[rows], weight[rows])
            loss.backward()
            optimizer.step()
            return time.perf_counter() - start

        for rows in batches:  # the first epoch: compute and store
            with cache.serving(rows):
                weighted_loss(model, ids[rows], weight[rows])

        def both() -> tuple[float, float]:
            return (sum(step(rows, False) for rows in batches),
                    sum(step(rows, True) for rows in batches))

        rounds = interleave({"pair": both}, repeats=REPEATS, warmup=1)["pair"]
    plain = Spread.of([p / BATCHES for p, _ in rounds])
    cached = Spread.of([c / BATCHES for _, c in rounds])
    ratio = Spread.of(paired_ratios([c for _, c in rounds], [p for p, _ in rounds]))
    shape = model_shape(model.config)
    total = training_flops_per_token(shape, SEQ, Trainable(trm=model.trm_config)).model
    saved = frozen_prefix_flops_per_token(shape, SEQ, layer)
    return "\n".join([
        "## Phase-1 step with and without the frozen-prefix cache",
        "",
        f"Base `{base.relative_to(REPO) if base.is_relative_to(REPO) else base}` "
        f"({model.config.num_hidden_layers} layers), TRM at layers "
        f"{list(model.trm_config.resolve_layers(model.config.num_hidden_layers))}: layers "
        f"0..{layer} are replayed from the store. Micro-batch {BATCH}x{SEQ}, forward + backward "
        f"+ AdamW, fp32 on CPU, {torch.get_num_threads()} threads; {BATCHES} micro-batches per "
        f"round, the two variants interleaved, median (IQR) of {REPEATS} rounds after a warm-up.",
        "",
        "| step | seconds per micro-batch | with / without |",
        "|---|---|---|",
        f"| without the cache | {annotated(plain, MAX_RELATIVE_IQR)} | 1.00 |",
        f"| with the cache (replayed) | {annotated(cached, MAX_RELATIVE_IQR)} "
        f"| {annotated(ratio, MAX_RELATIVE_IQR, ratio=True)} |",
        "",
        f"Planner: the cache skips {saved / 1e6:.1f} of {total / 1e6:.1f} MFLOPs per token, a "
        f"predicted time ratio of {1 - saved / total:.2f} at equal efficiency. Store: "
        f"{shape.hidden_size * 4:,} bytes per token (fp32).",
    ])


if __name__ == "__main__":
    print(run())
