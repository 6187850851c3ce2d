"""Behaviour of TRM injection on tiny random models of every supported family."""

import pytest
import torch
from conftest import perturb_trm, tiny_causal_lm
from transformers import AutoConfig, AutoModelForCausalLM

from millennial.hybrid import (
    TRMConfig,
    freeze_base,
    inject,
    remove_trm,
    trm_disabled,
    trm_parameter_count,
)
from millennial.hybrid.injection import find_decoder_layers, trm_blocks, trm_named_parameters

SMALL = TRMConfig(injection_layers=[1, -1], hidden_size=16, num_heads=2, num_layers=2,
                  latent_steps=2, cycles=2, ffn_size=24)


def hybrid(architecture: str, config: TRMConfig = SMALL, perturb: bool = True):
    model = inject(tiny_causal_lm(architecture), config)
    if perturb:
        perturb_trm(model)
    return model


def test_at_init_the_hybrid_equals_the_base(architecture: str) -> None:
    ids = torch.randint(1, 97, (2, 12))
    base = tiny_causal_lm(architecture)
    expected = base(ids).logits
    assert torch.equal(inject(base, SMALL)(ids).logits, expected)


def test_trm_disabled_computes_the_base(architecture: str) -> None:
    ids = torch.randint(1, 97, (2, 12))
    expected = tiny_causal_lm(architecture)(ids).logits
    model = hybrid(architecture)
    assert not torch.allclose(model(ids).logits, expected)
    with trm_disabled(model):
        assert torch.equal(model(ids).logits, expected)
    assert not torch.allclose(model(ids).logits, expected)


@pytest.mark.parametrize("share", [False, True])
def test_parameter_count_is_exact(architecture: str, share: bool) -> None:
    config = TRMConfig(injection_layers=[0, 2, -1], hidden_size=16, num_heads=2, num_layers=3,
                       ffn_size=40, share_across_layers=share)
    model = inject(tiny_causal_lm(architecture), config)
    actual = sum(p.numel() for p in trm_named_parameters(model).values())
    assert trm_parameter_count(model.config, config) == actual
    assert freeze_base(model) == actual


def test_blocks_are_registered_submodules_on_the_host_device(architecture: str) -> None:
    model = hybrid(architecture)
    _, layers = find_decoder_layers(model)
    for index in (1, 3):
        block = layers[index].trm
        host_device = next(layers[index].parameters()).device
        assert all(p.device == host_device for p in block.parameters())
    names = [name for name, _ in model.named_parameters() if ".trm." in name]
    assert names and all(name in model.state_dict() for name in names)
    assert {name.split(".trm.")[0].rsplit(".", 1)[-1] for name in names} == {"1", "3"}


def test_shared_core_is_one_module() -> None:
    config = TRMConfig(injection_layers=[0, 3], hidden_size=16, num_heads=2, ffn_size=24,
                       share_across_layers=True)
    blocks = trm_blocks(inject(tiny_causal_lm(), config))
    assert blocks[0].core is blocks[1].core and blocks[0].down is not blocks[1].down


def test_causality(architecture: str) -> None:
    model = hybrid(architecture)
    ids = torch.randint(1, 97, (1, 12))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 97
    before, after = model(ids).logits, model(changed).logits
    torch.testing.assert_close(before[:, :7], after[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def _padded(sequences: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, sequences))
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, tokens in enumerate(sequences):
        span = slice(width - len(tokens), width) if side == "left" else slice(0, len(tokens))
        ids[row, span] = torch.tensor(tokens)
        mask[row, span] = 1
    return ids, mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_real_tokens(architecture: str, side: str) -> None:
    model = hybrid(architecture)
    sequences = [[5, 9, 11, 3, 7, 21, 8, 4, 60], [13, 2, 44, 6]]
    ids, mask = _padded(sequences, side)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = model(ids, attention_mask=mask, position_ids=positions).logits
    for row, tokens in enumerate(sequences):
        single = model(torch.tensor([tokens])).logits[0]
        real = mask[row].bool()
        torch.testing.assert_close(batched[row][real], single, rtol=1e-4, atol=1e-5)


def test_phase1_step_leaves_base_bitwise_unchanged_and_trains_every_trm_weight() -> None:
    model = hybrid("llama", perturb=False).train()
    freeze_base(model)
    trm = trm_named_parameters(model)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trm}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(1, 97, (2, 12))
    for step in range(2):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        if step == 0:  # up starts at zero, so only it gets signal at first (LLaMA Pro's lesson)
            assert all(p.grad is not None for p in trm.values())
            assert all(p.grad.abs().sum() > 0 for n, p in trm.items() if n.endswith("up.weight"))
        optimizer.step()
    assert all(p.grad.abs().sum() > 0 for p in trm.values()), "a TRM weight got no gradient"
    for name, parameter in model.named_parameters():
        if name not in trm:
            assert parameter.grad is None
            assert torch.equal(parameter, base_before[name]), name


