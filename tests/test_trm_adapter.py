import json

import pytest
import torch
from conftest import perturb_trm, tiny_causal_lm

from millennial.fingerprint import IDENTITY_RULE, parameters_sha256s
from millennial.hybrid import TRMConfig, inject, load_trm, save_trm
from millennial.hybrid.adapter import CONFIG_FILE, WEIGHTS_FILE, base_weights_sha256
from millennial.hybrid.injection import trm_named_parameters

CONFIG = TRMConfig(injection_layers=[0, -1], hidden_size=16, num_heads=2, num_layers=1,
                   latent_steps=2, cycles=2, ffn_size=24, share_across_layers=True)


def trained_hybrid(architecture: str = "llama"):
    model = inject(tiny_causal_lm(architecture), CONFIG)
    perturb_trm(model)
    return model


def test_round_trip_restores_the_hybrid_exactly(tmp_path, architecture: str) -> None:
    model = trained_hybrid(architecture)
    save_trm(model, tmp_path / "adapter", base_name="tiny", base_revision="r1")
    ids = torch.randint(1, 97, (2, 8))
    loaded = load_trm(tiny_causal_lm(architecture), tmp_path / "adapter")
    assert loaded.trm_config == CONFIG
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_saving_again_keeps_the_model_card_and_dvcs_gitignore(tmp_path) -> None:
    target = tmp_path / "phase1"
    save_trm(trained_hybrid(), target, base_name="tiny", base_revision="r1")
    (target / "README.md").write_text("card")
    (target / ".gitignore").write_text("/trm.safetensors\n")
    save_trm(trained_hybrid(), target, base_name="tiny", base_revision="r2")  # retrained
    assert (target / "README.md").read_text() == "card"
    assert (target / ".gitignore").is_file()
    assert json.loads((target / CONFIG_FILE).read_text())["base"]["revision"] == "r2"


def test_artifact_holds_only_trm_weights_and_the_base_identity(tmp_path) -> None:
    model = trained_hybrid()
    save_trm(model, tmp_path / "adapter", base_name="tiny", base_revision="r1")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [WEIGHTS_FILE, CONFIG_FILE]
    meta = json.loads((tmp_path / "adapter" / CONFIG_FILE).read_text())
    digests = parameters_sha256s(tiny_causal_lm())
    assert meta["base"] == {"name": "tiny", "revision": "r1", "dtype": "float32",
                            "weights_sha256": base_weights_sha256(tiny_causal_lm()),
                            "weights_sha256_by_dtype": digests, "identity": IDENTITY_RULE}
    assert sorted(digests) == ["bfloat16", "float16", "float32"]
    assert TRMConfig.from_dict(meta["trm"]) == CONFIG
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / WEIGHTS_FILE)
    assert set(saved) == set(trm_named_parameters(model))


def test_loading_onto_a_different_base_is_refused_unless_not_strict(tmp_path) -> None:
    save_trm(trained_hybrid(), tmp_path / "adapter")
    with pytest.raises(ValueError, match="weights hash to sha256"):
        load_trm(tiny_causal_lm(seed=7), tmp_path / "adapter")
    with pytest.raises(ValueError, match="bfloat16 weights hash to sha256"):
        load_trm(tiny_causal_lm(seed=7).to(torch.bfloat16), tmp_path / "adapter")
    with pytest.warns(UserWarning, match="weights hash to sha256"):
        other = load_trm(tiny_causal_lm(seed=7), tmp_path / "adapter", strict=False)
    assert other.trm_config == CONFIG


def test_loading_into_a_model_with_another_trm_config_fails(tmp_path) -> None:
    save_trm(trained_hybrid(), tmp_path / "adapter")
    other = inject(tiny_causal_lm(), TRMConfig(injection_layers=[1], hidden_size=16, num_heads=2))
    with pytest.raises(ValueError, match="differs"):
        load_trm(other, tmp_path / "adapter")


def test_missing_artifact_and_model_without_blocks_give_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_trm(tiny_causal_lm(), tmp_path)
    with pytest.raises(ValueError, match="no TRM blocks"):
        save_trm(tiny_causal_lm(), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_adapter_names_its_base_by_the_hash_in_the_base_provenance(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from millennial.base import prepare_base

    spec = {"source": "tiny-random", "tiny_random": {
        "architecture": "llama", "seed": 3, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
        "num_kv_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}}
    provenance = prepare_base(spec, tmp_path / "base")
    model = inject(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), CONFIG)
    save_trm(model, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / CONFIG_FILE).read_text())
    assert meta["base"]["weights_sha256"] == provenance["state_sha256"]
    assert meta["base"]["weights_sha256_by_dtype"] == provenance["state_sha256_by_dtype"]


def test_an_fp32_adapter_serves_on_the_same_base_in_bfloat16(tmp_path, architecture: str) -> None:
    check_half_precision_serving(tmp_path, architecture, torch.bfloat16)


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral", "falcon"])
def test_an_fp32_adapter_serves_on_the_same_base_in_float16(tmp_path, family: str) -> None:
    check_half_precision_serving(tmp_path, family, torch.float16)


def check_half_precision_serving(tmp_path, architecture: str, dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM

    model = trained_hybrid(architecture)
    save_trm(model, tmp_path / "adapter")
    tiny_causal_lm(architecture).save_pretrained(tmp_path / "base")
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=dtype).eval()
    served = load_trm(half, tmp_path / "adapter")
    assert {p.dtype for p in served.parameters()} == {dtype}
    ids = torch.randint(1, 97, (2, 8))
    torch.testing.assert_close(served(ids).logits.float(), model(ids).logits,
                               rtol=0.1, atol=0.15)
    generated = served.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 12)


def test_a_half_precision_adapter_refuses_a_wider_base(tmp_path) -> None:
    model = trained_hybrid().to(torch.bfloat16)
    save_trm(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match="loads onto that base in bfloat16, but this model's "
                                         "base weights are float32"):
        load_trm(tiny_causal_lm(), tmp_path / "adapter")
