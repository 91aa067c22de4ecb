"""The training loop shared by pretraining and fine-tuning.

One optimizer step:
    for each of grad_accum micro-batches: loss = model(inputs, targets) / grad_accum; loss.backward()
    clip the global gradient norm; set the scheduled learning rate; AdamW step; clear gradients

Under torchrun (see distributed.py) each of N processes runs this loop on its share of every
batch: grad_accum = batch_tokens / (micro_batch * seq_len * N), so a step is the same number of
tokens for any N. The model is wrapped in DistributedDataParallel, which averages gradients
across processes during the last micro-batch's backward pass (the others skip that exchange),
or sharded with FSDP2 (`fsdp=true`) when weights, gradients and optimizer state do not fit on
one device. Each step ends with one small all-reduce of the loss and of any stop request, so all
processes log the same loss and stop after the same step; rank 0 alone writes.

Around it: evaluation and sampling every N steps, a JSON line per logged step in
metrics.jsonl, a progress bar, checkpoints every N steps and on Ctrl-C / SIGTERM, a stop
with a clear message when the loss becomes NaN (the last good checkpoint is kept), and an
optional wall-clock budget that sets the number of steps so that the decay ends on time.

The caller supplies the model, the batches and what evaluation and sampling mean, so a
fine-tuning stage reuses this loop with its own data and loss masks.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ownllm.core.console import progress, say
from ownllm.core.device import Precision
from ownllm.core.errors import UserError
from ownllm.model import Transformer
from ownllm.run import RunDir, checkpoints
from ownllm.train.config import TrainConfig
from ownllm.train.distributed import Distributed
from ownllm.train.memory import cpu_budget, training_bytes
from ownllm.train.optim import build_optimizer, set_lr
from ownllm.train.schedule import lr_at

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
COMMANDS = {"embed": "embed train"}  # the command that trains a stage, where it is not the stage's name


class TrainingDiverged(UserError):
    """The loss or the gradient became NaN or infinite."""


@dataclass
class Hooks:
    """What a stage plugs into the loop. Each receives the model (in eval mode while it runs)."""

    evaluate: Callable[[Transformer], dict] | None = None  # -> {"val_loss": ..., ...}
    sample: Callable[[Transformer], list[str]] | None = None  # -> a few generated texts
    checkpoint_state: dict | None = None  # extra facts saved with every checkpoint (e.g. tokenizer hash)


class Batches(Protocol):
    """What the loop reads batches from (train.loader.BatchLoader, chatformat.sft_data.SFTLoader)."""

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Trainer:
    def __init__(
        self,
        *,
        stage: str,
        run: RunDir,
        config: TrainConfig,
        model: Transformer,
        loader: Batches,
        precision: Precision,
        hooks: Hooks | None = None,
        dist: Distributed | None = None,
    ):
        self.stage, self.run, self.config = stage, run, config
        self.model, self.loader, self.precision = model, loader, precision
        self.hooks = hooks or Hooks()
        self.dist = dist or Distributed(device=precision.device)
        self.stage_dir = run.checkpoints / stage
        self.grad_accum = config.accumulation(self.dist.world)
        self.n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.flops_per_token = model.flops_per_token(config.seq_len)
        self.sharded = config.fsdp and self.dist.grouped  # FSDP2 needs a process group: torchrun, even with one process
        if config.fsdp and not self.sharded and self.dist.is_main:
            say("fsdp=true needs a start by torchrun (one process will do); training without sharding")
        self._check_memory()
        if self.sharded and config.optimizer == "muon":
            raise UserError("optimizer=muon orthogonalises whole matrices, not FSDP's shards; use fsdp=false")
        self.ddp = self._distribute(model)
        # Built after sharding: FSDP replaces each parameter by this process's shard of it.
        self.optimizer = build_optimizer(
            model, config.lr, config.weight_decay, (config.beta1, config.beta2), precision.device, config.optimizer
        )
        self.scaler = precision.grad_scaler()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.step = 0  # optimizer steps done
        self.tokens = 0  # training tokens seen
        self.elapsed_before = 0.0  # seconds spent in earlier sessions of this run
        # With a time budget the number of steps is unknown until the speed is measured (see _plan).
        self.total_steps: int | None = config.steps if config.time_budget == 0 else None
        self.last_checkpoint: Path | None = None
        self.last_eval: dict | None = None
        self.started = time.perf_counter()
        self._signal_received: int | None = None  # by this process
        self._stop_signal: int | None = None  # agreed by all processes at the end of a step
        self._bar: Any = None  # the progress bar while fit() runs
        self._step_seconds: list[float] = []
        self._eval_seconds = 0.0

    def _distribute(self, model: torch.nn.Module) -> DistributedDataParallel | None:
        """DDP around the model, or FSDP2 shards of it in place (then None), or nothing for one process."""
        if self.sharded:
            if self.precision.dtype == torch.float16:
                raise UserError(
                    "fsdp=true with fp16 is not supported (each process's gradient scaler would decide "
                    "alone whether to skip a step); use dtype=bf16 or fsdp=false"
                )
            for block in model.blocks:  # type: ignore[union-attr]  # each block gathers its weights just before it runs, then frees them
                fully_shard(block)
            fully_shard(model)
            return None
        if not self.dist.active:
            return None
        device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)

    # ---- starting and resuming -------------------------------------------------------------

    def start_fresh(self) -> None:
        """Forget earlier checkpoints of this stage (the user asked to start over)."""
        if self.dist.is_main and self.stage_dir.exists():
            shutil.rmtree(self.stage_dir)
        self.dist.barrier()

    def resume(self, steps_override: int | None = None) -> None:
        """Load the latest checkpoint: weights, optimizer, data position, random generators, plan."""
        path = checkpoints.latest_checkpoint(self.stage_dir)
        if path is None:
            raise UserError(f"nothing to resume: no checkpoint in {self.stage_dir}; start without --resume")
        state = checkpoints.read_state(path)
        checkpoints.load_weights(path, self.model)
        checkpoints.load_training_state(path, self.optimizer, self.scaler, model=self.model)
        self.loader.load_state_dict(state["loader"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.elapsed_before = state["elapsed"]
        self.total_steps = steps_override if steps_override is not None else state["total_steps"]
        self.last_checkpoint = path
        saved_world = state.get("world", 1)
        self._log({"event": "resume", "from": path.name, "world": self.dist.world, "saved_world": saved_world})
        self._say(f"resuming from {path} (step {self.step} of {self.total_steps or 'a time-budget plan'})")
        if saved_world != self.dist.world:
            # The loader continues at the same window; steps hold the same windows for any number of processes.
            self._say(
                f"the checkpoint was written by {saved_world} processes and {self.dist.world} continue it: "
                f"the same data in the same order, gradients summed in another order (float rounding)"
            )

    # ---- the loop ----------------------------------------------------------------------------

    def fit(self) -> int:
        """Train until total_steps; return the exit status (0, or 130/143 when interrupted)."""
        cfg = self.config
        self.started = time.perf_counter()
        train_model: Any = self.ddp or self.model
        if cfg.compile:
            train_model = torch.compile(train_model)
        self.model.train()
        if self.total_steps is not None and self.step >= self.total_steps:
            self._say(f"already trained {self.step} steps; to continue, resume with --set steps=N (N > {self.step})")
            return 0
        self._log(
            {
                "event": "start" if self.step == 0 else "continue",
                "total_steps": self.total_steps,
                "flops_per_token": self.flops_per_token,
                "precision": self.precision.describe(),
                "world": self.dist.world,
                "parallel": self.parallelism,
                "micro_batch": cfg.micro_batch,
                "grad_accum": self.grad_accum,
            }
        )
        if self.sharded and self.hooks.sample is not None and self.dist.is_main:
            self._say(
                "no samples during FSDP training (generation from sharded weights would need every process "
                "in lock-step); sample from a checkpoint with `ownllm sample`"
            )
        bar = progress if self.dist.is_main else _no_progress
        with (
            self._signals_caught(),
            bar(total=self.total_steps, initial=self.step, unit="step", desc=self.stage) as self._bar,
        ):
            if self.step == 0:
                self._evaluate()
            self._plan_mark = (self.step, self.elapsed)
            while self.total_steps is None or self.step < self.total_steps:
                self._train_step(train_model)
                if self.total_steps is None and len(self._step_seconds) >= self._plan_step():
                    self._plan_from_measured_speed()
                last = self.total_steps is not None and self.step >= self.total_steps
                if last or (cfg.eval_every and self.step % cfg.eval_every == 0):
                    self._evaluate()
                    if not last:
                        self._replan_from_wall_clock()
                if last or (cfg.sample_every and self.step % cfg.sample_every == 0):
                    self._sample()
                if last or self._stop_signal or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self._save()
                if self._stop_signal and not last:
                    return self._interrupted()
        self._log({"event": "done", "step": self.step, "elapsed": round(self.elapsed, 3)})
        self._say(
            f"trained {self.step} steps ({self.tokens:,} tokens) in {_clock(self.elapsed)}; "
            f"checkpoint {self.last_checkpoint}"
        )
        return 0

    @property
    def parallelism(self) -> str:
        return "fsdp" if self.sharded else "ddp" if self.ddp is not None else "none"

    def _train_step(self, train_model: torch.nn.Module) -> None:
        cfg = self.config
        # Before a time-budget plan exists the run is in warm-up, whose rates do not depend on the total.
        lr = lr_at(
            self.step,
            self.total_steps or 10**9,
            cfg.lr,
            cfg.warmup_steps,
            cfg.min_lr_ratio,
            cfg.schedule,
            cfg.decay_fraction,
        )
        set_lr(self.optimizer, lr)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.precision.device)
        try:
            for i in range(self.grad_accum):
                inputs, targets = self.loader.next_batch()
                with self._gradient_sync(i == self.grad_accum - 1):
                    with self.precision.autocast():
                        loss = train_model(inputs, targets) / self.grad_accum
                    if self.scaler is not None:
                        self.scaler.scale(loss).backward()
                    else:
                        loss.backward()
                loss_sum += loss.detach()
        except torch.OutOfMemoryError:
            raise UserError(
                f"micro_batch={cfg.micro_batch} x seq_len={cfg.seq_len} does not fit in {self.precision.device} "
                f"memory; lower micro_batch or --set micro_batch=auto (batch_tokens stays the same through "
                f"gradient accumulation) or --set grad_checkpointing=true"
            ) from None
        loss_value = self._agree(loss_sum)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        if isinstance(norm, DTensor):  # FSDP: the norm over every shard
            norm = norm.full_tensor()
        grad_norm = norm.item()
        if not math.isfinite(loss_value) or (self.scaler is None and not math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            kept = (
                f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint yet"
            )
            raise TrainingDiverged(
                f"training diverged: the {what} became {loss_value if what == 'loss' else grad_norm} at step "
                f"{self.step + 1}; {kept}; try a lower lr (resume with --resume --set lr=...)"
            )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        self._step_seconds.append(seconds)
        self.step += 1
        self.tokens += cfg.batch_tokens
        tok_per_s = cfg.batch_tokens / seconds
        mfu = self.flops_per_token * tok_per_s / (self.precision.peak_flops * self.dist.world)
        if self.step % cfg.log_every == 0 or self.step == self.total_steps:
            self._log(
                {
                    "step": self.step,
                    "tokens": self.tokens,
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": round(grad_norm, 5),
                    "tok_per_s": round(tok_per_s, 1),
                    "mfu": round(mfu, 4),
                    "elapsed": round(self.elapsed, 3),
                }
            )
        self._bar.set_postfix_str(f"loss {loss_value:.3f} | {tok_per_s:,.0f} tok/s | MFU {mfu:.1%}", refresh=False)
        self._bar.update(1)

    def _gradient_sync(self, sync: bool):
        """Exchange gradients only in the backward pass of an accumulation's last micro-batch."""
        if self.sharded:
            self.model.set_requires_gradient_sync(sync)  # type: ignore[operator]  # added by fully_shard
        elif self.ddp is not None and not sync:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def _agree(self, loss_sum: torch.Tensor) -> float:
        """The step's loss averaged over processes; and whether any process was asked to stop, then all stop.

        One all-reduce per step: a signal delivered to one process (a SIGTERM from a scheduler, say)
        stops every process after the same step, so none waits for a partner that has left.
        """
        if not self.dist.active:
            loss = loss_sum.item()
            received = {self._signal_received} if self._signal_received else set()
        else:
            total, interrupts, terminations = self.dist.sum(
                [loss_sum.item(), self._signal_received == signal.SIGINT, self._signal_received == signal.SIGTERM]
            )
            loss = total / self.dist.world
            received = {s for s, n in ((signal.SIGINT, interrupts), (signal.SIGTERM, terminations)) if n}
        if received and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM if signal.SIGTERM in received else signal.SIGINT
            self._say("stopping: saving a checkpoint after this step (press Ctrl-C again to stop at once)")
        return loss

    # ---- time budget -------------------------------------------------------------------------

    def _plan_step(self) -> int:
        """How many steps to time before planning: within warm-up where possible, at least 3."""
        return max(3, min(self.config.warmup_steps, 20))

    def _plan_from_measured_speed(self) -> None:
        """Set total_steps so that training, evaluations and the final evaluation fit the budget."""
        cfg = self.config
        measured = self._step_seconds[1:]  # the first step pays for allocation and compilation
        step_seconds = sorted(measured)[len(measured) // 2]
        per_step = step_seconds + (self._eval_seconds / cfg.eval_every if cfg.eval_every else 0.0)
        remaining = cfg.time_budget - self.elapsed - self._eval_seconds - 0.01 * cfg.time_budget
        self.total_steps = self.dist.from_main(max(self.step, self.step + int(remaining / per_step)))
        self._bar.total = self.total_steps
        self._bar.refresh()
        self._log(
            {
                "event": "plan",
                "step": self.step,
                "total_steps": self.total_steps,
                "step_seconds": round(step_seconds, 4),
                "eval_seconds": round(self._eval_seconds, 3),
                "time_budget": cfg.time_budget,
            }
        )
        self._say(
            f"time budget {_clock(cfg.time_budget)}: {step_seconds:.2f} s per step measured, "
            f"planning {self.total_steps} steps"
        )
        self._plan_mark = (self.step, self.elapsed)

    def _replan_from_wall_clock(self) -> None:
        """Move the end of a time-budget run when the speed since the last plan says it would miss the budget.

        The first plan times a few early steps; later the machine may slow down (other work, heat)
        and evaluations, samples and checkpoints add up. The wall-clock rate since the last plan
        includes all of that. Only before 90% of the run, so the final decay is never disturbed.
        """
        cfg = self.config
        if not cfg.time_budget or self.total_steps is None or self.step >= 0.9 * self.total_steps:
            return
        mark_step, mark_elapsed = self._plan_mark
        new_total = replanned_total_steps(
            self.step, self.total_steps, self.elapsed, mark_step, mark_elapsed, cfg.time_budget, self._eval_seconds
        )
        new_total = self.dist.from_main(new_total)  # rank 0 measured the evaluations: its clock decides
        if new_total is None:
            return
        self._log({"event": "replan", "step": self.step, "total_steps": new_total, "was": self.total_steps})
        self._say(
            f"time budget: the run is going at {(self.elapsed - mark_elapsed) / (self.step - mark_step):.2f} "
            f"s per step; now planning {new_total} steps instead of {self.total_steps}"
        )
        self.total_steps = new_total
        self._bar.total = new_total
        self._bar.refresh()
        self._plan_mark = (self.step, self.elapsed)

    # ---- evaluation, sampling, checkpoints ---------------------------------------------------

    def _evaluate(self) -> None:
        """On rank 0 (the others go on and wait for it at the next exchange); on every rank under FSDP,
        where each forward pass gathers weights from all of them (each gets the same result)."""
        if self.hooks.evaluate is None or not (self.dist.is_main or self.sharded):
            return
        start = time.perf_counter()
        with self._model_for_inference():
            results = self.hooks.evaluate(self.model)
        self._eval_seconds = time.perf_counter() - start
        self.last_eval = results
        self._log({"step": self.step, "tokens": self.tokens, **results, "elapsed": round(self.elapsed, 3)})
        self._say(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))

    def _sample(self) -> None:
        if self.hooks.sample is None or not self.dist.is_main or self.sharded:
            return
        with self._model_for_inference():
            texts = self.hooks.sample(self.model)
        self._log({"step": self.step, "samples": texts})
        for text in texts:
            self._say(f"  sample: {text!r}")

    @contextlib.contextmanager
    def _model_for_inference(self):
        """Eval mode (no dropout), no gradients, the run's precision; back to training mode afterwards."""
        self.model.eval()
        try:
            with torch.no_grad(), self.precision.autocast():
                yield
        finally:
            self.model.train()

    def _save(self) -> None:
        """Rank 0 writes; under FSDP every rank first sends it its shards. All wait until the checkpoint is complete,
        so that a process leaving right after (an interrupted run) cannot have torchrun stop rank 0 mid-write."""
        if self.last_checkpoint is not None and self.last_checkpoint.name == checkpoints.step_name(self.step):
            return
        if self.dist.is_main or self.sharded:
            weights, optimizer_state = checkpoints.gather_state(self.model, self.optimizer)
        if self.dist.is_main:
            state = {
                "stage": self.stage,
                "tokens": self.tokens,
                "total_steps": self.total_steps,
                "elapsed": self.elapsed,
                "world": self.dist.world,
                "loader": self.loader.state_dict(),
                "model_config": self.model.config.to_dict(),
                "train_config": self.config.to_dict(),
                **(self.hooks.checkpoint_state or {}),
            }
            checkpoints.write_checkpoint(
                self.stage_dir, self.step, weights, optimizer_state, state, self.scaler, self.config.keep_checkpoints
            )
        self.dist.barrier()
        self.last_checkpoint = self.stage_dir / checkpoints.step_name(self.step)

    # ---- interruption, memory, logging -------------------------------------------------------

    def _signals_caught(self):
        """First Ctrl-C or SIGTERM: finish the step, save, exit. A second Ctrl-C stops at once."""
        trainer = self

        class Catch:
            def __enter__(self):
                self.previous = {}
                if threading.current_thread() is threading.main_thread():
                    for sig in EXIT_STATUS:
                        self.previous[sig] = signal.signal(sig, trainer._on_signal)

            def __exit__(self, *exc):
                for sig, handler in self.previous.items():
                    signal.signal(sig, handler)

        return Catch()

    def _on_signal(self, signum, frame) -> None:
        if self._signal_received is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            return
        self._signal_received = signum

    def _interrupted(self) -> int:
        assert self._stop_signal is not None
        self._log({"event": "interrupted", "step": self.step, "signal": signal.Signals(self._stop_signal).name})
        self._say(
            f"interrupted at step {self.step}; checkpoint {self.last_checkpoint}; "
            f"continue with `ownllm {COMMANDS.get(self.stage, self.stage)} --run {self.run.root} --resume`"
        )
        return EXIT_STATUS[signal.Signals(self._stop_signal)]

    def _check_memory(self) -> None:
        """Refuse, before starting, a CPU run whose weights, optimizer and activations cannot fit in RAM."""
        if self.precision.device.type != "cpu":
            return  # on CUDA an out-of-memory error in the first step says the same, precisely
        cfg = self.config
        shards = self.dist.world if self.sharded else 1
        needed = training_bytes(
            self.model.config, self.n_params, cfg.micro_batch, cfg.seq_len, cfg.grad_checkpointing, shards
        )
        budget = cpu_budget(self.dist.local_world)  # the processes on this machine share its memory
        if needed > budget:
            each = " per process" if self.dist.local_world > 1 else ""
            raise UserError(
                f"this configuration needs about {needed / 2**30:.1f} GiB of memory{each} and "
                f"{budget / 0.9 / 2**30:.1f} GiB is free{each}; lower micro_batch or --set micro_batch=auto "
                f"(batch_tokens stays the same), or the model size"
            )

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _log(self, record: dict) -> None:
        if self.dist.is_main:
            self.run.log_metrics({"stage": self.stage, **record})

    def _say(self, message: str) -> None:
        if not self.dist.is_main:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(message, file=sys.stderr)
        else:
            say(message)


def _no_progress(**kwargs) -> tqdm:
    """The bar of a process other than rank 0: counts, never draws."""
    return tqdm(disable=True, **kwargs)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def replanned_total_steps(
    step: int,
    total: int,
    elapsed: float,
    mark_step: int,
    mark_elapsed: float,
    budget: float,
    eval_seconds: float,
    tolerance: float = 0.02,
) -> int | None:
    """A new step count that ends a time-budget run on time, or None if the current one is within `tolerance`.

    The rate is the wall-clock time per step since (mark_step, mark_elapsed), everything included;
    the final evaluation and a 1% margin are kept free, as in the first plan.
    """
    if step - mark_step < 10:
        return None  # too few steps for a rate worth trusting
    per_step = (elapsed - mark_elapsed) / (step - mark_step)
    remaining = budget - elapsed - eval_seconds - 0.01 * budget
    new_total = max(step + 1, step + int(remaining / per_step))
    return None if abs(new_total - total) <= tolerance * total else new_total
