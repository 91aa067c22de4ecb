"""Answering from the knowledge base: the best passage put before the question, as the model learned to read.

The chat model was taught to answer from a text given as

    Read the text and answer the question.

    <passage>

    Question: <question>

(chatformat/generated.py, the `passage` conversations). Retrieval-augmented mode asks in
exactly that form: the user's message is searched in the knowledge base, and when a passage
is about it, the message becomes that prompt with the passage, shortened at a word if it
does not fit the context. "About it" is measured, not guessed: the passage must contain at
least two of the message's uncommon words and at least half of them, so "What is your name?"
or "Hello!" are asked as they are.

The passage is data: it is encoded as ordinary text (chatformat/template.py), so a document
that spells "<|assistant|>" cannot forge a turn. The citation says where the passage came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ownllm.knowledge.base import STOPWORDS, Hit

PROMPT = "Read the text and answer the question.\n\n{passage}\n\nQuestion: {question}"
MIN_WORDS, MIN_SHARE = 2, 0.5
_WORD = re.compile(r"\w+")


class Searchable(Protocol):
    """What augment searches: a KnowledgeBase, or one owner's view of the server's (knowledge/library.py)."""

    def search(self, query: str, k: int = 5) -> list[Hit]: ...


@dataclass(frozen=True)
class Citation:
    path: str
    position: int  # the passage's number in its document
    start: int  # its character span in the document
    end: int
    text: str  # what the model was shown (shortened to fit, if it had to be)


def content_words(text: str) -> set[str]:
    """The words of a text but the commonest (knowledge/base.py's STOPWORDS), lower case."""
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in STOPWORDS}


def about(question: str, passage: str) -> bool:
    """Whether the passage holds enough of the question's uncommon words to be about it."""
    wanted = content_words(question)
    found = wanted & content_words(passage)
    return len(found) >= MIN_WORDS and len(found) >= MIN_SHARE * len(wanted)


def augment(question: str, kb: Searchable, fits: Callable[[str], bool]) -> tuple[str, list[Citation]]:
    """(the message to send, its citations): the question with the best passage, or the question as it is."""
    for hit in kb.search(question, k=3):
        if not about(question, hit.text):
            continue
        passage = hit.text
        while passage and not fits(PROMPT.format(passage=passage, question=question)):
            passage = passage[: int(len(passage) * 0.8)].rsplit(" ", 1)[0]  # shorter, at a word
        if passage:
            citation = Citation(hit.path, hit.position, hit.start, hit.start + len(passage), passage)
            return PROMPT.format(passage=passage, question=question), [citation]
    return question, []
