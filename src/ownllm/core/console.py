"""What a long job shows a person: one-line status messages and progress bars.

Messages and bars go to stderr so that stdout stays clean for results a script may read.
Bars draw only on a terminal unless OWNLLM_PROGRESS=1 forces them (or =0 hides them).
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def progress(**kwargs) -> tqdm:
    """A tqdm bar with ownllm's defaults; pass total=, unit=, desc= as usual."""
    forced = os.environ.get("OWNLLM_PROGRESS")
    disable = None if forced is None else forced == "0"
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(file=sys.stderr, disable=disable, **kwargs)
