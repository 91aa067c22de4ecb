"""Shared test fixtures: the bundled corpus and a way to run the real `ownllm` command."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture
def ownllm():
    return run_ownllm


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


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread, and the machine running the tests is shared."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def bundled_corpus() -> Path:
    return CORPUS
