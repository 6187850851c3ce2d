"""Exact and near-duplicate detection with bounded state: digests and LSH band hashes only.

- Exact: sha256 of the content with case folded and whitespace collapsed (for tasks the content
  is the prompt: one prompt with two answers is a contradiction, and one prompt in two splits
  is a leak). State: one 32-byte digest per kept document.
- Near: MinHash sketches of word shingles, banded as in `datasketch.MinHashLSH`; a document
  whose LSH candidates are non-empty is a near-duplicate of the earliest candidate (candidates
  are not re-checked against the exact Jaccard estimate: that would mean keeping every sketch).
  The sketches are datasketch's `MinHash` (scheme affine32: SHA-1 of each shingle, MurmurHash3
  finalizer, a * h + b mod 2^32, minimum), computed with numpy for a whole document at once;
  the bands are datasketch's optimal (b, r) for the threshold. Since only the earliest candidate
  matters, each band bucket keeps only the first document that landed in it.
  State: one entry per distinct band hash and the split of each indexed document, not the
  sketches or texts.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
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


def shingles(text: str, size: int) -> list[bytes]:
    """Word n-grams of the case-folded text (the whole text if it has fewer words), in order;
    repeats are kept (a sketch is a minimum: hashing a shingle twice changes nothing)."""
    words = text.casefold().split()
    if len(words) <= size:
        return [" ".join(words).encode("utf-8")]
    grams = zip(*(words[i:] for i in range(size)), strict=False)  # ends with the shortest
    return [" ".join(gram).encode("utf-8") for gram in grams]


@functools.cache
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's (bands, rows per band) for `threshold`: it integrates the false positive and
    negative rates of every split of `num_perm` numerically (~1,400 integrals), so once per
    process and setting."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def _fmix32(hashes: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, with which datasketch pre-mixes (uint32 wraps)."""
    hashes = (hashes ^ (hashes >> 16)) * 0x85EBCA6B
    hashes = (hashes ^ (hashes >> 13)) * 0xC2B2AE35
    return hashes ^ (hashes >> 16)


class NearDuplicates:
    """MinHash LSH index that answers: which split holds a near-duplicate of this text?"""

    def __init__(self, config: MinHashConfig, seed: int) -> None:
        self.config = config
        self._a, self._b = MinHash(num_perm=config.num_perm, seed=seed,
                                   scheme="affine32").permutations
        bands, rows = lsh_bands(config.threshold, config.num_perm)
        self._band_bytes = rows * self._a.itemsize
        self._buckets: list[dict[bytes, int]] = [{} for _ in range(bands)]
        self._splits: list[str] = []

    def sketch(self, text: str) -> np.ndarray:
        """The hash values of datasketch's `MinHash(num_perm, seed)` updated with the text's
        shingles (the first 4 bytes of each SHA-1, little-endian, as `sha1_hash32` takes)."""
        digests = b"".join([hashlib.sha1(gram).digest()
                            for gram in shingles(text, self.config.shingle_size)])
        hashes = _fmix32(np.frombuffer(digests, dtype="<u4")[::5])  # a digest is 5 words
        return (hashes[:, np.newaxis] * self._a + self._b).min(axis=0)

    def _band_keys(self, sketch: np.ndarray) -> list[bytes]:
        data, size = sketch.tobytes(), self._band_bytes
        return [data[i * size : (i + 1) * size] for i in range(len(self._buckets))]

    def split_of_twin(self, sketch: np.ndarray) -> str | None:
        """The split of the earliest indexed near-duplicate, or None if there is none."""
        found = [index for bucket, key in zip(self._buckets, self._band_keys(sketch), strict=True)
                 if (index := bucket.get(key)) is not None]
        return self._splits[min(found)] if found else None

    def add(self, sketch: np.ndarray, split: str) -> None:
        for bucket, key in zip(self._buckets, self._band_keys(sketch), strict=True):
            bucket.setdefault(key, len(self._splits))
        self._splits.append(split)
