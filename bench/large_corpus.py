"""A corpus larger than memory through `ownllm data` and `ownllm tokenize`, and the training loader over its shards.

Generates SIZE of synthetic text (default 2 GiB; bench/corpus.py's generator: documents of
sentences from the bundled corpus, with duplicates and junk, over many files and compressions),
then runs as subprocesses, sampling the resident memory of each whole process tree with psutil:

  1. `ownllm data`      raw files -> cleaned, deduplicated corpus shards
  2. `ownllm tokenizer` on the bundled corpus in a side run (training BPE on gigabytes is another
                        benchmark); its tokenizer/ is copied into the big run
  3. `ownllm tokenize`  corpus shards -> token shards
  4. the loader         BatchLoader over the memory-mapped train shards: random batches of the
                        `cpu` preset's shape from all over the stream

and prints, per stage: wall time, throughput, peak resident memory (the whole process tree and
the main process). Bounded memory means the peaks stay flat when --size-mb grows: compare a
small run with the full one.

    .venv/bin/python bench/large_corpus.py                   # 2 GiB: ~20 minutes on 2 cores, ~6 GB of disk
    .venv/bin/python bench/large_corpus.py --size-mb 50      # a quick check that it works

Everything is written under a new temporary directory, deleted afterwards (--keep keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import SEPARATOR, generate, run_and_sample  # noqa: E402

LOADER = """
import json, resource, sys, time
sys.path.insert(0, {src!r})
from ownllm.run.token_shards import open_tokens
from ownllm.train.loader import BatchLoader
split = open_tokens({tokens!r}).split("train")
loader = BatchLoader(split, seq_len=256, batch_size=16, seed=0)
start = time.perf_counter()
for _ in range({batches}):
    loader.next_batch()
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "shards": len(split.shards), "tokens": split.tokens,
                   "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def ownllm(*args) -> list[str]:
    return [sys.executable, "-m", "ownllm", *map(str, args)]


def stage(name: str, command: list[str], work: Path, interval: float) -> dict:
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    result = run_and_sample(command, work / f"{name}.log", interval=interval)
    if result["returncode"] != 0:
        log = (work / f"{name}.log").read_text(errors="replace")
        sys.exit(f"{name} failed ({result['returncode']}):\n{log[-3000:]}")
    return result


def report(name: str, result: dict, amount: str) -> None:
    processes = f"{result['processes']} process" + ("es" if result["processes"] != 1 else "")
    print(
        f"  {name}: {result['seconds']:.1f} s, {amount}; peak RSS {result['peak_tree_rss'] / 2**20:,.0f} MiB "
        f"({processes}), main process {result['peak_main_rss'] / 2**20:,.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=2048, help="text to generate, MiB (default: 2 GiB)")
    parser.add_argument("--files", type=int, default=64, help="number of input files")
    parser.add_argument("--workers", type=int, default=0, help="ownllm data --workers and tokenize --threads (0: all)")
    parser.add_argument("--batches", type=int, default=2000, help="batches the loader reads")
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep everything written")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ownllm-bench-large-", dir=args.dir))
    interval = 1.0 if args.size_mb >= 500 else 0.1  # sampling costs CPU; short runs need finer samples
    try:
        needed = int(args.size_mb * 2**20 * 3)  # input (partly compressed) + corpus shards + token shards
        if shutil.disk_usage(work).free < needed:
            sys.exit(f"need about {needed / 1e9:.1f} GB free in {work}, have {shutil.disk_usage(work).free / 1e9:.1f}")
        info = generate(work / "input", int(args.size_mb * 2**20), args.files)
        print(
            f"generated {info['text_bytes'] / 2**20:,.0f} MiB of text ({info['disk_bytes'] / 2**20:,.0f} MiB on "
            f"disk), {info['documents']:,} documents in {info['files']} files, {info['seconds']:.0f} s",
            flush=True,
        )
        run, side = work / "run", work / "tokenizer-run"
        workers = args.workers or psutil.cpu_count()
        results = {
            "data": stage(
                "data",
                ownllm(
                    "data",
                    "--run",
                    run,
                    "--input",
                    work / "input",
                    "--boundary",
                    f"delimiter:{SEPARATOR}",
                    "--workers",
                    workers,
                ),
                work,
                interval,
            )
        }
        manifest = json.loads((run / "corpus" / "manifest.json").read_text())
        corpus_bytes = sum(s["bytes"] for s in manifest["splits"].values())

        stage("tokenizer-data", ownllm("data", "--run", side), work, interval)
        stage("tokenizer", ownllm("tokenizer", "--run", side, "--vocab-size", 8192), work, interval)
        shutil.copytree(side / "tokenizer", run / "tokenizer")

        results["tokenize"] = stage("tokenize", ownllm("tokenize", "--run", run, "--threads", workers), work, interval)
        meta = json.loads((run / "tokens" / "meta.json").read_text())
        tokens = sum(s["tokens"] for s in meta["splits"].values())

        src = str(Path(__file__).resolve().parents[1] / "src")
        code = LOADER.format(src=src, tokens=str(run / "tokens"), batches=args.batches)
        started = time.monotonic()
        loader = json.loads(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        )
        loader_wall = time.monotonic() - started

        print(
            f"\ncores: {psutil.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
            f"input {info['text_bytes'] / 2**30:.2f} GiB of text"
        )
        counts = manifest["counts"]
        report(
            "ownllm data",
            results["data"],
            f"{counts['bytes_in'] / 2**20 / results['data']['seconds']:,.1f} MiB/s of text in, "
            f"{counts['documents_in']:,} documents in, {counts['documents_out']:,} kept",
        )
        report(
            "ownllm tokenize",
            results["tokenize"],
            f"{tokens:,} tokens, {tokens / results['tokenize']['seconds']:,.0f} tokens/s, "
            f"{corpus_bytes / 2**20 / results['tokenize']['seconds']:,.1f} MiB/s of corpus text",
        )
        print(
            f"  loader: {args.batches} batches of 16 x 256 from {loader['shards']} shards "
            f"({loader['tokens']:,} tokens) in {loader['seconds']:.2f} s "
            f"({args.batches * 16 * 256 / loader['seconds']:,.0f} tokens/s; process {loader_wall:.1f} s); "
            f"peak RSS {loader['peak_rss'] / 2**20:,.0f} MiB (Python + numpy + PyTorch included)"
        )
        if args.keep:
            print(f"kept: {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
