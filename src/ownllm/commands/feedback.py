"""`ownllm feedback export`: turn the thumbs given on the web page into data for the next fine-tuning run.

    ownllm feedback export --run runs/demo [--out DIR]      # default DIR: RUN/feedback/

Writes two files:

- `sft.jsonl`: for every thumbs-up reply, the conversation up to and including it, as
  `{"messages": [...]}` (the format `ownllm sft --data` reads), system prompt first.
- `preferences.jsonl`: when one prompt got a thumbs-up answer and a thumbs-down one (after
  "regenerate", or in two conversations that asked the same thing), one line per pair:
  `{"prompt": [messages up to the user's message], "chosen": [reply messages], "rejected": [...]}`.
  A reply is the assistant's messages after the prompt, a tool call and its result included.

Only finished replies are used: a reply that was stopped or cut off by a crash would teach
the model to stop mid-sentence. Rated conversations that break the chat format are skipped
and counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ownllm.chatformat.conversation import InvalidConversation, validate
from ownllm.commands.common import add_run_argument
from ownllm.core.console import say
from ownllm.core.errors import UserError
from ownllm.core.fsutil import atomic_write_text
from ownllm.run import RunDir
from ownllm.server.store import DB_NAME, Store


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export",
        help="write rated replies as SFT conversations and preference pairs",
        description="Write rated replies as SFT conversations and preference pairs.",
    )
    add_run_argument(export)
    export.add_argument(
        "--out", type=Path, metavar="DIR", help="where to write sft.jsonl and preferences.jsonl (default: RUN/feedback)"
    )


def run(args: argparse.Namespace) -> int:
    run_dir = RunDir.open(args.run, create=False)
    db = run_dir.root / DB_NAME
    if not db.is_file():
        raise UserError(
            f"{db} does not exist: nothing was rated yet; chat with `ownllm serve --run {args.run}` "
            "and rate replies with the thumbs"
        )
    out = args.out or run_dir.root / "feedback"
    store = Store(db, recover=False)  # a server may be writing a reply right now: leave it streaming
    try:
        rated = store.rated_replies()
    finally:
        store.close()
    sft, pairs, counts = build_datasets(rated)
    atomic_write_text(out / "sft.jsonl", "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in sft))
    atomic_write_text(out / "preferences.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    say(
        f"{counts['up']} thumbs up, {counts['down']} thumbs down"
        + (f"; skipped {counts['unfinished']} unfinished replies" if counts["unfinished"] else "")
        + (f" and {counts['invalid']} malformed conversations" if counts["invalid"] else "")
    )
    say(f"wrote {len(sft)} conversations to {out / 'sft.jsonl'}")
    say(f"wrote {len(pairs)} preference pairs to {out / 'preferences.jsonl'}")
    return 0


def build_datasets(rated: list[dict]) -> tuple[list[list[dict]], list[dict], dict[str, int]]:
    """(SFT conversations, preference pairs, counts) from `Store.rated_replies()`."""
    counts = {"up": 0, "down": 0, "unfinished": 0, "invalid": 0}
    sft: list[list[dict]] = []
    by_prompt: dict[str, dict] = {}  # the prompt as JSON -> {"prompt", "up": [replies], "down": [replies]}
    for item in rated:
        counts[item["rating"]] += 1
        if item["status"] != "complete":
            counts["unfinished"] += 1
            continue
        system = [{"role": "system", "content": item["system_prompt"]}] if item["system_prompt"].strip() else []
        try:
            conversation = validate(system + item["path"], for_training=True)
        except InvalidConversation:
            counts["invalid"] += 1
            continue
        if item["rating"] == "up":
            sft.append(conversation)
        last_user = max(i for i, m in enumerate(conversation) if m["role"] == "user")
        prompt, answer = conversation[: last_user + 1], conversation[last_user + 1 :]
        group = by_prompt.setdefault(json.dumps(prompt, sort_keys=True), {"prompt": prompt, "up": [], "down": []})
        group[item["rating"]].append(answer)
    pairs = [
        {"prompt": g["prompt"], "chosen": chosen, "rejected": rejected}
        for g in by_prompt.values()
        for chosen in g["up"]
        for rejected in g["down"]
    ]
    return sft, pairs, counts
