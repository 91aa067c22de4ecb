"""Pre-tokenisation for training: count the distinct pieces of the whole corpus, on all cores.

BPE never merges across a piece boundary, so training needs only each distinct piece and
how often it occurs: 8 MB of English is ~1.9 million pieces but only ~36,000 distinct
ones. Splitting text with the regex is the slow part, so chunks of documents are split in
worker processes and their counts summed. Chunking does not depend on the number of
workers, so the counts (and the trained tokenizer) are the same on any machine.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import regex

from ownllm.core.console import progress
from ownllm.core.errors import UserError
from ownllm.core.parallel import available_cores, size_bounded_batches
from ownllm.tokenizer.reference import as_valid_unicode

CHUNK_CHARS = 1 << 20  # text per task: large enough to amortise the transfer, small enough to spread


def iter_texts(texts_or_paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    """A str is a text; a path (pathlib.Path or other os.PathLike) names a UTF-8 file read whole."""
    for item in texts_or_paths:
        if isinstance(item, str):
            yield item
        elif isinstance(item, os.PathLike):
            try:
                yield Path(item).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"cannot read training text {item}: {e}") from None
        else:
            raise TypeError(f"expected a text (str) or a path (os.PathLike), got {type(item).__name__}")


def count_pieces(
    texts_or_paths: Iterable[str | os.PathLike],
    pattern: str,
    special_tokens: Sequence[str],
    workers: int | None = None,
    total_texts: int | None = None,
) -> Counter[bytes]:
    """How often each distinct piece (UTF-8 bytes) occurs; text is cut at special tokens first."""
    workers = workers or available_cores()
    chunks = size_bounded_batches(iter_texts(texts_or_paths), CHUNK_CHARS)
    first_two = list(itertools.islice(chunks, 2))
    if len(first_two) < 2:  # one chunk of text: not worth starting processes
        workers = 1
    chunks = itertools.chain(first_two, chunks)
    # Start the processes before the progress bar, whose thread a fork should not copy.
    pool = multiprocessing.Pool(workers, _init_worker, (pattern, special_tokens)) if workers > 1 else None
    if pool is None:
        _init_worker(pattern, special_tokens)
    counts: Counter[str] = Counter()
    skipped = 0
    try:
        results = pool.imap_unordered(_count_chunk, chunks) if pool else map(_count_chunk, chunks)
        with progress(total=total_texts, unit="doc", unit_scale=True, desc="pre-tokenising") as bar:
            for chunk_counts, chunk_skipped, n_texts in results:
                counts.update(chunk_counts)
                skipped += chunk_skipped
                bar.update(n_texts)
    finally:
        if pool is not None:
            pool.terminate()
    if skipped:
        raise UserError(
            f"the split pattern leaves {skipped} characters of the training text unmatched; "
            "a split pattern must match every character (end it with a catch-all such as |\\s+|.)"
        )
    return Counter({piece.encode("utf-8"): n for piece, n in counts.items()})


# Worker state, set once per process by _init_worker (compiled regexes do not need pickling then).
_split_pattern: regex.Pattern | None = None
_special_pattern: regex.Pattern | None = None


def _init_worker(pattern: str, special_tokens: Sequence[str]) -> None:
    global _split_pattern, _special_pattern
    _split_pattern = regex.compile(pattern)
    alternatives = "|".join(regex.escape(s) for s in special_tokens)
    _special_pattern = regex.compile(alternatives) if special_tokens else None


def _count_chunk(texts: list[str]) -> tuple[Counter[str], int, int]:
    """Counts of the pieces of `texts`, the number of characters the pattern skipped, and len(texts)."""
    assert _split_pattern is not None  # _init_worker set it, in this process or in each pool worker
    counts: Counter[str] = Counter()
    skipped = 0
    for text in texts:
        text = as_valid_unicode(text)
        segments = _special_pattern.split(text) if _special_pattern is not None else [text]
        for segment in segments:
            pieces = _split_pattern.findall(segment)
            counts.update(pieces)
            skipped += len(segment) - sum(map(len, pieces))
    return counts, skipped, len(texts)
