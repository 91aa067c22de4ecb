"""Benchmark: our BPE trainer and encoder against Hugging Face `tokenizers` and tiktoken, in one run.

    .venv/bin/python bench/tokenizer.py                      # bundled corpus, split here
    .venv/bin/python bench/tokenizer.py --run runs/demo      # the corpus `ownllm data` wrote

Trains a byte-level BPE tokenizer of the same vocabulary size (special tokens included) on
the same documents with our trainer and with Hugging Face's Rust trainer (with its own
GPT-2 ByteLevel split, and with our GPT-4 split pattern), then measures encoding throughput
and compression on the validation documents. Prints a Markdown table; figures are measured
here and now, so on a shared machine compare ratios taken in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import tiktoken

from ownllm.run.corpus_shards import iter_documents, read_manifest
from ownllm.tokenizer import SPECIAL_TOKENS, ReferenceEncoder, train_bpe
from ownllm.tokenizer.patterns import PRESETS
from ownllm.tokenizer.pretokenize import available_cpus, count_pieces

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "ownllm" / "resources" / "corpus"


def bundled_documents(val_every: int = 20) -> tuple[list[str], list[str]]:
    """Documents = blank-line separated blocks of the bundled files; every `val_every`-th is held out."""
    blocks = []
    for path in sorted(BUNDLED.rglob("*.txt")):
        blocks += [b for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    train = [b for i, b in enumerate(blocks) if i % val_every]
    val = [b for i, b in enumerate(blocks) if not i % val_every]
    return train, val


def run_documents(run: Path) -> tuple[list[str], list[str]]:
    corpus = run / "corpus"
    manifest = read_manifest(corpus)
    return list(iter_documents(corpus, "train", manifest)), list(iter_documents(corpus, "val", manifest))


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def train_hf(documents: list[str], vocab_size: int, split_pattern: str | None):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if split_pattern is None:  # HF's own ByteLevel split (the GPT-2 pattern)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def best_of(repeat: int, fn, *args, **kwargs):
    runs = [timed(fn, *args, **kwargs) for _ in range(repeat)]
    return runs[-1][0], min(seconds for _, seconds in runs)


def throughput(n_bytes: int, seconds: float) -> str:
    return f"{n_bytes / seconds / 1e6:.2f} MB/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="use the corpus of this run directory (default: bundled files)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=2, help="training runs per trainer; the best time counts")
    parser.add_argument("--reference-chars", type=int, default=200_000, help="text for the pure-Python encoder")
    args = parser.parse_args()
    os.environ.setdefault("OWNLLM_PROGRESS", "0")

    train, val = run_documents(args.run) if args.run else bundled_documents()
    train_bytes = sum(len(d.encode("utf-8")) for d in train)
    val_bytes = sum(len(d.encode("utf-8")) for d in val)
    cores = available_cpus()
    rows: list[tuple[str, str]] = []

    print(f"# Tokenizer benchmark — {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores} usable cores, Python "
        f"{platform.python_version()}, tiktoken {tiktoken.__version__}"
    )
    print(
        f"corpus: {'run ' + str(args.run) if args.run else 'bundled files'}; train {len(train):,} documents "
        f"({train_bytes / 1e6:.2f} MB), val {len(val):,} documents ({val_bytes / 1e6:.2f} MB)\n"
    )

    # --- training: alternate the trainers and keep each one's best time (the machine may be shared) ---
    ours_s = hf_gpt2_s = hf_gpt4_s = float("inf")
    for _ in range(args.repeat):
        ours, seconds = timed(train_bpe, train, args.vocab_size, workers=cores)
        ours_s = min(ours_s, seconds)
        hf_gpt2, seconds = timed(train_hf, train, args.vocab_size, None)
        hf_gpt2_s = min(hf_gpt2_s, seconds)
        hf_gpt4, seconds = timed(train_hf, train, args.vocab_size, PRESETS["gpt4"])
        hf_gpt4_s = min(hf_gpt4_s, seconds)
    assert ours.vocab_size == hf_gpt2.get_vocab_size() == hf_gpt4.get_vocab_size() == args.vocab_size
    _, pieces_1_s = best_of(args.repeat, count_pieces, train, PRESETS["gpt4"], SPECIAL_TOKENS, workers=1)
    _, pieces_s = best_of(args.repeat, count_pieces, train, PRESETS["gpt4"], SPECIAL_TOKENS, workers=cores)
    rows += [
        ("train: ownllm (gpt4 split)", f"{ours_s:.2f} s"),
        ("train: HF tokenizers ByteLevel (gpt2 split)", f"{hf_gpt2_s:.2f} s"),
        ("train: HF tokenizers, gpt4 split", f"{hf_gpt4_s:.2f} s"),
        ("train ratio ownllm / HF ByteLevel", f"{ours_s / hf_gpt2_s:.2f}x"),
        ("train ratio ownllm / HF gpt4 split", f"{ours_s / hf_gpt4_s:.2f}x"),
        ("ownllm pre-tokenising alone, 1 process", f"{pieces_1_s:.2f} s"),
        (f"ownllm pre-tokenising alone, {cores} processes", f"{pieces_s:.2f} s"),
    ]

    # --- encoding: the training documents (more text, steadier timings); best of 3 ---------------
    encoding: tiktoken.Encoding = ours._encoding  # the tiktoken object our Tokenizer calls
    ours.encode_batch(train[:10])  # warm up
    _, batch_s = best_of(3, ours.encode_batch, train, num_threads=cores)
    _, tiktoken_batch_s = best_of(3, encoding.encode_ordinary_batch, train, num_threads=cores)
    _, single_s = best_of(3, lambda: [ours.encode_ordinary(d) for d in train])
    _, tiktoken_single_s = best_of(3, lambda: [encoding.encode_ordinary(d) for d in train])
    _, hf_batch_s = best_of(3, hf_gpt4.encode_batch, train, add_special_tokens=False)
    _, hf_single_s = best_of(3, lambda: [hf_gpt4.encode(d, add_special_tokens=False) for d in train])
    sample = "\n\n".join(val)[: args.reference_chars]
    sample_bytes = len(sample.encode("utf-8"))
    reference = ReferenceEncoder(ours)
    reference_ids, reference_s = timed(reference.encode, sample)
    assert reference_ids == ours.encode(sample), "reference and fast encoders disagree"
    rows += [
        (f"encode train split, batch on {cores} threads: ownllm", throughput(train_bytes, batch_s)),
        (
            f"encode train split, batch on {cores} threads: our tiktoken Encoding called directly",
            throughput(train_bytes, tiktoken_batch_s),
        ),
        (
            f"encode train split, batch on {cores} threads: HF tokenizers (gpt4 split)",
            throughput(train_bytes, hf_batch_s),
        ),
        ("encode train split, one call per document: ownllm", throughput(train_bytes, single_s)),
        ("encode train split, one call per document: tiktoken directly", throughput(train_bytes, tiktoken_single_s)),
        ("encode train split, one call per document: HF tokenizers", throughput(train_bytes, hf_single_s)),
        (
            f"encode {sample_bytes / 1e3:.0f} kB: ownllm reference encoder (pure Python)",
            throughput(sample_bytes, reference_s),
        ),
    ]

    # --- compression on the validation split -----------------------------------------------------------------------
    ours_tokens = sum(map(len, ours.encode_batch(val, num_threads=cores)))
    hf_tokens = sum(len(e.ids) for e in hf_gpt4.encode_batch(val, add_special_tokens=False))
    hf_gpt2_tokens = sum(len(e.ids) for e in hf_gpt2.encode_batch(val, add_special_tokens=False))
    rows += [
        ("val bytes/token: ownllm", f"{val_bytes / ours_tokens:.3f} ({ours_tokens:,} tokens)"),
        ("val bytes/token: HF tokenizers, gpt4 split", f"{val_bytes / hf_tokens:.3f} ({hf_tokens:,} tokens)"),
        ("val bytes/token: HF tokenizers ByteLevel", f"{val_bytes / hf_gpt2_tokens:.3f} ({hf_gpt2_tokens:,} tokens)"),
    ]

    width = max(len(name) for name, _ in rows)
    print(f"| {'measure'.ljust(width)} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
