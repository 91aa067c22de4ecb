"""Answering from the knowledge base, end to end: how often the chat model answers a question about
facts it cannot know, with the knowledge base (retrieval-augmented, or by calling its search tool)
and without it.

The documents: 16 short made-up texts about 16 people (one per first name, made by the same
generator as the fine-tuning's passage and search conversations, from seeds the training never
used), one file each, added with `ownllm kb add`. The questions: one per person about a fact in
their text ("Where does Mia live?"). Each is asked through `ownllm chat`'s path (ChatSession, the
chat command's sampling, one seed per ask) in each mode:

    rag      the best passage about the question is put before it (assistant/knowledge.py augment)
    tool     the question as it is; the model may call search(...) on the knowledge base
    without  no knowledge base (a search call answers "no knowledge base")

An answer is right when it holds the fact's key words ("a farm near the hills") as words, the
citation in brackets left out ("Mia is 7 years old (person07.md)." must not count "7" twice).
Also reported: how often the right document was among those cited, how often the reply named
it ("(person07.md)", as the search conversations teach), and how often the model called search.

    .venv/bin/python bench/kb_answers.py --run runs/demo --seeds 5 --mode both
"""

from __future__ import annotations

import argparse
import random
import re
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


def ask(session: ChatSession, question: str, seed: int) -> tuple[str, list[str]]:
    """The reply's text and its tool calls."""
    session.reset()
    session.settings = replace(session.settings, seed=seed)
    events = list(session.send(question))
    return "".join(e.text for e in events if e.kind == "text"), [e.text for e in events if e.kind == "tool_call"]


def right(reply: str, key: str) -> bool:
    """Whether the reply holds the key words, citations "(name.md)" left out."""
    text = re.sub(r"\([^()]*\.\w+\)", "", reply)
    return re.search(rf"\b{re.escape(key)}\b", text, flags=re.IGNORECASE) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--mode", choices=("rag", "tool", "both"), default="both", help="with the knowledge base")
    parser.add_argument("--no-without", action="store_true", help="skip the run without the knowledge base")
    args = parser.parse_args()
    torch.set_num_threads(2)
    facts = people()
    modes = ["rag", "tool"] if args.mode == "both" else [args.mode]
    if not args.no_without:
        modes.append("without")
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
        knowledge = session.knowledge
        for mode in modes:
            session.knowledge = None if mode == "without" else knowledge
            session.kb_mode = "tool" if mode == "without" else mode
            n_right = cited = named = searched = asked = 0
            for (_, question, key), path in zip(facts, paths):
                for seed in range(args.seeds):
                    reply, calls = ask(session, question, seed)
                    asked += 1
                    n_right += right(reply, key)
                    cited += any(c.path == path for c in session.last_citations)
                    named += Path(path).name in reply
                    searched += any(call.startswith("search(") for call in calls)
            print(
                f"{mode:<8} right {n_right}/{asked} = {n_right / asked:.0%}; the right document cited {cited}/{asked}, "
                f"named in the reply {named}/{asked}; called search {searched}/{asked}"
            )
            example = ask(session, facts[0][1], 0)
            print(f"  example: {facts[0][1]!r} -> {example[0]!r} (calls {example[1]}, key {facts[0][2]!r})")
        session.knowledge = knowledge
        session.close()


if __name__ == "__main__":
    main()
