"""A chat session: the history, the system prompt and the sampling settings of one conversation.

    session = ChatSession.open("runs/demo")             # the sft checkpoint, its persona's system prompt
    for event in session.send("What is 12 * 7?"):      # ReplyEvents, as assistant/reply.py streams them
        ...
    session.set("temperature", "0.2"); session.save("chat.json"); session.load("chat.json")

The history always ends with an assistant message between turns. A reply that is stopped
(the caller closes the stream, e.g. on Ctrl-C) is kept as far as it got, unmarked: the model
sees in later turns what it really wrote, and any tool call that completed stays with its
result. A reply that fails or is stopped before its first event (a message too long for
the context, a busy engine) leaves the history as it was.

A saved chat is JSON with the conversation in the same shape as training data, so a chat
worth keeping can be fine-tuned on:

    {"format": "ownllm.chat", "version": 1,
     "messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}],
     "settings": {"temperature": 0.8, "top_k": 50, ...}}
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ownllm.assistant.guardrails import Guardrail
from ownllm.assistant.knowledge import Citation, SearchTool, augment
from ownllm.assistant.memory import MemoryStore, relevant, stated_fact, with_memories
from ownllm.assistant.reply import ReplyEvent, prompt_fits, reply
from ownllm.chatformat.conversation import Conversation, InvalidConversation, Message, validate
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.template import ChatTemplate
from ownllm.chatformat.tools import SEARCH, TOOLS, Tool
from ownllm.core.errors import UserError
from ownllm.core.fsutil import atomic_write_json
from ownllm.knowledge.base import DB_NAME as KNOWLEDGE_DB
from ownllm.knowledge.base import KnowledgeBase

if TYPE_CHECKING:
    from ownllm.knowledge.embeddings import TextEmbedder

FORMAT = "ownllm.chat"
VERSION = 1

# How a chat with a knowledge base answers from it (assistant/knowledge.py): "rag" puts the best
# passage before the question; "tool" leaves the question as it is and lets the model call
# search(...). Either way the model may call search, and the reply cites what it was shown.
# The default is rag, which measured better (bench/kb_answers.py, docs/benchmarks.md): on the demo
# model fine-tuned with the search conversations 53% of 320 answers right against 49% for tool (within
# the noise), and a chat model fine-tuned before the search tool never calls it (16% against 6%).
KB_MODES = ("rag", "tool")
DEFAULT_KB_MODE = "rag"


@dataclass(frozen=True)
class Settings:
    """The sampling settings a person can change with /set (SamplingParams checks the values)."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    max_tokens: int = 256
    seed: int | None = None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_value(self, name: str, text: str) -> Settings:
        """A copy with `name` set from the text a person typed ("0.7", "none" for no seed), checked."""
        if name not in self.names():
            raise UserError(f"unknown setting {name!r}; settings: {', '.join(self.names())}")
        kind = int if name in ("top_k", "max_tokens", "seed") else float
        if name == "seed" and text.strip().lower() in ("none", "off", "random"):
            return replace(self, seed=None)
        try:
            value = kind(text)
        except ValueError:
            raise UserError(f"{name} must be {'an integer' if kind is int else 'a number'}, not {text!r}") from None
        changed: dict[str, Any] = {name: value}
        return replace(self, **changed).checked()

    def checked(self) -> Settings:
        self.sampling()
        return self

    def sampling(self):
        """These settings as the engine's SamplingParams; UserError naming a value out of range."""
        from ownllm.inference.engine import SamplingParams  # lazy: start-up (torch)

        return SamplingParams(**asdict(self)).validate()

    @classmethod
    def from_dict(cls, values) -> Settings:
        if not isinstance(values, dict):
            raise UserError('settings must be an object such as {"temperature": 0.8}')
        unknown = set(values) - set(cls.names())
        if unknown:
            raise UserError(f"unknown settings {sorted(unknown)}; settings: {', '.join(cls.names())}")
        settings = cls()
        for name, value in values.items():
            settings = settings.with_value(name, "none" if value is None else str(value))
        return settings


