"""Muon for the hidden matrices, AdamW for the rest: one optimizer, one learning-rate schedule.

Muon (Keller Jordan, 2024; the optimizer of the modded-nanogpt speedruns) takes a matrix's
momentum and replaces it by the nearest semi-orthogonal matrix (all singular values ~1), found
with five Newton-Schulz iterations. Every direction of the update then moves by the same
amount, where Adam's update is dominated by a few large directions: more learning per step for
the weight matrices inside the blocks. Embeddings, the output layer and the norm gains are not
such matrices (a row per token, a vector) and stay on AdamW.

One class rather than two optimizers, so that checkpoints, resuming and the trainer's schedule
see one optimizer: its param groups carry `muon: True` or `False`. The Muon step is scaled by
0.2 * sqrt(max(rows, cols)) so that its update has the root-mean-square of a typical AdamW
update (Moonshot AI's "Muon is scalable", 2025): the same `lr` and schedule suit both halves.
Matrices are orthogonalised whole, so Muon runs with DDP (every process has the whole gradient)
but not with FSDP's shards (the trainer refuses that combination).
"""

from __future__ import annotations

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # a quintic that pushes singular values into ~[0.7, 1.2] fast
NS_STEPS = 5


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """The semi-orthogonal matrix nearest to g (approximately: Newton-Schulz iterations, fp32)."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        groups: list[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        momentum: float = 0.95,
        eps: float = 1e-8,
    ):
        """groups: param groups, each with `muon` (bool) and `weight_decay`."""
        for group in groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon updates matrices only")
        super().__init__(groups, {"lr": lr, "betas": betas, "momentum": momentum, "eps": eps, "weight_decay": 0.0})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if decay:
                    p.mul_(1 - lr * decay)  # decoupled weight decay, as AdamW
                if group["muon"]:
                    self._muon(p, p.grad, state, group, lr)
                else:
                    self._adamw(p, p.grad, state, group, lr)

    @staticmethod
    def _muon(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict, lr: float) -> None:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buffer = state["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(grad)
        update = grad.add(buffer, alpha=group["momentum"])  # Nesterov
        scale = 0.2 * math.sqrt(max(p.shape))
        p.add_(orthogonalize(update), alpha=-lr * scale)

    @staticmethod
    def _adamw(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict, lr: float) -> None:
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = state["step"].item()
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denominator, value=-lr / (1 - beta1**step))
