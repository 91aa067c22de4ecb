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
