"""Tokenizing with the base tokenizer, loss masks, and packing into fixed-length blocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from millennial.base import byte_level_tokenizer
from millennial.data import DataError, Record, task_record
from millennial.data.pack import Block, BlockPacker, Encoded, encode_records, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    byte_level_tokenizer(512).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(tokenizer_dir)[0]


def test_tokenizer_identity(tokenizer_dir: Path) -> None:
    tokenizer, info = load_tokenizer(tokenizer_dir)
    expected = hashlib.sha256((tokenizer_dir / "tokenizer.json").read_bytes()).hexdigest()
    assert info.tokenizer_json_sha256 == expected
    assert info.vocab_size == len(tokenizer) == 258
    assert info.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert info.pad_token_id == tokenizer.convert_tokens_to_ids("<|pad|>")


def test_missing_tokenizer_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"{tmp_path}: no tokenizer.json \(run prepare_base"):
        load_tokenizer(tmp_path)


def test_text_mask_is_all_ones_and_ends_in_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    eos = tokenizer.eos_token_id
    (encoded,) = encode_records([Record("s", "o", "text", "héllo")], tokenizer, eos)
    assert encoded.ids[-1] == eos and tokenizer.decode(encoded.ids[:-1]) == "héllo"
    assert encoded.mask == [1] * len(encoded.ids)


def test_task_mask_scores_answer_and_eos_only(tokenizer: PreTrainedTokenizerBase) -> None:
    eos = tokenizer.eos_token_id
    records = [task_record("s", "o", "12 + 30 =", "42", "addition"),
               Record("s", "o", "text", "ab")]
    task, text = encode_records(records, tokenizer, eos)
    scored = [i for i, m in zip(task.ids, task.mask, strict=True) if m]
    assert tokenizer.decode(scored[:-1]) == " 42" and scored[-1] == eos
    prompt = [i for i, m in zip(task.ids, task.mask, strict=True) if not m]
    assert tokenizer.decode(prompt) == "12 + 30 ="
    assert tokenizer.decode(task.ids[:-1]) == records[0].text  # text = what is trained on
    assert text.mask == [1, 1, 1]


def test_packer_cuts_exact_blocks_in_order_and_pads_the_last() -> None:
    packer = BlockPacker(block_size=4, pad_id=99)
    blocks = list(packer.add(Encoded([1, 2, 3], [0, 1, 1]), weight=2.0))
    assert blocks == []
    blocks = list(packer.add(Encoded([4, 5, 6, 7, 8, 9, 10], [1] * 7), weight=0.5))
    assert blocks == [Block([1, 2, 3, 4], [0, 1, 1, 1], [0.0, 2.0, 2.0, 0.5]),
                      Block([5, 6, 7, 8], [1, 1, 1, 1], [0.5] * 4)]
    assert packer.finish() == Block([9, 10, 99, 99], [1, 1, 0, 0], [0.5, 0.5, 0.0, 0.0])
    assert packer.finish() is None
