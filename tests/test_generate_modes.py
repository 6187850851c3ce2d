"""Every `generate` mode on the hybrid gives with the KV cache what it gives without, or is refused.

The TRM's keys and values live in the HF cache object as extra layers, so beam reordering,
assisted decoding's cropping and batch expansion move them with the base's.
"""

import warnings

import pytest
import torch
from conftest import perturb_trm, tiny_causal_lm
from transformers.cache_utils import BaseQuantizedLayer, DynamicCache

from millennial.hybrid import TRMConfig, inject
from millennial.hybrid.injection import TRMCache, trm_blocks

SMALL = TRMConfig(injection_layers=[1, -1], hidden_size=16, num_heads=2, num_layers=2,
                  latent_steps=2, cycles=2, ffn_size=24)
PROMPTS = torch.tensor([[0, 0, 5, 9, 11, 3], [13, 2, 44, 6, 7, 8]])  # left-padded
# Every family: the modes that move the cache differently (append, reorder, preallocate).
MODES = {
    "greedy": {"do_sample": False},
    "beam": {"num_beams": 3, "num_return_sequences": 2, "do_sample": False},
    "static-cache": {"do_sample": False, "cache_implementation": "static"},
}
# The rest on one family of each kind (RMSNorm/rotary, LayerNorm/learned positions, MoE,
# parallel attention), to keep the suite's time in bounds.
MORE_MODES = {
    "sample": {"do_sample": True, "top_k": 0},
    "beam-sample": {"num_beams": 2, "do_sample": True, "top_k": 0},
    "static-cache-beam": {"num_beams": 2, "num_return_sequences": 2,
                          "cache_implementation": "static"},
    "dynamic-cache": {"do_sample": False, "cache_implementation": "dynamic"},
}
KINDS = ("llama", "gpt2", "mixtral", "falcon")


def hybrid(architecture: str):
    model = inject(tiny_causal_lm(architecture), SMALL)
    perturb_trm(model)
    return model


def generate(model, prompts: torch.Tensor, use_cache: bool, **options) -> torch.Tensor:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(prompts, attention_mask=(prompts != 0).long(), max_new_tokens=8,
                              pad_token_id=0, use_cache=use_cache, **options)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_cached_equals_uncached(architecture: str, mode: str) -> None:
    check_mode(architecture, MODES[mode])


@pytest.mark.parametrize("family", KINDS)
@pytest.mark.parametrize("mode", sorted(MORE_MODES))
def test_cached_equals_uncached_in_every_other_mode(family: str, mode: str) -> None:
    check_mode(family, MORE_MODES[mode])


def check_mode(architecture: str, options: dict) -> None:
    model = hybrid(architecture)
    uncached = {k: v for k, v in options.items() if k != "cache_implementation"}
    cached = generate(model, PROMPTS, True, **options)
    assert torch.equal(cached, generate(model, PROMPTS, False, **uncached))
    assert cached.shape[0] == PROMPTS.shape[0] * options.get("num_return_sequences", 1)


@pytest.mark.parametrize("architecture", KINDS)
@pytest.mark.parametrize("assistant", ["prompt-lookup", "draft-model"])
def test_assisted_greedy_decoding_is_greedy_decoding(architecture: str, assistant: str) -> None:
    model = hybrid(architecture)
    prompt = torch.tensor([[13, 2, 44, 6, 7, 8, 13, 2]])  # repeats: prompt lookup proposes
    options = ({"prompt_lookup_num_tokens": 3} if assistant == "prompt-lookup"
               else {"assistant_model": tiny_causal_lm(architecture, seed=1)})
    assisted = generate(model, prompt, True, do_sample=False, **options)
    assert torch.equal(assisted, generate(model, prompt, False, do_sample=False))


def test_assisted_sampling_leaves_an_exact_cache(architecture: str) -> None:
    """Rejected draft tokens are cropped from the TRM's keys too: the cache generation ends with
    scores the next token as a fresh forward over the whole sequence does."""
    model = hybrid(architecture)
    torch.manual_seed(0)
    out = model.generate(torch.tensor([[13, 2, 44, 6, 7, 8]]), max_new_tokens=12, do_sample=True,
                         pad_token_id=0, assistant_model=tiny_causal_lm(architecture, seed=1),
                         return_dict_in_generate=True)
    sequence, cache = out.sequences, out.past_key_values
    fed = torch.cat([sequence[:, cache.get_seq_length():], torch.tensor([[5]])], dim=1)
    step = model(fed, past_key_values=cache, use_cache=True).logits[:, -1]
    full = model(torch.cat([sequence, torch.tensor([[5]])], dim=1)).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)


