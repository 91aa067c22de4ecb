"""Guardrails: a blocklist checked on what the user sends and on what the model writes, on every route.

    guard = Guardrail.bundled("mask")          # ownllm/resources/safety/ldnoobw-en.txt (CC BY 4.0)
    guard.findings("some text")                # the blocked words and phrases it holds
    guard.mask("some text")                    # each of them as stars of the same length

Entries match as whole words or phrases, case-insensitively, never inside a word (the
"Scunthorpe" problem). The action, the same for every route (`ownllm chat --guardrail`,
`ownllm serve --guardrail`):

    off     nothing is checked
    flag    nothing changes; each finding is reported (the server logs it in assistant.db)
    mask    the user's message reaches the model masked, and the reply is masked as it streams
    refuse  a message with a finding gets a short refusal instead of a reply; replies are masked

A streamed reply is masked without waiting for its end: `StreamMask` holds back the word being
written and, only where they begin a listed phrase ("ball" of "ball gag"), the words before it.
A blocklist is a blunt tool (it misses what it does not list and hits benign senses: "suck",
"escort"). The second check is the run's own classifier (assistant/safety.py, trained with
`ownllm guardrail train` on the run's embeddings): it reads a whole message and scores it, so
it is a finding ("offensive (0.97)") but has nothing to mask; with `refuse` it refuses a user
message it flags, and a reply it flags is reported (already shown while it streamed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ownllm.assistant.safety import Embeds

ACTIONS = ("off", "flag", "mask", "refuse")
CLASSIFIER_FINDING = "offensive"
DEFAULT_ACTION = "mask"
REFUSAL = "I can't help with that message."
_WORD = re.compile(r"\w+")


class Classifier(Protocol):
    def flags(self, text: str) -> float | None: ...  # assistant/safety.py's SafetyClassifier


class Guardrail:
    def __init__(self, phrases: Iterable[str], action: str = DEFAULT_ACTION, classifier: Classifier | None = None):
        if action not in ACTIONS:
            raise ValueError(f"guardrail action {action!r}; expected one of {ACTIONS}")
        entries = sorted({p.strip().lower() for p in phrases if p.strip()}, key=len, reverse=True)
        self.action, self.classifier = action, classifier
        self.max_words = max((len(_WORD.findall(p)) for p in entries), default=1) or 1
        # the first words of every phrase of several words: ("ball",), ("2", "girls"), ...
        self.phrase_starts = {
            tuple(words[:j]) for e in entries if len(words := _WORD.findall(e)) > 1 for j in range(1, len(words))
        }
        self._pattern = re.compile(
            r"(?<!\w)(?:" + "|".join(r"\s+".join(map(re.escape, e.split())) for e in entries) + r")(?!\w)",
            re.IGNORECASE,
        )

    @classmethod
    def bundled(cls, action: str = DEFAULT_ACTION, classifier: Classifier | None = None) -> Guardrail:
        path = Path(str(resources.files("ownllm.resources"))) / "safety" / "ldnoobw-en.txt"
        return cls(path.read_text(encoding="utf-8").splitlines(), action, classifier)

    @classmethod
    def for_run(cls, run_dir: str | Path, action: str, embedder: Embeds | None) -> Guardrail:
        """The bundled blocklist, with the run's classifier when it has one for this embedder."""
        from ownllm.assistant.safety import SafetyClassifier  # lazy: numpy and torch, only with an embedder

        return cls.bundled(action, SafetyClassifier.for_run(run_dir, embedder) if embedder is not None else None)

    @property
    def active(self) -> bool:
        return self.action != "off"

    def findings(self, text: str) -> list[str]:
        """The blocked words and phrases in `text`, and the classifier's verdict when it flags it."""
        if not self.active:
            return []
        found = [m.group(0) for m in self._pattern.finditer(text)]
        if self.classifier is not None and text.strip() and (score := self.classifier.flags(text)) is not None:
            found.append(f"{CLASSIFIER_FINDING} ({score:.2f})")
        return found

    def mask(self, text: str) -> str:
        """`text` with every finding replaced by as many stars (white space inside a phrase kept)."""
        return self._pattern.sub(lambda m: re.sub(r"\S", "*", m.group(0)), text)

    def masks_output(self) -> bool:
        return self.action in ("mask", "refuse")


class StreamMask:
    """Masks a text that arrives in pieces: feed() returns what is safe to show, finish() the rest."""

    def __init__(self, guard: Guardrail):
        self.guard = guard
        self.text = ""  # everything fed so far
        self.shown = 0  # characters of it already returned (masked)

    def feed(self, piece: str) -> str:
        self.text += piece
        words = list(_WORD.finditer(self.text))
        if not words:
            return self._show(len(self.text))
        last = len(words) - 1 if words[-1].end() == len(self.text) else len(words)  # a word still being written
        held = last  # hold back from there, and from the start of any run of words that begins a phrase
        for start in range(max(0, last - self.guard.max_words + 1), last):
            if tuple(w.group(0).lower() for w in words[start:last]) in self.guard.phrase_starts:
                held = start
                break
        stable = words[held].start() if held < len(words) else len(self.text)
        return self._show(max(stable, self.shown))

    def finish(self) -> str:
        return self._show(len(self.text))

    def _show(self, upto: int) -> str:
        if upto <= self.shown:
            return ""
        masked = self.guard.mask(self.text)[self.shown : upto]
        self.shown = upto
        return masked
