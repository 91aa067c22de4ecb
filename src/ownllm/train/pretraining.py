"""Pretraining as a training stage: next-token prediction on the run's token shards.

The stage builds a fresh Transformer of the configured shape (the vocabulary is the
tokenizer's), reads training windows with train.loader.BatchLoader, and is judged on fixed
windows of the validation split: loss, perplexity, and bits per byte (comparable across
vocabularies). Sampling during training is the caller's (commands/pretrain.py generates
with the engine; this package sits below inference).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ownllm.core.bpb import bits_per_byte, perplexity
from ownllm.core.device import Precision
from ownllm.model import Transformer
from ownllm.run.token_shards import TokenShards
from ownllm.train.config import OPTIMIZERS, TrainConfig
from ownllm.train.distributed import Distributed
from ownllm.train.loader import BatchLoader, eval_batches
from ownllm.train.memory import auto_micro_batch
from ownllm.train.runner import StageParts, mean_loss
from ownllm.train.trainer import Hooks, Trainer

# (settings, the training's autocast dtype or None) -> a sampling hook, or None for no samples
SamplerFactory = Callable[[TrainConfig, torch.dtype | None], Callable[[Transformer], list[str]] | None]


class Pretraining:
    name = "pretrain"

    def __init__(
        self,
        shards: TokenShards,
        sampler: SamplerFactory | None = None,
        benchmarks: Callable[[Transformer], dict] | None = None,
    ):
        """sampler: makes the sampling hook; benchmarks: extra scores for every evaluation (eval_tasks)."""
        self.shards, self.sampler, self.benchmarks = shards, sampler, benchmarks

    def build(self, config: TrainConfig, dist: Distributed, precision: Precision) -> StageParts:
        model = Transformer(config.model).to(dist.device)
        model.grad_checkpointing = config.grad_checkpointing
        if config.micro_batch == 0:
            config.micro_batch = auto_micro_batch(config, model, precision, dist)
        train_split, val_split = self.shards.split("train"), self.shards.split("val")
        loader = BatchLoader(
            train_split,
            config.seq_len,
            config.micro_batch,
            config.seed,
            config.data_order,
            dist.device,
            rank=dist.rank,
            world=dist.world,
        )
        batches = eval_batches(val_split, config.seq_len, config.micro_batch, config.eval_tokens, dist.device)

        def evaluate(model: Transformer) -> dict:
            """Bits per byte use the whole split's bytes per token; the windows are a sample of it."""
            loss = mean_loss(model, batches)
            scores = {
                "val_loss": loss,
                "val_ppl": perplexity(loss),
                "val_bpb": bits_per_byte(loss, val_split.tokens, val_split.bytes),
            }
            return scores | (self.benchmarks(model) if self.benchmarks else {})

        def describe(trainer: Trainer) -> list[str]:
            processes = f" x {dist.world} processes ({trainer.parallelism})" if dist.active else ""
            budget = config.time_budget and trainer.total_steps is None
            return [
                f"model: {model.num_params():,} parameters, {config.model.n_layers} layers x "
                f"{config.model.d_model} wide, vocabulary {config.model.vocab_size}; {precision.describe()}",
                f"batch: {config.batch_tokens:,} tokens per step ({config.micro_batch} x {config.seq_len} x "
                f"{trainer.grad_accum} accumulated{processes}); training split {train_split.tokens:,} tokens"
                + (f"; time budget {config.time_budget:.0f} s" if budget else ""),
                f"optimizer: {OPTIMIZERS[config.optimizer]}, lr {config.lr:g}, {config.schedule} schedule",
            ]

        def finished(trainer: Trainer) -> str | None:
            e = trainer.last_eval
            return (
                None
                if e is None
                else (
                    f"validation after {trainer.step} steps: loss {e['val_loss']:.4f}, perplexity "
                    f"{e['val_ppl']:.2f}, {e['val_bpb']:.4f} bits per byte"
                )
            )

        hooks = Hooks(
            evaluate=evaluate,
            sample=self.sampler(config, precision.autocast_dtype) if self.sampler else None,
            checkpoint_state={"tokenizer_hash": self.shards.meta["tokenizer_hash"]},
        )
        return StageParts(model, loader, hooks, record=config.to_dict(), describe=describe, finished=finished)
