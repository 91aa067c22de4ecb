"""Log-likelihood scoring: how probable the model finds a continuation after a context.

Every multiple-choice task and every minimal pair is scored this way (the conventions of
EleutherAI's evaluation harness): the score of a choice is the sum of the log-probabilities
of its tokens given the context and the tokens of the choice before them.

    requests = [(context_ids, continuation_ids), ...]
    scores = score(model, requests)                     # batched: sorted by length, right-padded
    scores == [score_one(model, c, x) for c, x in requests]    # the naive reference (a test)

A request longer than the model's context keeps its continuation and the end of its context.
Right padding never changes a real position's result: attention is causal, so a position
sees only what is before it, and the padded positions are never read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ownllm.model import Transformer

Request = tuple[list[int], list[int]]  # (context ids, continuation ids); the context has at least one id


def _window(context: list[int], continuation: list[int], max_len: int) -> tuple[list[int], int]:
    """The ids fed to the model (at most max_len + 1 in all) and how many of the last targets are scored."""
    if not context or not continuation:
        raise ValueError("a request needs a context of at least one token and a non-empty continuation")
    ids = (context + continuation)[-(max_len + 1) :]
    return ids, min(len(continuation), len(ids) - 1)


@torch.no_grad()
def score_one(model: Transformer, context: list[int], continuation: list[int]) -> float:
    """The naive reference: one request, no padding, no batching."""
    ids, n = _window(context, continuation, model.config.max_seq_len)
    device = next(model.parameters()).device
    tokens = torch.tensor([ids], device=device)
    logits = model(tokens[:, :-1]).float()
    logprobs = F.log_softmax(logits[0, -n:], dim=-1)
    return float(logprobs.gather(-1, tokens[0, -n:, None]).sum())


@torch.no_grad()
def score(model: Transformer, requests: list[Request], batch_size: int = 16, progress=None) -> list[float]:
    """Sum of log-probabilities of each continuation, in the order of `requests`, batch_size at a time."""
    device = next(model.parameters()).device
    windows = [_window(c, x, model.config.max_seq_len) for c, x in requests]
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # similar lengths batch together
    scores = [0.0] * len(windows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = len(windows[chunk[0]][0]) - 1
        inputs = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):
            ids = windows[i][0]
            inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
            targets[row, : len(ids) - 1] = torch.tensor(ids[1:])
        logprobs = F.log_softmax(model(inputs.to(device)).float(), dim=-1)
        picked = logprobs.gather(-1, targets.to(device)[..., None])[..., 0].cpu()
        for row, i in enumerate(chunk):
            ids, n = windows[i]
            end = len(ids) - 1
            scores[i] = float(picked[row, end - n : end].sum())
        if progress is not None:
            progress.update(len(chunk))
    return scores
