"""Exact and MinHash near-duplicate detection, and the split a near-duplicate inherits."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from millennial.data.dedup import (
    ExactDuplicates,
    MinHashConfig,
    NearDuplicates,
    content_hash,
    shingles,
)

CONFIG = MinHashConfig(num_perm=128, threshold=0.8, shingle_size=5, near_duplicates="drop")


VOCABULARY = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "north", "green"]


def words(seed: int, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCABULARY) + str(rng.randint(0, 9)) for _ in range(n)]


def test_content_hash_ignores_case_and_whitespace() -> None:
    assert content_hash("Hello   World\n") == content_hash("hello world")
    assert content_hash("hello world") != content_hash("hello, world")


def test_exact_duplicates() -> None:
    seen = ExactDuplicates()
    digest = content_hash("a")
    assert not seen.seen_before(digest)
    assert seen.seen_before(digest)
    assert not seen.seen_before(content_hash("b"))


def test_shingles() -> None:
    assert shingles("A b c", 5) == [b"a b c"]
    assert shingles("a b c d", 2) == [b"a b", b"b c", b"c d"]
    assert shingles("a b a b", 2) == [b"a b", b"b a", b"a b"]
    assert shingles("", 3) == [b""]


def test_near_duplicate_found_and_split_inherited() -> None:
    index = NearDuplicates(CONFIG, seed=1)
    original = words(0)
    edited = list(original)
    edited[150] = "changed"  # one word in 300: Jaccard of 5-shingles ~0.97
    unrelated = words(1)
    index.add(index.sketch(" ".join(original)), "test")
    assert index.split_of_twin(index.sketch(" ".join(edited))) == "test"
    assert index.split_of_twin(index.sketch(" ".join(unrelated))) is None


def test_earliest_twin_wins() -> None:
    index = NearDuplicates(CONFIG, seed=1)
    text = " ".join(words(2))
    index.add(index.sketch(text), "val")
    index.add(index.sketch(text + " tail"), "train")
    assert index.split_of_twin(index.sketch(text)) == "val"


def datasketch_answers(texts: list[str], config: MinHashConfig,
                       seed: int) -> tuple[list[np.ndarray], list[int | None]]:
    """What the index computed when it was datasketch's MinHash and MinHashLSH themselves: each
    text's hash values and its earliest LSH candidate (or None), indexing every text."""
    template = MinHash(num_perm=config.num_perm, seed=seed)
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    sketches, twins = [], []
    for key, text in enumerate(texts):
        sketch = MinHash(num_perm=config.num_perm, seed=seed, permutations=template.permutations,
                         scheme=template.scheme)
        sketch.update_batch(set(shingles(text, config.shingle_size)))
        candidates = lsh.query(sketch)
        sketches.append(sketch.hashvalues)
        twins.append(min(candidates) if candidates else None)
        lsh.insert(key, sketch)
    return sketches, twins


@pytest.mark.parametrize("config", [
    CONFIG, MinHashConfig(num_perm=64, threshold=0.5, shingle_size=3, near_duplicates="drop"),
    MinHashConfig(num_perm=16, threshold=0.6, shingle_size=1, near_duplicates="same_split"),
])
def test_sketches_and_twins_are_datasketchs(config: MinHashConfig) -> None:
    """Sketches equal datasketch's MinHash of the shingle set, and the earliest twin is the
    earliest MinHashLSH candidate, on texts with edits, repeats, short and empty texts."""
    rng = random.Random(config.num_perm)
    texts = ["", "One", "one two", "Été  ÉTÉ été"]
    for seed in range(80):  # near-duplicates of five texts: a few words edited, cut or repeated
        edited = words(seed % 5, 60)[: rng.randint(45, 60)]
        for _ in range(rng.randint(0, 2)):
            edited[rng.randrange(len(edited))] = rng.choice(["x", "y", edited[0]])
        texts.append(" ".join(edited * rng.randint(1, 2)))
    expected_sketches, expected_twins = datasketch_answers(texts, config, seed=5)
    index = NearDuplicates(config, seed=5)
    twins = []
    for key, (text, expected) in enumerate(zip(texts, expected_sketches, strict=True)):
        sketch = index.sketch(text)
        assert sketch.dtype == expected.dtype and np.array_equal(sketch, expected), text
        twin = index.split_of_twin(sketch)
        twins.append(None if twin is None else int(twin))
        index.add(sketch, str(key))
    assert twins == expected_twins
    assert 10 < sum(twin is not None for twin in twins) < len(texts)
