"""`trm.attention: input`: the TRM's decoding cache is bounded by the depth of f, not by T and n."""

import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import counted_flops_per_token, perturb_trm, tiny_causal_lm

from millennial.cost.planner import (
    Trainable,
    forward_flops_per_token,
    kv_cache_bytes_per_token,
    model_shape,
    serving_cost,
    training_flops_per_token,
)
from millennial.cost.presets import PRESETS
from millennial.hybrid import TRMConfig, freeze_base, inject, load_trm, save_trm
from millennial.hybrid.injection import trm_blocks

REPO = Path(__file__).resolve().parents[1]
INPUT = TRMConfig(injection_layers=[1, -1], hidden_size=16, num_heads=2, num_layers=2,
                  latent_steps=3, cycles=3, ffn_size=24, attention="input")


def hybrid(architecture: str = "llama", config: TRMConfig = INPUT):
    model = inject(tiny_causal_lm(architecture), config)
    perturb_trm(model)
    return model


def test_bad_attention_source_is_named() -> None:
    with pytest.raises(ValueError, match="attention must be one of recurrent, input"):
        TRMConfig(attention="cross")


def test_identity_at_init_and_causality(architecture: str) -> None:
    ids = torch.randint(1, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = tiny_causal_lm(architecture)(ids).logits
    assert torch.equal(inject(tiny_causal_lm(architecture), INPUT)(ids).logits, expected)
    model = hybrid(architecture)
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 97
    before, after = model(ids).logits, model(changed).logits
    # MoE routes the changed batch's tokens in other groups: float noise, not a leak (1e-2).
    torch.testing.assert_close(before[:, :7], after[:, :7], rtol=0, atol=1e-5)
    assert not torch.allclose(before[:, 7:], after[:, 7:])
    assert not torch.allclose(model(ids).logits, hybrid(architecture, replace(INPUT, attention=(
        "recurrent")))(ids).logits)  # a different recursion, same weights


def test_cached_decoding_is_exact_with_one_key_set_per_layer_of_f(architecture: str) -> None:
    model = hybrid(architecture)
    prompts = torch.tensor([[0, 0, 5, 9, 11, 3], [13, 2, 44, 6, 7, 8]])
    kwargs = dict(attention_mask=(prompts != 0).long(), max_new_tokens=8, pad_token_id=0)
    for mode in ({"do_sample": False}, {"num_beams": 2, "num_return_sequences": 2}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cached = model.generate(prompts, use_cache=True, **kwargs, **mode)
            assert torch.equal(cached, model.generate(prompts, use_cache=False, **kwargs, **mode))
    cache = model(prompts, use_cache=True).past_key_values
    trm_layers = len(cache.layers) - model.config.get_text_config().num_hidden_layers
    assert trm_layers == len(trm_blocks(model)) * INPUT.num_layers == 2 * INPUT.cached_slots


def test_the_input_keys_train(tmp_path) -> None:
    model = hybrid().train()
    freeze_base(model)
    ids = torch.randint(1, 97, (2, 12))
    model(ids, labels=ids).loss.backward()
    for block in trm_blocks(model):
        for layer in block.core.layers:
            assert layer.attn.k_proj.weight.grad.abs().sum() > 0
    save_trm(model, tmp_path / "adapter")
    loaded = load_trm(tiny_causal_lm(), tmp_path / "adapter").eval()
    assert loaded.trm_config.attention == "input"
    assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)


@pytest.mark.parametrize("train", [False, True])
def test_planner_flops_match_the_modules(train: bool) -> None:
    model = hybrid()
    freeze_base(model)
    model.train(train)
    shape = model_shape(model.config)
    planned = (training_flops_per_token(shape, 16, Trainable.for_phase("phase1", INPUT)).executed
               if train else forward_flops_per_token(shape, 16, INPUT).model)
    measured = counted_flops_per_token(model, train, lambda m, ids: m(ids, labels=ids).loss)
    assert planned == pytest.approx(measured, rel=0.02)


def test_planner_kv_bytes_count_the_slots_and_the_70b_profile_stays_within_2x() -> None:
    shape = model_shape(tiny_causal_lm().config)
    base = kv_cache_bytes_per_token(shape)
    per_slot = 2 * 16 * 2  # keys and values, width 16, bf16
    recurrent = replace(INPUT, attention="recurrent")
    assert kv_cache_bytes_per_token(shape, INPUT) - base == 2 * INPUT.num_layers * per_slot
    assert kv_cache_bytes_per_token(shape, recurrent) - base == (
        2 * INPUT.total_calls * INPUT.num_layers * per_slot)
    profile = yaml.safe_load((REPO / "profiles/llama2-70b-a100.yaml").read_text())
    trm = TRMConfig.from_dict(profile["trm"])
    seventy = model_shape(PRESETS["llama-2-70b"])
    assert serving_cost(seventy, trm, 4096).kv_ratio <= 2.0
    assert serving_cost(seventy, replace(trm, attention="recurrent"), 4096).kv_ratio > 2.0
