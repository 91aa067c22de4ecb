"""`ownllm pretrain`: train the transformer on the run's token shards.

ownllm pretrain --run runs/demo                        # the cpu preset: about ten minutes
ownllm pretrain --run runs/demo --preset tiny --set lr=1e-3 --set model.n_layers=3
ownllm pretrain --run runs/demo --time-budget 20m      # plan the schedule for 20 minutes
ownllm pretrain --run runs/demo --resume               # continue exactly from the latest checkpoint
torchrun --nproc_per_node 8 -m ownllm -- pretrain --run runs/big --preset gpu-small   # 8 processes (DDP)
"""

from __future__ import annotations

import argparse

import torch

from ownllm.commands.common import add_training_arguments
from ownllm.core.errors import UserError
from ownllm.eval.evaluate import evaluate
from ownllm.eval.tasks import ALL_TASKS
from ownllm.inference.engine import Engine, SamplingParams
from ownllm.model import Transformer
from ownllm.run import RunDir
from ownllm.run.token_shards import open_tokens
from ownllm.tokenizer import Tokenizer
from ownllm.train.config import PRESETS, TrainConfig, apply_overrides, load_config
from ownllm.train.pretraining import Pretraining
from ownllm.train.runner import check_start, run_stage


def configure(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(
        parser,
        list(PRESETS),
        default="cpu",
        preset_help="starting settings: tiny (seconds), cpu (about 10 minutes), gpu-small",
        set_help="override a setting, e.g. --set lr=3e-4 --set model.n_layers=6 (repeatable)",
        resume_help="continue from the latest checkpoint with its settings (--set may change some)",
        restart_help="delete this stage's checkpoints and start over",
    )


def run(args: argparse.Namespace) -> int:
    run_dir = RunDir.open(args.run, create=False)
    shards = open_tokens(run_dir.tokens, run_dir.tokenizer, run_dir.corpus)
    if args.resume:
        start = check_start(run_dir, Pretraining.name, args.resume, args.restart, args.time_budget)
        saved = start.saved_config
        config = apply_overrides(saved, args.overrides)
        if config.model != saved.model:
            raise UserError("cannot change the model's shape when resuming; drop the model.* settings from --set")
    else:
        config = load_config(args.preset, args.overrides, args.time_budget)  # a mistyped --set is the first error
        start = check_start(run_dir, Pretraining.name, args.resume, args.restart, args.time_budget)
    config.model.vocab_size = shards.vocab_size
    config.validate()
    stage = Pretraining(
        shards,
        sampler=lambda config, autocast: make_sampler(run_dir, config, autocast),
        benchmarks=make_benchmarks(run_dir, config),
    )
    return run_stage(stage, run_dir, config, start)


def make_benchmarks(run_dir: RunDir, config: TrainConfig):
    """The eval_tasks scores (`<task>_<metric>`, eval_task_limit items each) added to every evaluation, or None."""
    names = [t.strip() for t in config.eval_tasks.split(",") if t.strip()]
    if not names:
        return None
    unknown = [t for t in names if t not in ALL_TASKS or t == "val"]
    if unknown:
        choices = ", ".join(t for t in ALL_TASKS if t != "val")
        raise UserError(f"eval_tasks: unknown task {', '.join(unknown)}; tasks: {choices}")
    if not (run_dir.tokenizer / "tokenizer.json").is_file():
        raise UserError(f"eval_tasks needs the run's tokenizer, and {run_dir.tokenizer} has none")
    tokenizer = Tokenizer.load(run_dir.tokenizer)

    def benchmarks(model: Transformer) -> dict:
        results = evaluate(model, tokenizer, names, limit=config.eval_task_limit, say=None, bars=False)
        return {
            task if task == metric else f"{task}_{metric}": value  # core's one metric is just "core"
            for task, r in results.items()
            for metric, value in r["metrics"].items()
        }

    return benchmarks


def make_sampler(run_dir: RunDir, config: TrainConfig, autocast: torch.dtype | None = None):
    """Continuations of the configured prompts, or None when no matching tokenizer is available.

    Each call decodes all prompts together in a fresh engine on the training model (the cache
    lives only while sampling); prompt i always uses seed config.seed + i, and the engine's
    own generators leave the trainer's random state alone.
    """
    if not config.sample_every or not (run_dir.tokenizer / "tokenizer.json").is_file():
        return None  # open_tokens has refused shards made with another tokenizer than this one
    tokenizer = Tokenizer.load(run_dir.tokenizer)
    prompts = [tokenizer.encode(p)[-(config.model.max_seq_len - 1) :] or [tokenizer.eot_id] for p in config.prompts]
    params = [
        SamplingParams(max_tokens=config.sample_tokens, temperature=0.8, top_k=50, seed=config.seed + i)
        for i in range(len(prompts))
    ]

    def sample(model: Transformer) -> list[str]:
        with Engine(model, tokenizer, max_slots=max(1, len(prompts)), autocast=autocast) as engine:
            completions = engine.generate_batch(prompts, params)
        return [prompt + c.text for prompt, c in zip(config.prompts, completions)]

    return sample
