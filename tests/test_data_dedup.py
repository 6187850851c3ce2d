"""Exact and MinHash near-duplicate detection, and the split a near-duplicate inherits."""

from __future__ import annotations

import random

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
    assert shingles("A b c", 5) == {b"a b c"}
    assert shingles("a b c d", 2) == {b"a b", b"b c", b"c d"}


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
