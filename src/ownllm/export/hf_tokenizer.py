"""Our byte-level BPE in the formats other tools read: Hugging Face `tokenizer.json`, and the lists GGUF needs.

Three things must carry over exactly for the ids to match:

- The vocabulary. Both Hugging Face and llama.cpp write a byte-level token as text, one
  printable character per byte (GPT-2's `bytes_to_unicode` table); ids are ours.
- The merges. Our encoder (tiktoken's rule) joins the adjacent pair whose *result* has the
  lowest rank; Hugging Face and llama.cpp join the adjacent pair that comes first in a merge
  list. The two agree when the list holds, for every token in rank order, every way of
  forming it from two earlier tokens (not only the merge that made it during training), as
  transformers' own tiktoken converter does.
- The split pattern. Ours is frozen to explicit code-point ranges (tokenizer/patterns.py);
  the Oniguruma engine of `tokenizers` reads them once `\\uXXXX` is written `\\x{XXXX}`.

Special tokens become added tokens (Hugging Face) or control tokens (GGUF) with our ids.
"""

from __future__ import annotations

import functools
import re

from ownllm.tokenizer import Tokenizer


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte as one printable character (printable ASCII and Latin-1 stand for themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def token_text(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def vocabulary(tokenizer: Tokenizer) -> list[str]:
    """Every token as text, in id order (special tokens as their names)."""
    special = {i: name for name, i in tokenizer.special_tokens.items()}
    return [special[i] if i in special else token_text(tokenizer.vocab[i]) for i in range(tokenizer.vocab_size)]


def merge_list(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    """Every pair (left, right) of earlier tokens that forms a token, ordered by the rank of what it forms.

    Pairs forming the same token keep the order of their left part's rank (the merge made in
    training is one of them); so a merge-list encoder joins pairs in the order tiktoken's rule does.
    """
    rank = {token: i for i, token in tokenizer.vocab.items() if i < 256 + len(tokenizer.merges)}
    pairs: list[tuple[str, str]] = []
    for i in range(256, 256 + len(tokenizer.merges)):
        token = tokenizer.vocab[i]
        splits = [
            (rank[token[:cut]], token[:cut], token[cut:])
            for cut in range(1, len(token))
            if rank.get(token[:cut], i) < i and rank.get(token[cut:], i) < i
        ]
        pairs += [(token_text(left), token_text(right)) for _, left, right in sorted(splits)]
    return pairs


_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})|\\U([0-9A-Fa-f]{8})")


def onig_pattern(pattern: str) -> str:
    """Our frozen split pattern in Oniguruma's syntax (code points as \\x{...})."""
    return _ESCAPE.sub(lambda m: "\\x{" + format(int(m.group(1) or m.group(2), 16), "X") + "}", pattern)


def tokenizer_json(tokenizer: Tokenizer) -> dict:
    """A Hugging Face `tokenizers` file (format 1.0) that encodes and decodes as `tokenizer` does."""
    words = vocabulary(tokenizer)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": name,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for name, i in tokenizer.special_tokens.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": onig_pattern(tokenizer.pattern)},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,  # a piece that is a whole token is that token (tiktoken does the same)
            "vocab": {word: i for i, word in enumerate(words) if i not in tokenizer.special_tokens.values()},
            "merges": [list(pair) for pair in merge_list(tokenizer)],
        },
    }
