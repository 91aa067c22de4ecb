"""The chat skills of `ownllm eval` (chat_name, chat_calculator, chat_story, chat_multi_turn), each item asked
under several seeds: pass rates with less sampling noise than one seed per item, split by phrasing.

`ownllm eval` asks each item once (40 names, 60 sums, 40 stories, 20 three-turn conversations), so
a story rate moves by 8 points from one checkpoint to the next. Here every item is asked --seeds
times (seed k asks item i with seed i + 1000 k) through the same reply loop (persona system prompt,
chat template, calculator tool), at the chat command's sampling (temperature 0.8, top-k 50) or at
the temperatures given. "new phrasing" items ask in words no fine-tuning conversation uses.

    .venv/bin/python bench/skills_over_seeds.py --run runs/demo --seeds 3
    .venv/bin/python bench/skills_over_seeds.py --run runs/demo --seeds 2 --temperatures 0.8,0.5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ownllm.assistant.session import Settings  # noqa: E402
from ownllm.chatformat.persona import Persona  # noqa: E402
from ownllm.chatformat.template import ChatTemplate  # noqa: E402
from ownllm.eval import chat_eval, chat_tasks  # noqa: E402
from ownllm.inference.engine import Engine  # noqa: E402


def tasks(persona: str) -> dict[str, list[chat_tasks.ChatItem]]:
    return {
        "name": chat_tasks.chat_name(persona),
        "calculator": chat_tasks.chat_calculator(),
        "story": chat_tasks.chat_story(),
        "multi_turn": chat_tasks.chat_multi_turn(persona, count=40),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--seeds", type=int, default=3, help="times each item is asked (default %(default)s)")
    parser.add_argument("--temperatures", default="0.8", help="comma-separated (default: the chat default, 0.8)")
    args = parser.parse_args()

    engine = Engine.load(args.run, stage="sft", max_slots=16)
    if engine.resolved is None or engine.resolved.persona is None:
        raise SystemExit(f"{args.run} has no chat model (ownllm sft)")
    persona = Persona.from_dict(engine.resolved.persona)
    template, system = ChatTemplate(engine.tokenizer), persona.system_prompt()
    print(f"run {args.run}, checkpoint {engine.resolved.path}, persona {persona.name!r}, {args.seeds} seeds per item")
    for temperature in (float(t) for t in args.temperatures.split(",")):
        chat_eval.Settings = lambda t=temperature: Settings(temperature=t)  # what chat_eval.ask samples with
        for name, items in tasks(persona.name).items():
            start = time.perf_counter()
            many = [replace(item, seed=item.seed + 1000 * k) for k in range(args.seeds) for item in items]
            with ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(lambda item: chat_eval.ask(engine, template, system, item), many))
            scores = [item.check(reply) for item, reply in zip(many, replies)]
            metrics = {m: statistics.mean(s[m] for s in scores) for m in scores[0]}
            groups: dict[str, list[float]] = {}
            for item, s in zip(many, scores):
                if item.group:
                    groups.setdefault(item.group, []).append(s["acc"])
            line = ", ".join(f"{m} {v:.3f}" for m, v in metrics.items())
            by_group = "; ".join(f"{g} {statistics.mean(v):.3f} ({len(v)})" for g, v in sorted(groups.items()))
            print(
                f"T={temperature} {name:<11} {line}  [{len(scores)} replies{'; ' + by_group if by_group else ''}]"
                f"  {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    engine.close()


if __name__ == "__main__":
    main()
