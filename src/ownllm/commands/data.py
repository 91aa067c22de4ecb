"""`ownllm data`: raw text files -> a clean, deduplicated train/val corpus in RUN/corpus/.

With no --input it builds the bundled default corpus (TinyStories, children's books, Tiny
Shakespeare). docs/data.md describes every step, option and manifest field.
"""

from __future__ import annotations

import argparse

from ownllm.commands.common import add_run_argument
from ownllm.core.console import say
from ownllm.data.pipeline import DEDUP_MODES, CorpusSettings, build_corpus
from ownllm.data.quality import QualityThresholds
from ownllm.data.sources import Boundary, InputSpec, bundled_corpus
from ownllm.run import RunDir

_DEFAULTS = CorpusSettings(inputs=())
_LIMITS = QualityThresholds()


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    read = parser.add_argument_group("inputs")
    read.add_argument(
        "--input",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="files, directories (recursive) or quoted globs: .txt .md .html .jsonl .parquet, "
        "optionally .gz/.bz2/.zst (default: the bundled corpus, see docs/data.md)",
    )
    _option(
        read,
        "--boundary",
        "auto",
        "MODE",
        "how text and HTML files are cut into documents: auto (a file is one document, but plain text "
        "over 64 KiB is cut at chapter headings or paragraph breaks), file, blank-line, line, "
        "delimiter:TEXT (e.g. 'delimiter:<|endoftext|>') or regex:PATTERN",
    )
    _option(read, "--jsonl-field", _DEFAULTS.jsonl_field, "NAME", "JSONL field holding the text")
    _option(read, "--parquet-column", _DEFAULTS.parquet_column, "NAME", "Parquet column holding the text")

    filters = parser.add_argument_group("quality filters (a document failing one is removed and counted)")
    _option(filters, "--min-chars", _LIMITS.min_chars, "N", "shorter documents are removed")
    _option(filters, "--max-chars", _LIMITS.max_chars, "N", "longer documents are removed")
    _option(
        filters,
        "--min-letter-fraction",
        _LIMITS.min_letter_fraction,
        "F",
        "minimum share of letters among non-space characters",
    )
    _option(
        filters,
        "--max-non-text-fraction",
        _LIMITS.max_non_text_fraction,
        "F",
        "maximum share of non-space characters in 'words' over 40 characters (base64, hashes, minified code)",
    )
    _option(
        filters,
        "--max-repeated-line-fraction",
        _LIMITS.max_repeated_line_fraction,
        "F",
        "maximum share of characters in lines that repeat an earlier line of the document",
    )

    dedup = parser.add_argument_group("deduplication")
    dedup.add_argument(
        "--dedup",
        choices=DEDUP_MODES,
        default=_DEFAULTS.dedup,
        help="near: exact and near duplicates; exact: identical text (ignoring case and "
        "whitespace) only; off: keep duplicates (default: %(default)s)",
    )
    _option(
        dedup,
        "--near-dup-threshold",
        _DEFAULTS.near_dup_threshold,
        "F",
        "estimated Jaccard similarity of word shingles at which a document is a near duplicate",
    )
    _option(dedup, "--minhash-perms", _DEFAULTS.minhash_perms, "N", "MinHash permutations")
    _option(dedup, "--shingle-words", _DEFAULTS.shingle_words, "N", "words per shingle")

    out = parser.add_argument_group("output")
    _option(
        out,
        "--val-fraction",
        _DEFAULTS.val_fraction,
        "F",
        "share of documents held out for validation, chosen by a hash of their text",
    )
    _option(out, "--shard-mb", _DEFAULTS.shard_mb, "MB", "maximum size of one shard file")
    out.add_argument(
        "--workers", type=int, default=0, metavar="N", help="worker processes (default: 0, every available core)"
    )


def _option(group, flag: str, default, metavar: str, help_text: str) -> None:
    """An option whose type is its default's, with the default shown in --help."""
    group.add_argument(
        flag, type=type(default), default=default, metavar=metavar, help=f"{help_text} (default: %(default)s)"
    )


