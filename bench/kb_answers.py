"""Answering from the knowledge base, end to end: how often the chat model answers a question about
facts it cannot know, with the knowledge base and without it.

The documents: 16 short made-up texts about 16 people (one per first name, made by the same
generator as the fine-tuning's passage conversations, from seeds the training never used), one
file each, added with `ownllm kb add`. The questions: one per person about a fact in their text
("Where does Mia live?"). Each is asked through `ownllm chat`'s path (ChatSession, the chat
command's sampling, one seed per ask) with the knowledge base on and off; an answer is right
when it holds the fact's key words ("a farm near the hills"). Also reported: how often the right
document was the one cited.

    .venv/bin/python bench/kb_answers.py --run runs/demo --seeds 5
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ownllm.assistant.session import ChatSession  # noqa: E402
from ownllm.chatformat.generated import fact_passage  # noqa: E402
from ownllm.knowledge.base import KnowledgeBase  # noqa: E402


def people() -> list[tuple[str, str, str]]:
    """(text, question, key) for 16 people, one per first name."""
    found: dict[str, tuple[str, str, str]] = {}
    for i in range(10_000):
        text, question, _, key = fact_passage(random.Random(f"ownllm.bench.kb_answers:{i}"), unanswerable_rate=0)
        name = text.split()[0]
        if key is not None and name not in found:
            found[name] = (text, question, key)
        if len(found) == 16:
            break
    return list(found.values())


def ask(session: ChatSession, question: str, seed: int) -> str:
    session.reset()
    session.settings = replace(session.settings, seed=seed)
    return "".join(e.text for e in session.send(question) if e.kind == "text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    facts = people()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("knowledge.db*", "assistant.db*", "report"))
        kb = KnowledgeBase.for_run(run)
        paths = []
        for i, (text, _, _) in enumerate(facts):
            path = Path(tmp) / f"person{i:02d}.md"
            path.write_text(text + "\n", encoding="utf-8")
            kb.add(path)
            paths.append(str(path.resolve()))
        kb.close()
        session = ChatSession.open(run, stage="sft", knowledge=True)
        results = {}
        for mode in ("with the knowledge base", "without"):
            session_kb, session.knowledge = session.knowledge, (session.knowledge if mode != "without" else None)
            right = cited = asked = 0
            for (_, question, key), path in zip(facts, paths):
                for seed in range(args.seeds):
                    reply = ask(session, question, seed)
                    asked += 1
                    right += key.lower() in reply.lower()
                    cited += any(c.path == path for c in session.last_citations)
            session.knowledge = session_kb
            results[mode] = (right, cited, asked)
            print(f"{mode:<24} right {right}/{asked} = {right / asked:.0%}; the right document cited {cited}/{asked}")
        print(f"example: {facts[0][1]!r} -> {ask(session, facts[0][1], 0)!r} (key {facts[0][2]!r})")
        session.close()


if __name__ == "__main__":
    main()
