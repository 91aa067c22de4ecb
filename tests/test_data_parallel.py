"""The ordered, bounded parallel map the data stage runs its workers with."""

from __future__ import annotations

from ownllm.core.parallel import ordered_map


def test_results_come_in_order_and_the_input_is_not_read_ahead_without_limit():
    consumed = 0

    def jobs():
        nonlocal consumed
        for i in range(200):
            consumed += 1
            yield i, -i

    window = 4
    seen = []
    most_ahead = 0
    for meta, result in ordered_map(abs, jobs(), workers=2, initializer=int, window=window):
        seen.append((meta, result))
        most_ahead = max(most_ahead, consumed - len(seen))
    assert seen == [(i, i) for i in range(200)]
    assert most_ahead <= window


def test_one_worker_runs_in_this_process():
    calls = []
    results = list(ordered_map(calls.append, [("a", 1), ("b", 2)], workers=1, initializer=int))
    assert results == [("a", None), ("b", None)] and calls == [1, 2]
