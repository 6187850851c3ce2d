"""Deterministic splits from content hashes: the same document lands in the same split on every
run and machine, whatever the order or number of other documents.

Near-duplicates follow the earliest member of their cluster (see `NearDuplicates`), and the
harder out-of-distribution task examples always go to `test_ood`, so nothing leaks into training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

HASH_SPLITS = ("train", "val", "test")
OOD_SPLIT = "test_ood"
SPLITS = (*HASH_SPLITS, OOD_SPLIT)
PACKED_SPLITS = ("train",)
"""Only training is packed into blocks; held-out losses and evaluation read documents, one
record at a time, as a user would prompt the model."""


@dataclass(frozen=True)
class SplitFractions:
    """params `curate.split`: fractions of train, val and test that sum to 1."""

    train: float
    val: float
    test: float


def hash_split(content_hash: str, fractions: SplitFractions, seed: int) -> str:
    """Map a content hash (mixed with `seed`) to a point in [0, 1) and cut by the fractions."""
    digest = hashlib.sha256(f"{seed}:{content_hash}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    if point < fractions.train:
        return "train"
    if point < fractions.train + fractions.val:
        return "val"
    return "test"
