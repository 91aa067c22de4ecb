"""Retrieval quality and knowledge-base speed: BM25 (SQLite FTS5), the run's own embeddings and hybrid
(reciprocal rank fusion) on SQuAD v1.1 dev, and indexing and search at scale.

Quality: the 2,067 SQuAD dev paragraphs (shipped in ownllm/resources/eval) are the documents,
one file each, added with `KnowledgeBase.add` (so chunked as `ownllm kb add` chunks them); the
first question of each paragraph is the query; the relevant document is the paragraph it was
written on (other paragraphs of the article may also answer it: answer-string recall counts
any retrieved passage that contains a gold answer). Passages are ranked, then documents in the
order of their best passage. Prints recall@1/5/20 and nDCG@10 (one relevant document: 1/log2(rank+1))
for each retriever; with --run DIR the passages are embedded with that run's embedder
(`ownllm embed train`) and vector and hybrid search are measured too.

Scale: the bundled corpus, chunked, added again under new names until the index holds 10,000
and then 100,000 passages; prints passages indexed per second, the database's size, and search
latency p50/p95 over the SQuAD questions at each size and for each retriever. With an embedder,
the rate up to 10,000 passages includes embedding them; the copies after that repeat those texts
and take their vectors from a cache (the rate printed for 100,000 says so).

    .venv/bin/python bench/retrieval.py                          # BM25 only, both parts
    .venv/bin/python bench/retrieval.py --run runs/demo          # and the run's embeddings, hybrid
    .venv/bin/python bench/retrieval.py --run runs/demo --skip-scale
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ownllm.eval import squad  # noqa: E402
from ownllm.knowledge.base import RETRIEVERS, KnowledgeBase  # noqa: E402
from ownllm.knowledge.embeddings import TextEmbedder  # noqa: E402

CORPUS = ROOT / "src" / "ownllm" / "resources" / "corpus"


def quality(tmp: Path, embedder: TextEmbedder | None) -> None:
    paragraphs: dict[str, Path] = {}
    questions = squad.questions()
    docs = tmp / "squad"
    docs.mkdir()
    for i, q in enumerate(questions):
        path = docs / f"{i:05d}.txt"
        path.write_text(q.context, encoding="utf-8")
        paragraphs[q.context] = path.resolve()
    kb = KnowledgeBase(tmp / "squad.db", embedder)
    start = time.perf_counter()
    for path in sorted(docs.iterdir()):
        kb.add(path)
    seconds = time.perf_counter() - start
    passages = sum(d["chunks"] for d in kb.documents())
    what = "embedded and " if embedder else ""
    print(f"SQuAD dev: {len(questions):,} paragraphs -> {passages:,} passages {what}indexed in {seconds:.1f} s")
    for retriever in RETRIEVERS if embedder else ("bm25",):
        recall: dict[int, list[float]] = {1: [], 5: [], 20: []}
        answer_recall: dict[int, list[float]] = {1: [], 5: [], 20: []}
        ndcg = []
        for q in questions:
            hits = kb.search(q.question, k=60, retriever=retriever)
            ranked = list(dict.fromkeys(h.path for h in hits))  # documents by their best passage
            relevant = str(paragraphs[q.context])
            rank = ranked.index(relevant) + 1 if relevant in ranked else None
            for k in recall:
                recall[k].append(float(rank is not None and rank <= k))
                answer_recall[k].append(float(any(squad.contains_answer(h.text, q.answers) for h in hits[:k])))
            ndcg.append(1 / math.log2(rank + 1) if rank is not None and rank <= 10 else 0.0)
        print(
            f"{retriever:<8}"
            + "".join(f"recall@{k} {statistics.mean(v):.3f}  " for k, v in recall.items())
            + f"nDCG@10 {statistics.mean(ndcg):.3f}"
        )
        print(
            f"{'':<8}"
            + "".join(f"answer@{k} {statistics.mean(v):.3f}  " for k, v in answer_recall.items())
            + "(a retrieved passage contains a gold answer)"
        )
    kb.close()


class CachedEmbedder:
    """The run's embedder with a memory of the texts it embedded: the scale part's copies repeat texts."""

    def __init__(self, embedder: TextEmbedder):
        self.embedder, self.cache = embedder, {}
        self.id, self.dim = embedder.id, embedder.dim
        self.caching = True  # off while queries are timed: a query is embedded every time, as in use

    def embed(self, texts, progress=None):
        if not self.caching:
            return self.embedder.embed(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.embedder.embed(missing), strict=True))
        import numpy as np  # lazy: a bench

        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def scale(tmp: Path, embedder: TextEmbedder | None) -> None:
    texts = sorted(CORPUS.rglob("*.txt"))
    queries = [q.question for q in squad.questions()[:300]]
    cached = CachedEmbedder(embedder) if embedder else None
    kb = KnowledgeBase(tmp / "scale.db", cached)  # type: ignore[arg-type]
    copy, added, indexing = 0, 0, 0.0
    for target in (10_000, 100_000):
        while added < target:
            for source in texts:
                if added >= target:
                    break
                path = tmp / f"copy{copy}-{source.name}"
                path.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
                start = time.perf_counter()
                added += kb.add(path)[1]
                indexing += time.perf_counter() - start
                path.unlink()
            copy += 1
        size = sum(p.stat().st_size for p in tmp.glob("scale.db*")) / 2**20
        note = " (vectors of repeated texts from a cache)" if cached and target > 10_000 else ""
        print(f"{added:>7,} passages: {added / indexing:,.0f} passages/s indexed{note}, {size:.0f} MiB on disk")
        if cached:
            cached.caching = False
        for retriever in RETRIEVERS if embedder else ("bm25",):
            kb.search(queries[0], k=5, retriever=retriever)  # the first vector search reads the matrix
            latencies = []
            for query in queries:
                start = time.perf_counter()
                kb.search(query, k=5, retriever=retriever)
                latencies.append((time.perf_counter() - start) * 1e3)
            latencies.sort()
            print(
                f"    {retriever:<7} search p50 {latencies[len(latencies) // 2]:.1f} ms, "
                f"p95 {latencies[int(len(latencies) * 0.95)]:.1f} ms ({len(queries)} SQuAD questions, k=5)"
            )
        if cached:
            cached.caching = True
    kb.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--run", type=Path, help="measure this run's embedder (vector and hybrid search) too")
    args = parser.parse_args()
    embedder = TextEmbedder.for_run(args.run) if args.run else None
    if args.run and embedder is None:
        sys.exit(f"{args.run} has no embedder; run `ownllm embed train --run {args.run}`")
    print(f"{platform.node()} {platform.machine()}, SQLite FTS5 (Porter stemming)")
    if embedder:
        print(f"embedder {embedder.id} of {args.run} ({embedder.dim} dimensions)")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_quality:
            quality(Path(tmp), embedder)
        if not args.skip_scale:
            scale(Path(tmp), embedder)


if __name__ == "__main__":
    main()
