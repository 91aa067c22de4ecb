"""Learning rate over the run: a linear warm-up, then cosine decay or warmup-stable-decay (WSD).

Warm-up lets Adam's statistics settle before large steps; the decay at the end is where most
of the final loss improvement comes from. WSD holds the peak rate and decays only over the
last `decay_fraction` of the steps, so a run can be extended before its decay starts.
The rate depends only on the step number: a resumed run gets exactly the same rates.
"""

from __future__ import annotations

import math


def lr_at(
    step: int,
    total_steps: int,
    peak_lr: float,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total_steps`."""
    min_lr = peak_lr * min_lr_ratio
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * total_steps))
        decay_start = max(warmup_steps, total_steps - decay_steps)
        if step < decay_start:
            return peak_lr
        progress = (step - decay_start) / max(1, total_steps - decay_start)
        return peak_lr + (min_lr - peak_lr) * progress
    raise ValueError(f"unknown schedule {schedule!r}")
