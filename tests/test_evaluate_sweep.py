"""The recursion sweep changes the depth it claims to, and always puts the trained depth back."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_trm, tiny_causal_lm

from millennial.evaluate.sweep import sweep_points
from millennial.hybrid import TRMConfig, inject
from millennial.hybrid.injection import Depth, recursion_depth, trm_blocks

TRM = TRMConfig(injection_layers=[1, -1], hidden_size=16, num_heads=2, num_layers=1,
                latent_steps=2, cycles=3, grad_cycles=2, ffn_size=32)


def test_sweep_points_vary_one_knob_around_the_trained_depth() -> None:
    points = sweep_points(TRM, cycles=[1, 3, 6], latent_steps=[1, 4])
    assert points == [Depth(1, 2), Depth(3, 1), Depth(3, 2), Depth(3, 4), Depth(6, 2)]


def test_recursion_depth_changes_outputs_and_restores_the_config() -> None:
    model = tiny_causal_lm("llama")
    inject(model, TRM)
    perturb_trm(model)
    ids = torch.tensor([[5, 9, 11, 3, 7, 21, 8]])
    with torch.no_grad():
        trained = model(ids).logits
        with recursion_depth(model, Depth(cycles=1, latent_steps=2)):
            assert {(b.config.cycles, b.config.grad_cycles) for b in trm_blocks(model)} == {(1, 1)}
            shallow = model(ids).logits
        with recursion_depth(model, Depth(cycles=3, latent_steps=2)):
            same = model(ids).logits
        with pytest.raises(RuntimeError, match="boom"), recursion_depth(model, Depth(6, 5)):
            raise RuntimeError("boom")
    assert not torch.allclose(shallow, trained)
    assert torch.equal(same, trained)
    assert all(block.config == TRM for block in trm_blocks(model))
    assert model.trm_config == TRM


def test_a_model_without_trm_blocks_cannot_be_swept() -> None:
    with pytest.raises(ValueError, match="no TRM blocks"), \
            recursion_depth(tiny_causal_lm("llama"), Depth(1, 1)):
        pass
