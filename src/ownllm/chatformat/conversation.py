"""What a conversation is: a list of messages, checked before anything renders or trains on it.

A message is a plain dict, the same shape in datasets, in saved chats and in the engine:

    {"role": "system",    "content": "You are Pip, a small helpful assistant."}
    {"role": "user",      "content": "What is 12 * 7?"}
    {"role": "assistant", "content": "", "tool_call": {"name": "calculator", "arguments": "12 * 7"}}
    {"role": "tool",      "content": "84"}
    {"role": "assistant", "content": "12 * 7 = 84."}

The order is fixed so that a small model sees one shape only: an optional system message
first, then user and assistant taking turns; an assistant message that calls a tool is
followed by the tool's result and then by the assistant again. `validate` refuses anything
else with one line saying which message is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ownllm.chatformat.tools import is_tool_name
from ownllm.core.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
Message = dict[str, Any]
Conversation = list[Message]


class InvalidConversation(UserError):
    """A conversation that breaks the rules above; loaders skip and count these."""


def validate(conversation: Iterable[Message], for_training: bool = False) -> Conversation:
    """A clean copy of `conversation` (known keys only), or InvalidConversation naming the first problem.

    An empty assistant reply is allowed (a model may say nothing, and its history must
    still render) except `for_training`, which also needs at least one assistant message:
    training on an empty reply would teach the model to say nothing.
    """
    if not isinstance(conversation, (list, tuple)):
        raise InvalidConversation("a conversation must be a list of messages")
    if not conversation:
        raise InvalidConversation("the conversation has no messages")
    clean: Conversation = []
    previous: Message | None = None
    for index, message in enumerate(conversation):
        message = _clean_message(message, index)
        _check_order(previous, message, index)
        clean.append(message)
        previous = message
    if for_training:
        _check_learnable(clean)
    return clean


def _check_learnable(conversation: Conversation) -> None:
    replies = [(i, m) for i, m in enumerate(conversation) if m["role"] == "assistant"]
    if not replies:
        raise InvalidConversation("the conversation has no assistant message to learn from")
    for index, message in replies:
        if not message["content"].strip() and "tool_call" not in message:
            raise InvalidConversation(f"message {index + 1} (assistant) is empty")


def _clean_message(message: Any, index: int) -> Message:
    where = f"message {index + 1}"
    if not isinstance(message, dict):
        raise InvalidConversation(f"{where} is not an object with 'role' and 'content'")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise InvalidConversation(f"{where} has role {role!r}; expected one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise InvalidConversation(f"{where} ({role}) has no text 'content'")
    clean: Message = {"role": role, "content": content}
    tool_call = message.get("tool_call")
    if tool_call is not None:
        if role != "assistant":
            raise InvalidConversation(f"{where}: only the assistant calls tools, not the {role}")
        if not isinstance(tool_call, dict):
            tool_call = {}
        name, arguments = tool_call.get("name"), tool_call.get("arguments")
        # An empty name marks a malformed call kept verbatim (tools.parse_tool_call).
        if not (isinstance(name, str) and (name == "" or is_tool_name(name)) and isinstance(arguments, str)):
            raise InvalidConversation(f"{where}: a tool_call needs a 'name' (an identifier) and text 'arguments'")
        clean["tool_call"] = {"name": name, "arguments": arguments}
    elif role in ("system", "user") and not content.strip():
        raise InvalidConversation(f"{where} ({role}) is empty")
    return clean


def _check_order(previous: Message | None, message: Message, index: int) -> None:
    """Enforce: [system] user assistant (tool assistant)* user assistant ..."""
    role, where = message["role"], f"message {index + 1}"
    allowed: tuple[str, ...]
    if previous is None:
        allowed = ("system", "user")
    elif previous["role"] == "assistant":
        allowed = ("tool",) if "tool_call" in previous else ("user",)
    else:
        allowed = {"system": ("user",), "user": ("assistant",), "tool": ("assistant",)}[previous["role"]]
    if role not in allowed:
        after = "the start" if previous is None else _describe(previous)
        expected = " or ".join(allowed)
        raise InvalidConversation(f"{where} is {_a(role)} {role} message after {after}; expected {expected}")


def _describe(message: Message) -> str:
    return "an assistant's tool call" if "tool_call" in message else f"{_a(message['role'])} {message['role']} message"


def _a(role: str) -> str:
    return "an" if role == "assistant" else "a"
