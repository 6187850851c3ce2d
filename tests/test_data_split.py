"""Splits come from content hashes: stable, seeded, in the configured proportions."""

from __future__ import annotations

from millennial.data.dedup import content_hash
from millennial.data.split import SplitFractions, hash_split


def test_hash_split_is_deterministic_and_follows_fractions() -> None:
    fractions = SplitFractions(0.8, 0.1, 0.1)
    hashes = [content_hash(str(i)) for i in range(10_000)]
    splits = [hash_split(h, fractions, seed=0) for h in hashes]
    assert splits == [hash_split(h, fractions, seed=0) for h in hashes]
    assert abs(splits.count("train") / 10_000 - 0.8) < 0.02
    assert abs(splits.count("val") / 10_000 - 0.1) < 0.015
    reseeded = [hash_split(h, fractions, seed=1) for h in hashes]
    assert reseeded != splits
