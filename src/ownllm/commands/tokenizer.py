"""`ownllm tokenizer`: train the tokenizer on the corpus's training split, or report its compression.

ownllm tokenizer --run runs/demo --vocab-size 8192     # writes runs/demo/tokenizer/
ownllm tokenizer --run runs/demo --stats               # bytes per token on the validation split
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterable

from ownllm.commands.common import add_run_argument
from ownllm.core.console import progress, say
from ownllm.core.errors import UserError
from ownllm.core.fsutil import atomic_directory
from ownllm.core.parallel import available_cores
from ownllm.run import RunDir
from ownllm.run.corpus_shards import iter_documents, read_manifest
from ownllm.tokenizer.patterns import DEFAULT_PATTERN, PRESETS, resolve_pattern
from ownllm.tokenizer.reference import ReferenceEncoder
from ownllm.tokenizer.special_tokens import SPECIAL_TOKENS
from ownllm.tokenizer.tokenizer import Tokenizer
from ownllm.tokenizer.train import check_vocab_size, train_bpe

DEFAULT_VOCAB_SIZE = 8192
CHECK_CHARS = 200_000  # text encoded by both encoders after training, as a check


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=DEFAULT_VOCAB_SIZE,
        metavar="N",
        help=f"ids in the vocabulary, the {len(SPECIAL_TOKENS)} special tokens included (default: %(default)s)",
    )
    parser.add_argument(
        "--pattern",
        default=DEFAULT_PATTERN,
        metavar="NAME|REGEX",
        help=f"split pattern: {' or '.join(PRESETS)} (default: %(default)s), or a custom regex",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes for pre-tokenisation (default: every available core)",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="do not train: report the saved tokenizer's compression on the validation split",
    )


def run(args: argparse.Namespace) -> int:
    if args.stats:
        return report_stats(RunDir.open(args.run, create=False))
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    check_vocab_size(args.vocab_size, len(SPECIAL_TOKENS))
    resolve_pattern(args.pattern)  # a bad regex fails here, before any reading
    run_dir = RunDir.open(args.run, create=False)
    manifest = read_manifest(run_dir.corpus)
    train_split = manifest["splits"]["train"]
    if train_split["documents"] == 0:
        raise UserError(f"the corpus in {run_dir.corpus} has no training documents; rebuild it with `ownllm data`")

    workers = args.workers or available_cores()
    say(
        f"training a {args.vocab_size}-token BPE tokenizer on {train_split['documents']:,} documents "
        f"({train_split['bytes'] / 1e6:.1f} MB) with {workers} worker(s)"
    )
    started = time.perf_counter()
    tokenizer = train_bpe(
        iter_documents(run_dir.corpus, "train", manifest),
        args.vocab_size,
        pattern=args.pattern,
        workers=workers,
        total_texts=train_split["documents"],
    )
    seconds = time.perf_counter() - started
    check_encoders_agree(
        tokenizer,
        itertools.chain(*(iter_documents(run_dir.corpus, split, manifest) for split in ("val", "train"))),
    )

    tokenizer.metadata = {
        "corpus_hash": manifest["corpus_hash"],
        "documents": train_split["documents"],
        "bytes": train_split["bytes"],
        "requested_vocab_size": args.vocab_size,
    }
    with atomic_directory(run_dir.tokenizer) as tmp:
        tokenizer.save(tmp)
    settings = {"vocab_size": tokenizer.vocab_size, "pattern": args.pattern, "merges": len(tokenizer.merges)}
    run_dir.record_config("tokenizer", settings)
    run_dir.log_metrics({"stage": "tokenizer", "train_seconds": round(seconds, 2), **settings})
    say(f"trained in {seconds:.1f} s: {tokenizer.vocab_size} ids ({len(tokenizer.merges)} merges)")
    print(f"tokenizer written to {run_dir.tokenizer}")
    return 0


def check_encoders_agree(tokenizer: Tokenizer, documents: Iterable[str]) -> None:
    """Encode some text with both encoders and decode it back; only a custom split pattern can fail this."""
    reference = ReferenceEncoder(tokenizer)
    budget = CHECK_CHARS
    for document in documents:
        text = document[:budget]
        ids = tokenizer.encode_ordinary(text)
        if reference.encode_ordinary(text) != ids:
            raise UserError(
                f"the split pattern {tokenizer.pattern_name!r} cuts text differently in the `regex` module "
                "and in tiktoken's engine; use a preset (--pattern gpt4) or a simpler regex"
            )
        if tokenizer.decode(ids) != text:
            raise UserError(
                f"the split pattern {tokenizer.pattern_name!r} drops characters, so decoding does not give "
                "the text back; a split pattern must match every character"
            )
        budget -= len(text)
        if budget <= 0:
            return


def report_stats(run_dir: RunDir) -> int:
    tokenizer = Tokenizer.load(run_dir.tokenizer)
    manifest = read_manifest(run_dir.corpus)
    val = manifest["splits"]["val"]
    if val["documents"] == 0:
        raise UserError(f"the corpus in {run_dir.corpus} has no validation documents to measure on")
    n_bytes = n_tokens = 0
    with progress(total=val["documents"], unit="doc", desc="encoding validation split") as bar:
        for batch in _batches(iter_documents(run_dir.corpus, "val", manifest), 1024):
            n_bytes += sum(len(doc.encode("utf-8")) for doc in batch)
            n_tokens += sum(map(len, tokenizer.encode_batch(batch, num_threads=available_cores())))
            bar.update(len(batch))
    bytes_per_token = n_bytes / max(n_tokens, 1)
    print(f"tokenizer: {tokenizer.vocab_size} ids, pattern {tokenizer.pattern_name}")
    print(f"validation split: {val['documents']:,} documents, {n_bytes:,} bytes, {n_tokens:,} tokens")
    print(f"compression: {bytes_per_token:.3f} bytes per token")
    run_dir.log_metrics({"stage": "tokenizer", "val_bytes_per_token": round(bytes_per_token, 4)})
    return 0


def _batches(items, size: int):
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