def test_the_trm_keys_are_layers_of_the_hf_cache() -> None:
    model = hybrid("llama")
    cache = model(PROMPTS, use_cache=True).past_key_values
    slots = len(trm_blocks(model)) * SMALL.total_calls * SMALL.num_layers
    assert len(cache.layers) == model.config.num_hidden_layers + slots
    assert all(layer.get_seq_length() == PROMPTS.shape[1] for layer in cache.layers)


def test_a_cache_edited_behind_the_hybrids_back_is_refused() -> None:
    model = hybrid("llama")
    cache = model(PROMPTS, use_cache=True).past_key_values
    for layer in cache.layers[: model.config.num_hidden_layers]:  # the base's layers only
        layer.crop(-2)
    with pytest.raises(RuntimeError, match="edited behind the hybrid's back"):
        model(PROMPTS[:, :1], past_key_values=cache, use_cache=True)
    base_filled = tiny_causal_lm()(PROMPTS, use_cache=True).past_key_values
    with pytest.raises(RuntimeError, match="filled before injection"):
        model(PROMPTS[:, :1], past_key_values=base_filled, use_cache=True)


def test_a_quantized_cache_is_refused_before_any_token() -> None:
    class Quantized(BaseQuantizedLayer):
        def _quantize(self, tensor, axis):  # never reached: refused first
            raise AssertionError

        def _dequantize(self, tensor):
            raise AssertionError

    model = hybrid("llama")
    cache = DynamicCache(config=model.config)
    cache.layers[0] = Quantized()
    with pytest.raises(ValueError, match="quantized KV cache"):
        TRMCache(cache, trm_blocks(model)[0], model.config.num_hidden_layers).key_length(1)


# Modes the hybrid cannot serve exactly, each with the phrase its refusal names.
REFUSED = {
    "contrastive-search": ({"penalty_alpha": 0.6, "top_k": 4}, "contrastive search"),
    "dola": ({"dola_layers": "high"}, "dola generation"),
    "group-beam": ({"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0},
                   "group beam search"),
    "constrained-beam": ({"num_beams": 3, "force_words_ids": [[5]]}, "constrained beam search"),
    "custom-generate": ({"custom_generate": "someone/decoder", "trust_remote_code": True},
                        "custom_generate"),
    "offloaded-cache": ({"cache_implementation": "offloaded"}, "offloading"),
    "offloaded-static-cache": ({"cache_implementation": "offloaded_static"}, "offloading"),
    "paged-cache": ({"cache_implementation": "paged"}, "continuous batching"),
}


@pytest.mark.parametrize("mode", sorted(REFUSED))
def test_an_unverified_mode_is_refused_before_any_token(mode: str) -> None:
    options, reason = REFUSED[mode]
    model = hybrid("llama")
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=reason):
        generate(model, PROMPTS, True, **options)
    assert calls == []  # refused before the first forward


def test_a_mode_set_in_the_generation_config_is_refused_too() -> None:
    model = hybrid("llama")
    model.generation_config.cache_implementation = "offloaded"
    with pytest.raises(ValueError, match="offloading"):
        generate(model, PROMPTS, True)


def test_a_user_built_offloading_cache_is_refused() -> None:
    model = hybrid("llama")
    cache = DynamicCache(config=model.config)
    cache.offloading = True  # what DynamicCache(offloading=True) sets (it needs a GPU stream)
    with pytest.raises(ValueError, match="offloading cache"):
        model(PROMPTS, past_key_values=cache, use_cache=True)


def test_continuous_batching_fails_its_requests_with_the_reason() -> None:
    model = hybrid("llama")
    outputs = model.generate_batch(inputs=[[5, 9, 11, 3]],
                                   generation_config=model.generation_config)
    assert outputs["req_0"].generated_tokens == []
    assert "packed sequences" in outputs["req_0"].error


def test_remove_trm_restores_the_bases_generate() -> None:
    from millennial.hybrid import remove_trm

    model = remove_trm(hybrid("llama"))
    assert "generate" not in vars(model)
    with pytest.raises(ValueError, match="trust_remote_code"):  # transformers' own answer
        generate(model, PROMPTS, True, penalty_alpha=0.6, top_k=4)
