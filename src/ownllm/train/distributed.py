"""Training with several processes under torchrun: which one this is, its device, and the few exchanges they need.

torchrun starts one process per device and tells each, in its environment, its RANK among all
processes of the job (0 .. WORLD_SIZE-1, over every machine), its LOCAL_RANK on this machine
and LOCAL_WORLD_SIZE. Without those variables there is one process and nothing here talks to
anything. A stage uses it in a few lines:

    with distributed.setup(config.device) as dist:    # joins the process group (NCCL on GPUs, gloo on CPUs)
        precision = dist.precision(config.dtype)      # one precision for every process
        loader = BatchLoader(..., device=dist.device, rank=dist.rank, world=dist.world)
        status = Trainer(..., precision=precision, dist=dist).fit()

Rank 0 is the main process: it alone writes checkpoints, metrics and samples and draws progress.
Every decision that must be the same everywhere (the precision, the time-budget plan, whether to
stop after this step) is made once and shared, so that no process waits for a collective
another one will never join.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from ownllm.core.device import Precision, choose_precision, resolve_device
from ownllm.core.errors import UserError


@dataclass
class Distributed:
    """This process's place in the job. The default is a job of one process."""

    device: torch.device
    rank: int = 0  # among all processes of the job
    world: int = 1  # processes in the job
    local_rank: int = 0  # among the processes on this machine
    local_world: int = 1  # processes on this machine (they share its memory)
    grouped: bool = False  # joined a process group (started by torchrun), even a group of one (FSDP needs one)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are other processes to exchange with."""
        return self.world > 1

    def precision(self, requested: str) -> Precision:
        """The run's precision; an automatic choice is made by rank 0's measurement, for every rank."""
        return choose_precision(self.device, requested, agree=self.from_main)

    def from_main(self, value):
        """Rank 0's value of a small picklable object, on every rank."""
        if not self.active:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0, device=self._collective_device)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all ranks of a few numbers (float64)."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor.tolist()

    def split_map(self, fn: Callable[[list], list], items: list) -> list:
        """fn over this rank's share of `items` (every world-th, from its rank); every rank gets all the
        results, in the order of `items`. fn returns one picklable result per item it is given."""
        mine = fn(items[self.rank :: self.world])
        if not self.active:
            return mine
        parts: list = [None] * self.world
        torch_dist.all_gather_object(parts, mine)
        results: list = [None] * len(items)
        for rank, part in enumerate(parts):
            results[rank :: self.world] = part
        return results

    def min(self, value: int) -> int:
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self._collective_device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MIN)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def close(self) -> None:
        if self.grouped and torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def __enter__(self) -> Distributed:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # After an error another rank may be inside a collective; tearing down could wait for it
        # forever. The process is about to end (and torchrun stops the others), so leave it.
        if exc_type is None:
            self.close()


def setup(device_name: str = "auto") -> Distributed:
    """Read torchrun's environment, pick this process's device, join the process group (under torchrun only)."""
    world = _env_int("WORLD_SIZE", 0)
    if world < 1:  # not started by torchrun
        return Distributed(device=resolve_device(device_name))
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                f"start at most that many processes per node (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl", device_id=device)
    else:
        torch_dist.init_process_group("gloo")
    return Distributed(
        device=device, rank=rank, world=world, local_rank=local_rank, local_world=local_world, grouped=True
    )


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not a whole number; launch with torchrun") from None
