"""The duplicate index alone: our on-disk index against datasketch's in-memory MinHashLSH.

Feeds N distinct documents (random 128-value signatures and random exact keys, so every one
is kept and the index grows as fast as it can) to

  disk    ownllm.data.dedup.Deduplicator: SQLite B-trees + a signature file, 64 MiB page cache
  memory  what the data stage did before: datasketch's MinHashLSH (bands stored as CRC-32),
          a dict of exact keys and the signatures in numpy blocks, all in RAM

each in a fresh subprocess, and prints, every --every documents, the rate so far and how much
the process's resident memory grew since the start. The same threshold (0.8: 9 bands of 13
rows) and the same candidate confirmation; the figures are the main process's share of
`ownllm data`'s work.

    .venv/bin/python bench/dedup_index.py                     # 1M documents each, about 6 minutes
    .venv/bin/python bench/dedup_index.py --documents 200000  # quicker
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


class InMemoryIndex:
    """The baseline: datasketch's MinHashLSH and Python/numpy tables in RAM."""

    def __init__(self, threshold: float, num_perm: int):
        from datasketch import MinHash, MinHashLSH

        self.threshold, self.num_perm = threshold, num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, hashfunc=zlib.crc32)
        self.probe = MinHash(num_perm=num_perm, seed=1)
        self.exact: dict[bytes, int] = {}
        self.blocks: list[np.ndarray] = []
        self.kept = 0

    def check(self, key: bytes, signature: np.ndarray):
        if key in self.exact:
            return self.exact[key]
        self.probe.hashvalues = signature
        for candidate in sorted(self.lsh.query(self.probe)):
            row = self.blocks[candidate >> 15][candidate & 0x7FFF]
            if np.count_nonzero(row == signature) / self.num_perm >= self.threshold:
                return candidate
        if self.kept & 0x7FFF == 0:
            self.blocks.append(np.empty((1 << 15, self.num_perm), dtype=np.uint32))
        self.blocks[-1][self.kept & 0x7FFF] = signature
        self.exact[key] = self.kept
        self.lsh.insert(self.kept, self.probe, check_duplication=False)
        self.kept += 1
        return None


def measure(kind: str, documents: int, every: int, directory: Path) -> None:
    """Runs in the subprocess: one index, one line per checkpoint."""
    sys.path.insert(0, str(REPO / "src"))
    from ownllm.data.dedup import Deduplicator

    index = Deduplicator(0.8, 128, directory=directory) if kind == "disk" else InMemoryIndex(0.8, 128)
    rng = np.random.default_rng(0)
    base, started = resident_mib(), time.perf_counter()
    for i in range(1, documents + 1):
        assert index.check(rng.bytes(16), rng.integers(0, 2**32, 128, dtype=np.uint32)) is None
        if i % every == 0:
            seconds = time.perf_counter() - started
            print(
                f"  {kind:6} {i:>10,} kept  {i / seconds:>8,.0f} documents/s  memory +{resident_mib() - base:,.0f} MiB",
                flush=True,
            )
    if kind == "disk":
        index.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000, help="documents per index (default: 1M)")
    parser.add_argument("--every", type=int, default=250_000, help="print a line every N documents")
    parser.add_argument("--dir", type=Path, default=None, help="where the disk index goes (default: a temp dir)")
    parser.add_argument("--_measure", choices=("disk", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        measure(args._measure, args.documents, args.every, args.dir)
        return
    print(f"{args.documents:,} distinct documents, 128 permutations, threshold 0.8")
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        for kind in ("disk", "memory"):
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--_measure",
                    kind,
                    "--documents",
                    str(args.documents),
                    "--every",
                    str(args.every),
                    "--dir",
                    work,
                ],
                check=True,
            )


if __name__ == "__main__":
    main()
