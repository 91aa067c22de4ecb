"""The key/value cache: what generation remembers so each new token costs one position, not the whole context.

Attention at position t needs the keys and values of positions 0..t. Without a cache every
new token recomputes them for the whole context (quadratic); with it, the prompt is run once
(prefill) and each new token adds its own key and value (decode).

The cache is preallocated: per layer, (slots, max_len, kv_heads, head_dim) for keys and the
same for values, a tensor of its own per layer (a compiled decode step writes into each in
place; into views of one big tensor it copied the whole cache every token). A slot holds one
sequence; sequences in different slots have their own lengths, so prompts of different lengths
are decoded together, each row attending only to its own earlier positions. A server can
start a new request in a free slot while others decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ownllm.model.config import ModelConfig


class KVCache:
    def __init__(
        self,
        config: ModelConfig,
        slots: int,
        max_len: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.max_len = max_len or config.max_seq_len
        if self.max_len > config.max_seq_len:
            raise ValueError(f"a cache of {self.max_len} positions exceeds max_seq_len={config.max_seq_len}")
        shape = (slots, self.max_len, config.kv_heads, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.slots = slots
        self.device = self.keys[0].device

    def view(self, slots: list[int], starts: list[int], length: int) -> CacheView:
        """Where a forward pass of `length` new tokens per row reads and writes.

        Row b of the input is slot slots[b]; its first new token is at position starts[b]
        (the number of tokens that slot already holds).
        """
        if len(slots) != len(starts):
            raise ValueError("one start position per slot")
        end = max(starts) + length
        if end > self.max_len:
            raise ValueError(f"{end} positions exceed the cache's {self.max_len}")
        device = self.device
        positions = torch.tensor(starts, device=device)[:, None] + torch.arange(length, device=device)  # (B, T)
        # Rows on consecutive slots read their keys and values through a slice, not a gather; when
        # they also start at the same position, the new ones are written through a slice as well.
        first = slots[0]
        consecutive = list(slots) == list(range(first, first + len(slots)))
        rows = slice(first, first + len(slots)) if consecutive else None
        start = starts[0] if consecutive and len(set(starts)) == 1 else None
        # A single new token per row with all rows at the same position sees every key before it: no mask.
        mask = None
        if length > 1 or len(set(starts)) > 1:
            mask = torch.arange(end, device=device) <= positions[..., None]  # (B, T, end): key j visible from t
            mask = mask[:, None]  # broadcast over heads
        slot_index = torch.tensor(slots, device=device)
        return CacheView(self, positions, slot_index, rows, start, end, mask)


@dataclass
class CacheView:
    cache: KVCache
    positions: torch.Tensor  # (B, T) position of every new token
    slot_index: torch.Tensor  # (B,) slot of each row
    rows: slice | None  # the slots as a slice, when they are consecutive
    start: int | None  # the first new position, when the slots are consecutive and all rows start there
    end: int  # keys and values 0..end-1 are read
    mask: torch.Tensor | None  # (B, 1, T, end) True where a query may attend to a key

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (B, T, kv_heads, head_dim); return all of them so far, (B, end, kv_heads, head_dim)."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        if self.start is not None:
            new = slice(self.start, self.start + k.shape[1])
            keys[self.rows, new] = k
            values[self.rows, new] = v
        else:
            where = (self.slot_index[:, None], self.positions)
            keys.index_put_(where, k.to(keys.dtype))
            values.index_put_(where, v.to(values.dtype))
        if self.rows is not None:
            return keys[self.rows, : self.end], values[self.rows, : self.end]
        return keys[self.slot_index, : self.end], values[self.slot_index, : self.end]
