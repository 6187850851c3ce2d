"""A TRM core initialised from the host's own layers (LLaMA Pro's initialisation, recursed)."""

import pytest
import torch
from conftest import perturb_trm, tiny_causal_lm

from millennial.cost.planner import model_shape, trm_parameters
from millennial.hybrid import TRMConfig, freeze_base, inject, load_trm, save_trm, trm_disabled
from millennial.hybrid.block import Attend, rotary_tables
from millennial.hybrid.injection import (
    copy_base_layers,
    trm_blocks,
    trm_named_parameters,
    trm_parameter_count,
)

PRETRAINED = TRMConfig(injection_layers=[2], hidden_size=None, num_heads=None, ffn_size=None,
                       num_layers=2, latent_steps=2, cycles=2, core_init="pretrained")
COPYABLE = ("llama", "mistral")


@pytest.mark.parametrize("architecture", COPYABLE)
def test_a_pretrained_core_starts_as_the_base_and_takes_the_base_widths(architecture: str) -> None:
    ids = torch.randint(1, 97, (2, 12))
    base = tiny_causal_lm(architecture)
    expected = base(ids).logits
    model = inject(base, PRETRAINED)
    assert torch.equal(model(ids).logits, expected)
    resolved = model.trm_config
    assert (resolved.hidden_size, resolved.num_heads, resolved.num_kv_heads,
            resolved.ffn_size) == (32, 4, 2, 64)
    actual = sum(p.numel() for p in trm_named_parameters(model).values())
    assert actual == trm_parameter_count(model.config, PRETRAINED) == freeze_base(model)
    assert trm_parameters(model_shape(model.config), PRETRAINED)["total"] == actual
    # The same count as the two base layers it copied: a pretrained core is those layers.
    layers = model.model.layers
    copied = sum(p.numel() for n, p in layers[1].named_parameters() if ".trm." not in n
                 and not n.startswith("trm."))
    assert actual == 2 * copied


@pytest.mark.parametrize("architecture", COPYABLE)
def test_the_core_computes_what_the_copied_layers_compute(architecture: str) -> None:
    """Copied without zeroing, the core's layers are the base's layers, bit for bit in float32
    up to rounding: same weights, grouped-query attention, rotary table, norm epsilon."""
    model = inject(tiny_causal_lm(architecture), PRETRAINED)
    block = trm_blocks(model)[0]
    layers = model.model.layers
    copy_base_layers(block, layers[1:3], zero_outputs=False)
    hidden = torch.randn(2, 10, 32)
    positions = torch.arange(10)[None].expand(2, 10)
    cos, sin = rotary_tables(positions, 8, block.rope_theta, torch.float32)
    mine = block.core(hidden, Attend(cos, sin, None, None), 0) + hidden
    rotary = model.model.rotary_emb(hidden, positions)
    theirs = hidden
    with trm_disabled(model), torch.no_grad():
        for layer in layers[1:3]:
            theirs = layer(theirs, attention_mask=None, position_embeddings=rotary,
                           position_ids=positions)
            theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_a_pretrained_core_gets_gradient_at_init_and_round_trips(tmp_path) -> None:
    model = inject(tiny_causal_lm("llama"), PRETRAINED)
    freeze_base(model)
    ids = torch.randint(1, 97, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in trm_named_parameters(model).items()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "o_proj" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "down_proj" in n)
    perturb_trm(model)
    model.zero_grad()
    with torch.no_grad():
        expected = model(ids).logits
    save_trm(model, tmp_path / "adapter")
    reloaded = load_trm(tiny_causal_lm("llama"), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)
    cached = reloaded.generate(ids, max_new_tokens=6, do_sample=False)
    uncached = reloaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("architecture,reason", [("qwen2", "qwen2"), ("gpt2", "gpt2")])
def test_families_whose_layers_do_not_fit_are_refused_by_name(architecture: str,
                                                              reason: str) -> None:
    with pytest.raises(ValueError, match=f"core_init: pretrained copies LLaMA-style.*{reason}"):
        inject(tiny_causal_lm(architecture), PRETRAINED)


def test_conflicting_widths_and_too_deep_cores_are_refused() -> None:
    with pytest.raises(ValueError, match="hidden_size is 16 but core_init: pretrained copies"):
        inject(tiny_causal_lm("llama"), TRMConfig(injection_layers=[2], hidden_size=16,
                                                  core_init="pretrained", num_heads=None,
                                                  ffn_size=None))
    with pytest.raises(ValueError, match=r"num_layers 4: .* layer 2 has only 3"):
        inject(tiny_causal_lm("llama"), TRMConfig(injection_layers=[2], num_layers=4,
                                                  hidden_size=None, num_heads=None,
                                                  ffn_size=None, core_init="pretrained"))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        TRMConfig(hidden_size=None)
    with pytest.raises(ValueError, match="share_across_layers needs core_init: random"):
        TRMConfig(core_init="pretrained", share_across_layers=True)
    with pytest.raises(ValueError, match="core_init must be one of random, pretrained"):
        TRMConfig(core_init="copied")


def test_a_random_core_with_grouped_query_attention_counts_and_decodes_exactly() -> None:
    config = TRMConfig(injection_layers=[1, -1], hidden_size=16, num_heads=4, num_kv_heads=1,
                       num_layers=2, latent_steps=2, cycles=2, ffn_size=24)
    model = inject(tiny_causal_lm("llama"), config)
    actual = sum(p.numel() for p in trm_named_parameters(model).values())
    assert actual == trm_parameter_count(model.config, config)
    assert trm_parameters(model_shape(model.config), config)["total"] == actual
    k_proj = trm_blocks(model)[0].core.layers[0].attn.k_proj
    assert tuple(k_proj.weight.shape) == (4, 16)  # one key head of width 16 / 4
    perturb_trm(model)
    ids = torch.randint(1, 97, (2, 8))
    cached = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(cached, model.generate(ids, max_new_tokens=5, do_sample=False,
                                              use_cache=False))
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads"):
        TRMConfig(hidden_size=16, num_heads=4, num_kv_heads=3, ffn_size=24)
