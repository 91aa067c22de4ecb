"""The Tokenizer: our merges and special tokens, encoded fast through tiktoken, saved as one file.

Token ids: 0-255 are the single bytes, 256 + i is the result of merge i, and the last
16 ids are the special tokens. tiktoken is built from our own merges (nothing is
downloaded): its `mergeable_ranks` maps every token's bytes to its id, and because ids
are given in the order merges were learned, tiktoken's rule "join the adjacent pair that
forms the lowest-ranked token" is the rule of our reference encoder (reference.py).

Saved format (tokenizer/tokenizer.json, version 1; docs/tokenizer.md has every field):
merges as pairs of token ids, special-token names in id order, the frozen split pattern,
and a checksum of all of it, so a corrupted or edited file is refused instead of silently
encoding differently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Literal

import tiktoken

from ownllm.core.errors import UserError, check_format
from ownllm.core.fsutil import atomic_write_text, read_json
from ownllm.tokenizer.patterns import DEFAULT_PATTERN, PRESETS, freeze_pattern
from ownllm.tokenizer.special_tokens import (
    ENDOFTEXT,
    SPECIAL_TOKENS,
    check_special_tokens,
    resolve_allowed,
    special_token_ids,
)

FORMAT = "ownllm.tokenizer"
VERSION = 1
FILE_NAME = "tokenizer.json"  # the file whose hash identifies a tokenizer (token_shards.tokenizer_hash)
VOCAB_LISTING = "vocab.txt"  # a human-readable listing of every token; not read back
RETRAIN = "retrain it with `ownllm tokenizer --run DIR`"


class Tokenizer:
    """A byte-level BPE tokenizer: merges + special tokens + split pattern."""

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        pattern: str | None = None,
        pattern_name: str = DEFAULT_PATTERN,
        pattern_source: str | None = None,
        metadata: dict | None = None,
    ):
        """`pattern` is the frozen split regex (patterns.freeze_pattern); by default the frozen preset."""
        check_special_tokens(special_tokens)
        if pattern is None:
            pattern_source = pattern_source or PRESETS[pattern_name]
            pattern = freeze_pattern(pattern_source)
        self.pattern = pattern
        self.pattern_name = pattern_name
        self.pattern_source = pattern_source or pattern
        self.metadata = dict(metadata or {})

        self.merges: list[tuple[bytes, bytes]] = []
        self._ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
        for i, (left, right) in enumerate(merges):
            if left not in self._ranks or right not in self._ranks:
                raise ValueError(f"merge {i} joins {left!r} and {right!r}, which are not both earlier tokens")
            token = left + right
            if token in self._ranks:
                raise ValueError(f"merge {i} makes {token!r}, which is already token {self._ranks[token]}")
            self._ranks[token] = 256 + i
            self.merges.append((left, right))

        self.vocab_size = len(self._ranks) + len(special_tokens)
        self.special_tokens: dict[str, int] = special_token_ids(list(special_tokens), self.vocab_size)
        self.vocab: dict[int, bytes] = {i: token for token, i in self._ranks.items()}
        self.vocab.update({i: name.encode("utf-8") for name, i in self.special_tokens.items()})
        self._encoding = _tiktoken_encoding(self.pattern, self._ranks, self.special_tokens, self.vocab_size)

    @property
    def eot_id(self) -> int:
        """The id of <|endoftext|>, which separates documents."""
        return self.special_tokens[ENDOFTEXT]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, pattern={self.pattern_name!r})"

    # Encoding and decoding: all through tiktoken (Rust). The reference encoder is reference.py.

    def encode(self, text: str, allowed_special: Literal["all"] | AbstractSet[str] = frozenset()) -> list[int]:
        """Token ids of `text`. Special-token strings in the text are plain text unless allowed by name."""
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, never emitting a special token."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        """`encode_ordinary` for many texts at once, on `num_threads` threads (tiktoken releases the GIL)."""
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = list(ids)
        if ids and not (min(ids) >= 0 and max(ids) < self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got {min(ids)}..{max(ids)}")
        return self._encoding.decode_bytes(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 (a cut multi-byte character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # The saved format.

    def to_json(self) -> dict:
        merge_ids = [[self._ranks[left], self._ranks[right]] for left, right in self.merges]
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "vocab_size": self.vocab_size,
            "special_tokens": list(self.special_tokens),
            "pattern_name": self.pattern_name,
            "pattern_source": self.pattern_source,
            "pattern": self.pattern,
            "metadata": self.metadata,
            "merges": merge_ids,
        }
        return {**payload, "checksum": _checksum(payload)}

    @classmethod
    def from_json(cls, obj: dict, source: str = "tokenizer") -> Tokenizer:
        check_format(obj, FORMAT, VERSION, Path(source), RETRAIN)
        payload = {k: v for k, v in obj.items() if k != "checksum"}
        if obj.get("checksum") != _checksum(payload):
            raise UserError(f"{source} is corrupted (its checksum does not match its content); {RETRAIN}")
        try:
            vocab: list[bytes] = [bytes([b]) for b in range(256)]
            merges: list[tuple[bytes, bytes]] = []
            for left, right in obj["merges"]:
                if not all(isinstance(i, int) and 0 <= i < len(vocab) for i in (left, right)):
                    raise ValueError(f"merge {len(merges)} refers to a token that does not exist yet")
                merges.append((vocab[left], vocab[right]))
                vocab.append(vocab[left] + vocab[right])
            tokenizer = cls(
                merges,
                special_tokens=obj["special_tokens"],
                pattern=obj["pattern"],
                pattern_name=obj["pattern_name"],
                pattern_source=obj["pattern_source"],
                metadata=obj["metadata"],
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise UserError(f"{source} is corrupted ({type(e).__name__}: {e}); {RETRAIN}") from None
        if tokenizer.vocab_size != obj["vocab_size"]:
            raise UserError(f"{source} is corrupted (vocab_size does not match its merges); {RETRAIN}")
        return tokenizer

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json (atomically) and a readable vocab.txt into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / FILE_NAME
        atomic_write_text(path, _format_json(self.to_json()))
        listing = "".join(f"{i}\t{token!r}\n" for i, token in sorted(self.vocab.items()))
        atomic_write_text(directory / VOCAB_LISTING, listing)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a saved tokenizer, refusing another format version or a corrupted file in one line."""
        path = Path(directory) / FILE_NAME
        if not path.is_file():
            raise UserError(
                f"no tokenizer at {directory} (missing {FILE_NAME}); run `ownllm tokenizer --run DIR` first"
            )
        return cls.from_json(read_json(path, "tokenizer"), source=str(path))


def _tiktoken_encoding(pattern: str, ranks: dict[bytes, int], specials: dict[str, int], n_vocab: int):
    try:
        return tiktoken.Encoding(
            "ownllm", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials, explicit_n_vocab=n_vocab
        )
    except ValueError as e:  # tiktoken's regex engine refused the pattern
        message = str(e).splitlines()[0][:200]
        raise UserError(f"the split pattern is not understood by tiktoken's regex engine: {message}") from None


def _checksum(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _format_json(obj: dict) -> str:
    """JSON with one merge per line: readable, and a diff shows which merges changed."""
    head = json.dumps({k: v for k, v in obj.items() if k != "merges"}, indent=2, ensure_ascii=False)
    merges = ",\n".join(f"    [{left}, {right}]" for left, right in obj["merges"])
    return head[: -len("\n}")] + ',\n  "merges": [\n' + merges + "\n  ]\n}\n"
