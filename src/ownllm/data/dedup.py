"""Duplicate removal in the main process: exact (same normalised text) and near (MinHash + LSH).

Workers compute each document's exact key and MinHash signature (fingerprints.py); here
`Deduplicator.check` sees the documents in input order and keeps the first document of
every group of duplicates, so the result does not depend on the number of workers.

The LSH index is datasketch's `MinHashLSH`, with the number of bands and rows it derives
from the threshold. A candidate from the index is confirmed only if the MinHash estimate of
its Jaccard similarity reaches the threshold, so the threshold means what it says rather
than "shares one LSH band".

Memory: the exact-key table, the LSH index and the stored signatures grow with the number
of *kept* documents (about 3.5 KB each with 128 permutations; see docs/data.md), not with
corpus bytes.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np
from datasketch import MinHash, MinHashLSH

SEED = 1  # fixes the MinHash permutations, so signatures from every process are comparable


def minhash_permutations(num_perm: int) -> np.ndarray:
    """datasketch's seeded permutation parameters (2 x num_perm uint32), for the workers' signers."""
    return MinHash(num_perm=num_perm, seed=SEED).permutations


class Match(NamedTuple):
    """Why a document is a duplicate: the reason, the kept document it repeats, and how similar."""

    reason: str  # "exact_duplicate" or "near_duplicate"
    kept_id: int
    similarity: float


class Deduplicator:
    """Decides, in document order, which documents repeat an earlier kept one."""

    def __init__(self, near_threshold: float | None, num_perm: int = 128):
        self.near_threshold = near_threshold
        self.num_perm = num_perm
        self.kept = 0
        self._exact: dict[int, int] = {}  # exact key -> id of the kept document
        self._lsh = None
        if near_threshold is not None:
            # Each band (r hash values) is stored as its CRC-32 instead of r*4 bytes: less memory and
            # faster. A CRC collision can only add a candidate, and candidates are confirmed below.
            self._lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm, hashfunc=zlib.crc32)
            self._signatures = RowStore(num_perm, np.uint32)  # of kept documents, to confirm candidates
            # The index reads only a MinHash's hash values, so one object is reused for every
            # document instead of building a MinHash each time.
            self._probe = MinHash(num_perm=num_perm, seed=SEED)

    @property
    def lsh_bands(self) -> tuple[int, int] | None:
        """(bands, rows per band) that datasketch chose for the threshold, for the manifest."""
        return (self._lsh.b, self._lsh.r) if self._lsh is not None else None

    def check(self, key: bytes, signature: np.ndarray | None) -> Match | None:
        """Return the match if this document duplicates a kept one; otherwise keep it and return None."""
        exact = int.from_bytes(key, "big")
        kept_id = self._exact.get(exact)
        if kept_id is not None:
            return Match("exact_duplicate", kept_id, 1.0)
        if self._lsh is not None:
            self._probe.hashvalues = signature
            match = self._best_near_match(signature)
            if match is not None:
                return match
        doc_id = self.kept
        self.kept += 1
        self._exact[exact] = doc_id
        if self._lsh is not None:
            self._lsh.insert(doc_id, self._probe, check_duplication=False)
            self._signatures.append(signature)
        return None

    def _best_near_match(self, signature: np.ndarray) -> Match | None:
        best = None
        for candidate in sorted(self._lsh.query(self._probe)):
            # The MinHash estimate of Jaccard similarity, as MinHash.jaccard computes it.
            similarity = float(np.count_nonzero(self._signatures[candidate] == signature)) / self.num_perm
            if similarity >= self.near_threshold and (best is None or similarity > best.similarity):
                best = Match("near_duplicate", candidate, similarity)
        return best


class RowStore:
    """Append-only table of fixed-width rows in numpy blocks: compact, and growth never copies."""

    BLOCK_ROWS = 1 << 15

    def __init__(self, width: int, dtype):
        self.width = width
        self.dtype = np.dtype(dtype)
        self._blocks: list[np.ndarray] = []
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def append(self, row) -> int:
        if self._rows % self.BLOCK_ROWS == 0:
            self._blocks.append(np.empty((self.BLOCK_ROWS, self.width), dtype=self.dtype))
        self._blocks[-1][self._rows % self.BLOCK_ROWS] = row
        self._rows += 1
        return self._rows - 1

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self._rows:
            raise IndexError(index)
        return self._blocks[index // self.BLOCK_ROWS][index % self.BLOCK_ROWS]
