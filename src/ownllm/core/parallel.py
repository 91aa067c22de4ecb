"""An ordered, memory-bounded parallel map over a stream of jobs.

`multiprocessing.Pool.imap` keeps results in order but reads its whole input as fast as it
can, so a corpus larger than memory would pile up in the task queue. Here at most `window`
jobs are in flight: a new job is submitted only after the oldest result has been taken.
Results come back in submission order, so the output never depends on the worker count.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

Item = TypeVar("Item")
Meta = TypeVar("Meta")
Arg = TypeVar("Arg")
Result = TypeVar("Result")

_len: Callable[[Any], int] = len  # size_bounded_batches' default size: for sized items only


def size_bounded_batches(
    items: Iterable[Item],
    max_size: int,
    max_items: int | None = None,
    size: Callable[[Item], int] = _len,
) -> Iterator[list[Item]]:
    """Group a stream into lists of at most `max_items` items whose sizes add up to about `max_size`.

    The batch that crosses `max_size` is closed with that item, so a single oversized item
    still travels alone rather than being dropped; memory stays bounded by one batch.
    """
    batch: list[Item] = []
    total = 0
    for item in items:
        batch.append(item)
        total += size(item)
        if total >= max_size or (max_items is not None and len(batch) >= max_items):
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ordered_map(
    function: Callable[[Arg], Result],
    jobs: Iterable[tuple[Meta, Arg]],
    *,
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple = (),
    window: int | None = None,
) -> Generator[tuple[Meta, Result], None, None]:
    """Yield (meta, function(arg)) for each (meta, arg) job, in order; `meta` stays in this process."""
    if workers <= 1:
        initializer(*initargs)
        for meta, arg in jobs:
            yield meta, function(arg)
        return
    window = window or 2 * workers
    # forkserver: workers start from a clean process rather than a copy of this one (which may
    # hold threads, e.g. a progress bar's); preloading the worker's module keeps starts fast.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        context.set_forkserver_preload([function.__module__])
    with context.Pool(workers, _start_worker, (initializer, initargs)) as pool:  # leaving it terminates the pool
        in_flight: deque = deque()
        for meta, arg in jobs:
            in_flight.append((meta, pool.apply_async(function, (arg,))))
            if len(in_flight) >= window:
                oldest_meta, oldest = in_flight.popleft()
                yield oldest_meta, oldest.get()
        while in_flight:
            oldest_meta, oldest = in_flight.popleft()
            yield oldest_meta, oldest.get()


def _start_worker(initializer: Callable[..., None], initargs: tuple) -> None:
    # Ctrl-C is the main process's to handle (it stops the pool); workers ignore it instead of
    # each printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    initializer(*initargs)
