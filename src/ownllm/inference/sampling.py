"""Choosing the next token from the model's logits: greedy, or sampled after the usual filters.

Each request has its own `RowSampler`: its settings, its own random generator (so a seed
gives the same text whatever else is decoded in the same batch), and for the repetition
penalty a mask of the tokens already in its context. The filters apply in the order
Hugging Face applies them: repetition penalty, temperature, top-k, top-p.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
GREEDY_BELOW = 1e-4  # a smaller temperature is greedy decoding (1/temperature would overflow float32)


def penalize_repetitions(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: a seen token's positive logit is divided by `penalty`, a negative one multiplied.

    (Dividing a negative logit would make the token *more* likely, hence the two cases.)
    """
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_logits(logits: torch.Tensor, temperature, top_k=0, top_p=1.0) -> torch.Tensor:
    """Logits (V,) or (B, V) scaled by 1/temperature, with -inf for every token top-k or top-p excludes.

    Each setting is one number for every row or a list with one per row. top-k keeps the k
    largest logits (ties at the k-th value too; 0: all); top-p keeps the smallest set of most
    likely tokens whose probabilities add up to at least top_p (always the most likely one; 1:
    all). Rows are filtered together, and each row's result is the same as filtering it alone.
    """
    shape = logits.shape
    logits = logits.float().reshape(-1, shape[-1])
    rows, vocab = logits.shape
    temperature, top_k, top_p = (_per_row(x, rows) for x in (temperature, top_k, top_p))
    top_k = [k if 0 < k < vocab else vocab for k in top_k]
    device = logits.device
    logits = logits / torch.tensor(temperature, device=device)[:, None]
    if min(top_k) < vocab:
        k_max = max(k for k in top_k if k < vocab)
        largest = torch.topk(logits, k_max).values
        kth = largest.gather(1, torch.tensor([[min(k, k_max) - 1] for k in top_k], device=device))
        keep_all = torch.tensor([[k == vocab] for k in top_k], device=device)
        logits = logits.masked_fill((logits < kth) & ~keep_all, NEG_INF)
    if min(top_p) < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the more likely tokens
        limit = torch.tensor([[p if p < 1.0 else float("inf")] for p in top_p], device=device)
        drop = torch.empty_like(order, dtype=torch.bool).scatter_(-1, order, mass_before >= limit)
        logits = logits.masked_fill(drop, NEG_INF)
    return logits.reshape(shape)


def _per_row(setting, rows: int) -> list:
    return list(setting) if isinstance(setting, (list, tuple)) else [setting] * rows


class RowSampler:
    """The next-token rule of one request: its settings, random generator and seen tokens."""

    def __init__(
        self,
        temperature: float,
        top_k: int,
        top_p: float,
        repetition_penalty: float,
        generator: torch.Generator,
        vocab_size: int,
        device: torch.device,
        prompt: list[int],
    ):
        self.temperature = temperature if temperature >= GREEDY_BELOW else 0.0
        self.top_k, self.top_p = top_k, top_p
        self.penalty = repetition_penalty
        self.generator = generator
        self.greedy = self.temperature == 0 and repetition_penalty == 1.0  # argmax of the raw logits
        self.seen: torch.Tensor | None = None
        if repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(prompt, device=device)] = True

    def observe(self, token: int) -> None:
        """Remember a generated token (for the repetition penalty)."""
        if self.seen is not None:
            self.seen[token] = True


def pick_tokens(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """Next token of every row of logits (B, V), each by its own sampler's rule.

    The filters run on all rows at once; only the repetition penalty (rows that use it) and the
    draw from each row's own generator go row by row. One device-to-host copy for the batch.
    """
    if all(s.greedy for s in samplers):
        return logits.argmax(-1).tolist()
    logits = logits.float()
    penalized = [i for i, s in enumerate(samplers) if s.seen is not None]
    if penalized:
        logits = logits.clone()
        for i in penalized:
            seen = samplers[i].seen
            assert seen is not None
            logits[i] = penalize_repetitions(logits[i], seen, samplers[i].penalty)
    sampled = [i for i, s in enumerate(samplers) if s.temperature > 0]
    if not sampled:
        return logits.argmax(-1).tolist()
    chosen = [samplers[i] for i in sampled]
    rows = logits if len(sampled) == len(samplers) else logits[sampled]
    filtered = filter_logits(
        rows, [s.temperature for s in chosen], [s.top_k for s in chosen], [s.top_p for s in chosen]
    )
    draws = draw(torch.softmax(filtered, dim=-1), [s.generator for s in chosen])
    if len(sampled) == len(samplers):
        return draws.tolist()
    picks = logits.argmax(-1)  # the greedy rows' choice
    picks[sampled] = draws
    return picks.tolist()


def draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of probs (R, V), each from its own generator, by inverting the cumulative sum.

    One uniform number per row (torch.multinomial costs ~20x more per row at this vocabulary
    size, and would go row by row anyway); a token of probability 0 is never chosen.
    """
    cdf = torch.cumsum(probs, dim=-1)
    u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])
    tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    # u * total can round up to the total itself: then there is no token after it; take the most likely
    return torch.where(tokens < probs.shape[-1], tokens, probs.argmax(-1))
