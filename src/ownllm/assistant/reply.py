"""One assistant reply to a conversation, with the tool loop (calculator, search) and context trimming.

Used by `ownllm chat` (assistant/session.py) and by the HTTP server (server/), so it holds no
terminal or HTTP code.

How a reply is made:

    fit the conversation into the context (dropping the oldest exchanges), render the prompt
    stream the engine's tokens; text before a <|tool_call|> is the reply's text
    a complete tool call: run it (`tools` by name), append the call and its result, render again, go on
    the end: a "done" event with the new messages and the counts

The context keeps room for the reply: min(params.max_tokens, a quarter of the context) tokens.
params.max_tokens bounds the whole reply, tool calls and continuations together.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ownllm.assistant.guardrails import REFUSAL, Guardrail, StreamMask
from ownllm.chatformat.conversation import Conversation, Message, validate
from ownllm.chatformat.template import ChatTemplate
from ownllm.chatformat.tools import Tool, format_tool_call, run_tool
from ownllm.core.errors import UserError

if TYPE_CHECKING:  # only for annotations: importing this module does not import PyTorch
    from ownllm.inference.engine import Engine, SamplingParams


class ContextOverflow(UserError):
    """Even the system prompt and the latest message do not fit in the context window."""

    def __init__(self, prompt_tokens: int, context_size: int, reserved: int = 0):
        room = f", {reserved} of them kept for the reply" if reserved else ""
        super().__init__(
            f"the prompt has {prompt_tokens} tokens and the context holds {context_size}{room}; "
            f"shorten the message or the system prompt"
        )
        self.prompt_tokens, self.context_size, self.reserved = prompt_tokens, context_size, reserved


def reply_room(context: int, max_tokens: int) -> int:
    """The tokens a prompt must leave free for the reply: max_tokens, or a quarter of the context if less."""
    return min(max_tokens, context // 4)


def prompt_fits(template: ChatTemplate, conversation: Conversation, context: int, max_tokens: int) -> bool:
    """Whether `reply` can answer the conversation without dropping or refusing anything."""
    return len(template.render_prompt(conversation)) <= context - reply_room(context, max_tokens)


def fit_to_context(template: ChatTemplate, conversation: Conversation, budget: int) -> tuple[Conversation, int]:
    """The conversation with the oldest turns dropped until its prompt fits in `budget` tokens.

    Always keeps the system message (if any) and the latest user message; drops whole
    exchanges from the oldest (a tool call is dropped with its result and the reply after
    it). Returns (kept conversation, number of messages dropped). Raises ContextOverflow
    when the system message and the latest message alone do not fit.
    """
    kept, dropped, _ = _fit(template, conversation, budget)
    return kept, dropped


def _fit(template: ChatTemplate, conversation: Conversation, budget: int) -> tuple[Conversation, int, list[int]]:
    """fit_to_context, plus the kept conversation's prompt ids (rendered once, whatever is dropped)."""
    conversation = validate(conversation)
    ids = template.render_prompt(conversation)
    if len(ids) <= budget:
        return conversation, 0, ids
    spans = _message_spans(template, ids)
    head = 1 if conversation[0]["role"] == "system" else 0
    # An exchange starts at a user message and runs to the next one: the reply and any tool calls.
    starts = [i for i, m in enumerate(conversation) if m["role"] == "user"]
    size = len(ids)
    for start, end in itertools.pairwise(starts):
        size -= sum(spans[i][1] - spans[i][0] for i in range(start, end))
        if size <= budget:
            kept = conversation[:head] + conversation[end:]
            kept_ids = ids[: spans[head][0]] + ids[spans[end][0] :]  # rendering is message by message
            return kept, end - head, kept_ids
    raise ContextOverflow(size, budget)  # the size with every earlier exchange dropped


def _prompt_within(
    template: ChatTemplate, conversation: Conversation, budget: int, truncate: bool
) -> tuple[int, list[int]]:
    """(messages dropped, prompt ids) of the conversation in `budget` tokens, dropping old exchanges only
    if truncate; ContextOverflow when it cannot fit."""
    if truncate:
        _, dropped, ids = _fit(template, conversation, budget)
        return dropped, ids
    ids = template.render_prompt(conversation)
    if len(ids) > budget:
        raise ContextOverflow(len(ids), budget)
    return 0, ids


