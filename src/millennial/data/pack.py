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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from millennial.data import ANSWER_SEPARATOR, TASK_KIND, DataError, Record

TOKENIZER_FILE = "tokenizer.json"


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


def encode_batch(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Token ids without special tokens, through the Rust backend in one batch (no length
    warnings: documents longer than the model's context are expected, packing splits them)."""
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(list(texts),
                                                              add_special_tokens=False)
    return [encoding.ids for encoding in encodings]


@dataclass(frozen=True)
class Encoded:
    """One record's tokens (EOS appended) and its loss mask (1 = scored target)."""

    ids: list[int]
    mask: list[int]


def encode_records(records: Sequence[Record], tokenizer: PreTrainedTokenizerBase,
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


class BlockPacker:
    """Concatenate encoded records and cut them into blocks of exactly `block_size` tokens."""

    def __init__(self, block_size: int, pad_id: int) -> None:
        self.block_size = block_size
        self.pad_id = pad_id
        self._ids: list[int] = []
        self._mask: list[int] = []
        self._weights: list[float] = []

    def add(self, encoded: Encoded, weight: float = 1.0) -> Iterator[Block]:
        """Buffer one record (its scored tokens weigh `weight`); yield every block it completes."""
        self._ids.extend(encoded.ids)
        self._mask.extend(encoded.mask)
        self._weights.extend(weight if scored else 0.0 for scored in encoded.mask)
        size = self.block_size
        full = len(self._ids) // size * size
        for start in range(0, full, size):
            end = start + size
            yield Block(self._ids[start:end], self._mask[start:end], self._weights[start:end])
        del self._ids[:full], self._mask[:full], self._weights[:full]

    def finish(self) -> Block | None:
        """The padded last block (pad tokens carry loss mask 0), or None if nothing is left."""
        if not self._ids:
            return None
        padding = self.block_size - len(self._ids)
        block = Block(self._ids + [self.pad_id] * padding, self._mask + [0] * padding,
                      self._weights + [0.0] * padding)
        self._ids, self._mask, self._weights = [], [], []
        return block
