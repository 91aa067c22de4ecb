"""One way to run a training stage: what pretraining, fine-tuning and the stages to come share.

A stage says what it trains on and how it is judged; the runner does everything else, the
same way for every stage:

    class Pretraining(TrainingStage):                      # commands/pretrain.py
        name = "pretrain"
        def build(self, config, dist, precision) -> StageParts:   # model, batches, hooks, ...
    start = check_start(run_dir, "pretrain", resume, restart, time_budget)   # --resume / --restart rules
    config = ...                                           # the preset, or the checkpoint's settings
    status = run_stage(Pretraining(...), run_dir, config, start)

check_start applies the rules about earlier checkpoints (resume needs one and keeps its plan;
a new run never overwrites one unless told to restart), and stage_lock keeps a second training
off the run while one is under way. run_stage sets the threads, joins
the torchrun processes, chooses the precision, seeds, builds the stage's parts, records the
settings in config.toml, resumes or restarts the Trainer, says what is about to happen,
trains, and prints the last evaluation. `mean_loss` is the evaluation every stage starts
from: the loss per trained token over fixed batches (targets equal to IGNORE_INDEX, such as
prompts and padding in fine-tuning, do not count).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ownllm.core.console import say
from ownllm.core.device import Precision
from ownllm.core.errors import StaleArtifactError, UserError
from ownllm.model import Transformer
from ownllm.model.loss import IGNORE_INDEX
from ownllm.run import RunDir, checkpoints
from ownllm.run.token_shards import tokenizer_hash
from ownllm.train import distributed
from ownllm.train.config import TrainConfig
from ownllm.train.distributed import Distributed
from ownllm.train.trainer import Batches, Hooks, Trainer


@dataclass
class Start:
    """What the command line decided about the stage's earlier checkpoints."""

    resume: bool = False
    restart: bool = False
    saved: dict | None = None  # the latest checkpoint's state.json, when resuming

    @property
    def saved_config(self) -> TrainConfig:
        assert self.saved is not None
        return TrainConfig.from_dict(self.saved["train_config"])


def check_start(run_dir: RunDir, stage: str, resume: bool, restart: bool, time_budget: str | None) -> Start:
    """--resume needs a checkpoint and keeps its plan; a new run refuses to overwrite one unless --restart."""
    stage_dir = run_dir.checkpoints / stage
    latest = checkpoints.latest_checkpoint(stage_dir)
    if resume:
        if latest is None:
            raise UserError(f"nothing to resume: no checkpoint in {stage_dir}; run without --resume")
        if time_budget is not None:
            raise UserError("--time-budget plans a new run; to train a resumed run longer use --set steps=N")
        return Start(resume=True, saved=checkpoints.read_state(latest))
    if latest is not None and not restart:
        raise UserError(f"{stage_dir} already has checkpoints; continue with --resume or start over with --restart")
    return Start(restart=restart)


def latest_pretrained(run_dir: RunDir) -> tuple[Path, dict]:
    """The latest pretraining checkpoint and its state: where fine-tuning and the embedder start from."""
    base = checkpoints.latest_checkpoint(run_dir.checkpoints / "pretrain")
    if base is None:
        raise UserError(
            f"no pretrained model in {run_dir.checkpoints / 'pretrain'}; "
            f"run `ownllm pretrain --run {run_dir.root}` first"
        )
    return base, checkpoints.read_state(base)


def check_tokenizer(run_dir: RunDir, state: dict) -> None:
    """Refuse a base model trained with another tokenizer than the run's."""
    if state.get("tokenizer_hash") != tokenizer_hash(run_dir.tokenizer):
        raise StaleArtifactError(
            f"{run_dir.tokenizer} is not the tokenizer the model was trained with; retrain the model "
            f"(`ownllm pretrain --run {run_dir.root} --restart`) or restore that tokenizer"
        )


@dataclass
class StageParts:
    """What a stage gives the runner: the model to train, its batches and hooks, and what to say."""

    model: Transformer
    loader: Batches  # train.loader.BatchLoader or alike
    hooks: Hooks
    record: dict  # the stage's section of config.toml
    describe: Callable[[Trainer], list[str]] = field(default=lambda trainer: [])  # lines said before training
    finished: Callable[[Trainer], str | None] = field(default=lambda trainer: None)  # printed after success


class TrainingStage(Protocol):
    name: str  # checkpoints/<name>/, the metrics' stage, config.toml's section

    def build(self, config: TrainConfig, dist: Distributed, precision: Precision) -> StageParts: ...


@contextlib.contextmanager
def stage_lock(run_dir: RunDir, stage: str, take: bool = True) -> Iterator[None]:
    """One training at a time per run: a second would write over the first's checkpoints (or change the
    base model under it).

    An flock on the run directory itself (nothing is created), held by the training process (rank 0
    under torchrun) and let go by the kernel when it ends, however it ends: a crash leaves nothing
    to clean up."""
    if not take:
        yield
        return
    fd = os.open(run_dir.root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another ownllm training is running on {run_dir.root}; wait for it to end (or stop it) "
                f"before training {stage}"
            ) from None
        yield
    finally:
        os.close(fd)


def run_stage(stage: TrainingStage, run_dir: RunDir, config: TrainConfig, start: Start) -> int:
    """Train `stage` with `config` from `start`; the exit status (0, or 130/143 when interrupted)."""
    steps_override = None
    if start.resume and config.steps != start.saved_config.steps:
        steps_override = config.steps  # --set steps=N on a resumed run trains it longer (or shorter)
    if config.threads:
        torch.set_num_threads(config.threads)
    with distributed.setup(config.device) as dist, stage_lock(run_dir, stage.name, dist.is_main):
        precision = dist.precision(config.dtype)
        torch.manual_seed(config.seed)
        parts = stage.build(config, dist, precision)
        trainer = Trainer(
            stage=stage.name,
            run=run_dir,
            config=config,
            model=parts.model,
            loader=parts.loader,
            precision=precision,
            hooks=parts.hooks,
            dist=dist,
        )
        if dist.is_main:
            run_dir.record_config(stage.name, parts.record)
        if start.resume:
            trainer.resume(steps_override)
        elif start.restart:
            trainer.start_fresh()
        if dist.is_main:
            for line in parts.describe(trainer):
                say(line)
        status = trainer.fit()
        if status == 0 and dist.is_main:
            last_line = parts.finished(trainer)
            if last_line:
                print(last_line)
        return status


def mean_loss(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The loss per trained token over `batches` (each batch weighted by the targets that count)."""
    total, count = 0.0, 0
    for inputs, targets in batches:
        trained = int((targets != IGNORE_INDEX).sum())
        total += model(inputs, targets).item() * trained
        count += trained
    return total / count
