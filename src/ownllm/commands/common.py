"""What the commands share: the --run option and the training stages' options."""

from __future__ import annotations

import argparse


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    """Every stage command takes --run DIR; explicit artifact paths override its conventions."""
    parser.add_argument(
        "--run",
        default="runs/demo",
        metavar="DIR",
        help="run directory holding every stage's artifacts (default: %(default)s)",
    )


def add_training_arguments(
    parser: argparse.ArgumentParser,
    presets: list[str],
    default: str,
    *,
    preset_help: str,
    set_help: str,
    resume_help: str,
    restart_help: str,
) -> None:
    """--run, --preset, --set, --time-budget and --resume/--restart: the options of every training stage."""
    add_run_argument(parser)
    parser.add_argument("--preset", choices=presets, default=default, help=f"{preset_help} (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    parser.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="plan the number of steps to finish in this wall-clock time, e.g. 10m, 90s, 1h",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help=resume_help)
    group.add_argument("--restart", action="store_true", help=restart_help)


def add_decode_argument(parser: argparse.ArgumentParser) -> None:
    """--decode: how the engine runs a decode step (`ownllm chat`, `ownllm serve`, `ownllm sample`)."""
    parser.add_argument(
        "--decode",
        choices=("auto", "plain", "compiled"),
        default="auto",
        help="auto: CUDA graphs on a GPU, plain PyTorch on a CPU; compiled: each step through torch.compile, "
        "about 1.4x the plain engine's batch-1 decoding on a CPU once compiled (seconds per new shape first; "
        "docs/benchmarks.md) "
        "(default: %(default)s)",
    )


def add_retriever_argument(parser: argparse.ArgumentParser) -> None:
    """--retriever: how a knowledge base is searched (`ownllm chat`, `ownllm serve`, `ownllm kb search`)."""
    parser.add_argument(
        "--retriever",
        choices=("bm25", "vector", "hybrid"),
        default="bm25",
        help="how the knowledge base is searched; vector and hybrid use the run's embedder "
        "(`ownllm embed train`) (default: %(default)s, the best measured)",
    )
