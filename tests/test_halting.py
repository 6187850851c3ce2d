"""TRM's halting head: identity at init, early stop at evaluation, exact caching, its loss,
its parameters and its FLOPs."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import counted_flops_per_token, perturb_trm, tiny_causal_lm

from millennial.cost.planner import (
    Trainable,
    forward_flops_per_token,
    model_shape,
    training_flops_per_token,
    trm_parameters,
)
from millennial.hybrid import (
    TRMConfig,
    freeze_base,
    inject,
    load_trm,
    save_trm,
    trm_parameter_count,
)
from millennial.hybrid.block import HALT_INIT_BIAS
from millennial.hybrid.injection import (
    HALT_LOSS_WEIGHT,
    halting_loss,
    mean_halting_cycles,
    trm_blocks,
    trm_named_parameters,
)
from millennial.params import ParamsError
from millennial.train.loop import weighted_loss

HALTING = TRMConfig(injection_layers=[1, -1], hidden_size=16, num_heads=2, num_layers=1,
                    latent_steps=2, cycles=3, ffn_size=24, halting=True)


def halting_hybrid(architecture: str = "llama", config: TRMConfig = HALTING):
    model = inject(tiny_causal_lm(architecture), config)
    perturb_trm(model)
    for block in trm_blocks(model):  # perturbed heads would halt at random: start "never"
        if block.halt is None:
            continue
        with torch.no_grad():
            block.halt.weight.zero_()
            block.halt.bias.fill_(HALT_INIT_BIAS)
    return model


def set_heads(model, weight_std: float, bias: float, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in trm_blocks(model):
            block.halt.weight.copy_(torch.randn(block.halt.weight.shape, generator=generator)
                                    * weight_std)
            block.halt.bias.fill_(bias)


@pytest.mark.parametrize("bad", [{"halting": 1}, {"halting": "yes"}, {"halt_threshold": 0.0},
                                 {"halt_threshold": 1.0}, {"halt_threshold": True},
                                 {"halt_threshold": "0.5"}])
def test_bad_halting_fields_are_named(bad: dict) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        TRMConfig(**bad)


def test_a_bad_halting_param_is_a_params_error_naming_the_key() -> None:
    from stages._common import trm_config

    with pytest.raises(ParamsError, match=r"study\.yaml: trm: halt_threshold"):  # the file read
        trm_config({"trm": {"halting": True, "halt_threshold": 2}}, Path("study.yaml"))


def test_adapter_round_trip_keeps_the_heads(tmp_path) -> None:
    model = halting_hybrid()
    set_heads(model, 1.0, 0.0)
    save_trm(model, tmp_path / "adapter")
    loaded = load_trm(tiny_causal_lm(), tmp_path / "adapter").eval()
    ids = torch.randint(1, 97, (2, 10))
    assert loaded.trm_config == HALTING
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert mean_halting_cycles(loaded) == mean_halting_cycles(model)


def test_at_init_the_hybrid_with_halting_equals_the_base(architecture: str) -> None:
    ids = torch.randint(1, 97, (2, 12))
    expected = tiny_causal_lm(architecture)(ids).logits
    model = inject(tiny_causal_lm(architecture), HALTING)
    assert torch.equal(model(ids).logits, expected)
    assert mean_halting_cycles(model) == HALTING.cycles  # the head's bias: nobody stops


@pytest.mark.parametrize("pretrained", [False, True])
def test_parameter_count_includes_the_heads(pretrained: bool) -> None:
    config = (replace(HALTING, core_init="pretrained", hidden_size=None, num_heads=None,
                      ffn_size=None) if pretrained else HALTING)
    model = inject(tiny_causal_lm(), config)
    actual = sum(p.numel() for p in trm_named_parameters(model).values())
    without = trm_parameter_count(model.config, replace(config, halting=False))
    width = model.trm_config.width("hidden_size")
    assert trm_parameter_count(model.config, config) == actual == without + 2 * (width + 1)
    assert trm_parameters(model_shape(model.config), config)["total"] == actual
    assert freeze_base(model) == actual


def test_a_head_that_always_halts_runs_one_cycle(architecture: str) -> None:
    ids = torch.randint(1, 97, (2, 10))
    model = halting_hybrid(architecture)
    set_heads(model, 0.0, 10.0)
    one_cycle = inject(tiny_causal_lm(architecture), replace(HALTING, cycles=1, halting=False))
    one_cycle.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(model(ids).logits, one_cycle(ids).logits, rtol=0, atol=1e-6)
    assert mean_halting_cycles(model) == 1.0
    assert not torch.allclose(model.train()(ids).logits, one_cycle(ids).logits)  # training: no stop


def test_the_threshold_decides_who_stops() -> None:
    ids = torch.randint(1, 97, (3, 16))
    model = halting_hybrid()
    set_heads(model, 1.0, 0.0)
    counts = []
    for threshold in (0.05, 0.5, 0.95):
        for block in trm_blocks(model):
            block.config = replace(block.config, halt_threshold=threshold)
        model(ids)
        counts.append(mean_halting_cycles(model))
    assert 1.0 <= counts[0] < counts[1] < counts[2] <= HALTING.cycles
    assert mean_halting_cycles(model) is None  # asked: counting starts afresh


def test_cached_decoding_is_exact_while_tokens_halt(architecture: str) -> None:
    model = halting_hybrid(architecture)
    ids = torch.randint(1, 97, (2, 6))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    for seed in range(10):  # random heads until some tokens stop early and some do not
        set_heads(model, 1.0, 0.0, seed)
        model(ids)
        if 1.0 < mean_halting_cycles(model) < HALTING.cycles:
            break
    cached = model.generate(ids, use_cache=True, **kwargs)
    mean = mean_halting_cycles(model)
    assert 1.0 < mean < HALTING.cycles, "no head seed halts some tokens but not all"
    assert torch.equal(cached, model.generate(ids, use_cache=False, **kwargs))
    full = model(cached).logits
    step = model(cached[:, :-1], use_cache=True)
    last = model(cached[:, -1:], past_key_values=step.past_key_values, use_cache=True).logits
    torch.testing.assert_close(last[:, -1], full[:, -1], rtol=1e-4, atol=1e-5)


def test_halting_loss_is_the_weighted_cross_entropy_of_being_right() -> None:
    model = halting_hybrid().train()
    set_heads(model, 0.5, 0.0)
    ids = torch.randint(1, 97, (2, 12))
    weight = torch.zeros(2, 12)
    weight[:, 6:] = 2.0
    logits = model(input_ids=ids, use_cache=False).logits
    heads = [block.halt_logits for block in trm_blocks(model)]
    correct = (logits[:, :-1].argmax(-1) == ids[:, 1:]).float()
    expected = sum((F.binary_cross_entropy_with_logits(q[:, :-1], correct, reduction="none")
                    * weight[:, 1:]).sum() for q in heads) / len(heads) * HALT_LOSS_WEIGHT
    torch.testing.assert_close(halting_loss(model, logits, ids, weight), expected)
    assert all(block.halt_logits is None for block in trm_blocks(model))  # consumed
    assert halting_loss(tiny_causal_lm(), logits, ids, weight) is None


def test_training_trains_the_head_and_the_loop_adds_its_loss() -> None:
    model = halting_hybrid().train()
    freeze_base(model)
    ids = torch.randint(1, 97, (2, 12))
    weight = torch.ones(2, 12)
    without = inject(tiny_causal_lm(), replace(HALTING, halting=False)).train()
    without.load_state_dict(model.state_dict(), strict=False)
    total = weighted_loss(model, ids, weight)
    assert total > weighted_loss(without, ids, weight)
    total.backward()
    for block in trm_blocks(model):
        assert block.halt.weight.grad is not None and block.halt.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("train", [False, True])
def test_planner_counts_the_head_flops_exactly(train: bool) -> None:
    measured = {}
    for halting in (False, True):
        model = halting_hybrid(config=replace(HALTING, halting=halting))
        freeze_base(model)
        measured[halting] = counted_flops_per_token(
            model.train(train), train,
            lambda m, ids: weighted_loss(m, ids, torch.ones_like(ids, dtype=torch.float)))
    shape = model_shape(model.config)
    if train:
        planned = {h: training_flops_per_token(shape, 16, Trainable.for_phase(
            "phase1", replace(HALTING, halting=h))).executed for h in (False, True)}
    else:
        planned = {h: forward_flops_per_token(shape, 16, replace(HALTING, halting=h)).model
                   for h in (False, True)}
    assert measured[True] - measured[False] == pytest.approx(planned[True] - planned[False])
    assert planned[True] > planned[False]
