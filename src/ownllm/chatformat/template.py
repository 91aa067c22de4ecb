"""The chat template: a conversation <-> token ids, and which tokens the model learns to say.

Each message becomes its header token, its text, and <|end_of_turn|>:

    <|system|>You are Pip.<|end_of_turn|>
    <|user|>What is 12 * 7?<|end_of_turn|>
    <|assistant|><|tool_call|>calculator(12 * 7)<|end_of_turn|>
    <|tool_result|>84<|end_of_turn|>
    <|assistant|>12 * 7 = 84.<|end_of_turn|>

The loss mask marks the tokens the model is trained to produce: everything the assistant
says after its header (its text, its <|tool_call|> and the call, and its <|end_of_turn|>,
so it learns to stop). Headers are not trained: a prompt always ends with <|assistant|>
(`render_prompt`), and after a tool call the engine, not the model, writes the result turn
and the next <|assistant|>. System, user and tool text is never trained on.

All message text is encoded as ordinary text: a user who types "<|assistant|>" gets the
characters, never the control token, so nobody can forge a turn or a tool result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ownllm.chatformat.conversation import Conversation, InvalidConversation, Message, validate
from ownllm.chatformat.tools import ToolCall, format_tool_call, parse_tool_call
from ownllm.core.errors import UserError
from ownllm.model.loss import IGNORE_INDEX  # the target id the loss skips
from ownllm.tokenizer import ASSISTANT, END_OF_TURN, SYSTEM, TOOL_CALL, TOOL_RESULT, USER, Tokenizer

HEADERS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT, "tool": TOOL_RESULT}


@dataclass(frozen=True)
class RenderedConversation:
    """Token ids and, for each, 1 if the model is trained to produce it (predicting it from the ids before)."""

    ids: list[int]
    mask: list[int]

    def __len__(self) -> int:
        return len(self.ids)

    def training_pair(self, ignore_index: int = IGNORE_INDEX) -> tuple[list[int], list[int]]:
        """(inputs, targets) for next-token training: targets[i] = ids[i + 1], or `ignore_index` where untrained."""
        targets = [t if m else ignore_index for t, m in zip(self.ids[1:], self.mask[1:])]
        return self.ids[:-1], targets


@dataclass(frozen=True)
class ParsedReply:
    """An assistant turn read back from generated ids."""

    message: Message  # {"role": "assistant", "content": ..., optional "tool_call": {...}}
    end: str | None  # the special token that ended it (normally <|end_of_turn|>); None: the ids ran out first

    @property
    def tool_call(self) -> ToolCall | None:
        """The call to run, if the turn is a complete tool call."""
        return self.message.get("tool_call") if self.end == END_OF_TURN else None


class ChatTemplate:
    """Renders conversations with one tokenizer's special-token ids."""

    def __init__(self, tokenizer: Tokenizer):
        missing = [n for n in (*HEADERS.values(), END_OF_TURN, TOOL_CALL) if n not in tokenizer.special_tokens]
        if missing:
            raise UserError(f"the tokenizer has no chat tokens {missing}; retrain it with `ownllm tokenizer --run DIR`")
        self.tokenizer = tokenizer
        self.header_ids = {role: tokenizer.special_tokens[name] for role, name in HEADERS.items()}
        self.end_of_turn_id = tokenizer.special_tokens[END_OF_TURN]
        self.tool_call_id = tokenizer.special_tokens[TOOL_CALL]
        self.assistant_id = self.header_ids["assistant"]
        # Generation stops at any special token but <|tool_call|>, which is part of an assistant turn.
        self.stop_ids = frozenset(tokenizer.special_tokens.values()) - {self.tool_call_id}
        self._special_names = {i: name for name, i in tokenizer.special_tokens.items()}

    def render(self, conversation: Conversation) -> RenderedConversation:
        """Token ids and loss mask of a whole conversation (see the module docstring)."""
        ids: list[int] = []
        mask: list[int] = []
        for message in validate(conversation):
            trained = message["role"] == "assistant"
            ids.append(self.header_ids[message["role"]])
            mask.append(0)
            body = self._text(message["content"])
            if "tool_call" in message:
                body += [self.tool_call_id, *self._text(format_tool_call(message["tool_call"]))]
            body.append(self.end_of_turn_id)
            ids += body
            mask += [int(trained)] * len(body)
        return RenderedConversation(ids, mask)

    def render_prompt(self, conversation: Conversation) -> list[int]:
        """The ids a model continues to write the next assistant turn: the conversation, then <|assistant|>."""
        conversation = validate(conversation)
        last = conversation[-1]
        if last["role"] not in ("user", "tool"):
            raise InvalidConversation(f"a prompt must end with a user or tool message, not a {last['role']} message")
        return self.render(conversation).ids + [self.assistant_id]

    def parse_reply(self, ids: Iterable[int]) -> ParsedReply:
        """Read generated ids (those after the prompt's <|assistant|>) back into an assistant message.

        The reply ends at the first special token other than <|tool_call|> (normally
        <|end_of_turn|>); anything after it is ignored. Text after a <|tool_call|> is the
        call, `name(arguments)`; a second <|tool_call|> ends the call.
        """
        content: list[int] = []
        call: list[int] | None = None
        end = None
        for token in ids:
            if token == self.tool_call_id and call is None:
                call = []
            elif token in self.stop_ids or token == self.tool_call_id:
                end = self._special_names[token]
                break
            else:
                (content if call is None else call).append(token)
        message: Message = {"role": "assistant", "content": self.tokenizer.decode(content)}
        if call is not None:
            message["tool_call"] = parse_tool_call(self.tokenizer.decode(call))
        return ParsedReply(message, end)

    def show(self, rendered: RenderedConversation) -> str:
        """The rendered text with every trained span between [[ and ]]: a way to check a mask by eye."""
        pieces: list[str] = []
        start = 0
        for i in range(1, len(rendered) + 1):
            if i == len(rendered) or rendered.mask[i] != rendered.mask[start]:
                text = self.tokenizer.decode(rendered.ids[start:i])
                pieces.append(f"[[{text}]]" if rendered.mask[start] else text)
                start = i
        return "".join(pieces)

    def _text(self, text: str) -> list[int]:
        return self.tokenizer.encode_ordinary(text)  # never a special token, whatever the text says
