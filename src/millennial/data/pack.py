"""Tokenize with the base model's own tokenizer and pack into fixed-length training blocks.

Every document is followed by EOS and documents run on from one block into the next, so no
token is wasted on padding except in the last block of each split, which is padded with the pad
token under loss mask 0. The loss mask says which target tokens training scores: all of a text
document (EOS included); of a task example only the answer and the EOS after it, never the
prompt. Each scored token also carries its source's loss weight (the training mixture). Prompt
and answer are encoded separately (the answer with its leading separator), which is exactly how
evaluation will see them: prompt encoded, answer generated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from millennial.data import ANSWER_SEPARATOR, TASK_KIND, DataError, Record

if TYPE_CHECKING:  # transformers (and torch under it) load only where a tokenizer needs them
    from transformers import PreTrainedTokenizerBase

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")
# transformers builds these classes from tokenizer.json as it is, and a config of these keys
# only changes nothing that encoding without special tokens sees (they concern decoding,
# padding, truncation, or special tokens added on encoding); other keys may add tokens.
PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
PLAIN_CONFIG_KEYS = frozenset({
    "backend", "tokenizer_class", "is_local", "local_files_only", "model_max_length",
    "clean_up_tokenization_spaces", "add_bos_token", "add_eos_token", "chat_template",
    "padding_side", "truncation_side", "model_input_names", *SPECIAL_TOKENS,
})
MISTRAL_PATCH_VOCAB = 100_000  # transformers may patch the pre-tokenizer of larger vocabularies


@dataclass(frozen=True)
class TokenizerInfo:
    """What identifies the tokenizer the blocks were made with (recorded in the manifest)."""

    name_or_path: str
    vocab_size: int  # len(tokenizer): base vocabulary plus added special tokens
    tokenizer_json_sha256: str
    eos_token_id: int
    pad_token_id: int  # the tokenizer's pad token, or EOS when it has none


def load_tokenizer(tokenizer_dir: str | Path) -> tuple[PreTrainedTokenizerBase, TokenizerInfo]:
    """Load a saved fast tokenizer; it must have `tokenizer.json` (hashed for identity) and EOS."""
    directory = Path(tokenizer_dir)
    tokenizer_json = directory / TOKENIZER_FILE
    if not tokenizer_json.is_file():
        raise DataError(f"{directory}: no {TOKENIZER_FILE} (run prepare_base first, or set "
                        "curate.tokenizer_dir to a saved fast tokenizer)")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise DataError(f"{directory}: cannot load tokenizer: {err}") from err
    if tokenizer.eos_token_id is None:
        raise DataError(f"{directory}: tokenizer has no EOS token to join documents with")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    info = TokenizerInfo(
        name_or_path=str(tokenizer.name_or_path),
        vocab_size=len(tokenizer),
        tokenizer_json_sha256=hashlib.sha256(tokenizer_json.read_bytes()).hexdigest(),
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=int(pad),
    )
    return tokenizer, info


def load_encoder(tokenizer_dir: str | Path) -> tuple[Tokenizer, TokenizerInfo]:
    """The Rust tokenizer alone, for encoding only, with the `TokenizerInfo` `load_tokenizer`
    gives. A plain tokenizer (see `_plain_tokenizer`) loads in about half the time, as
    transformers also parses tokenizer.json in Python; any other goes through transformers."""
    directory = Path(tokenizer_dir)
    plain = _plain_tokenizer(directory)
    if plain is not None:
        return plain
    tokenizer, info = load_tokenizer(directory)
    return tokenizer.backend_tokenizer, info


def _plain_tokenizer(directory: Path) -> tuple[Tokenizer, TokenizerInfo] | None:
    """tokenizer.json loaded as it is, or None where transformers might change it: unless the
    class is plain, the config has only `PLAIN_CONFIG_KEYS` and its special tokens (EOS among
    them) are tokens of tokenizer.json, no legacy token files, padding and truncation are off,
    and the vocabulary is too small for transformers' Mistral regex patch."""
    tokenizer_json = directory / TOKENIZER_FILE
    legacy = ("special_tokens_map.json", "added_tokens.json")
    if not tokenizer_json.is_file() or any((directory / name).exists() for name in legacy):
        return None
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(config, dict) or config.get("tokenizer_class") not in PLAIN_CLASSES
            or not PLAIN_CONFIG_KEYS.issuperset(config) or config.get("eos_token") is None):
        return None
    named = {key: config[key] for key in SPECIAL_TOKENS if config.get(key) is not None}
    data = tokenizer_json.read_bytes()
    backend = Tokenizer.from_buffer(data)
    added = {token.content for token in backend.get_added_tokens_decoder().values()}
    if (backend.truncation is not None or backend.padding is not None
            or backend.get_vocab_size() > MISTRAL_PATCH_VOCAB
            or not all(isinstance(token, str) and token in added for token in named.values())):
        return None
    eos = backend.token_to_id(named["eos_token"])
    info = TokenizerInfo(
        name_or_path=str(directory),
        vocab_size=backend.get_vocab_size(with_added_tokens=True),
        tokenizer_json_sha256=hashlib.sha256(data).hexdigest(),
        eos_token_id=eos,
        pad_token_id=backend.token_to_id(named["pad_token"]) if "pad_token" in named else eos,
    )
    return backend, info