def default_system_prompt(persona: dict | None, stage: str | None, checkpoint: Path) -> tuple[str | None, str]:
    """The system prompt the model was fine-tuned with, and a line saying where it came from.

    A chat checkpoint records its persona (the same values that worded the system prompt of
    the generated training conversations); a base model never saw a system prompt, so it
    gets none.
    """
    if stage == "pretrain" or (stage is None and persona is None):
        return None, "chatting with the base model (no chat fine-tuning), without a system prompt"
    if not persona:
        return None, f"{checkpoint} records no persona; chatting without a system prompt"
    system = Persona.from_dict(persona).system_prompt()
    return system, f"system prompt: {system}"


class ChatSession:
    """One conversation with the engine; not thread-safe (one person, one terminal)."""

    def __init__(
        self,
        engine,
        template: ChatTemplate,
        system: str | None = None,
        settings: Settings = Settings(),
        note: str | None = None,
    ):
        self.engine, self.template = engine, template
        self.system = system or None
        self.settings = settings.checked()
        self.history: Conversation = []  # user and assistant (and tool) messages, without the system message
        self.last_dropped = 0  # messages the last reply left out to fit the context
        self.knowledge: KnowledgeBase | None = None  # answer from it (assistant/knowledge.py) when set
        self.kb_mode = DEFAULT_KB_MODE  # how: one of KB_MODES
        self.embedder: TextEmbedder | None = None  # the run's own (`ownllm embed train`), when it has one
        self.last_citations: list[Citation] = []  # where the last reply's passages came from
        self.memory: MemoryStore | None = None  # the user's memories (assistant/memory.py) when set
        self.memory_owner = "local"
        self.last_remembered: str | None = None  # the fact the last message stated, now kept
        self.guardrail: Guardrail | None = None  # checks messages and replies (assistant/guardrails.py) when set
        self.note = note or _describe_system(self.system)  # for a person: where the system prompt came from

    @classmethod
    def open(
        cls,
        run: str | Path,
        stage: str | None = None,
        system: str | None = None,
        settings: Settings = Settings(),
        device: str = "auto",
        knowledge: bool | None = None,
        kb_mode: str = DEFAULT_KB_MODE,
        decode: str = "auto",
    ) -> ChatSession:
        """A session on the latest checkpoint of `stage` (None: sft if the run has one, else pretrain).

        `system` None takes the default (see default_system_prompt); "" means none. `knowledge`:
        answer from the run's knowledge base (None: if it has documents), in `kb_mode` (KB_MODES).
        """
        if kb_mode not in KB_MODES:
            raise UserError(f"kb_mode {kb_mode!r} is not one of {', '.join(KB_MODES)}")
        from ownllm.assistant.safety import CLASSIFIER_FILE  # lazy: start-up, as above
        from ownllm.inference.engine import Engine  # lazy: start-up (`ownllm chat --help` does not import torch)
        from ownllm.knowledge.embeddings import TextEmbedder  # lazy: start-up, as above

        settings.checked()
        engine = Engine.load(run, stage=stage, device=device, max_slots=1, decode=decode)
        note = None
        if system is None:
            resolved = engine.resolved
            assert resolved is not None  # Engine.load sets it
            system, note = default_system_prompt(resolved.persona, resolved.stage, resolved.path)
        session = cls(engine, ChatTemplate(engine.tokenizer), system, settings, note)
        session.kb_mode = kb_mode
        db = Path(run) / KNOWLEDGE_DB
        if knowledge or (knowledge is None and db.is_file()):
            session.knowledge = KnowledgeBase(db)
            if knowledge is None and not session.knowledge.documents():
                session.knowledge.close()
                session.knowledge = None
        # The run's embedder is loaded only for what reads it: the knowledge base and the guardrail's classifier.
        if session.knowledge is not None or (Path(run) / CLASSIFIER_FILE).is_file():
            session.embedder = TextEmbedder.for_run(run, engine.device)
            if session.knowledge is not None:
                session.knowledge.embedder = session.embedder
        return session

    def conversation(self) -> Conversation:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def send(self, text: str) -> Generator[ReplyEvent, None, None]:
        """Add the user's message and stream the reply; the history keeps whatever of it was written.

        With a knowledge base the message may go out with a passage before it (kb_mode "rag"), and the
        model's search(...) calls search it; last_citations says which passages it was shown. With a
        memory, a fact it states is kept (last_remembered) and the memories it is about ride in the
        system prompt of this reply.
        """
        validate([{"role": "user", "content": text}])  # an empty message is refused before anything changes
        self.last_citations, self.last_remembered, system = [], None, self.system
        if self.memory is not None:
            self.last_remembered = stated_fact(text)
            if self.last_remembered:
                self.memory.remember(self.memory_owner, self.last_remembered)
            kept = [m["text"] for m in self.memory.memories(self.memory_owner)]
            system = with_memories(self.system, relevant(kept, text))
        if self.knowledge is not None and self.kb_mode == "rag":
            text, self.last_citations = augment(text, self.knowledge, self._fits)
        cited = self.last_citations
        message = {"role": "user", "content": text}
        head: Conversation = [{"role": "system", "content": system}] if system else []
        written: list[Message] = []  # tool calls and results that completed
        search = self._search_tool(head, message, written)
        tools: dict[str, Tool] = TOOLS if search is None else {**TOOLS, SEARCH: search}
        conversation = head + self.history + [message]
        params = self.settings.sampling()
        events = reply(self.engine, self.template, conversation, params, guardrail=self.guardrail, tools=tools)
        text_so_far = ""
        done = False
        started = False
        try:
            for event in events:
                if not started:
                    self.history.append(message)
                    started = True
                if event.kind == "text":
                    text_so_far += event.text
                elif event.kind == "tool_result":
                    written += event.messages
                    text_so_far = ""
                    if search is not None:
                        self.last_citations = cited + search.citations
                elif event.kind == "done":
                    self.history += event.messages
                    self.last_dropped = event.dropped
                    done = True
                yield event
        finally:
            events.close()
            if started and not done:
                self.history += written + [{"role": "assistant", "content": text_so_far}]

    def _search_tool(self, head: Conversation, message: Message, written: list[Message]) -> SearchTool | None:
        """The search tool on the knowledge base (None without one): each result must fit in the context
        after the system prompt, the user's message and the reply's tool calls so far (`written`)."""
        if self.knowledge is None:
            return None

        def fits(query: str, result: str) -> bool:
            call = {"role": "assistant", "content": "", "tool_call": {"name": SEARCH, "arguments": query}}
            exchange = [*head, message, *written, call, {"role": "tool", "content": result}]
            return prompt_fits(self.template, exchange, self.engine.context_size, self.settings.max_tokens)

        return SearchTool(self.knowledge, fits)

    def _fits(self, text: str) -> bool:
        """Whether a message of `text` after the system prompt leaves the reply its room in the context."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        conversation = [*system, {"role": "user", "content": text}]
        return prompt_fits(self.template, conversation, self.engine.context_size, self.settings.max_tokens)

    def close(self) -> None:
        """Stop the engine's scheduler thread (and close the knowledge base)."""
        self.engine.close()
        if self.knowledge is not None:
            self.knowledge.close()

    def reset(self) -> None:
        """Forget the conversation; the system prompt and the settings stay."""
        self.history = []
        self.last_dropped = 0

    def set(self, name: str, value: str) -> None:
        self.settings = self.settings.with_value(name, value)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            atomic_write_json(
                path,
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "messages": self.conversation(),
                    "settings": asdict(self.settings),
                },
            )
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}") from None
        return path

    def load(self, path: str | Path) -> None:
        """Replace the conversation and settings with a saved chat's; a bad file changes nothing."""
        messages, settings = read_chat(path)
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        self.system, self.settings = system, settings
        self.history = messages[1:] if system is not None else messages
        self.last_dropped = 0


def read_chat(path: str | Path) -> tuple[Conversation, Settings]:
    """The messages and settings of a file written by ChatSession.save, checked; UserError in one line."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a saved chat") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a saved chat (not JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f'{path} is not a saved chat (no "format": "{FORMAT}"); save one with /save')
    if data.get("version") != VERSION:
        raise UserError(
            f"{path} is a saved chat of version {data.get('version')!r}; this ownllm reads version {VERSION}"
        )
    messages = data.get("messages", [])
    try:
        messages = validate(messages) if messages else []
    except InvalidConversation as e:
        raise UserError(f"{path}: {e}") from None
    # A saved chat ends with the assistant's reply, or is a system prompt alone (a fresh chat with that prompt).
    if messages and messages[-1]["role"] not in ("assistant", "system"):
        raise UserError(
            f"{path}: the chat ends with a {messages[-1]['role']} message; a saved chat ends with the assistant's reply"
        )
    try:
        settings = Settings.from_dict(data.get("settings", {}))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return messages, settings


def _describe_system(system: str | None) -> str:
    return f"system prompt: {system}" if system else "no system prompt"
