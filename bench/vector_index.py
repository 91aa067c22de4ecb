"""Exact vector search: the knowledge base's float32 matrix in numpy against sqlite-vec's vec0 table.

Both are exact (sqlite-vec's vec0 scans every vector, as the matrix product does), so the
question is speed and what it costs to keep: N random unit vectors of 256 dimensions (the
embedder's size; the cost does not depend on what the vectors mean), 300 queries, k = 50
(what hybrid search asks of each retriever). Prints build time, p50/p95 per query, and that
both return the same neighbours. sqlite-vec is not a dependency of ownllm; install it to compare
(`pip install sqlite-vec`). It needs a Python whose sqlite3 can load extensions: pyenv's and
some distributions' builds cannot (no `enable_load_extension`), and then only numpy is measured.

    .venv/bin/python bench/vector_index.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import time

import numpy as np


def percentiles(times: list[float]) -> str:
    times = sorted(times)
    return f"p50 {times[len(times) // 2] * 1e3:.2f} ms, p95 {times[int(len(times) * 0.95)] * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=50)
    args = parser.parse_args()
    try:
        import sqlite_vec  # not a dependency: see the docstring

        usable = hasattr(sqlite3.connect(":memory:"), "enable_load_extension")
    except ImportError:
        sqlite_vec, usable = None, False
    print(f"{platform.node()} {platform.machine()}, numpy {np.__version__}, SQLite {sqlite3.sqlite_version}")
    if not usable:
        print("sqlite-vec not measured: not installed, or this Python's sqlite3 cannot load extensions")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        vectors = rng.standard_normal((n, args.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        queries = vectors[rng.integers(0, n, args.queries)] + 0.1 * rng.standard_normal((args.queries, args.dim))
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)

        start = time.perf_counter()
        blobs = [v.astype(np.float16).tobytes() for v in vectors]  # as knowledge.db keeps them
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(n, args.dim).astype(np.float32)
        numpy_build = time.perf_counter() - start
        numpy_times, numpy_ids = [], []
        for q in queries:
            start = time.perf_counter()
            scores = matrix @ q
            top = np.argpartition(-scores, args.k - 1)[: args.k]
            top = top[np.argsort(-scores[top])]
            numpy_times.append(time.perf_counter() - start)
            numpy_ids.append(set(top.tolist()))

        numpy_line = (
            f"{n:>7,} vectors x {args.dim}: numpy matrix {percentiles(numpy_times)} (load {numpy_build:.2f} s, "
            f"{matrix.nbytes / 2**20:.0f} MiB)"
        )
        if not usable or sqlite_vec is None:
            print(numpy_line)
            continue
        db = sqlite3.connect(":memory:")
        db.enable_load_extension(True)
        sqlite_vec.load(db)
        db.enable_load_extension(False)
        start = time.perf_counter()
        db.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{args.dim}] distance_metric=cosine)")
        db.executemany(
            "INSERT INTO v (rowid, embedding) VALUES (?, ?)", ((i, v.tobytes()) for i, v in enumerate(vectors))
        )
        vec_build = time.perf_counter() - start
        vec_times, same = [], 0
        for q, expected in zip(queries, numpy_ids, strict=True):
            start = time.perf_counter()
            rows = db.execute(
                "SELECT rowid FROM v WHERE embedding MATCH ? AND k = ? ORDER BY distance", (q.tobytes(), args.k)
            ).fetchall()
            vec_times.append(time.perf_counter() - start)
            same += len({r[0] for r in rows} & expected)
        print(
            f"{numpy_line}; sqlite-vec vec0 {percentiles(vec_times)} (build {vec_build:.2f} s); "
            f"same top-{args.k}: {same / (args.k * len(queries)):.1%}"
        )


if __name__ == "__main__":
    main()
