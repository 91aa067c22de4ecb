"""Ctrl-C for the main thread only: threads started inside `sigint_blocked()` never take it.

The kernel hands a process's SIGINT to any thread that does not block it. Python runs its
handler in the main thread, but only once that thread wakes: a Ctrl-C taken by one of
torch's worker threads leaves the main thread asleep in input() (or waiting for the next
token) until something else wakes it. Threads inherit the signal mask of the thread that
starts them, so those started in here (by `import torch`, the first parallel op, the
engine's scheduler) keep SIGINT blocked for good, and the main thread gets every Ctrl-C.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Hold SIGINT back from the calling thread (and the threads it starts) inside the block.

    A Ctrl-C pressed meanwhile stays pending and is delivered when the block ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
