"""The reference encoder: byte-level BPE in plain Python, written to be read.

It defines what encoding means. The fast path (tiktoken, in tokenizer.py) must give the
same ids for every input, which the property tests check; the trainer uses `merge_by_rank`
to keep every training word encoded exactly as this encoder would encode it.

BPE by rank:
  1. cut the text into pieces with the split pattern (merges never cross a piece boundary);
  2. a piece that is itself a token is that token;
  3. otherwise start from the piece's single bytes and repeatedly join the adjacent pair
     whose joined bytes form the token with the lowest id (the leftmost pair on a tie),
     until no adjacent pair joins into a token.
Token ids are ranks: a token learned earlier has a lower id, so "lowest id first" replays
the merges in the order training learned them. This is the rule tiktoken implements.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Literal

import regex

from ownllm.tokenizer.special_tokens import resolve_allowed

if TYPE_CHECKING:
    from ownllm.tokenizer.tokenizer import Tokenizer


def merge_by_rank(parts: list[bytes], ranks: Mapping[bytes, int]) -> list[bytes]:
    """Join adjacent parts, lowest-ranked result first, until no adjacent pair forms a token."""
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts = parts[:best_i] + [parts[best_i] + parts[best_i + 1]] + parts[best_i + 2 :]
    return parts


def encode_piece(piece: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    if piece in ranks:
        return [ranks[piece]]
    return [ranks[part] for part in merge_by_rank([bytes([b]) for b in piece], ranks)]


def as_valid_unicode(text: str) -> str:
    """Text with lone surrogates replaced by U+FFFD (UTF-8 cannot hold them), as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class ReferenceEncoder:
    """Encode and decode with a tokenizer's merges, special tokens and split pattern, in Python."""

    def __init__(self, tokenizer: Tokenizer):
        specials = tokenizer.special_tokens
        special_ids = set(specials.values())
        self.ranks = {token: i for i, token in tokenizer.vocab.items() if i not in special_ids}
        self.vocab = tokenizer.vocab
        self.special_tokens = specials
        self.split_pattern = regex.compile(tokenizer.pattern)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special tokens: "<|endoftext|>" in the text is just characters."""
        ids: list[int] = []
        for piece in self.split_pattern.findall(as_valid_unicode(text)):
            ids += encode_piece(piece.encode("utf-8"), self.ranks)
        return ids

    def encode(self, text: str, allowed_special: Literal["all"] | AbstractSet[str] = frozenset()) -> list[int]:
        """Encode text; only the special tokens named in `allowed_special` become special ids."""
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        text = as_valid_unicode(text)
        if not allowed:
            return self.encode_ordinary(text)
        special = regex.compile("|".join(regex.escape(name) for name in sorted(allowed)))
        ids: list[int] = []
        start = 0
        for match in special.finditer(text):
            ids += self.encode_ordinary(text[start : match.start()])
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        return ids + self.encode_ordinary(text[start:])

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.vocab[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
