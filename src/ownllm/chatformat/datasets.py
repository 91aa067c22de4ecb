"""Conversation datasets: read the common formats into one shape, a list of conversations.

| format       | file                  | one record is                                                    |
|--------------|-----------------------|------------------------------------------------------------------|
| `messages`   | .jsonl                | `{"messages": [{"role": ..., "content": ...}, ...]}` (our own)    |
| `alpaca`     | .jsonl                | `{"instruction": ..., "input": ..., "output": ...}`               |
| `dolly`      | .jsonl                | `{"prompt": ..., "answer": ...}`, the prompt inside an Alpaca     |
|              |                       | "### Instruction / ### Input / ### Response" wrapper (stripped)   |
| `oasst`      | .jsonl                | an OpenAssistant message tree; we follow the best-ranked reply    |
| `chatterbot` | .yml / a folder of it | a ChatterBot corpus file (chatterbot.py)                          |

`load_conversations(path)` picks the format from the file (or takes `format=`), skips and
counts malformed records, reports the first few by line, and drops exact duplicates.
The project ships the files it trains on by default in `ownllm/resources/sft/`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ownllm.chatformat.chatterbot import read_chatterbot
from ownllm.chatformat.conversation import Conversation
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.report import Collector, LoadedConversations
from ownllm.core.errors import UserError

YAML_SUFFIXES = (".yml", ".yaml")


class Malformed(ValueError):
    """A record that cannot become a conversation; the message says why."""


# One function per JSONL format: a parsed record -> a conversation (or Malformed).


def from_messages(record: dict) -> Conversation:
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise Malformed("no 'messages' list")
    return [_stripped(m) for m in messages]


def from_alpaca(record: dict) -> Conversation:
    instruction = _text_field(record, "instruction")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise Malformed("'input' is not text")
    prompt = f"{instruction}\n\n{extra.strip()}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text_field(record, "output")}]


_DOLLY_PROMPT = re.compile(
    r"(?:Below is an instruction.*?\n\n)?### Instruction:\s*\n(?P<instruction>.*?)"
    r"(?:\n\n### Input:\s*\n(?P<input>.*?))?\n\n### Response:\s*",
    re.DOTALL,
)
_DOLLY_END = "###eos_token###"  # every answer in the dolly file ends with this marker


def from_dolly(record: dict) -> Conversation:
    prompt = _text_field(record, "prompt")
    match = _DOLLY_PROMPT.fullmatch(prompt)
    if match:
        prompt = match["instruction"].strip()
        if match["input"] and match["input"].strip():
            prompt += "\n\n" + match["input"].strip()
    elif "###" in prompt:
        raise Malformed("the prompt's '### Instruction / ### Response' wrapper is not the expected one")
    answer = _text_field(record, "answer").removesuffix(_DOLLY_END).strip()
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def from_oasst(record: dict) -> Conversation:
    """The best path through one OpenAssistant tree.

    At an assistant turn we take the reply with the lowest rank (rank 0 is the best the
    reviewers saw); unranked replies come after ranked ones. User follow-ups are unranked:
    we take the first one that got an answer. Deleted replies and replies that failed
    review are never taken. A path that ends on an unanswered user turn loses that turn.
    """
    node = record.get("prompt")
    if not isinstance(node, dict) or node.get("role") != "prompter" or not isinstance(node.get("text"), str):
        raise Malformed("no 'prompt' message from a prompter")
    path = [node]
    while replies := _usable_replies(node):
        node = min(replies, key=lambda item: _oasst_preference(*item))[1]
        path.append(node)
    while path and path[-1]["role"] != "assistant":
        path.pop()
    if not path:
        raise Malformed("the tree has no assistant reply")
    return [{"role": _OASST_ROLES[n["role"]], "content": n["text"].strip()} for n in path]


def _usable_replies(node: dict) -> list[tuple[int, dict]]:
    replies = node.get("replies")
    if not isinstance(replies, list):
        return []
    return [
        (position, r)
        for position, r in enumerate(replies)
        if isinstance(r, dict)
        and r.get("role") in _OASST_ROLES
        and r["role"] != node["role"]
        and isinstance(r.get("text"), str)
        and r["text"].strip()
        and not r.get("deleted")
        and r.get("review_result") is not False
    ]


def _oasst_preference(position: int, reply: dict) -> tuple:
    rank = reply.get("rank")
    ranked = isinstance(rank, int) and not isinstance(rank, bool)
    answered = bool(_usable_replies(reply))
    return (not ranked, rank if ranked else 0, not answered, position)


JSONL_FORMATS: dict[str, Callable[[dict], Conversation]] = {
    "messages": from_messages,
    "alpaca": from_alpaca,
    "dolly": from_dolly,
    "oasst": from_oasst,
}
FORMATS = (*JSONL_FORMATS, "chatterbot")


def load_conversations(path: str | Path, format: str = "auto", persona: Persona | None = None) -> LoadedConversations:
    """Every usable conversation in `path` (a file, or a folder of ChatterBot YAML files).

    Malformed records are skipped and counted in the report; a file with no usable
    conversation at all is refused with a UserError naming its first problem.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"conversation data not found: {path}")
    if format == "auto":
        format = detect_format(path)
    if format not in FORMATS:
        raise UserError(f"unknown conversation format {format!r}; choose one of {', '.join(FORMATS)} (or auto)")
    collector = Collector(path.name)
    if format == "chatterbot":
        files = sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES) if path.is_dir() else [path]
        for file in files:
            read_chatterbot(file, collector, (persona or Persona()).name)
    else:
        _read_jsonl(path, JSONL_FORMATS[format], collector)
    loaded = collector.result()
    if not loaded.conversations:
        first = f" ({loaded.report.problems[0]})" if loaded.report.problems else ""
        raise UserError(f"no usable {format} conversations in {path}{first}; check the file and its format")
    return loaded


