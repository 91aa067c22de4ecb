"""Simple generation: run the whole context through the model for every new token.

Quadratic in the length, which is fine for a few hundred tokens from a small model; the
inference engine with a KV cache replaces this loop later. Sampling uses its own random
generator, so generating text never disturbs the training run's random state.
"""

from __future__ import annotations

from typing import Iterator

import torch


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> int:
    """Pick the next token from logits (vocab,): greedy at temperature 0, else from the top_k most likely."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int = 50,
    generator: torch.Generator | None = None,
    stop_token: int | None = None,
) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids after `prompt`, stopping after stop_token.

    When the context outgrows the model's max_seq_len, only the most recent tokens are kept.
    """
    if not prompt:
        raise ValueError("generation needs at least one prompt token")
    device = next(model.parameters()).device
    window = model.config.max_seq_len
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    for _ in range(max_new_tokens):
        logits = model(ids[:, -window:])[0, -1]
        token = sample_next(logits, temperature, top_k, generator)
        yield token
        if token == stop_token:
            return
        ids = torch.cat((ids, torch.tensor([[token]], device=device)), dim=1)
