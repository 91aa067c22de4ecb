"""What a worker computes so that the main process can recognise duplicates.

- `exact_key`: a 128-bit hash of the text with case and whitespace normalised. Equal keys
  mean exact duplicates; the key also places a document in train or val (`key_fraction`).
- `MinHashSigner.signature`: the MinHash signature of the text's word shingles, for
  near-duplicate detection.

The MinHash scheme is datasketch's own ("affine32"): the main process takes the seeded
permutations from `datasketch.MinHash` and hands them to the workers, which apply the same
arithmetic (MurmurHash3 finalizer, then h -> a*h + b mod 2^32, then the minimum per
permutation) to a whole document in three numpy calls: over twice as fast as a
`MinHash.update_batch` per document, and this module imports only numpy, so workers start
fast. tests/test_data_dedup.py checks the signatures are identical to datasketch's.
"""

from __future__ import annotations

import hashlib
import string
import zlib

import numpy as np

_PUNCTUATION = string.punctuation.encode()
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) for combining word hashes


def normalize_for_matching(text: str) -> str:
    """Case and whitespace do not make two documents different."""
    return " ".join(text.casefold().split())


def exact_key(text: str) -> bytes:
    """A 128-bit hash of the normalised text: equal keys mean exact duplicates."""
    return hashlib.blake2b(normalize_for_matching(text).encode("utf-8"), digest_size=16).digest()


def key_fraction(key: bytes) -> float:
    """Map a document key to [0, 1) uniformly; the train/val split compares it to --val-fraction."""
    return int.from_bytes(key[:8], "big") / 2**64


def shingle_hashes(text: str, words_per_shingle: int) -> np.ndarray:
    """32-bit hashes of the overlapping word n-grams of `text` (case and ASCII punctuation ignored).

    Each word is hashed once (CRC-32) and n consecutive word hashes are combined with numpy,
    which is several times faster than hashing every shingle string in Python.
    """
    words = text.casefold().encode("utf-8").translate(None, _PUNCTUATION).split()
    if not words:
        words = [text.encode("utf-8")]
    word_hashes = np.fromiter(map(zlib.crc32, words), dtype=np.uint64, count=len(words))
    n = min(words_per_shingle, len(words))
    count = len(words) - n + 1
    combined = np.zeros(count, dtype=np.uint64)
    for offset in range(n):
        combined = combined * _MIX + word_hashes[offset : offset + count]  # wraps mod 2^64
    return (combined ^ (combined >> np.uint64(32))).astype(np.uint32)


class MinHashSigner:
    """Computes MinHash signatures: num_perm uint32 values per text."""

    BLOCK_SHINGLES = 4096  # bounds the (shingles x permutations) scratch array to 2 MiB at 128

    def __init__(self, permutations: np.ndarray, words_per_shingle: int):
        """`permutations` is `datasketch.MinHash(num_perm, seed).permutations` (2 x num_perm uint32)."""
        self._a, self._b = np.asarray(permutations, dtype=np.uint32)
        self.num_perm = len(self._a)
        self.words_per_shingle = words_per_shingle
        self._empty = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)

    def signature(self, text: str) -> np.ndarray:
        mixed = _fmix32(shingle_hashes(text, self.words_per_shingle))
        result = self._empty.copy()
        for start in range(0, len(mixed), self.BLOCK_SHINGLES):
            block = mixed[start : start + self.BLOCK_SHINGLES, None] * self._a + self._b  # wraps mod 2^32
            np.minimum(result, block.min(axis=0), out=result)
        return result


def _fmix32(h: np.ndarray) -> np.ndarray:
    """The MurmurHash3 32-bit finalizer, which datasketch's affine32 scheme applies to every input hash."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))
