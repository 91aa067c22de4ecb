"""`ownllm kb`: the run's knowledge base, your documents as searchable passages (DIR/knowledge.db).

    ownllm kb add --run runs/demo notes/ handbook.pdf      # files and folders (.txt .md .html .jsonl .pdf)
    ownllm kb list --run runs/demo
    ownllm kb search --run runs/demo "when is the meeting" -k 5 [--retriever bm25|vector|hybrid]
    ownllm kb remove --run runs/demo notes/old.md
    ownllm kb reindex --run runs/demo        # embed the passages again after `ownllm embed train`

Adding is incremental: an unchanged file is skipped, a changed one has its passages replaced,
each file in one transaction (Ctrl-C leaves the others as they were; run `add` again). When
the run has an embedder (`ownllm embed train`), passages are embedded as they are added, and
`--retriever vector` or `hybrid` (BM25 and the embeddings fused, knowledge/base.py) search with
them; the default is BM25, the best measured on SQuAD with the demo's embedder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ownllm.commands.common import add_retriever_argument, add_run_argument
from ownllm.core.console import progress, say
from ownllm.core.errors import UserError
from ownllm.run import RunDir


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add or refresh files and folders")
    add_run_argument(add)
    add.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    listing = actions.add_parser("list", help="the documents in the knowledge base")
    add_run_argument(listing)
    remove = actions.add_parser("remove", help="remove documents")
    add_run_argument(remove)
    remove.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    search = actions.add_parser("search", help="the passages that best match a query")
    add_run_argument(search)
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="how many passages (default: %(default)s)")
    add_retriever_argument(search)
    reindex = actions.add_parser("reindex", help="embed the passages that lack the run's embeddings")
    add_run_argument(reindex)


def _files(paths: list[Path]) -> tuple[list[Path], int]:
    """The readable documents under `paths` (folders searched recursively) and how many files were skipped."""
    from ownllm.knowledge.documents import SUFFIXES  # lazy: with the library

    files, skipped = [], 0
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist; give files or folders of documents")
        if path.is_file():
            files.append(path)
            continue
        for found in sorted(p for p in path.rglob("*") if p.is_file()):
            if found.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in found.parts):
                files.append(found)
            else:
                skipped += 1
    return files, skipped


def run(args: argparse.Namespace) -> int:
    run_dir = RunDir.open(args.run, create=False)
    from ownllm.knowledge.base import KnowledgeBase  # lazy: start-up
    from ownllm.knowledge.embeddings import TextEmbedder  # lazy: loads torch

    if args.action == "add":
        files, skipped = _files(args.paths)
    embedder = TextEmbedder.for_run(run_dir.root) if args.action != "remove" else None
    kb = KnowledgeBase.for_run(run_dir.root, embedder)
    try:
        if args.action == "add":
            counts = {"added": 0, "replaced": 0, "unchanged": 0}
            chunks = 0
            for path in progress(iterable=files, desc="adding", unit="file"):
                what, n = kb.add(path)
                counts[what] += 1
                chunks += n if what != "unchanged" else 0
            note = f"; {skipped} other files skipped (not .txt .md .html .jsonl .pdf)" if skipped else ""
            say(
                f"{counts['added']} added, {counts['replaced']} replaced, {counts['unchanged']} unchanged "
                f"({chunks:,} new passages) in {kb.path}{note}"
            )
        elif args.action == "list":
            documents = kb.documents()
            for d in documents:
                print(f"{d['chunks']:>6} passages {d['chars']:>10,} chars  {d['path']}")
            say(f"{len(documents)} documents in {kb.path}")
            missing = kb.without_vectors() if embedder is not None else 0
            if missing:
                say(f"{missing:,} passages without vectors of the run's embedder: `ownllm kb reindex --run {args.run}`")
        elif args.action == "remove":
            for path in args.paths:
                if not kb.remove(path):
                    raise UserError(f"{path} is not in the knowledge base (`ownllm kb list` shows what is)")
                say(f"removed {path}")
        elif args.action == "reindex":
            if embedder is None:
                raise UserError(f"the run has no embedder; train one with `ownllm embed train --run {args.run}`")
            with progress(total=kb.without_vectors(), desc="embedding", unit="passage") as bar:
                done = kb.reindex(bar.update)
            say(f"{done:,} passages embedded in {kb.path}")
        else:
            if args.k < 1:
                raise UserError("-k must be at least 1")
            hits = kb.search(args.query, args.k, args.retriever)
            for i, hit in enumerate(hits, 1):
                print(f"[{i}] {hit.path} (passage {hit.position}, score {hit.score:.2f})")
                print("    " + " ".join(hit.text.split())[:400])
            if not hits:
                say("no passage matches those words")
    finally:
        kb.close()
    return 0
