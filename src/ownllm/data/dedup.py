"""Duplicate removal in the main process: exact (same normalised text) and near (MinHash + LSH).

Workers compute each document's exact key and MinHash signature (fingerprints.py); here
`Deduplicator.check` sees the documents in input order and keeps the first document of
every group of duplicates, so the result does not depend on the number of workers.

Near duplicates are found by LSH banding: the signature is cut into b bands of r values
(b and r are the ones datasketch's `MinHashLSH` derives from the threshold), and two
documents that agree on a whole band are candidates. A candidate is confirmed only if the
MinHash estimate of its Jaccard similarity reaches the threshold, so the threshold means what
it says rather than "shares one LSH band".

Memory stays flat however large the corpus: every table that grows with the number of kept
documents lives on disk, in a scratch directory deleted at the end. The exact keys and the
band buckets are SQLite B-trees (their page cache is capped at CACHE_MIB); the signatures,
needed only to confirm candidates, are rows of a flat file read back with pread.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from datasketch import MinHash, MinHashLSH

SEED = 1  # fixes the MinHash permutations, so signatures from every process are comparable
CACHE_MIB = 64  # SQLite's page cache for the index; the rest of it stays on disk (or in the OS cache)


def minhash_permutations(num_perm: int) -> np.ndarray:
    """datasketch's seeded permutation parameters (2 x num_perm uint32), for the workers' signers."""
    return MinHash(num_perm=num_perm, seed=SEED).permutations


class Match(NamedTuple):
    """Why a document is a duplicate: the reason, the kept document it repeats, and how similar."""

    reason: str  # "exact_duplicate" or "near_duplicate"
    kept_id: int
    similarity: float


class Deduplicator:
    """Decides, in document order, which documents repeat an earlier kept one.

    Kept documents are numbered 0, 1, 2, ... in the order they were kept. `directory` is
    where the on-disk index goes (a fresh private temporary directory by default); it is
    removed by close(), and the object is a context manager.
    """

    def __init__(self, near_threshold: float | None, num_perm: int = 128, directory: str | Path | None = None):
        self.near_threshold = near_threshold
        self.num_perm = num_perm
        self.kept = 0
        self.clusters = 0  # kept documents that had at least one duplicate removed
        self._directory = Path(tempfile.mkdtemp(prefix=".dedup-", dir=directory))
        self._db: sqlite3.Connection | None = sqlite3.connect(self._directory / "index.sqlite", isolation_level=None)
        # A scratch index: nothing to recover after a crash, so no journal and no fsync.
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "locking_mode=EXCLUSIVE",
            f"cache_size=-{CACHE_MIB * 1024}",
            "temp_store=FILE",
        ):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE exact (key BLOB PRIMARY KEY, doc INTEGER) WITHOUT ROWID")
        self._db.execute("CREATE TABLE clustered (doc INTEGER PRIMARY KEY)")
        self._bands: tuple[int, int] | None = None
        if near_threshold is not None:
            lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)  # only for its choice of (b, r)
            self._bands = (lsh.b, lsh.r)
            # A bucket is (band number << 32) | CRC-32 of the band's values: 8 bytes instead of r*4.
            # A CRC collision can only add a candidate, and candidates are confirmed below.
            self._db.execute(
                "CREATE TABLE bands (bucket INTEGER, doc INTEGER, PRIMARY KEY (bucket, doc)) WITHOUT ROWID"
            )
            self._query = f"SELECT DISTINCT doc FROM bands WHERE bucket IN ({', '.join('?' * lsh.b)})"
            self._signatures = RowFile(self._directory / "signatures.u32", num_perm, np.uint32)
        self._db.execute("BEGIN")  # one transaction: no commit per document

    @property
    def lsh_bands(self) -> tuple[int, int] | None:
        """(bands, rows per band) that datasketch chose for the threshold, for the manifest."""
        return self._bands

    def check(self, key: bytes, signature: np.ndarray | None) -> Match | None:
        """Return the match if this document duplicates a kept one; otherwise keep it and return None."""
        db = self._open_db()
        row = db.execute("SELECT doc FROM exact WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return self._duplicate(Match("exact_duplicate", row[0], 1.0))
        buckets = None
        if self._bands is not None:
            assert signature is not None  # with near-duplicate detection every document comes with one
            buckets = self._buckets(signature)
            match = self._best_near_match(signature, buckets)
            if match is not None:
                return self._duplicate(match)
        doc_id = self.kept
        self.kept += 1
        db.execute("INSERT INTO exact VALUES (?, ?)", (key, doc_id))
        if buckets is not None:
            db.executemany("INSERT OR IGNORE INTO bands VALUES (?, ?)", ((b, doc_id) for b in buckets))
            self._signatures.append(signature)
        return None

    def close(self) -> None:
        """Delete the on-disk index (safe to call twice)."""
        if self._db is not None:
            self._db.close()
            self._db = None
            if self._bands is not None:
                self._signatures.close()
            shutil.rmtree(self._directory, ignore_errors=True)

    def _open_db(self) -> sqlite3.Connection:
        assert self._db is not None, "the deduplicator is closed"
        return self._db

    def __enter__(self) -> Deduplicator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _buckets(self, signature: np.ndarray) -> list[int]:
        assert self._bands is not None  # called only with near-duplicate detection on
        b, r = self._bands
        values = np.ascontiguousarray(signature, dtype=np.uint32)
        return [(band << 32) | zlib.crc32(values[band * r : (band + 1) * r].tobytes()) for band in range(b)]

    def _best_near_match(self, signature: np.ndarray, buckets: list[int]) -> Match | None:
        threshold = self.near_threshold
        assert threshold is not None  # called only with near-duplicate detection on
        best = None
        for (candidate,) in sorted(self._open_db().execute(self._query, buckets)):
            # The MinHash estimate of Jaccard similarity, as MinHash.jaccard computes it.
            similarity = float(np.count_nonzero(self._signatures[candidate] == signature)) / self.num_perm
            if similarity >= threshold and (best is None or similarity > best.similarity):
                best = Match("near_duplicate", candidate, similarity)
        return best

    def _duplicate(self, match: Match) -> Match:
        if self._open_db().execute("INSERT OR IGNORE INTO clustered VALUES (?)", (match.kept_id,)).rowcount:
            self.clusters += 1
        return match


class RowFile:
    """Append-only table of fixed-width numeric rows in a file: memory stays flat however many rows.

    Appends are gathered and written BATCH_ROWS at a time; a row is read back with one pread
    (or from the unwritten batch). The file is deleted by close().
    """

    BATCH_ROWS = 4096

    def __init__(self, path: str | Path, width: int, dtype):
        self.path = Path(path)
        self.width = width
        self.dtype = np.dtype(dtype)
        self.row_bytes = width * self.dtype.itemsize
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._written = 0  # rows in the file
        self._batch: list[bytes] = []  # rows after those

    def __len__(self) -> int:
        return self._written + len(self._batch)

    def append(self, row) -> int:
        data = np.asarray(row, dtype=self.dtype).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"a row has {self.width} values, not {len(data) // self.dtype.itemsize}")
        self._batch.append(data)
        if len(self._batch) == self.BATCH_ROWS:
            assert self._fd is not None, "the row file is closed"
            os.pwrite(self._fd, b"".join(self._batch), self._written * self.row_bytes)
            self._written += len(self._batch)
            self._batch.clear()
        return len(self) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index >= self._written:
            data = self._batch[index - self._written]
        else:
            assert self._fd is not None, "the row file is closed"
            data = os.pread(self._fd, self.row_bytes, index * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)