def encode_batch(texts: Sequence[str],
                 tokenizer: Tokenizer | PreTrainedTokenizerBase) -> list[list[int]]:
    """Token ids without special tokens, through the Rust backend in one batch (no length
    warnings: documents longer than the model's context are expected, packing splits them).
    The Rust call releases the GIL, so a batch can be encoded beside other Python work."""
    backend = tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer.backend_tokenizer
    encodings = backend.encode_batch_fast(list(texts), add_special_tokens=False)
    return [encoding.ids for encoding in encodings]


@dataclass(frozen=True)
class Encoded:
    """One record's tokens (EOS appended) and its loss mask (1 = scored target)."""

    ids: list[int]
    mask: list[int]


def encode_records(records: Sequence[Record], tokenizer: Tokenizer | PreTrainedTokenizerBase,
                   eos_id: int) -> list[Encoded]:
    """Encode a batch: text records whole, task records as prompt then separator + answer."""
    texts = [r.text for r in records if r.kind != TASK_KIND]
    prompts = [r.prompt or "" for r in records if r.kind == TASK_KIND]
    answers = [f"{ANSWER_SEPARATOR}{r.answer}" for r in records if r.kind == TASK_KIND]
    text_ids = iter(encode_batch(texts, tokenizer))
    prompt_ids = iter(encode_batch(prompts, tokenizer))
    answer_ids = iter(encode_batch(answers, tokenizer))
    encoded = []
    for record in records:
        if record.kind == TASK_KIND:
            prompt, answer = next(prompt_ids), next(answer_ids)
            encoded.append(Encoded([*prompt, *answer, eos_id],
                                   [0] * len(prompt) + [1] * (len(answer) + 1)))
        else:
            ids = next(text_ids)
            encoded.append(Encoded([*ids, eos_id], [1] * (len(ids) + 1)))
    return encoded


@dataclass(frozen=True)
class Block:
    """One packed training row: tokens, loss mask, and each token's loss weight (0 unscored)."""

    ids: list[int]
    mask: list[int]
    weights: list[float]


@dataclass(frozen=True)
class Blocks:
    """Packed training rows as arrays of shape (rows, block_size)."""

    ids: np.ndarray  # int32
    mask: np.ndarray  # int8
    weights: np.ndarray  # float64, as the Python floats `Block` holds

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> Iterator[Block]:
        """Each row as a `Block` of Python lists."""
        for ids, mask, weights in zip(self.ids, self.mask, self.weights, strict=True):
            yield Block(ids.tolist(), mask.tolist(), weights.tolist())


class BlockPacker:
    """Concatenate encoded records and cut them into blocks of exactly `block_size` tokens.

    Records are buffered as numpy arrays and cut a whole run of blocks at a time, so packing
    costs no Python per token (curation packs every training token).
    """

    def __init__(self, block_size: int, pad_id: int) -> None:
        self.block_size = block_size
        self.pad_id = pad_id
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._tokens = 0

    @property
    def full_blocks(self) -> int:
        """Complete blocks buffered."""
        return self._tokens // self.block_size

    def push(self, ids: Sequence[int] | np.ndarray, mask: Sequence[int] | np.ndarray,
             weight: float = 1.0) -> None:
        """Buffer one record: its tokens and loss mask; its scored tokens weigh `weight`."""
        ids_array = np.asarray(ids, dtype=np.int32)
        mask_array = np.asarray(mask, dtype=np.int8)
        self._parts.append((ids_array, mask_array, np.where(mask_array != 0, weight, 0.0)))
        self._tokens += len(ids_array)

    def take(self, rows: int) -> Blocks:
        """The first `rows` complete blocks buffered (fewer if fewer are complete)."""
        ids, mask, weights = self._joined()
        end = min(rows, self.full_blocks) * self.block_size
        self._parts = [(ids[end:], mask[end:], weights[end:])]
        self._tokens -= end
        return self._blocks(ids[:end], mask[:end], weights[:end])

    def take_rest(self) -> Blocks:
        """Everything buffered: the complete blocks and a last one padded with the pad token
        under loss mask 0 (none if nothing is left over)."""
        ids, mask, weights = self._joined()
        padding = -len(ids) % self.block_size
        self._parts, self._tokens = [], 0
        return self._blocks(np.concatenate([ids, np.full(padding, self.pad_id, np.int32)]),
                            np.concatenate([mask, np.zeros(padding, np.int8)]),
                            np.concatenate([weights, np.zeros(padding)]))

    def add(self, encoded: Encoded, weight: float = 1.0) -> Iterator[Block]:
        """Buffer one record (its scored tokens weigh `weight`); yield every block it completes."""
        self.push(encoded.ids, encoded.mask, weight)
        yield from self.take(self.full_blocks).rows()

    def finish(self) -> Block | None:
        """The padded last block (pad tokens carry loss mask 0), or None if nothing is left;
        for after every `add` has been iterated, which leaves less than a block."""
        return next(self.take_rest().rows(), None)

    def _joined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._parts:
            return np.empty(0, np.int32), np.empty(0, np.int8), np.empty(0)
        if len(self._parts) > 1:
            self._parts = [(np.concatenate([part[0] for part in self._parts]),
                            np.concatenate([part[1] for part in self._parts]),
                            np.concatenate([part[2] for part in self._parts]))]
        return self._parts[0]

    def _blocks(self, ids: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> Blocks:
        shape = (-1, self.block_size)
        return Blocks(ids.reshape(shape), mask.reshape(shape), weights.reshape(shape))