def detect_format(path: Path) -> str:
    """Guess a file's format from its suffix and the keys of its first JSON record."""
    if path.is_dir():
        if any(p.suffix in YAML_SUFFIXES for p in path.iterdir()):
            return "chatterbot"
        raise UserError(f"{path} is a folder without .yml files; pass a .jsonl or .yml file (or a folder of .yml)")
    if path.suffix in YAML_SUFFIXES:
        return "chatterbot"
    record = _first_record(path)
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "answer" in record:
        return "dolly"
    if isinstance(record.get("prompt"), dict) and "replies" in record["prompt"]:
        return "oasst"
    raise UserError(
        f"cannot tell the format of {path} from its first record (keys {sorted(record)[:8]}); "
        f"pass one of {', '.join(FORMATS)}"
    )


def bundled_sft_dir() -> Path:
    """The conversation data shipped with ownllm (licences in its LICENSES.md)."""
    return Path(str(resources.files("ownllm.resources"))) / "sft"


BUNDLED_FILES = ("oasst-en100-trees.jsonl", "dolly-151.jsonl", "chatterbot-english")


def load_bundled(persona: Persona | None = None) -> list[LoadedConversations]:
    """The default real conversations: OpenAssistant, dolly and ChatterBot, one result per source."""
    return [load_conversations(bundled_sft_dir() / name, persona=persona) for name in BUNDLED_FILES]


def _read_jsonl(path: Path, convert: Callable[[dict], Conversation], collector: Collector) -> None:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict):
                    raise Malformed("not a JSON object")
                conversation = convert(record)
            except UnicodeDecodeError:
                collector.report.skip(where, "not UTF-8 text")
            except json.JSONDecodeError as e:
                collector.report.skip(where, f"not JSON ({e.msg} at column {e.colno})")
            except Malformed as e:
                collector.report.skip(where, str(e))
            else:
                collector.add(where, conversation)


def _first_record(path: Path, lines_to_try: int = 100) -> dict:
    """The first line that is a JSON object (a few broken lines at the top do not hide the format)."""
    with open(path, "rb") as f:
        for _, raw in zip(range(lines_to_try), f):
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict):
                return record
    raise UserError(f"{path} has no JSON object per line; conversation files are JSONL or ChatterBot YAML")


def _text_field(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Malformed(f"missing text '{name}'")
    return value.strip()


def _stripped(message: Any) -> Any:
    """A message with its text stripped; anything else is left for validation to refuse."""
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return {**message, "content": message["content"].strip()}
    return message
