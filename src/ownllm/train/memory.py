"""How much memory a training configuration needs, and the largest micro-batch that fits.

The estimate (fp32, per process), calibrated with bench/memory.py (peak resident memory of
real steps of a 6 x 384 model at 2048-8192 tokens per micro-batch: from about the measured peak
to 25% above it; the memory check and auto-sizing leave another 10% of the free memory aside):
  weights, gradients and AdamW's two moments: 4 copies of every parameter (divided among the
  processes under FSDP, which shards all four);
  activations saved for the backward pass, per token and layer: about 12 model widths and 6
  MLP hidden widths (norms, q/k/v, rotated copies, attention output, the SwiGLU branches);
  the fused loss's chunk of logits and the gradient of the final states: 4 widths per token;
  a fixed 256 MiB of workspace (temporaries of the backward pass, the allocator's slack).
With gradient checkpointing only each block's input is kept per layer, plus one block's worth
(and its backward temporaries) while it is recomputed.

It is used twice: to refuse, before training, a CPU run that cannot fit in RAM, and to choose
`micro_batch=auto`. On a GPU auto-sizing measures instead: it tries a forward and backward pass
with the largest candidate, halving on out-of-memory, with the optimizer's memory held aside.
"""

from __future__ import annotations

import psutil
import torch

from ownllm.core.console import say
from ownllm.core.errors import UserError
from ownllm.model.config import ModelConfig

WORKSPACE = 256 * 2**20


def training_bytes(
    m: ModelConfig, n_params: int, micro_batch: int, seq_len: int, grad_checkpointing: bool, shards: int = 1
) -> int:
    """Estimated bytes one process needs to train with this micro-batch."""
    tokens = micro_batch * seq_len
    if grad_checkpointing:
        per_token = m.n_layers * m.d_model + 16 * m.d_model + 12 * m.hidden_dim
    else:
        per_token = m.n_layers * (12 * m.d_model + 6 * m.hidden_dim) + 4 * m.d_model
    return 4 * (4 * n_params // shards + tokens * per_token) + WORKSPACE


def cpu_budget(local_processes: int) -> int:
    """Bytes one process may use: 90% of the free RAM, shared by the processes on this machine."""
    return int(0.9 * psutil.virtual_memory().available) // local_processes


def candidates(rows_per_step: int) -> list[int]:
    """Micro-batch sizes that keep a step's rows whole, largest first: rows, rows/2, rows/4, ... while they divide."""
    sizes = [rows_per_step]
    while sizes[-1] % 2 == 0:
        sizes.append(sizes[-1] // 2)
    if sizes[-1] != 1:
        sizes.append(1)
    return sizes


def largest_fitting(
    m: ModelConfig,
    n_params: int,
    rows_per_step: int,
    seq_len: int,
    grad_checkpointing: bool,
    budget: int,
    shards: int = 1,
) -> int:
    """The largest candidate micro-batch whose estimate fits in `budget` bytes; a one-line error when none does."""
    for size in candidates(rows_per_step):
        if training_bytes(m, n_params, size, seq_len, grad_checkpointing, shards) <= budget:
            return size
    needed = training_bytes(m, n_params, 1, seq_len, grad_checkpointing, shards)
    raise UserError(
        f"even one sequence per micro-batch needs about {needed / 2**30:.1f} GiB and {budget / 2**30:.1f} GiB is "
        f"available; use a smaller model or seq_len, or --set grad_checkpointing=true"
    )


def auto_micro_batch(config, model: torch.nn.Module, precision, dist) -> int:
    """The largest micro-batch that fits on every rank, keeping batch_tokens through accumulation.

    `config` is the TrainConfig (micro_batch 0 = auto), `dist` the Distributed job: all ranks take
    the smallest of their answers, since they must accumulate the same number of micro-batches.
    """
    rows, spare = divmod(config.batch_tokens, config.seq_len * dist.world)
    if spare:
        raise UserError(
            f"batch_tokens={config.batch_tokens} is not a multiple of seq_len*processes={config.seq_len}*{dist.world}; "
            f"set batch_tokens to a multiple of it"
        )
    n_params = sum(p.numel() for p in model.parameters())
    shards = dist.world if config.fsdp and dist.active else 1
    if precision.device.type == "cuda" and shards == 1:
        size = _largest_that_runs(model, config, precision, rows, n_params)
    elif precision.device.type == "cuda":
        # Sharded: a trial forward needs every rank in step, and one rank running out of memory
        # mid-pass would leave the others waiting; estimate against the free memory instead.
        free, _total = torch.cuda.mem_get_info(precision.device)
        size = largest_fitting(
            config.model, n_params, rows, config.seq_len, config.grad_checkpointing, int(0.9 * free), shards
        )
    else:
        size = largest_fitting(
            config.model,
            n_params,
            rows,
            config.seq_len,
            config.grad_checkpointing,
            cpu_budget(dist.local_world),
            shards,
        )
    return dist.min(size)


def _largest_that_runs(model: torch.nn.Module, config, precision, rows: int, n_params: int) -> int:
    """On a GPU: try a forward and backward pass per candidate, largest first, smaller on out-of-memory."""
    # AdamW's two moments are not allocated until the first step; hold their memory aside meanwhile.
    held = torch.empty(2 * n_params, dtype=torch.float32, device=precision.device)
    try:
        with torch.random.fork_rng(devices=[precision.device]):  # trials must not move the run's random state
            for size in candidates(rows):
                if _runs(model, config, precision, size):
                    return size
                say(f"micro_batch={size} does not fit in GPU memory; trying a smaller one")
    finally:
        del held
        torch.cuda.empty_cache()
    raise UserError(
        f"even one sequence of seq_len={config.seq_len} does not fit in GPU memory; use a smaller model or seq_len, "
        f"or --set grad_checkpointing=true"
    )


def _runs(model: torch.nn.Module, config, precision, size: int) -> bool:
    tokens = torch.randint(0, config.model.vocab_size, (size, config.seq_len + 1), device=precision.device)
    try:
        with precision.autocast():
            loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
