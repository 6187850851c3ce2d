"""Exact and near-duplicate detection with bounded state: digests and LSH band hashes only.

- Exact: sha256 of the content with case folded and whitespace collapsed (for tasks the content
  is the prompt: one prompt with two answers is a contradiction, and one prompt in two splits
  is a leak). State: one 32-byte digest per kept document.
- Near: MinHash sketches of word shingles, indexed in a `datasketch.MinHashLSH`; a document
  whose LSH candidates are non-empty is a near-duplicate of the earliest candidate (candidates
  are not re-checked against the exact Jaccard estimate: that would mean keeping every sketch).
  State: the LSH band hashes and the split of each indexed document, not the sketches or texts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

NEAR_DUPLICATE_ACTIONS = ("drop", "same_split")


def content_hash(content: str) -> str:
    """Hex sha256 of `content` after case folding and whitespace collapsing."""
    return hashlib.sha256(" ".join(content.casefold().split()).encode("utf-8")).hexdigest()


class ExactDuplicates:
    """Remembers content hashes seen so far."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def seen_before(self, hex_digest: str) -> bool:
        """True if this hash was offered before; otherwise remember it and return False."""
        digest = bytes.fromhex(hex_digest)
        if digest in self._seen:
            return True
        self._seen.add(digest)
        return False


@dataclass(frozen=True)
class MinHashConfig:
    """params `curate.minhash`. `near_duplicates`: `drop` keeps the first of each cluster;
    `same_split` keeps all and puts each in the split of the cluster's first member."""

    num_perm: int
    threshold: float
    shingle_size: int
    near_duplicates: str


def shingles(text: str, size: int) -> set[bytes]:
    """Word n-grams of the case-folded text (the whole text if it has fewer words)."""
    words = text.casefold().split()
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


class NearDuplicates:
    """MinHash LSH index that answers: which split holds a near-duplicate of this text?"""

    def __init__(self, config: MinHashConfig, seed: int) -> None:
        self.config = config
        self._template = MinHash(num_perm=config.num_perm, seed=seed)
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._splits: list[str] = []

    def sketch(self, text: str) -> MinHash:
        sketch = MinHash(num_perm=self.config.num_perm, seed=self._template.seed,
                         permutations=self._template.permutations,
                         scheme=self._template.scheme)
        sketch.update_batch(shingles(text, self.config.shingle_size))
        return sketch

    def split_of_twin(self, sketch: MinHash) -> str | None:
        """The split of the earliest indexed near-duplicate, or None if there is none."""
        candidates = self._lsh.query(sketch)
        return self._splits[min(candidates)] if candidates else None

    def add(self, sketch: MinHash, split: str) -> None:
        self._lsh.insert(len(self._splits), sketch, check_duplication=False)
        self._splits.append(split)
