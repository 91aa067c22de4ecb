"""The BPE trainer: learn merges from counts of distinct pieces.

Training repeats one step until the vocabulary is full: find the adjacent pair of tokens
that occurs most often in the corpus (ties: the lexicographically greatest pair of byte
strings, so training is deterministic), add the pair's joined bytes as a new token, and
join every occurrence of the pair in the words that hold it.

A word's tokens during training are exactly what the finished tokenizer produces for it:
for merges learned this way, "apply the learned merges in order" (this loop, and Hugging
Face's encoder) and "join the pair that forms the lowest-ranked token" (our reference
encoder and tiktoken) give the same tokens (Berglund & van der Merwe, "Formalizing BPE
Tokenization", 2023). The tests check it: the trainer must learn the same merges as a naive
one that re-encodes every word with the reference encoder before each step. It also means
no merge ever recreates an existing token, so every token's bytes are unique, which
tiktoken's bytes -> rank table needs.

Speed comes from never recounting: `pair_counts` is updated only for the words a merge
touches (`pair_words` says which those are), and the best pair comes from a max-heap whose
stale entries are corrected when they reach the top (lazy invalidation).
"""

from __future__ import annotations

import heapq
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from ownllm.core.console import progress, say
from ownllm.core.errors import UserError
from ownllm.tokenizer.patterns import DEFAULT_PATTERN, PRESETS, freeze_pattern, resolve_pattern
from ownllm.tokenizer.pretokenize import count_pieces
from ownllm.tokenizer.special_tokens import SPECIAL_TOKENS
from ownllm.tokenizer.tokenizer import Tokenizer

Pair = tuple[int, int]  # two adjacent token ids


def check_vocab_size(vocab_size: int, n_special: int) -> None:
    """A vocabulary must hold the 256 byte tokens, the special tokens and at least one merge."""
    smallest = 256 + n_special + 1
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        raise UserError(
            f"vocabulary size {vocab_size} is too small: it must hold 256 byte tokens, "
            f"{n_special} special tokens and at least one merge (use {smallest} or more)"
        )