def settings_from_args(args: argparse.Namespace) -> CorpusSettings:
    if args.input:
        boundary = Boundary.parse(args.boundary)
        inputs = tuple(InputSpec(path, boundary) for path in args.input)
    else:
        inputs = tuple(bundled_corpus())
    return CorpusSettings(
        inputs=inputs,
        limits=QualityThresholds(
            min_chars=args.min_chars,
            max_chars=args.max_chars,
            min_letter_fraction=args.min_letter_fraction,
            max_non_text_fraction=args.max_non_text_fraction,
            max_repeated_line_fraction=args.max_repeated_line_fraction,
        ),
        jsonl_field=args.jsonl_field,
        parquet_column=args.parquet_column,
        dedup=args.dedup,
        near_dup_threshold=args.near_dup_threshold,
        minhash_perms=args.minhash_perms,
        shingle_words=args.shingle_words,
        val_fraction=args.val_fraction,
        workers=args.workers,
        shard_mb=args.shard_mb,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not args.input:
        say("no --input given: building the bundled default corpus")
    run_dir = RunDir.open(args.run)
    manifest = build_corpus(settings, run_dir)
    _print_summary(manifest, run_dir)
    return 0


def _print_auto_splits(inputs: list[dict], most: int = 5) -> None:
    """One line for each file the auto boundary cut into documents, e.g.
    `book.txt: one 144 KB text cut into 12 documents at chapter headings`."""
    cut = [entry for entry in inputs if entry["auto_split"] is not None]
    for entry in cut[:most]:
        split = entry["auto_split"]
        where = [
            label
            for label, count in (
                ("chapter headings", split["chapter_headings"]),
                ("paragraph breaks", split["paragraph_breaks"]),
                ("sentence ends inside long paragraphs", split["inside_paragraphs"]),
            )
            if count
        ]
        if where:
            done = f"cut into {entry['documents']:,} documents at {' and '.join(where)}"
        else:  # what was left after dropping a Gutenberg licence fits in one document
            done = "kept as one document"
        if split["gutenberg_dropped"]:
            done += "; Project Gutenberg header and licence dropped"
        say(f"{entry['path']}: one {_size(split['text_bytes'])} text {done} (--boundary file keeps it whole)")
    if len(cut) > most:
        say(f"... and {len(cut) - most:,} more long files cut into documents (see inputs in the manifest)")


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} KB"


def _print_summary(manifest: dict, run_dir: RunDir) -> None:
    counts, splits = manifest["counts"], manifest["splits"]
    seconds = manifest["seconds"]
    say(
        f"corpus: {run_dir.corpus} — kept {counts['documents_out']:,} of {counts['documents_in']:,} documents "
        f"(train {splits['train']['documents']:,}, val {splits['val']['documents']:,}), "
        f"{counts['bytes_out'] / 1e6:,.1f} MB of text"
    )
    _print_auto_splits(manifest["inputs"])
    if manifest["removed"]:
        say("removed: " + ", ".join(f"{reason} {n:,}" for reason, n in manifest["removed"].items()))
    moved = manifest["split_moved"]
    if moved is not None:
        say(
            f"{moved['to']} would be empty (the --val-fraction hash rule put no document there): moved "
            f"{moved['document']}, the nearest to the threshold, from {moved['from']} to {moved['to']}"
        )
    if splits["val"]["documents"] == 0 and manifest["settings"]["val_fraction"] > 0:
        say(
            "warning: the validation split is empty, because all the text is one document, and pretraining "
            "needs both splits; add text, or cut it into documents with --boundary blank-line"
        )
    invalid = manifest["invalid_utf8"]
    if invalid["sequences_replaced"]:
        replaced, documents = invalid["sequences_replaced"], invalid["documents"]
        say(f"invalid UTF-8: {replaced:,} sequences replaced in {documents:,} documents")
    if manifest["mojibake_repaired"]["documents"]:
        say(f"mojibake repaired in {manifest['mojibake_repaired']['documents']:,} documents")
    say(
        f"took {seconds:.1f} s ({counts['documents_in'] / seconds:,.0f} docs/s, "
        f"{counts['bytes_in'] / 1e6 / seconds:,.1f} MB/s)"
    )
