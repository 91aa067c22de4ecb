"""Chat fine-tuning as a training stage: the pretrained model, on conversations, loss on the assistant's words.

It starts from a pretraining checkpoint (weights and model shape), trains on the mixture of
chatformat/sft_data.py with one conversation per row (targets are IGNORE_INDEX wherever the
assistant is not speaking, and on padding), and is judged by the loss on the assistant's
tokens of held-out conversations. Every checkpoint records the persona, the base checkpoint
(name and unique id: run/models.py refuses a chat model whose base is no longer the run's
latest pretraining) and the mixture, so a resumed run uses the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ownllm.chatformat.generated import GENERATED_VERSION
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.sft_data import SFTLoader, SFTMixture, build_sft_data, eval_batches
from ownllm.chatformat.template import ChatTemplate
from ownllm.core.console import say
from ownllm.core.device import Precision
from ownllm.core.errors import UserError
from ownllm.model import ModelConfig, Transformer
from ownllm.run import RunDir, checkpoints
from ownllm.run.token_shards import tokenizer_hash
from ownllm.tokenizer import Tokenizer
from ownllm.train.config import PRESETS, TrainConfig, apply_overrides, parse_duration, set_value
from ownllm.train.distributed import Distributed
from ownllm.train.runner import StageParts, mean_loss
from ownllm.train.trainer import Hooks, Trainer

# What fine-tuning changes in each pretraining preset (the machine settings stay): a lower learning
# rate than pretraining and its own short warm-up and decay; one conversation per row, so a step is
# micro_batch conversations and seq_len is the model's context. The cpu preset fixes the steps, not
# the time: the demo model's calculator answers are right in 30% of samples after 1,000 steps and
# in all 20 after 1,500; 2,500 told the asked-for story in 65% of 80 samples where 1,500 told it
# in 51% (about 9 minutes on two quiet CPU cores; docs/benchmarks.md, "Chat fine-tuning").
SFT_PRESETS: dict[str, dict] = {
    "tiny": {
        "steps": 30,
        "lr": 1e-3,
        "warmup_steps": 3,
        "micro_batch": 8,
        "eval_every": 10,
        "sample_every": 0,
        "checkpoint_every": 10,
        "sample_tokens": 24,
    },
    "cpu": {
        "time_budget": 0.0,
        "steps": 2500,
        "lr": 1e-3,
        "min_lr_ratio": 0.1,
        "warmup_steps": 10,
        "micro_batch": 16,
        "eval_every": 250,
        "sample_every": 500,
        "checkpoint_every": 250,
        "sample_tokens": 160,
    },
    # Not measured: about 5 epochs of the default mixture at a third of pretraining's lr.
    "gpu-small": {
        "steps": 1000,
        "lr": 2e-4,
        "warmup_steps": 50,
        "micro_batch": 32,
        "eval_every": 200,
        "sample_every": 500,
        "checkpoint_every": 500,
        "sample_tokens": 200,
    },
}
SAMPLE_QUESTIONS = "What is your name?|What is 12 * 7?|Tell me a story about a cat."

# (template, settings, persona, the training's autocast dtype or None) -> a sampling hook, or None
SamplerFactory = Callable[
    [ChatTemplate, TrainConfig, Persona, torch.dtype | None], Callable[[Transformer], list[str]] | None
]


def sft_config(preset: str, model_config: ModelConfig, overrides: list[str], time_budget: str | None) -> TrainConfig:
    """The pretraining preset's machine settings, then fine-tuning's changes, the base model, the overrides."""
    config = TrainConfig(preset=preset)
    for key, value in {**PRESETS[preset], **SFT_PRESETS[preset]}.items():
        if not key.startswith("model."):
            config = set_value(config, key, value)
    config = replace(config, model=model_config, seq_len=model_config.max_seq_len, sample_prompts=SAMPLE_QUESTIONS)
    config = sft_overrides(config, overrides, model_config, grad_accum=1)
    if time_budget is not None:
        config.time_budget = parse_duration(time_budget)
    return config.validate()


def sft_overrides(config: TrainConfig, overrides: list[str], model_config: ModelConfig, grad_accum: int) -> TrainConfig:
    """`--set` applied; the model's shape stays the base model's. A step is grad_accum micro-batches of
    micro_batch conversations each, whatever seq_len and micro_batch become, unless batch_tokens is set."""
    updated = apply_overrides(config, overrides)
    if replace(updated.model, dropout=model_config.dropout) != model_config:
        raise UserError(
            "fine-tuning keeps the pretrained model's shape; drop the model.* settings "
            "from --set (model.dropout may change)"
        )
    if updated.micro_batch < 1:
        raise UserError("fine-tuning needs micro_batch set to a number of conversations (--set micro_batch=16)")
    if not any(item.partition("=")[0].strip() == "batch_tokens" for item in overrides):
        updated.batch_tokens = updated.micro_batch * updated.seq_len * grad_accum
    return updated.validate()


class Finetuning:
    name = "sft"

    def __init__(
        self,
        run_dir: RunDir,
        mixture: SFTMixture,
        base: Path,
        base_id: str | None,
        resume: bool,
        sampler: SamplerFactory | None = None,
    ):
        self.run_dir, self.mixture, self.base, self.base_id = run_dir, mixture, base, base_id
        self.resume, self.sampler = resume, sampler

    def build(self, config: TrainConfig, dist: Distributed, precision: Precision) -> StageParts:
        # Under torchrun each process takes micro_batch conversations per micro-step: a new run's
        # step grows with the processes (a resumed run keeps the batch_tokens it saved).
        if dist.world > 1 and not self.resume:
            config.batch_tokens *= dist.world
        device, mixture = dist.device, self.mixture
        template = ChatTemplate(Tokenizer.load(self.run_dir.tokenizer))
        data = build_sft_data(mixture, template, config.seq_len)
        if dist.is_main:
            for line in data.summary():
                say(line)
        model = Transformer(config.model).to(device)
        model.grad_checkpointing = config.grad_checkpointing
        if not self.resume:
            checkpoints.load_weights(self.base, model)
        loader = SFTLoader(
            data.train,
            config.seq_len,
            config.micro_batch,
            config.seed,
            pad_id=template.end_of_turn_id,
            device=device,
            rank=dist.rank,
            world=dist.world,
            fingerprint=data.fingerprint,
        )
        evaluate = None
        if data.held_out:
            batches = eval_batches(data.held_out, config.micro_batch, template.end_of_turn_id, device)

            def evaluate(model: Transformer) -> dict:
                """The loss on what the assistant says in the held-out conversations (each trained token once)."""
                return {"val_loss": mean_loss(model, batches)}

        base_name = str(self.base.relative_to(self.run_dir.root))
        hooks = Hooks(
            evaluate=evaluate,
            sample=self.sampler(template, config, mixture.persona, precision.autocast_dtype) if self.sampler else None,
            checkpoint_state={
                "tokenizer_hash": tokenizer_hash(self.run_dir.tokenizer),
                "persona": mixture.persona.to_dict(),
                "base_checkpoint": base_name,
                "base_id": self.base_id,
                "sft_mixture": mixture.to_dict(),
                "generated_version": GENERATED_VERSION,
            },
        )

        def describe(trainer: Trainer) -> list[str]:
            processes = f" x {dist.world} processes" if dist.active else ""
            budget = config.time_budget and trainer.total_steps is None
            return [
                f"fine-tuning {base_name} as {mixture.persona.name}: {model.num_params():,} parameters, "
                f"{config.micro_batch * trainer.grad_accum * dist.world} conversations per step{processes}, "
                f"lr {config.lr:g}; {precision.describe()}"
                + (f"; time budget {config.time_budget:.0f} s" if budget else "")
            ]

        def finished(trainer: Trainer) -> str | None:
            e = trainer.last_eval
            return (
                None if e is None else f"held-out loss after {trainer.step} steps of fine-tuning: {e['val_loss']:.4f}"
            )

        record = {**config.to_dict(), "base_checkpoint": base_name, "mixture": mixture.to_dict()}
        return StageParts(model, loader, hooks, record=record, describe=describe, finished=finished)
