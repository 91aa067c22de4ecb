"""Tools the assistant can call, and how a call is written inside an assistant turn.

A call is written as `name(arguments)` after the <|tool_call|> token, for example
`calculator(12 * 7)`: short, readable in a rendered conversation, and easy for a small
model to copy. A call a model writes in any other shape is kept verbatim (empty name, the
whole text as arguments), so the conversation renders back exactly as it was generated.
`run_tool` answers every call with text, including calls to unknown tools and calls that
are not in the `name(arguments)` shape, so a model's mistake becomes an error result it can
read, never an exception.

Two tools: `calculator(12 * 7)` -> "84", and `search(old Mia)` -> the knowledge base's
passages about it, each headed by where it comes from:

    [mia.txt, passage 1] Mia is 7 years old. She lives in a big city.

or "no passage found", or "no knowledge base" when the chat has none. The calculator needs
nothing; search needs a knowledge base, so it is bound when a reply is made
(assistant/knowledge.py SearchTool): `run_tool(call, {**TOOLS, "search": SearchTool(kb, ...)})`.
In TOOLS, search answers "no knowledge base". The generated training conversations
(chatformat/generated.py) write their tool results with the same `format_passages`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from ownllm.chatformat.calculator import ERROR_PREFIX, calculate

ToolCall = dict[str, str]  # {"name": ..., "arguments": ...}
Tool = Callable[[str], str]  # the call's arguments -> the result's text

SEARCH = "search"
NO_PASSAGE = "no passage found"
NO_KNOWLEDGE_BASE = "no knowledge base"


class Passage(NamedTuple):
    """A passage as the search tool shows it: its document's name, its number there (from 1), its text."""

    source: str
    number: int
    text: str


def format_passages(passages: Sequence[Passage]) -> str:
    """The search tool's result: one line per passage, "[mia.txt, passage 1] Mia is 7 ...", or NO_PASSAGE."""
    if not passages:
        return NO_PASSAGE
    return "\n".join(f"[{p.source}, passage {p.number}] {' '.join(p.text.split())}" for p in passages)


def no_knowledge_base(query: str) -> str:
    """The search tool of a chat without a knowledge base."""
    return NO_KNOWLEDGE_BASE


TOOLS: dict[str, Tool] = {
    "calculator": calculate,
    SEARCH: no_knowledge_base,
}

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_CALL = re.compile(rf"({_NAME})\((.*)\)", re.DOTALL)


def is_tool_name(name: str) -> bool:
    """What `parse_tool_call` accepts as a name (ASCII, like a Python identifier)."""
    return re.fullmatch(_NAME, name) is not None


def format_tool_call(call: ToolCall) -> str:
    """The text written after <|tool_call|>; the inverse of `parse_tool_call`."""
    if not call["name"]:  # a malformed call, kept as the model wrote it
        return call["arguments"]
    return f"{call['name']}({call['arguments']})"


def parse_tool_call(text: str) -> ToolCall:
    """`calculator(12 * 7)` -> {"name": "calculator", "arguments": "12 * 7"}.

    Text in any other shape (spaces around it included) comes back as {"name": "",
    "arguments": text}, so that `run_tool` can say what is wrong.
    """
    match = _CALL.fullmatch(text)
    if match is None:
        return {"name": "", "arguments": text}
    return {"name": match.group(1), "arguments": match.group(2)}


def run_tool(call: ToolCall, tools: Mapping[str, Tool] | None = None) -> str:
    """The text of the tool's result: its answer, or "error: ...". `tools`: by name (default TOOLS)."""
    tools = TOOLS if tools is None else tools
    if not call.get("name"):
        return ERROR_PREFIX + "a tool call must look like calculator(EXPRESSION) or search(WORDS)"
    tool = tools.get(call["name"])
    if tool is None:
        return ERROR_PREFIX + f"unknown tool {call['name'][:40]!r}; available: {', '.join(tools)}"
    return tool(call.get("arguments", ""))