def _message_spans(template: ChatTemplate, ids: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each message in rendered ids: every message begins with its header token.

    Header tokens are special tokens, which message text can never produce, so they mark the
    borders exactly; the prompt's final <|assistant|> is left out.
    """
    headers = set(template.header_ids.values())
    starts = [i for i, token in enumerate(ids[:-1]) if token in headers]
    return list(zip(starts, starts[1:] + [len(ids) - 1], strict=True))


@dataclass
class ReplyEvent:
    """What a reply streams: text as it is written, a tool call and its result, then the end."""

    kind: str  # "text" | "tool_call" | "tool_result" | "guardrail" | "done"
    text: str = ""  # for "text": the new text; for "tool_call": "calculator(12 * 7)"; for "tool_result": "84"
    finish_reason: str | None = None  # for "done": the engine's finish reason of the last generation
    # for "tool_result": the assistant's tool-call message and the tool message, already part of the reply;
    # for "done": all the new messages (assistant/tool turns)
    messages: list[Message] = field(default_factory=list)
    dropped: int = 0  # for "done": messages dropped from the start to fit the context
    prompt_tokens: int = 0  # for "done": tokens of the (last) prompt
    completion_tokens: int = 0  # for "done": tokens generated in all


def reply(
    engine: Engine,
    template: ChatTemplate,
    conversation: Conversation,
    params: SamplingParams,
    truncate: bool = True,
    max_tool_calls: int = 3,
    guardrail: Guardrail | None = None,
    tools: Mapping[str, Tool] | None = None,
) -> Generator[ReplyEvent, None, None]:
    """Stream the assistant's reply to `conversation` (which ends with a user message).

    Generation stops at the template's stop ids. When the model ends its turn with a tool
    call, the tool runs (ownllm.chatformat.tools.run_tool with `tools`, default TOOLS: the
    calculator, and a search that answers "no knowledge base"; assistant/knowledge.py SearchTool
    binds search to one), its result becomes a tool message, and the model continues, up to
    max_tool_calls times (after that a further call ends the reply, keeping the text before
    it). A call cut off before its <|end_of_turn|> (max tokens, cancellation) is not run and
    not kept. With truncate=False an over-long conversation raises ContextOverflow instead of
    dropping turns. The prompt must leave room for params.max_tokens (or at least a quarter
    of the context, whichever is less).
    Closing the iterator cancels the generation in the engine.

    With a guardrail (assistant/guardrails.py), what it finds in the user's message is reported
    first as a "guardrail" event (text: the findings, finish_reason: "input"); by its action the
    message is then masked, or refused (the refusal is the reply, finish_reason
    "content_filter"); the reply's text is masked as it streams (mask, refuse), and a
    "guardrail" event (finish_reason "output") reports what the finished reply held.
    """
    conversation = validate(conversation)
    if conversation[-1]["role"] != "user":
        raise UserError(
            f"the conversation must end with a user message to reply to "
            f"(its last message is from the {conversation[-1]['role']})"
        )
    params = params.validate()
    if guardrail is not None and (found := guardrail.findings(conversation[-1]["content"])):
        yield ReplyEvent("guardrail", ", ".join(found), finish_reason="input")
        if guardrail.action == "refuse":
            yield ReplyEvent("text", REFUSAL)
            refusal: Message = {"role": "assistant", "content": REFUSAL}
            yield ReplyEvent("done", finish_reason="content_filter", messages=[refusal])
            return
        if guardrail.action == "mask":
            conversation = [
                *conversation[:-1],
                {**conversation[-1], "content": guardrail.mask(conversation[-1]["content"])},
            ]
    checking = guardrail is not None and guardrail.active
    masking = checking and guardrail is not None and guardrail.masks_output()
    context = engine.context_size
    stop_ids = params.stop_ids | template.stop_ids
    new: list[Message] = []
    generated = 0
    while True:
        full = conversation + new
        reserved = reply_room(context, params.max_tokens - generated)  # after a tool call: what is left
        try:
            dropped, prompt = _prompt_within(template, full, context - reserved, truncate)
        except ContextOverflow as e:
            raise ContextOverflow(e.prompt_tokens, context, reserved) from None
        calls_left = max_tool_calls - sum(1 for m in new if m["role"] == "tool")
        turn_params = replace(
            params,
            max_tokens=params.max_tokens - generated,
            stop_ids=stop_ids if calls_left > 0 else stop_ids | {template.tool_call_id},
        )
        turn = _Turn(template)
        shown = StreamMask(guardrail) if masking and guardrail is not None else None
        with contextlib.closing(engine.stream(prompt, turn_params)) as events:
            for event in events:
                text = turn.add(event)
                if shown is not None:
                    text = shown.feed(text)
                if text:
                    yield ReplyEvent("text", text)
        generated += turn.generated
        message, call, finish_reason = turn.message(may_call=generated < params.max_tokens)
        if shown is not None:
            rest = shown.finish()
            if rest:
                yield ReplyEvent("text", rest)
        if checking and guardrail is not None and (found := guardrail.findings(message["content"])):
            if masking:
                message = {**message, "content": guardrail.mask(message["content"])}
            yield ReplyEvent("guardrail", ", ".join(found), finish_reason="output")
        new.append(message)
        if call is None:
            yield ReplyEvent(
                "done",
                finish_reason=finish_reason,
                messages=new,
                dropped=dropped,
                prompt_tokens=len(prompt),
                completion_tokens=generated,
            )
            return
        result = run_tool(call, tools)
        following = [*new, {"role": "tool", "content": result}]
        try:
            room = reply_room(context, params.max_tokens - generated)  # what the next turn's prompt must leave
            _prompt_within(template, conversation + following, context - room, truncate)
        except ContextOverflow:
            # The model's own call and its result leave no room to go on: like a call cut off by
            # max tokens, it is neither reported nor kept, and the reply ends with the text before it.
            new[-1] = {"role": "assistant", "content": message["content"]}
            yield ReplyEvent(
                "done",
                finish_reason="length",
                messages=new,
                dropped=dropped,
                prompt_tokens=len(prompt),
                completion_tokens=generated,
            )
            return
        yield ReplyEvent("tool_call", format_tool_call(call))
        new = following
        yield ReplyEvent("tool_result", result, messages=new[-2:])


class _Turn:
    """One generation's events read into an assistant message, and the text to show as it comes.

    The engine streams the tool call's own text like any other; here it is held back: the text
    before <|tool_call|> is the reply's text, the call is reported once complete.
    """

    def __init__(self, template: ChatTemplate):
        self.template = template
        self.ids: list[int] = []  # every generated id, the stop token included
        self.shown = ""  # text streamed so far
        self.in_call = False
        self.finish_reason: str | None = None

    def add(self, event) -> str:
        """The new text to show for one engine event."""
        self.ids += event.token_ids
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
        if self.in_call:
            return ""
        if self.template.tool_call_id in event.token_ids:
            # The event may hold text from both sides of the call token: show exactly the part before it.
            self.in_call = True
            before = self.template.parse_reply(self.ids).message["content"]
            new, self.shown = before[len(self.shown) :], before
            return new
        self.shown += event.text
        return event.text

    @property
    def generated(self) -> int:
        """Tokens the model produced (a stop token counts: it took a decoding step)."""
        return len(self.ids)

    def message(self, may_call: bool) -> tuple[Message, dict | None, str | None]:
        """The assistant message, its tool call when a complete one is to be run, and the finish reason.

        A call that cannot run (cut off by max tokens or a cancel, stopped at the call token,
        or no tokens left to read its result) is left out: history holds only calls with results.
        """
        if not self.in_call:
            # What was shown: the engine may have cut a stop string that the ids still hold.
            return {"role": "assistant", "content": self.shown}, None, self.finish_reason
        parsed = self.template.parse_reply(self.ids)
        if parsed.tool_call is not None and may_call:
            return parsed.message, parsed.tool_call, self.finish_reason
        finish_reason = "length" if parsed.tool_call is not None else self.finish_reason
        return {"role": "assistant", "content": parsed.message["content"]}, None, finish_reason
