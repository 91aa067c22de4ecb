"""Decode steps with static shapes, replayed from CUDA graphs or compiled: batch-1 decoding not bound by Python.

A small model on a GPU decodes a token in a few hundred kernels of a few microseconds each;
launched one by one from Python, the launches cost far more than the work. A CUDA graph
records the kernels of one decode step once and replays them with a single launch. A graph
fixes every shape and every address, so the step is rewritten with static shapes:

  rows      the first `rows` slots of the cache, rows a power of two (1, 2, 4, ... max_slots)
            that covers the highest active slot. Slots in between that hold no sequence
            compute a throw-away row at position 0 (a new request's prefill overwrites it).
  keys      positions 0..span-1 of those slots, span a power of two (at least 64, at most
            the cache) that covers the longest sequence; a mask hides the positions past
            each row's own length, so every row attends exactly to its own tokens.
  inputs    the new token and the position of every row, copied into fixed buffers before
            each replay; the new key and value are written at that position inside the graph.

One graph per (rows, span) pair, captured the first time that pair is needed (a few tens of
milliseconds each; at most log2(max_slots) x log2(max_len / 64) of them). `graphs=False` runs the
same static step without capture: the reference the graphs are tested against, and the path
on machines without CUDA (where tests check it decodes exactly like the engine's plain step).

On a CPU there are no graphs to replay; `compiled=True` hands the same static step to
torch.compile instead (one compilation per (rows, span), inductor's C++ kernels called from
a C++ wrapper), which fuses the ~25 small operations of a layer (norms, rotary, the cache
write, attention over one query, residual adds) into a few loops and leaves the weight
products to the BLAS. Compiling costs seconds the first time each shape is needed (inductor
keeps the result on disk for the next process), so it is the engine's `decode="compiled"`,
asked for, not the CPU default.
"""

from __future__ import annotations

import torch

from ownllm.model.kv_cache import CacheView, KVCache

MIN_SPAN = 64


def _cover(n: int, floor: int, limit: int) -> int:
    """The bucket that holds n: the smallest floor * 2**k of at least n, capped at limit."""
    size = floor
    while size < n:
        size *= 2
    return min(size, limit)


def _buckets(floor: int, limit: int) -> list[int]:
    """Every bucket _cover can return for these bounds."""
    sizes = [min(floor, limit)]
    while sizes[-1] < limit:
        sizes.append(min(sizes[-1] * 2, limit))
    return sizes


class StaticDecoder:
    def __init__(self, model: torch.nn.Module, cache: KVCache, vocab: int, graphs: bool = True, compiled: bool = False):
        self.model, self.cache, self.vocab = model, cache, vocab
        self.device = cache.device
        if graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if graphs and compiled:
            raise ValueError("a decoder replays CUDA graphs or runs a compiled step, not both")
        self.graphs = graphs
        self._run_step = self._step
        if compiled:
            # dynamic=False: every (rows, span) is compiled for its own shapes, as a graph is captured for
            # them; the compiler gives one function 8 shapes unless told more, then runs it uncompiled.
            shapes = len(_buckets(1, cache.slots)) * len(_buckets(MIN_SPAN, cache.max_len))
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, shapes)
            # The model's modules do not change while it decodes: checking them before every step cost
            # ~80 microseconds a token on this CPU (10% of it), without them ~25 (shapes are still checked).
            self._run_step = torch.compile(
                self._step,
                dynamic=False,
                fullgraph=True,
                options={
                    "cpp_wrapper": self.device.type == "cpu",
                    "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe,
                },
            )
        slots = cache.slots
        self.ids = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        self.slot_index = torch.arange(slots, device=self.device)
        self._captured: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def captured(self) -> list[tuple[int, int]]:
        """The (rows, span) shapes captured so far."""
        return sorted(self._captured)

    def __call__(self, slots: list[int], lengths: list[int], tokens: list[int]) -> torch.Tensor:
        """Logits (len(slots), vocab) of the next token of each sequence: slot slots[i] holds lengths[i]
        tokens and its newest token, tokens[i], goes in at position lengths[i]."""
        rows = _cover(max(slots) + 1, 1, self.cache.slots)
        span = _cover(max(lengths) + 1, MIN_SPAN, self.cache.max_len)
        ids = torch.zeros(rows, 1, dtype=torch.long)
        positions = torch.zeros(rows, 1, dtype=torch.long)
        ids[slots, 0] = torch.tensor(tokens)
        positions[slots, 0] = torch.tensor(lengths)
        self.ids[:rows].copy_(ids, non_blocking=False)
        self.positions[:rows].copy_(positions, non_blocking=False)
        if not self.graphs:
            logits = self._run_step(rows, span)
        else:
            entry = self._captured.get((rows, span))
            if entry is None:
                entry = self._captured[(rows, span)] = self._capture(rows, span)
            graph, logits = entry
            graph.replay()
        if not self.graphs and slots == list(range(len(slots))):
            # A slice, not a gather (batch 1: slot 0). Not of a graph's output, which the next replay
            # overwrites: the gather copies it.
            return logits[: len(slots), : self.vocab]
        return logits[slots, : self.vocab]

    def _step(self, rows: int, span: int) -> torch.Tensor:
        """One decode step over slots 0..rows-1 and key positions 0..span-1, from the fixed buffers."""
        positions = self.positions[:rows]  # (rows, 1)
        visible = torch.arange(span, device=self.device) <= positions[..., None]  # (rows, 1, span)
        view = CacheView(self.cache, positions, self.slot_index[:rows], slice(0, rows), None, span, visible[:, None])
        return self.model(self.ids[:rows], cache=view, last_only=True)[:, 0]

    def _capture(self, rows: int, span: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up runs on a side stream (cuBLAS workspaces, the attention kernel's choice) as
        # PyTorch's graph capture requires. They write the same keys and values the real
        # step writes (same tokens, same positions), so running them changes nothing.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step(rows, span)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (the server's, creating a request's random generator) may
        # use the GPU while this one captures; only this thread's work is recorded.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            logits = self._step(rows, span)
        return graph, logits
