"""Benchmark `ownllm data` on a large synthetic corpus: throughput and peak memory.

Generates SIZE of text (default 1 GiB) from sentences of the bundled corpus, shuffled into
new documents, with injected exact duplicates, near duplicates and junk, spread over many
files in several formats (.txt, .jsonl; plain, gzip, zstd, bz2). Then runs `ownllm data` on it
as a subprocess, samples the resident memory of the whole process tree (the main process
and its workers) with psutil, and prints documents/s, MB/s, peak memory and the counts.

    .venv/bin/python bench/corpus.py                   # 1 GiB, needs ~2.5 GB of free disk
    .venv/bin/python bench/corpus.py --size-mb 100     # a quick run

Everything is written under a temporary directory that is deleted afterwards (--keep keeps it).
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import zstandard

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "src" / "ownllm" / "resources" / "corpus"
SEPARATOR = "<|endoftext|>"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def load_sentences() -> list[str]:
    """Every sentence of the bundled corpus, whitespace flattened: ~150k building blocks."""
    sentences = []
    for path in sorted(CORPUS.rglob("*.txt")):
        for sentence in SENTENCE_END.split(path.read_text(encoding="utf-8")):
            sentence = " ".join(sentence.split())
            if 20 <= len(sentence) <= 400:
                sentences.append(sentence)
    return sentences


class DocumentMaker:
    """Random documents made of random sentences, plus the duplicates and junk a real crawl has."""

    def __init__(self, sentences: list[str], seed: int = 0):
        self.sentences = sentences
        self.rng = random.Random(seed)
        self.recent: list[str] = []  # a window of earlier documents to duplicate
        self.kinds = {"unique": 0, "exact_copy": 0, "near_copy": 0, "junk": 0}

    def next(self) -> str:
        roll = self.rng.random()
        if roll < 0.04 and self.recent:
            self.kinds["exact_copy"] += 1
            return self._exact_copy(self.rng.choice(self.recent))
        if roll < 0.08 and self.recent:
            self.kinds["near_copy"] += 1
            return self._near_copy(self.rng.choice(self.recent))
        if roll < 0.09:
            self.kinds["junk"] += 1
            return self._junk()
        self.kinds["unique"] += 1
        doc = self._unique()
        if len(self.recent) < 2000:
            self.recent.append(doc)
        else:
            self.recent[self.rng.randrange(2000)] = doc
        return doc

    def _unique(self) -> str:
        # Mostly story-sized documents, some article-sized ones.
        count = self.rng.randint(3, 15) if self.rng.random() < 0.75 else self.rng.randint(30, 150)
        picked = self.rng.choices(self.sentences, k=count)
        paragraphs = [" ".join(picked[i : i + 5]) for i in range(0, count, 5)]
        return "\n\n".join(paragraphs)

    def _exact_copy(self, doc: str) -> str:
        return doc.upper() if self.rng.random() < 0.3 else doc  # case does not make a new document

    def _near_copy(self, doc: str) -> str:
        words = doc.split(" ")
        for _ in range(max(1, len(words) // 100)):  # about 1% of the words changed
            words[self.rng.randrange(len(words))] = self.rng.choice(["indeed", "very", "quite", "so"])
        return " ".join(words)

    def _junk(self) -> str:
        if self.rng.random() < 0.5:
            return "Click here"  # too short
        return "\n".join(" ".join(str(self.rng.randint(0, 99999)) for _ in range(8)) for _ in range(20))


def open_output(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=1)
    if path.suffix == ".bz2":
        return bz2.open(path, "wt", encoding="utf-8", compresslevel=1)
    if path.suffix == ".zst":
        return zstandard.open(path, "wt", encoding="utf-8", cctx=zstandard.ZstdCompressor(level=1))
    return open(path, "w", encoding="utf-8")


def file_name(index: int) -> str:
    """Half the files JSONL, half text; a mix of compressions."""
    base = f"part-{index:04d}." + ("jsonl" if index % 2 == 0 else "txt")
    compression = ["", ".gz", ".zst", "", ".gz", ".zst", "", ".bz2"][index % 8]
    return base + compression


def generate(out: Path, size_bytes: int, files: int) -> dict:
    sentences = load_sentences()
    maker = DocumentMaker(sentences)
    out.mkdir(parents=True)
    per_file = size_bytes // files + 1
    written = documents = 0
    started = time.monotonic()
    for index in range(files):
        path = out / file_name(index)
        as_jsonl = ".jsonl" in path.name
        file_bytes = 0
        with open_output(path) as f:
            while file_bytes < per_file:
                doc = maker.next()
                f.write(json.dumps({"text": doc}) + "\n" if as_jsonl else doc + "\n" + SEPARATOR + "\n")
                file_bytes += len(doc.encode("utf-8"))
                documents += 1
        written += file_bytes
        print(f"\rgenerating: {written / 2**20:,.0f} MiB, {documents:,} documents", end="", file=sys.stderr)
    print(file=sys.stderr)
    on_disk = sum(p.stat().st_size for p in out.iterdir())
    return {
        "text_bytes": written,
        "disk_bytes": on_disk,
        "documents": documents,
        "kinds": maker.kinds,
        "files": files,
        "seconds": time.monotonic() - started,
    }


def run_and_sample(command: list[str], log: Path, interval: float = 1.0) -> dict:
    """Run `command`, sampling the summed RSS of it and all its descendants; return peaks and time.

    Once a second: memory grows smoothly here, and listing the process tree costs CPU that the
    measured command would otherwise get.
    """
    env = {**os.environ, "OWNLLM_PROGRESS": "1"}
    started = time.monotonic()
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=log_file, env=env)
        root = psutil.Process(process.pid)
        peak_tree = peak_main = 0
        peak_processes = 0
        while process.poll() is None:
            try:
                tree = [root] + root.children(recursive=True)
                rss = {}
                for p in tree:
                    try:
                        rss[p.pid] = p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak_tree = max(peak_tree, sum(rss.values()))
                peak_main = max(peak_main, rss.get(root.pid, 0))
                peak_processes = max(peak_processes, len(rss))
            except psutil.NoSuchProcess:
                pass
            time.sleep(interval)
    return {
        "returncode": process.returncode,
        "seconds": time.monotonic() - started,
        "peak_tree_rss": peak_tree,
        "peak_main_rss": peak_main,
        "processes": peak_processes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1024, help="text to generate, MiB (default: 1 GiB)")
    parser.add_argument("--files", type=int, default=64, help="number of input files")
    parser.add_argument("--workers", type=int, default=0, help="passed to ownllm data (0: all cores)")
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated input and corpus")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ownllm-bench-corpus-", dir=args.dir))
    try:
        free = shutil.disk_usage(work).free
        needed = int(args.size_mb * 2**20 * 2.5)
        if free < needed:
            sys.exit(f"need about {needed / 1e9:.1f} GB free in {work}, have {free / 1e9:.1f} GB")
        info = generate(work / "input", int(args.size_mb * 2**20), args.files)
        print(
            f"generated {info['text_bytes'] / 2**20:,.0f} MiB of text ({info['disk_bytes'] / 2**20:,.0f} MiB on disk), "
            f"{info['documents']:,} documents in {info['files']} files in {info['seconds']:.0f} s; "
            f"injected: {info['kinds']}"
        )
        command = [
            sys.executable,
            "-m",
            "ownllm",
            "data",
            "--run",
            str(work / "run"),
            "--input",
            str(work / "input"),
            "--boundary",
            f"delimiter:{SEPARATOR}",
            "--workers",
            str(args.workers),
        ]
        print("running:", " ".join(command[1:]))
        result = run_and_sample(command, work / "data.log")
        log = (work / "data.log").read_text(errors="replace")
        if result["returncode"] != 0:
            sys.exit(f"ownllm data failed ({result['returncode']}):\n{log[-3000:]}")
        manifest = json.loads((work / "run" / "corpus" / "manifest.json").read_text())
        counts = manifest["counts"]
        seconds = manifest["seconds"]
        print(f"cores: {psutil.cpu_count()} (shared with other work: load average {os.getloadavg()[0]:.1f})")
        print(
            f"documents in: {counts['documents_in']:,}   out: {counts['documents_out']:,} "
            f"(train {manifest['splits']['train']['documents']:,}, val {manifest['splits']['val']['documents']:,})"
        )
        print(f"removed: {manifest['removed']}")
        print(f"stage time: {seconds:.1f} s (process wall time {result['seconds']:.1f} s)")
        print(
            f"throughput: {counts['documents_in'] / seconds:,.0f} docs/s, "
            f"{counts['bytes_in'] / 2**20 / seconds:,.1f} MiB/s of text"
        )
        print(
            f"peak RSS, whole process tree ({result['processes']} processes): "
            f"{result['peak_tree_rss'] / 2**20:,.0f} MiB; main process: {result['peak_main_rss'] / 2**20:,.0f} MiB"
        )
        print(
            f"main-process peak RSS per kept document: "
            f"{result['peak_main_rss'] / counts['documents_out']:,.0f} bytes (includes the fixed ~100 MiB base)"
        )
        if args.keep:
            print(f"kept: {work}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
