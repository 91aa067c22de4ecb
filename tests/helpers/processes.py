"""Real processes for the distributed tests: torchrun starts, waiting for them, killing whole trees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from helpers import REPO


def torchrun(*args, processes: int = 2) -> subprocess.Popen:
    """`torchrun --nproc_per_node N --standalone -m ownllm -- ARGS` (the `--` keeps torchrun from reading
    --run as an abbreviation of its own --run-path)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OWNLLM_PROGRESS": "0"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--standalone",
        "-m",
        "ownllm",
        "--",
        *map(str, args),
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_everything(proc)
        pytest.fail("torchrun did not finish: a process is probably waiting for another one")
    return proc.returncode, stderr


def workers(proc: subprocess.Popen) -> dict[int, psutil.Process]:
    """torchrun's worker processes by rank."""
    found = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None:
            found[int(rank)] = child
    return found


def kill_everything(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every worker at once: a crash. Workers run in sessions of their own,
    so killing torchrun's process group would leave them running."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
    proc.communicate()


def wait_for(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"torchrun ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            kill_everything(proc)
            pytest.fail("timed out waiting for the training processes")
        time.sleep(0.01)
