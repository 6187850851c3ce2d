"""Tokenizing with the base tokenizer, loss masks, and packing into fixed-length blocks."""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from millennial.base import byte_level_tokenizer
from millennial.data import DataError, Record, task_record
from millennial.data.pack import (
    Block,
    BlockPacker,
    Encoded,
    encode_batch,
    encode_records,
    load_encoder,
    load_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]


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


SMOLLM2_DIRS = (REPO / "models/base", REPO / "bench/.cache/base")
SAMPLES = ["héllo wörld", "  two  spaces\tand tab\n\nnew lines ", "<|endoftext|> inside <|pad|>",
           "<|im_end|> and <|im_start|>", "12 + 30 = 42", "", "日本語 and emoji 😀", "a" * 3000]


def assert_same_as_transformers(directory: Path) -> None:
    tokenizer, info = load_tokenizer(directory)
    encoder, encoder_info = load_encoder(directory)
    assert encoder_info == info
    assert encode_batch(SAMPLES, encoder) == encode_batch(SAMPLES, tokenizer)


def test_encoder_matches_transformers_tokenizer(tokenizer_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The Rust tokenizer loaded alone gives the ids and the identity transformers gives, and
    loads without transformers when the directory is plain."""
    def refuse(directory: Path) -> None:
        raise AssertionError(f"{directory} went through transformers")

    with monkeypatch.context() as patch:
        patch.setattr(importlib.import_module("millennial.data.pack"), "load_tokenizer", refuse)
        load_encoder(tokenizer_dir)
    assert_same_as_transformers(tokenizer_dir)


@pytest.mark.parametrize("change", [
    {"additional_special_tokens": ["<|extra|>"]},  # transformers would add it to the vocabulary
    {"pad_token": "<|not-a-token|>"},
    {"tokenizer_class": "GPT2Tokenizer"},  # a class that may rebuild the tokenizer
])
def test_encoder_leaves_anything_else_to_transformers(
    tokenizer_dir: Path, tmp_path: Path, change: dict[str, Any]
) -> None:
    directory = tmp_path / "tokenizer"
    shutil.copytree(tokenizer_dir, directory)
    config_file = directory / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    assert_same_as_transformers(directory)


def test_encoder_matches_transformers_on_the_smollm2_tokenizer() -> None:
    directory = next((d for d in SMOLLM2_DIRS if (d / "tokenizer.json").is_file()), None)
    if directory is None:
        pytest.skip("no prepared base tokenizer (models/base or bench/.cache/base)")
    assert_same_as_transformers(directory)


def list_packer(records: list[tuple[list[int], list[int], float]], size: int,
                pad: int) -> list[Block]:
    """Packing as it was written before it was vectorised: one Python list per column."""
    ids = [i for record in records for i in record[0]]
    mask = [m for record in records for m in record[1]]
    weights = [weight if m else 0.0 for _, record_mask, weight in records for m in record_mask]
    padding = -len(ids) % size
    ids, mask, weights = ids + [pad] * padding, mask + [0] * padding, weights + [0.0] * padding
    return [Block(ids[i : i + size], mask[i : i + size], weights[i : i + size])
            for i in range(0, len(ids), size)]


def test_packer_takes_runs_of_blocks_as_the_list_packer_cut_them() -> None:
    rng = random.Random(0)
    for _ in range(50):
        size = rng.randint(1, 9)
        records = []
        for _ in range(rng.randint(0, 12)):
            length = rng.randint(1, 25)
            unscored = rng.randint(0, length)
            records.append(([rng.randrange(1000) for _ in range(length)],
                            [0] * unscored + [1] * (length - unscored), rng.random() * 3))
        packer = BlockPacker(size, pad_id=7)
        blocks: list[Block] = []
        for ids, mask, weight in records:
            packer.push(ids, mask, weight)
            while packer.full_blocks >= 3:
                taken = packer.take(3)
                assert len(taken) == 3 and taken.ids.dtype == np.int32
                blocks += taken.rows()
        blocks += packer.take_rest().rows()
        assert blocks == list_packer(records, size, pad=7)
        assert len(packer.take_rest()) == 0