def _saved_tensor_count(cycles: int, grad_cycles: int) -> int:
    config = TRMConfig(injection_layers=[-1], hidden_size=16, num_heads=2, num_layers=2,
                       latent_steps=3, cycles=cycles, grad_cycles=grad_cycles, ffn_size=24)
    model = hybrid("llama", config)
    freeze_base(model)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(torch.randint(1, 97, (2, 12)), labels=torch.randint(1, 97, (2, 12))).loss.backward()
    return len(saved)


def test_no_grad_cycles_keep_no_graph() -> None:
    one = _saved_tensor_count(cycles=1, grad_cycles=1)
    assert _saved_tensor_count(cycles=4, grad_cycles=1) == one
    assert _saved_tensor_count(cycles=4, grad_cycles=2) > one


def test_layers_returning_tuples_keep_their_extra_outputs() -> None:
    base = tiny_causal_lm()
    _, layers = find_decoder_layers(base)
    host = layers[-1]
    host.register_forward_hook(lambda module, args, output: (output, "extra"))
    model = inject(base, SMALL)
    perturb_trm(model)
    hidden = torch.randn(1, 5, 32)
    rotary = model.model.rotary_emb(hidden, torch.arange(5)[None])
    output = host(hidden, position_embeddings=rotary, position_ids=torch.arange(5)[None])
    assert isinstance(output, tuple) and output[1] == "extra"
    with trm_disabled(model):
        plain = host(hidden, position_embeddings=rotary, position_ids=torch.arange(5)[None])
    assert not torch.allclose(output[0], plain[0])


def test_bugs_in_the_block_surface(monkeypatch: pytest.MonkeyPatch) -> None:
    model = hybrid("llama")

    def broken(*args, **kwargs):
        raise RuntimeError("bug inside the recursion")

    monkeypatch.setattr(trm_blocks(model)[0].core, "forward", broken)
    with pytest.raises(RuntimeError, match="bug inside the recursion"):
        model(torch.randint(1, 97, (1, 4)))


def test_bfloat16_base_gets_bfloat16_blocks() -> None:
    model = inject(tiny_causal_lm().to(torch.bfloat16), SMALL)
    perturb_trm(model)
    assert all(p.dtype == torch.bfloat16 for p in trm_named_parameters(model).values())
    assert model(torch.randint(1, 97, (1, 6))).logits.dtype == torch.bfloat16


def test_families_that_cannot_work_are_refused_by_name_with_the_reason() -> None:
    mamba = AutoConfig.for_model("mamba", vocab_size=50, hidden_size=16, num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"MambaForCausalLM \(model_type='mamba'\): a "
                                         "state-space / recurrent model"):
        inject(AutoModelForCausalLM.from_config(mamba), SMALL)
    from transformers import AutoModelForSeq2SeqLM

    t5 = AutoConfig.for_model("t5", vocab_size=50, d_model=16, d_ff=32, num_layers=2,
                              num_heads=2, d_kv=8)
    with pytest.raises(ValueError, match="is an encoder-decoder"):
        inject(AutoModelForSeq2SeqLM.from_config(t5), SMALL)
    with pytest.raises(ValueError, match="needs a transformers PreTrainedModel, got Linear"):
        inject(torch.nn.Linear(2, 2), SMALL)


def test_a_family_no_test_names_is_injected_generically() -> None:
    config = AutoConfig.for_model("opt", vocab_size=50, hidden_size=16, num_hidden_layers=4,
                                  ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(1, 50, (2, 8))
    expected = model(ids).logits
    assert torch.equal(inject(model, SMALL)(ids).logits, expected)


def test_injecting_twice_and_bad_layer_indices_fail() -> None:
    model = hybrid("llama")
    with pytest.raises(ValueError, match="already"):
        inject(model, SMALL)
    with pytest.raises(ValueError, match="out of range"):
        inject(tiny_causal_lm(), TRMConfig(injection_layers=[4], hidden_size=16, num_heads=2))


def test_deep_supervision_carries_the_recursion_state_between_forwards() -> None:
    from millennial.hybrid.injection import deep_supervision

    model = hybrid("llama")
    ids = torch.randint(1, 97, (2, 8))
    fresh = model(ids).logits
    with deep_supervision(model):
        first = model(ids).logits
        second = model(ids).logits
        assert all(block.carry is not None for block in trm_blocks(model))
        assert not any(block.carry[0].requires_grad for block in trm_blocks(model))
    assert torch.equal(first, fresh) and not torch.allclose(second, fresh)
    assert all(block.carry is None for block in trm_blocks(model))
    assert torch.equal(model(ids).logits, fresh)


def test_remove_trm_leaves_the_untouched_base_and_inject_works_again(architecture: str) -> None:
    ids = torch.randint(1, 97, (2, 12))
    base = tiny_causal_lm(architecture)
    expected, keys = base(ids).logits, set(base.state_dict())
    model = hybrid(architecture)
    assert remove_trm(model) is model
    assert set(model.state_dict()) == keys and not trm_blocks(model)
    assert torch.equal(model(ids).logits, expected)
    assert torch.equal(model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0),
                       base.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0))
    perturb_trm(inject(model, SMALL))
    assert not torch.allclose(model(ids).logits, expected)
    with pytest.raises(ValueError, match="no TRM blocks to remove"):
        remove_trm(remove_trm(model))
