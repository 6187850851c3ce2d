"""Per-component step time: the base's matmuls at the machine's rate plus a fixed cost per
layer, the TRM's FLOPs at the rate its blocks achieve alone."""

from __future__ import annotations

import pytest
from conftest import tiny_causal_lm

from millennial.cost.components import matmul_flops_per_s, trm_block_seconds
from millennial.cost.planner import (
    ComponentRates,
    FlopBreakdown,
    component_flops,
    component_timings,
)
from millennial.cost.record import ComponentTimings
from millennial.hybrid import TRMConfig, freeze_base, inject

STEP = FlopBreakdown(base_forward_matmul=60.0, base_activation_grad=30.0, trm_forward=6.0,
                     trm_backward=4.0, recompute=10.0)


def test_the_step_splits_into_base_and_trm_flops() -> None:
    assert component_flops(STEP) == (100.0, 10.0)  # recomputation runs with the base


def measured(step_seconds: float, trm_seconds: float, matmul: float) -> ComponentTimings:
    """STEP measured on 1000-token micro-batches over a 4-layer base."""
    return component_timings(STEP, micro_batch_tokens=1000, layers=4,
                             micro_batch_seconds=step_seconds, steps_timed=5,
                             trm_seconds=trm_seconds, matmul_flops_per_s=matmul)


def test_calibration_learns_each_parts_cost_and_predicts_other_bases() -> None:
    # 1000 tokens: the base's 100k FLOPs take 1 s at 100k FLOP/s, its 4 layers 1 s more
    rates = ComponentRates.calibrate(measured(step_seconds=3.0, trm_seconds=1.0,
                                              matmul=100_000.0))
    assert rates == ComponentRates(matmul=100_000.0, layer_seconds=0.25, trm=10_000.0)
    assert rates.step_seconds(STEP, 1000, 4) == pytest.approx(3.0)
    bigger = FlopBreakdown(base_forward_matmul=300.0, trm_forward=6.0, trm_backward=4.0)
    assert rates.step_seconds(bigger, 1000, 12) == pytest.approx(3.0 + 12 * 0.25 + 1.0)
    assert rates.step_seconds(FlopBreakdown(base_forward_matmul=50.0), 1000, 2) == (
        pytest.approx(0.5 + 0.5))
    for trm_seconds in (3.0, 0.0):  # the TRM cannot take the whole step, nor none of it
        with pytest.raises(ValueError, match="must be within the step"):
            ComponentRates.calibrate(measured(3.0, trm_seconds, 100_000.0))
    with pytest.raises(ValueError, match="the probe read low"):
        ComponentRates.calibrate(measured(3.0, 1.0, matmul=10_000.0))


def test_the_trm_blocks_are_timed_alone_and_the_matmul_rate_probed() -> None:
    model = tiny_causal_lm("llama")
    inject(model, TRMConfig(injection_layers=[1, -1], hidden_size=16, num_heads=2, num_layers=1,
                            latent_steps=2, cycles=2, ffn_size=32))
    freeze_base(model)
    assert trm_block_seconds(model, batch=2, seq=16, repeats=2) > 0
    assert all(p.grad is None for p in model.parameters())  # it leaves no gradient behind
    with pytest.raises(ValueError, match="no TRM blocks"):
        trm_block_seconds(tiny_causal_lm("llama"), 2, 16)
    assert matmul_flops_per_s(32, 16, repeats=2) > 0
