"""Generated token ids -> text pieces that are safe to show at once.

Two things must not reach the reader early: half of a multi-byte UTF-8 character (a byte-level
tokenizer can split one across tokens), and text that may turn out to be the start of a stop
string (it would have to be taken back). So bytes go through an incremental UTF-8 decoder,
and the end of the decoded text that could still begin a stop string is held until the next
tokens show whether it does. Special tokens are never text.
"""

from __future__ import annotations

import codecs

from ownllm.tokenizer import Tokenizer


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()):
        self._pieces = tokenizer.vocab  # id -> bytes
        self._special = frozenset(tokenizer.special_tokens.values())
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = stop
        self._held = ""  # decoded text not released yet: it may begin a stop string
        self.stopped = False  # a stop string was found; nothing more is released

    def add(self, token: int) -> str:
        """The text that token `token` makes safe to release (often "", never half a character)."""
        if self.stopped or token in self._special:
            return ""
        text = self._decoder.decode(self._pieces[token])
        if not self._stop:
            return text
        text = self._held + text
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return text[:cut]
        keep = max((_overlap(text, s) for s in self._stop), default=0)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Everything still held, at the end of the generation (an unfinished character becomes U+FFFD)."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a beginning of `stop` (shorter than all of it)."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0