def train_bpe(
    texts_or_paths: Iterable[str | os.PathLike],
    vocab_size: int,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    pattern: str = DEFAULT_PATTERN,
    *,
    workers: int | None = None,
    total_texts: int | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer of `vocab_size` ids (special tokens included).

    `texts_or_paths`: each str is one text (a document); each pathlib.Path a UTF-8 file.
    `pattern`: a preset name ("gpt4", "gpt2") or a custom regex. `workers`: processes for
    pre-tokenisation (default: every available core). `total_texts` only sizes the progress bar.
    If the text has too few distinct pairs to fill the vocabulary, training stops early and the
    returned tokenizer is smaller (special tokens still take the last ids).
    """
    special_tokens = list(special_tokens)
    check_vocab_size(vocab_size, len(special_tokens))
    pattern_name, template = resolve_pattern(pattern)
    frozen = freeze_pattern(template)
    # Fail now, not after training, if tiktoken cannot read the pattern.
    Tokenizer([], special_tokens, frozen, pattern_name, template)

    # A preset's template splits exactly like its frozen form (which tiktoken gets) and the regex module
    # runs it ~15x faster; a custom pattern is used frozen everywhere, so that nothing but the engines differs.
    counting_pattern = template if pattern_name in PRESETS else frozen
    word_counts = count_pieces(
        texts_or_paths, counting_pattern, special_tokens, workers=workers, total_texts=total_texts
    )
    n_merges = vocab_size - 256 - len(special_tokens)
    merges = learn_merges(word_counts, n_merges)
    if len(merges) < n_merges:
        say(
            f"note: the training text has only enough distinct pairs for {len(merges)} merges; "
            f"the vocabulary has {256 + len(merges) + len(special_tokens)} ids instead of {vocab_size}"
        )
    return Tokenizer(merges, special_tokens, frozen, pattern_name, template)


def learn_merges(word_counts: Mapping[bytes, int], n_merges: int) -> list[tuple[bytes, bytes]]:
    """The first `n_merges` merges learned from distinct pieces and their counts."""
    words = sorted(word_counts)  # a fixed order: results never depend on how counting was spread
    freqs = [word_counts[w] for w in words]
    parts = [list(w) for w in words]  # each word as its current token ids (bytes are ids 0-255)
    token_bytes = [bytes([b]) for b in range(256)]  # id -> bytes
    known_tokens = set(token_bytes)
    heap_keys = [_reverse_key(t) for t in token_bytes]  # id -> tie-break key

    pair_counts: dict[Pair, int] = defaultdict(int)
    pair_words: dict[Pair, set[int]] = defaultdict(set)  # which words hold the pair
    for i, word in enumerate(parts):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freqs[i]
            pair_words[pair].add(i)
    heap = [_heap_entry(pair, count, heap_keys) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    with progress(total=n_merges, unit="merge", desc="learning merges") as bar:
        while len(merges) < n_merges:
            best = _pop_best(heap, pair_counts, heap_keys)
            if best is None:
                break
            left, right = best
            new_id = len(token_bytes)
            token_bytes.append(token_bytes[left] + token_bytes[right])
            if token_bytes[new_id] in known_tokens:  # impossible for BPE training; tiktoken would break
                raise AssertionError(f"merge {len(merges)} recreates the token {token_bytes[new_id]!r}")
            known_tokens.add(token_bytes[new_id])
            heap_keys.append(_reverse_key(token_bytes[new_id]))
            merges.append((token_bytes[left], token_bytes[right]))

            count_before: dict[Pair, int] = {}  # the counts this merge changes, as they were before it
            for i in pair_words.pop(best):
                old = parts[i]
                new = parts[i] = _replace_pair(old, left, right, new_id)
                old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
                for pair in old_pairs:
                    count_before.setdefault(pair, pair_counts[pair])
                    pair_counts[pair] -= freqs[i]
                for pair in new_pairs:
                    count_before.setdefault(pair, pair_counts[pair])
                    pair_counts[pair] += freqs[i]
                for pair in set(old_pairs).difference(new_pairs):
                    if pair != best:
                        pair_words[pair].discard(i)
                for pair in set(new_pairs).difference(old_pairs):
                    pair_words[pair].add(i)

            for pair, before in count_before.items():
                count = pair_counts[pair]
                if count == 0:
                    del pair_counts[pair]
                    pair_words.pop(pair, None)
                elif count > before:  # a count that fell is fixed lazily when its old entry surfaces
                    heapq.heappush(heap, _heap_entry(pair, count, heap_keys))
            bar.update(1)
    return merges


def _replace_pair(word: list[int], left: int, right: int, new_id: int) -> list[int]:
    """`word` with each occurrence of (left, right), scanned left to right, joined into `new_id`."""
    out = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _pop_best(heap: list, pair_counts: Mapping[Pair, int], heap_keys: list[str]) -> Pair | None:
    """Pop the pair with the highest count (ties: greatest bytes), correcting stale entries on the way.

    Every live pair has an entry whose count is >= its true count (entries are pushed whenever a
    count grows), so an entry whose count is still true when it reaches the top is the best pair.
    """
    while heap:
        negative_count, _, _, left, right = heapq.heappop(heap)
        count = pair_counts.get((left, right), 0)
        if count == -negative_count:
            return left, right
        if count > 0:
            heapq.heappush(heap, _heap_entry((left, right), count, heap_keys))
    return None


# heapq pops the smallest entry; to pop the *greatest* bytes among equal counts each token is
# keyed by a string that sorts in the reverse order of its bytes: byte b becomes chr(256 - b),
# and a terminator chr(257) makes a prefix sort after the longer strings that extend it.
_REVERSE_BYTES = {b: 256 - b for b in range(256)}


def _reverse_key(token: bytes) -> str:
    return token.decode("latin-1").translate(_REVERSE_BYTES) + chr(257)


def _heap_entry(pair: Pair, count: int, heap_keys: list[str]) -> tuple:
    return (-count, heap_keys[pair[0]], heap_keys[pair[1]], pair[0], pair[1])
