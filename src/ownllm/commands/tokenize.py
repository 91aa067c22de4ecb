"""`ownllm tokenize`: encode the corpus's train and validation splits into token shards.

ownllm tokenize --run runs/demo        # reads corpus/ and tokenizer/, writes tokens/
"""

from __future__ import annotations

import argparse
import time

from ownllm.commands.common import add_run_argument
from ownllm.core.console import say
from ownllm.core.errors import UserError
from ownllm.core.parallel import available_cores
from ownllm.data.tokenize import tokenize_corpus
from ownllm.run import RunDir


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="encoding threads (default: every available core)",
    )


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    run_dir = RunDir.open(args.run, create=False)
    threads = args.threads or available_cores()
    started = time.perf_counter()
    meta = tokenize_corpus(run_dir.corpus, run_dir.tokenizer, run_dir.tokens, threads=threads)
    seconds = time.perf_counter() - started
    total = sum(split["tokens"] for split in meta["splits"].values())
    run_dir.record_config("tokenize", {"threads": threads, "dtype": meta["dtype"]})
    run_dir.log_metrics({"stage": "tokenize", "seconds": round(seconds, 2), "tokens": total})
    for name, split in meta["splits"].items():
        say(
            f"{name}: {split['documents']:,} documents, {split['tokens']:,} tokens, "
            f"{split['bytes'] / max(split['tokens'], 1):.2f} bytes/token"
        )
    say(f"{total:,} tokens in {seconds:.1f} s ({total / max(seconds, 1e-9):,.0f} tokens/s)")
    print(f"token shards written to {run_dir.tokens}")
    return 0
