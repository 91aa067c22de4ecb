"""One assistant reply to a conversation, with the calculator tool loop and context trimming.

CONTRACT (lead, session 2) -- the helper implementing this file keeps these names and meanings.
Used by `ownllm chat` (assistant/session.py) and by the HTTP server (server/), so it holds no
terminal or HTTP code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from ownllm.chat.conversation import Conversation, Message
from ownllm.chat.template import ChatTemplate
from ownllm.errors import UserError
from ownllm.inference.engine import Engine, SamplingParams


class ContextOverflow(UserError):
    """Even the system prompt and the latest message do not fit in the context window."""

    def __init__(self, prompt_tokens: int, context_size: int):
        super().__init__(f"the prompt has {prompt_tokens} tokens and the context holds {context_size}, "
                         f"including room for the reply")
        self.prompt_tokens, self.context_size = prompt_tokens, context_size


def fit_to_context(template: ChatTemplate, conversation: Conversation, budget: int) -> tuple[Conversation, int]:
    """The conversation with the oldest turns dropped until its prompt fits in `budget` tokens.

    Always keeps the system message (if any) and the latest user message; drops whole
    exchanges from the oldest (a tool call is dropped with its result and the reply after
    it). Returns (kept conversation, number of messages dropped). Raises ContextOverflow
    when the system message and the latest message alone do not fit.
    """
    raise NotImplementedError


@dataclass
class ReplyEvent:
    """What a reply streams: text as it is written, a tool call and its result, then the end."""

    kind: str  # "text" | "tool_call" | "tool_result" | "done"
    text: str = ""  # for "text": the new text; for "tool_call": "calculator(12 * 7)"; for "tool_result": "84"
    finish_reason: str | None = None  # for "done": the engine's finish reason of the last generation
    messages: list[Message] = field(default_factory=list)  # for "done": the new messages (assistant/tool turns)
    dropped: int = 0  # for "done": messages dropped from the start to fit the context
    prompt_tokens: int = 0  # for "done": tokens of the (last) prompt
    completion_tokens: int = 0  # for "done": tokens generated in all


def reply(engine: Engine, template: ChatTemplate, conversation: Conversation, params: SamplingParams,
          truncate: bool = True, max_tool_calls: int = 3) -> Iterator[ReplyEvent]:
    """Stream the assistant's reply to `conversation` (which ends with a user message).

    Generation stops at the template's stop ids. When the model ends its turn with a tool
    call, the tool runs (ownllm.chat.tools.run_tool), its result becomes a tool message, and
    the model continues, up to max_tool_calls times. With truncate=False an over-long
    conversation raises ContextOverflow instead of dropping turns. The prompt must leave room
    for params.max_tokens (or at least a quarter of the context, whichever is less).
    Closing the iterator cancels the generation in the engine.
    """
    raise NotImplementedError
