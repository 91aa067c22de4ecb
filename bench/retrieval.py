"""Retrieval quality and knowledge-base speed: BM25 (SQLite FTS5) on SQuAD v1.1 dev, and search at scale.

Quality: the 2,067 SQuAD dev paragraphs (shipped in ownllm/resources/eval) are the documents,
one file each, added with `KnowledgeBase.add` (so chunked as `ownllm kb add` chunks them); the
first question of each paragraph is the query; the relevant document is the paragraph it was
written on (other paragraphs of the article may also answer it: answer-string recall counts
any retrieved passage that contains a gold answer). Passages are ranked, then documents in the
order of their best passage. Prints recall@1/5/20 and nDCG@10 (one relevant document: 1/log2(rank+1)).

Scale: the bundled corpus, chunked, added again under new names until the index holds 10,000
and then 100,000 passages; prints passages indexed per second, the database's size, and search
latency p50/p95 over the SQuAD questions at each size.

    .venv/bin/python bench/retrieval.py                 # both parts
    .venv/bin/python bench/retrieval.py --skip-scale
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
from ownllm.knowledge.base import KnowledgeBase  # noqa: E402

CORPUS = ROOT / "src" / "ownllm" / "resources" / "corpus"


def quality(tmp: Path) -> None:
    paragraphs: dict[str, Path] = {}
    questions = squad.questions()
    docs = tmp / "squad"
    docs.mkdir()
    for i, q in enumerate(questions):
        path = docs / f"{i:05d}.txt"
        path.write_text(q.context, encoding="utf-8")
        paragraphs[q.context] = path.resolve()
    kb = KnowledgeBase(tmp / "squad.db")
    start = time.perf_counter()
    for path in sorted(docs.iterdir()):
        kb.add(path)
    seconds = time.perf_counter() - start
    passages = sum(d["chunks"] for d in kb.documents())
    print(f"SQuAD dev: {len(questions):,} paragraphs -> {passages:,} passages indexed in {seconds:.1f} s")
    recall = {1: [], 5: [], 20: []}
    answer_recall = {1: [], 5: [], 20: []}
    ndcg = []
    for q in questions:
        hits = kb.search(q.question, k=60)
        ranked = list(dict.fromkeys(h.path for h in hits))  # documents by their best passage
        relevant = str(paragraphs[q.context])
        rank = ranked.index(relevant) + 1 if relevant in ranked else None
        for k in recall:
            recall[k].append(float(rank is not None and rank <= k))
            answer_recall[k].append(float(any(squad.contains_answer(h.text, q.answers) for h in hits[:k])))
        ndcg.append(1 / math.log2(rank + 1) if rank is not None and rank <= 10 else 0.0)
    print(
        f"{'BM25 (FTS5)':<14}"
        + "".join(f"recall@{k} {statistics.mean(v):.3f}  " for k, v in recall.items())
        + f"nDCG@10 {statistics.mean(ndcg):.3f}"
    )
    print(
        f"{'':<14}"
        + "".join(f"answer@{k} {statistics.mean(v):.3f}  " for k, v in answer_recall.items())
        + "(a retrieved passage contains a gold answer)"
    )
    kb.close()


def scale(tmp: Path) -> None:
    texts = sorted(CORPUS.rglob("*.txt"))
    queries = [q.question for q in squad.questions()[:300]]
    kb = KnowledgeBase(tmp / "scale.db")
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
        latencies = []
        for query in queries:
            start = time.perf_counter()
            kb.search(query, k=5)
            latencies.append((time.perf_counter() - start) * 1e3)
        latencies.sort()
        size = sum(p.stat().st_size for p in tmp.glob("scale.db*")) / 2**20
        print(
            f"{added:>7,} passages: {added / indexing:,.0f} passages/s indexed, {size:.0f} MiB on disk, "
            f"search p50 {latencies[len(latencies) // 2]:.1f} ms, p95 {latencies[int(len(latencies) * 0.95)]:.1f} ms "
            f"({len(queries)} SQuAD questions, k=5)"
        )
    kb.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    print(f"{platform.node()} {platform.machine()}, SQLite FTS5 (Porter stemming)")
    with tempfile.TemporaryDirectory() as tmp:
        quality(Path(tmp))
        if not args.skip_scale:
            scale(Path(tmp))


if __name__ == "__main__":
    main()
