"""Batches of training windows from memory-mapped token shards: deterministic, resumable, shardable.

A split's shards are one long token stream. A window is seq_len + 1 consecutive tokens:
inputs are the first seq_len, targets the last seq_len (each token predicts the next).
Windows do not overlap; each epoch visits all of them once.

  random:     each epoch shuffles the windows (and shifts their boundaries) from (seed, epoch)
  sequential: windows in stream order, every epoch the same

The n-th window the run consumes is a pure function of (seed, n), so the loader's whole
state is one number, `batches`: saving it and restoring it resumes the exact same data.
With several processes (rank r of world w), batch b of rank r is made of windows
(b * w + r) * batch_size + i, so ranks read disjoint data and one counter serves all.

An optimizer step of W windows therefore reads windows [s*W, (s+1)*W) for any number of
processes and any micro-batch size that divide it: N processes together see exactly the rows
one process would, and a checkpoint taken with N processes continues with M (the counter is
converted through the number of windows consumed).
"""

from __future__ import annotations

import numpy as np
import torch

from ownllm.core.errors import UserError
from ownllm.run.token_shards import TokenSplit


class TokenStream:
    """A split's shards seen as one array: read any [start, end) range, across shard borders."""

    def __init__(self, split: TokenSplit):
        self.shards = split.shards
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.tokens = int(self.starts[-1])

    def read(self, start: int, end: int) -> np.ndarray:
        out = np.empty(end - start, dtype=np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < len(out):
            shard, offset = self.shards[i], start + filled - int(self.starts[i])
            take = min(len(out) - filled, len(shard) - offset)
            out[filled : filled + take] = shard[offset : offset + take]
            filled += take
            i += 1
        return out


class BatchLoader:
    def __init__(
        self,
        split: TokenSplit,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        order: str = "random",
        device: torch.device | str = "cpu",
        rank: int = 0,
        world: int = 1,
        name: str = "train",
    ):
        self.stream = TokenStream(split)
        self.seq_len, self.batch_size, self.seed, self.order = seq_len, batch_size, seed, order
        self.device, self.rank, self.world = torch.device(device), rank, world
        # Random order shifts window boundaries by up to seq_len - 1 tokens, so keep one window spare.
        spare = seq_len if order == "random" else 1
        self.windows_per_epoch = (self.stream.tokens - spare) // seq_len
        if self.windows_per_epoch < 1:
            raise UserError(
                f"the {name} split has {self.stream.tokens} tokens, too few for one window of seq_len={seq_len}; "
                f"lower seq_len or add text"
            )
        self.batches = 0  # batches consumed by every rank so far: the whole resumable state
        self._epoch, self._shift = -1, 0
        self._permutation: np.ndarray | None = None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, each (batch_size, seq_len) int64, on the loader's device."""
        first = (self.batches * self.world + self.rank) * self.batch_size
        rows = np.stack([self.window(first + i) for i in range(self.batch_size)])
        self.batches += 1
        batch = torch.from_numpy(rows)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def window(self, n: int) -> np.ndarray:
        epoch, index = divmod(n, self.windows_per_epoch)
        if self.order == "random":
            if epoch != self._epoch:
                rng = np.random.default_rng([self.seed, epoch])
                self._epoch, self._permutation = epoch, rng.permutation(self.windows_per_epoch)
                self._shift = int(rng.integers(0, self.seq_len))
            assert self._permutation is not None
            start = self._shift + int(self._permutation[index]) * self.seq_len
        else:
            start = index * self.seq_len
        return self.stream.read(start, start + self.seq_len + 1)

    def state_dict(self) -> dict:
        return {
            "batches": self.batches,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "order": self.order,
            "world": self.world,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue after the windows `state` consumed, with this loader's batch size and number of processes."""
        for key in ("seq_len", "seed", "order"):
            if state[key] != getattr(self, key):
                raise UserError(
                    f"cannot resume: the data loader's {key} was {state[key]} and is now {getattr(self, key)}; "
                    f"resume with the settings of the checkpoint"
                )
        windows = int(state["batches"]) * state["batch_size"] * state.get("world", 1)
        per_batch = self.batch_size * self.world
        if windows % per_batch:
            raise UserError(
                f"cannot resume: the checkpoint's data position ({windows} windows) is not a whole number of "
                f"batches of micro_batch*processes={self.batch_size}*{self.world}; resume with "
                f"micro_batch={state['batch_size']} and {state.get('world', 1)} processes"
            )
        self.batches = windows // per_batch


def eval_batches(split: TokenSplit, seq_len: int, batch_size: int, max_tokens: int, device) -> list:
    """The first windows of a split, in order, up to max_tokens targets: the same every evaluation."""
    loader = BatchLoader(split, seq_len, batch_size=1, order="sequential", device=device, name="validation")
    windows = max(1, min(loader.windows_per_epoch, max_tokens // seq_len))
    rows = np.stack([loader.window(n) for n in range(windows)])
    batches = []
    for start in range(0, windows, batch_size):
        batch = torch.from_numpy(rows[start : start + batch_size]).to(device)
        batches.append((batch[:, :-1], batch[:, 1:]))
    return batches
