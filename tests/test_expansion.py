"""LLaMA Pro block expansion: interleaved zero-output copies, only they train, round trip."""

import pytest
import torch
from conftest import tiny_causal_lm

from millennial.fingerprint import parameters_sha256s
from millennial.hybrid.expansion import (
    block_parameter_count,
    expand,
    expansion_hosts,
    expansion_named_parameters,
    freeze_all_but_expansion,
    load_expansion,
    matched_block_count,
    save_expansion,
)


def test_hosts_follow_llama_pro_interleaving() -> None:
    assert expansion_hosts(32, 8) == (3, 7, 11, 15, 19, 23, 27, 31)  # LLaMA-2 7B -> 40 blocks
    assert expansion_hosts(30, 1) == (29,)
    assert expansion_hosts(30, 2) == (14, 29)
    with pytest.raises(ValueError, match=r"blocks 4 must divide the base's 30 layers.*\[1, 2, 3"):
        expansion_hosts(30, 4)
    with pytest.raises(ValueError, match="blocks must be a positive int"):
        expansion_hosts(30, 0)
    assert matched_block_count(30, 100, 240) == 2 and matched_block_count(30, 100, 10) == 1


def test_expanded_model_equals_the_base_until_it_trains(architecture: str) -> None:
    ids = torch.randint(1, 97, (2, 10))
    model = tiny_causal_lm(architecture)
    expected = model(ids).logits
    per_block = block_parameter_count(model)
    expansion = expand(model, 2)
    assert expansion.hosts == (1, 3) and expansion.positions == (2, 5)
    assert model.config.get_text_config().num_hidden_layers == 6
    assert torch.equal(model(ids).logits, expected)
    assert freeze_all_but_expansion(model) == 2 * per_block
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(expansion_named_parameters(model))


def test_new_blocks_get_gradient_and_cached_decoding_stays_exact(architecture: str) -> None:
    model = tiny_causal_lm(architecture)
    expand(model, 2)
    freeze_all_but_expansion(model)
    ids = torch.randint(1, 97, (2, 10))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for p in expansion_named_parameters(model).values()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        for parameter in expansion_named_parameters(model).values():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    cached = model.generate(ids, max_new_tokens=6, do_sample=False)
    uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_artifact_round_trip_and_base_identity(tmp_path) -> None:
    model = tiny_causal_lm("llama")
    identity = parameters_sha256s(model)
    expand(model, 2)
    with torch.no_grad():
        for parameter in expansion_named_parameters(model).values():
            parameter.add_(0.1)
    ids = torch.randint(1, 97, (2, 10))
    expected = model(ids).logits
    save_expansion(model, tmp_path / "pro", base_sha256s=identity, base_name="tiny",
                   base_revision=None)
    reloaded = load_expansion(tiny_causal_lm("llama"), tmp_path / "pro")
    assert torch.equal(reloaded(ids).logits, expected)
    with pytest.raises(ValueError, match="trained on base 'tiny'"):
        load_expansion(tiny_causal_lm("llama", seed=5), tmp_path / "pro")
    with pytest.raises(FileNotFoundError, match=r"expansion_config\.json: not found"):
        load_expansion(tiny_causal_lm("llama"), tmp_path)
