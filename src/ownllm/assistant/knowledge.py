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

Tool mode asks the model instead: it learnt (the `search` conversations) to call
`search(old Mia)` for a question about something it cannot know; SearchTool runs that query
on the knowledge base and answers with the best one or two passages that are about it, each
headed by its document and number (chatformat/tools.py format_passages), shortened to fit
the context, or "no passage found". Which mode a chat uses: ChatSession.kb_mode.

The passage is data: it is encoded as ordinary text (chatformat/template.py), in a user
message or in a tool result alike, so a document that spells "<|assistant|>" cannot forge a
turn. The citation says where the passage came from, in either mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol

from ownllm.chatformat.tools import Passage, format_passages
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


def _stem(word: str) -> str:
    """A word without a plural or third-person s ("lives" -> "live"), so "Where does Mia live?" finds "Mia lives"."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def about(question: str, passage: str) -> bool:
    """Whether the passage holds enough of the question's uncommon words to be about it."""
    wanted = {_stem(w) for w in content_words(question) if len(w) > 1}
    found = wanted & {_stem(w) for w in content_words(passage)}
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


def shorten(text: str) -> str:
    """The text cut to about four fifths, at a word ("" when nothing is left)."""
    return text[: int(len(text) * 0.8)].rsplit(" ", 1)[0] if " " in text else ""


class SearchTool:
    """The `search` tool bound to a knowledge base: search(query) -> the passages' text for the model.

    Answers with up to `k` passages that are about the query (`about`), the second left out
    and then the first shortened at a word until `fits(query, result)` (the session checks the
    exchange against the context), or NO_PASSAGE. Every passage shown is added to `citations`,
    so a reply made with the tool cites its sources as a retrieval-augmented one does.
    """

    def __init__(self, kb: Searchable, fits: Callable[[str, str], bool] = lambda query, result: True, k: int = 2):
        self.kb, self.fits, self.k = kb, fits, k
        self.citations: list[Citation] = []

    def __call__(self, query: str) -> str:
        hits = [hit for hit in self.kb.search(query, k=self.k + 1) if about(query, hit.text)][: self.k]
        texts = [hit.text for hit in hits]
        while texts and not self.fits(query, self._result(hits, texts)):
            if len(texts) > 1:
                texts.pop()  # one passage rather than two shortened ones
            else:
                texts = [short] if (short := shorten(texts[0])) else []
        result = self._result(hits, texts)
        for hit, text in zip(hits, texts):
            self.citations.append(Citation(hit.path, hit.position, hit.start, hit.start + len(text), text))
        return result

    @staticmethod
    def _result(hits: list[Hit], texts: list[str]) -> str:
        return format_passages([Passage(PurePath(h.path).name, h.position + 1, t) for h, t in zip(hits, texts)])
