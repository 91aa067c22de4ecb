"""How often does the fine-tuned assistant show each skill the chat issue asks for? Measured over seeds.

For each check the same question is asked once per seed through exactly the path of `ownllm
chat` (ChatSession: the engine, the chat template, the persona's system prompt, the calculator
tool loop) at the chat command's default sampling settings (temperature 0.8, top-k 50). A reply
passes when:

    name        "What is your name?"            the reply contains the persona's name
    calculator  "What is 12 * 7?"               the model called the calculator and the reply says 84
    story       "Tell me a story about a cat"   the reply mentions a cat and is a story (>= 25 words)

    .venv/bin/python bench/chat_skills.py --run runs/demo            # 20 seeds per check
    .venv/bin/python bench/chat_skills.py --run runs/demo --seeds 5 --show

Prints one line per check with the pass rate, and with --show every reply.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import replace
from pathlib import Path

import torch

from ownllm.assistant.session import ChatSession
from ownllm.chatformat.persona import Persona
from ownllm.run.checkpoints import latest_checkpoint, read_state


def passes_name(text: str, tool_calls: list[str], name: str) -> bool:
    return name.lower() in text.lower()


def passes_calculator(text: str, tool_calls: list[str], name: str) -> bool:
    return any(call.startswith("calculator(") for call in tool_calls) and re.search(r"\b84\b", text) is not None


def passes_story(text: str, tool_calls: list[str], name: str) -> bool:
    return re.search(r"\bcats?\b", text, re.IGNORECASE) is not None and len(text.split()) >= 25


CHECKS = {
    "name": ("What is your name?", passes_name),
    "calculator": ("What is 12 * 7?", passes_calculator),
    "story": ("Tell me a story about a cat", passes_story),
}


def ask(session: ChatSession, question: str) -> tuple[str, list[str]]:
    session.reset()
    text, calls = [], []
    for event in session.send(question):
        if event.kind == "text":
            text.append(event.text)
        elif event.kind == "tool_call":
            calls.append(event.text)
    return "".join(text).strip(), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--show", action="store_true", help="print every reply")
    args = parser.parse_args()
    torch.set_num_threads(2)

    session = ChatSession.open(args.run, stage="sft")
    persona = Persona.from_dict(
        read_state(latest_checkpoint(Path(args.run) / "checkpoints" / "sft")).get("persona", {})
    )
    print(f"run {args.run}, persona {persona.name!r}, {args.seeds} seeds per check, settings {session.settings}")
    start = time.perf_counter()
    for check, (question, passes) in CHECKS.items():
        passed = 0
        for seed in range(args.seeds):
            session.settings = replace(session.settings, seed=seed)
            text, calls = ask(session, question)
            ok = passes(text, calls, persona.name)
            passed += ok
            if args.show:
                print(f"  [{check} seed {seed}] {'PASS' if ok else 'fail'} calls={calls} {text!r}")
        print(f"{check:<11} {question!r:<32} {passed}/{args.seeds} = {passed / args.seeds:.0%}", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")
    session.close()


if __name__ == "__main__":
    main()
