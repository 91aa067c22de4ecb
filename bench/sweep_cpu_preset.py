"""Sweep: which `cpu` preset reaches the lowest validation bits per byte in a fixed wall-clock budget?

Each candidate trains with `ownllm pretrain --preset cpu --time-budget B --set ...` on the
bundled corpus, one after another (never in parallel: they would share the cores), and the
final validation bits per byte (held-out TinyStories stories) is read from metrics.jsonl.
The data, tokenizer and token stages run once per vocabulary size and are copied into each
candidate's run directory.

    .venv/bin/python bench/sweep_cpu_preset.py --budget 3m                # every candidate
    .venv/bin/python bench/sweep_cpu_preset.py --budget 10m --only base   # one, at the full budget
    .venv/bin/python bench/sweep_cpu_preset.py --steps 400 --only base muon --repeats 2
                                         # a fixed number of steps (quality per step, not per second),
                                         # candidates alternating, each twice
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

OWNLLM = [sys.executable, "-m", "ownllm"]

# name -> (vocabulary size, --set overrides on top of the cpu preset)
CANDIDATES: dict[str, tuple[int, list[str]]] = {
    "base": (8192, []),
    "lr-3e-3": (8192, ["lr=3e-3"]),
    "small-192": (8192, ["model.d_model=192", "model.n_heads=3", "model.n_layers=3"]),
    "vocab-4096": (4096, []),
    "vocab-4096-lr-3e-3": (4096, ["lr=3e-3"]),
    "seq-128": (8192, ["seq_len=128", "micro_batch=32"]),
    "deep-6": (8192, ["model.n_layers=6"]),
    "wide-384": (8192, ["model.d_model=384", "model.n_heads=6"]),
    "small-192-lr-3e-3": (8192, ["model.d_model=192", "model.n_heads=3", "model.n_layers=3", "lr=3e-3"]),
    "small-192-4l": (8192, ["model.d_model=192", "model.n_heads=3", "model.n_layers=4"]),
    "small-192-batch-2k": (
        8192,
        ["model.d_model=192", "model.n_heads=3", "model.n_layers=3", "batch_tokens=2048", "micro_batch=8"],
    ),
    "tiny-128": (8192, ["model.d_model=128", "model.n_heads=2", "model.n_layers=4"]),
    # 2026-12: the cpu preset is small-192 (above); these change one thing on top of it.
    "muon": (8192, ["optimizer=muon"]),
    "muon-lr-4e-3": (8192, ["optimizer=muon", "lr=4e-3"]),
    "muon-lr-8e-3": (8192, ["optimizer=muon", "lr=8e-3"]),
    "lr-4e-3": (8192, ["lr=4e-3"]),
    "muon-wsd": (8192, ["optimizer=muon", "schedule=wsd", "decay_fraction=0.4"]),
    "wsd": (8192, ["schedule=wsd", "decay_fraction=0.4"]),
}


def sh(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def prepare_base(root: Path, vocab: int) -> Path:
    base = root / f"base-v{vocab}"
    if not (base / "tokens" / "meta.json").exists():
        sh([*OWNLLM, "data", "--run", str(base)])
        sh([*OWNLLM, "tokenizer", "--run", str(base), "--vocab-size", str(vocab)])
        sh([*OWNLLM, "tokenize", "--run", str(base)])
    return base


def final_eval(metrics: Path) -> dict:
    evals, steps = [], []
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if "val_bpb" in record:
            evals.append(record)
        if "loss" in record and "tokens" in record:
            steps.append(record)
    return {**evals[-1], "train_tokens": steps[-1]["tokens"] if steps else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="3m", help="training time per candidate (default %(default)s)")
    parser.add_argument("--root", default="runs/sweep", help="where the runs go (default %(default)s)")
    parser.add_argument("--steps", type=int, help="train this many steps instead of a time budget")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each candidate, alternating (default 1)")
    parser.add_argument("--only", nargs="*", choices=list(CANDIDATES), help="run only these candidates")
    args = parser.parse_args()
    os.environ.setdefault("OWNLLM_PROGRESS", "0")
    root = Path(args.root)
    rows = []
    for repeat, name in ((r, n) for r in range(args.repeats) for n in args.only or CANDIDATES):
        vocab, overrides = CANDIDATES[name]
        base = prepare_base(root, vocab)
        run = root / (name if args.repeats == 1 else f"{name}-{repeat + 1}")
        shutil.rmtree(run, ignore_errors=True)
        for part in ("corpus", "tokenizer", "tokens"):
            shutil.copytree(base / part, run / part)
        cmd = [*OWNLLM, "pretrain", "--run", str(run), "--preset", "cpu"]
        cmd += (
            ["--set", "time_budget=0", "--set", f"steps={args.steps}"] if args.steps else ["--time-budget", args.budget]
        )
        for o in overrides:
            cmd += ["--set", o]
        start = time.perf_counter()
        sh(cmd)
        wall = time.perf_counter() - start
        result = final_eval(run / "metrics.jsonl")
        rows.append((name, vocab, " ".join(overrides) or "(preset)", result, wall))
        print(
            f"{name}: val_bpb {result['val_bpb']:.4f} after {result['step']} steps, "
            f"{result['train_tokens']:,} tokens, {wall:.0f} s wall",
            flush=True,
        )

    print("\n| candidate | vocab | overrides | steps | train tokens | val loss | val bpb | wall |")
    print("|---|---|---|---|---|---|---|---|")
    for name, vocab, overrides, r, wall in sorted(rows, key=lambda row: row[3]["val_bpb"]):
        print(
            f"| {name} | {vocab} | {overrides} | {r['step']} | {r['train_tokens']:,} | "
            f"{r['val_loss']:.4f} | **{r['val_bpb']:.4f}** | {wall:.0f} s |"
        )


if __name__ == "__main__":
    main()
