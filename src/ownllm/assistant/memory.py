"""Memory of the user: facts they state are kept, and brought back when a later message is about them.

    stated_fact("Please remember that the meeting is on Friday")   # "the meeting is on Friday"
    stated_fact("my name is Sam")                                   # "The user's name is Sam."
    relevant(memories, "when is the meeting?")                      # the memories about it
    with_memories("You are Pip, ...", ["The user's name is Sam."])  # the system prompt that carries them

Facts about the user are kept in the third person (the system prompt speaks to the assistant:
"my name" there would be its own), others as the user said them; per user (the server's owner: one per API key; "local"
for `ownllm chat` and a server without a key), in assistant.db, where the user can list and
delete them (`/memories`, `/forget N`; GET/DELETE /api/memories). A memory is brought back when
it shares an uncommon word with the message (or always, for the user's name, at most
MAX_RECALLED in all), appended to the system prompt as plain text: a memory, like a document,
is data and cannot forge a turn. The store is given by the caller (server/store.py's Store),
so this module holds no storage of its own.
"""

from __future__ import annotations

import re
from typing import Protocol

from ownllm.assistant.knowledge import content_words

MAX_RECALLED = 3
_REMEMBER = re.compile(r"^\s*(?:please\s+)?(?:remember|note)\s+(?:that\s+)?(.{3,300}?)[.!]?\s*$", re.I | re.S)
_ABOUT_ME = re.compile(
    r"\b(my (?:name|birthday|favou?rite \w+|job|email|dog|cat|wife|husband|partner) (?:is|are) [^.!?\n]{1,80}"
    r"|i (?:live|work) (?:in|at) [^.!?\n]{1,80}|i am \d{1,3} years old|i'm \d{1,3} years old)",
    re.I,
)


class MemoryStore(Protocol):
    def remember(self, owner: str, text: str) -> dict: ...
    def memories(self, owner: str) -> list[dict]: ...
    def forget(self, owner: str, memory_id: str) -> bool: ...
    def close(self) -> None: ...


def stated_fact(message: str) -> str | None:
    """The fact a message asks to be remembered, or states about the user; None for any other message."""
    asked = _REMEMBER.match(message)
    if asked:
        return asked.group(1).strip()
    about = _ABOUT_ME.search(message)
    if about:
        return _third_person(about.group(1).strip()) + "."
    return None


def _third_person(text: str) -> str:
    text = re.sub(r"^my\b", "the user's", text, flags=re.I)
    text = re.sub(r"^(?:i am|i'm)\b", "the user is", text, flags=re.I)
    text = re.sub(r"^i (live|work)\b", r"the user \1s", text, flags=re.I)
    return text[0].upper() + text[1:]


def relevant(memories: list[str], message: str) -> list[str]:
    """The memories a message is about (sharing an uncommon word with it), the user's name always."""
    wanted = content_words(message)
    scored = [
        (len(content_words(m) & wanted) + (2 if m.lower().startswith("the user's name is") else 0), i, m)
        for i, m in enumerate(memories)
    ]
    return [m for score, _, m in sorted(scored, key=lambda s: (-s[0], s[1])) if score > 0][:MAX_RECALLED]


def with_memories(system: str | None, memories: list[str]) -> str | None:
    if not memories:
        return system
    told = " ".join(m[:1].upper() + m[1:] + ("" if m.endswith((".", "!", "?")) else ".") for m in memories)
    return ((system + " ") if system else "") + f"The user told you: {told}"
