"""What loading a conversation file found: how many conversations, and what was skipped where.

Real datasets have broken records. A loader keeps going, counts what it skipped and why,
and keeps the first few problems with their file and line (`dolly.jsonl:12: missing
'answer'`), so a person can find and fix them without reading a flood of messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ownllm.chatformat.conversation import Conversation, InvalidConversation, validate

MAX_REPORTED_PROBLEMS = 5


@dataclass
class LoadReport:
    source: str
    loaded: int = 0  # conversations kept
    skipped: int = 0  # malformed records
    duplicates: int = 0  # exact repeats of a kept conversation, dropped
    edited: int = 0  # kept after an edit (another bot's name replaced by the assistant's)
    problems: list[str] = field(default_factory=list)  # the first MAX_REPORTED_PROBLEMS, "file:line: reason"

    def skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(f"{where}: {reason}")

    def summary(self) -> str:
        """One line for a person: `dolly-151.jsonl: 151 conversations, 2 malformed records skipped (...)`."""
        text = f"{self.source}: {self.loaded} conversations"
        if self.edited:
            text += f", {self.edited} edited to use the assistant's name"
        if self.duplicates:
            text += f", {self.duplicates} duplicates dropped"
        if self.skipped:
            text += f", {self.skipped} malformed records skipped ({'; '.join(self.problems)}"
            text += f"; and {self.skipped - len(self.problems)} more)" if self.skipped > len(self.problems) else ")"
        return text


@dataclass
class LoadedConversations:
    conversations: list[Conversation]
    report: LoadReport


class Collector:
    """Checks each conversation, drops exact duplicates, and keeps the count in a LoadReport."""

    def __init__(self, source: str):
        self.report = LoadReport(source)
        self.conversations: list[Conversation] = []
        self._seen: set[str] = set()

    def add(self, where: str, conversation: Conversation, edited: bool = False) -> None:
        try:
            conversation = validate(conversation, for_training=True)
        except InvalidConversation as e:
            self.report.skip(where, str(e))
            return
        key = json.dumps(conversation, sort_keys=True, ensure_ascii=False)
        if key in self._seen:
            self.report.duplicates += 1
            return
        self._seen.add(key)
        self.conversations.append(conversation)
        self.report.loaded += 1
        self.report.edited += int(edited)

    def result(self) -> LoadedConversations:
        return LoadedConversations(self.conversations, self.report)
