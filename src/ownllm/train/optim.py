"""AdamW with weight decay on matrices only (or Muon for the blocks' matrices: train/muon.py).

Decay pulls weights toward zero; that regularises matrices (embeddings, projections) but
would only fight the RMSNorm gains, whose natural value is 1, so vectors get no decay.
The fused implementation updates all parameters in one kernel: on this 2-core CPU it is
several times faster than the per-tensor loop, on CUDA it saves many kernel launches.
"""

from __future__ import annotations

import torch
from torch import nn

from ownllm.train.muon import MuonWithAdamW


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device: torch.device,
    kind: str = "adamw",
) -> torch.optim.Optimizer:
    if kind == "muon":
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        hidden = [p for n, p in named if p.dim() == 2 and ".blocks." in f".{n}"]
        taken = {id(p) for p in hidden}
        return MuonWithAdamW(
            [
                {"params": hidden, "weight_decay": weight_decay, "muon": True},
                {
                    "params": [p for _, p in named if p.dim() >= 2 and id(p) not in taken],
                    "weight_decay": weight_decay,
                    "muon": False,
                },
                {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0, "muon": False},
            ],
            lr=lr,
            betas=betas,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
