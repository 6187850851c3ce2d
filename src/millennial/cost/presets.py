"""Architectures of real models, as their published `config.json` fields.

The planner counts parameters from these fields alone, so a 70B plan runs on a laptop. Each entry
holds every field that shapes the weights, so no library default is silently relied on;
`preset_config` turns one into the `transformers` config object the model itself would use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_LLAMA2_COMMON: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

PRESETS: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters.
    "llama-2-7b": {**_LLAMA2_COMMON, "hidden_size": 4096, "intermediate_size": 11008,
                   "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 32},
    # meta-llama/Llama-2-13b-hf: 13,015,864,320 parameters.
    "llama-2-13b": {**_LLAMA2_COMMON, "hidden_size": 5120, "intermediate_size": 13824,
                    "num_hidden_layers": 40, "num_attention_heads": 40,
                    "num_key_value_heads": 40},
    # meta-llama/Llama-2-70b-hf: grouped-query attention with 8 key/value heads; 68,976,648,192.
    "llama-2-70b": {**_LLAMA2_COMMON, "hidden_size": 8192, "intermediate_size": 28672,
                    "num_hidden_layers": 80, "num_attention_heads": 64,
                    "num_key_value_heads": 8},
    # HuggingFaceTB/SmolLM2-135M: tied embeddings; 134,515,008 parameters.
    "smollm2-135m": {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
                     "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                     "hidden_act": "silu", "tie_word_embeddings": True,
                     "attention_bias": False, "mlp_bias": False,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
                     "bos_token_id": 0, "eos_token_id": 0},
}

# Parameter counts as published (model cards / a sum over the released weights).
PUBLISHED_PARAMETERS: dict[str, int] = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "smollm2-135m": 134_515_008,
}


def preset_fields(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown base preset {name!r}; known: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def preset_config(name: str) -> PretrainedConfig:
    """The preset as a `transformers` config object (e.g. `LlamaConfig`)."""
    from transformers import AutoConfig

    fields = preset_fields(name)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)
