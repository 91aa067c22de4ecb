"""Code the tests share: paths, running the real command, builders of runs and servers (no tests here).

helpers            REPO, CORPUS, run_ownllm (the command as a real process), torch_threads
helpers.runs       run directories with token shards (byte-level or a real BPE tokenizer), metrics
helpers.processes  torchrun starts, waiting for and killing whole process trees
helpers.corpus     small corpora and one-line error checks for the corpus/tokenizer commands
helpers.chat       the tiny chat model that answers the fixed questions
helpers.server     a real server (create_app under uvicorn) on loopback
helpers.pdf        PDFs written by hand: one showing a text, many pages, bombs
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


CORPUS = REPO / "src" / "ownllm" / "resources" / "corpus"


def run_ownllm(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m ownllm ARGS` as a real process; return the CompletedProcess (text mode)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OWNLLM_PROGRESS": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ownllm", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with PyTorch on n threads, then restore the count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
