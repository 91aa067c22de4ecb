"""Tools the assistant can call, and how a call is written inside an assistant turn.

A call is written as `name(arguments)` after the <|tool_call|> token, for example
`calculator(12 * 7)`: short, readable in a rendered conversation, and easy for a small
model to copy. A call a model writes in any other shape is kept verbatim (empty name, the
whole text as arguments), so the conversation renders back exactly as it was generated.
`run_tool` answers every call with text, including calls to unknown tools and calls that
are not in the `name(arguments)` shape, so a model's mistake becomes an error result it can
read, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ownllm.chatformat.calculator import ERROR_PREFIX, calculate

ToolCall = dict[str, str]  # {"name": ..., "arguments": ...}

TOOLS: dict[str, Callable[[str], str]] = {
    "calculator": calculate,
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


def run_tool(call: ToolCall) -> str:
    """The text of the tool's result: its answer, or "error: ..."."""
    if not call.get("name"):
        return ERROR_PREFIX + "a tool call must look like calculator(EXPRESSION)"
    tool = TOOLS.get(call["name"])
    if tool is None:
        return ERROR_PREFIX + f"unknown tool {call['name'][:40]!r}; available: {', '.join(TOOLS)}"
    return tool(call.get("arguments", ""))
