"""`ownllm pretrain`: train the transformer on the run's token shards.

    ownllm pretrain --run runs/demo                        # the cpu preset: about ten minutes
    ownllm pretrain --run runs/demo --preset tiny --set lr=1e-3 --set model.n_layers=3
    ownllm pretrain --run runs/demo --time-budget 20m      # plan the schedule for 20 minutes
    ownllm pretrain --run runs/demo --resume               # continue exactly from the latest checkpoint
    torchrun --nproc_per_node 8 -m ownllm pretrain --run runs/big --preset gpu-small   # 8 processes (DDP)
"""

from __future__ import annotations

import argparse

import torch

from ownllm.commands.common import add_run_argument
from ownllm.core.console import say
from ownllm.run.token_shards import TokenShards, open_tokens
from ownllm.core.errors import UserError
from ownllm.eval.bpb import bits_per_byte, perplexity
from ownllm.model import Transformer
from ownllm.run import RunDir
from ownllm.run import checkpoints
from ownllm.train import distributed
from ownllm.train.config import PRESETS, TrainConfig, apply_overrides, load_config
from ownllm.train.loader import BatchLoader, eval_batches
from ownllm.train.memory import auto_micro_batch
from ownllm.train.trainer import Hooks, Trainer

STAGE = "pretrain"


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu",
                        help="starting settings: tiny (seconds), cpu (about 10 minutes), gpu-small (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set lr=3e-4 --set model.n_layers=6 (repeatable)")
    parser.add_argument("--time-budget", metavar="DURATION",
                        help="plan the number of steps to finish in this wall-clock time, e.g. 10m, 90s, 1h")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint with its settings (--set may change some)")
    group.add_argument("--restart", action="store_true", help="delete this stage's checkpoints and start over")


def run(args: argparse.Namespace) -> int:
    run_dir = RunDir.open(args.run, create=False)
    shards = open_tokens(run_dir.tokens, run_dir.tokenizer, run_dir.corpus)
    stage_dir = run_dir.checkpoints / STAGE
    latest = checkpoints.latest_checkpoint(stage_dir)
    steps_override = None
    if args.resume:
        if latest is None:
            raise UserError(f"nothing to resume: no checkpoint in {stage_dir}; run without --resume")
        if args.time_budget is not None:
            raise UserError("--time-budget plans a new run; to train a resumed run longer use --set steps=N")
        saved = TrainConfig.from_dict(checkpoints.read_state(latest)["train_config"])
        config = apply_overrides(saved, args.overrides)
        if config.model != saved.model:
            raise UserError("cannot change the model's shape when resuming; drop the model.* settings from --set")
        if config.steps != saved.steps:
            steps_override = config.steps
    else:
        config = load_config(args.preset, args.overrides, args.time_budget)  # a mistyped --set is the first error
        if latest is not None and not args.restart:
            raise UserError(
                f"{stage_dir} already has checkpoints; continue with --resume or start over with --restart"
            )
    config.model.vocab_size = shards.vocab_size
    config.validate()
    return train(run_dir, config, shards, resume=args.resume, restart=args.restart, steps_override=steps_override)


def train(run_dir: RunDir, config: TrainConfig, shards: TokenShards, resume: bool = False, restart: bool = False,
          steps_override: int | None = None) -> int:
    if config.threads:
        torch.set_num_threads(config.threads)
    with distributed.setup(config.device) as dist:
        precision = dist.precision(config.dtype)
        device = dist.device
        torch.manual_seed(config.seed)
        model = Transformer(config.model).to(device)
        model.grad_checkpointing = config.grad_checkpointing
        if config.micro_batch == 0:
            config.micro_batch = auto_micro_batch(config, model, precision, dist)
        train_split, val_split = shards.split("train"), shards.split("val")
        loader = BatchLoader(train_split, config.seq_len, config.micro_batch, config.seed, config.data_order, device,
                             rank=dist.rank, world=dist.world)
        hooks = Hooks(
            evaluate=make_evaluator(val_split, config, device),
            sample=make_sampler(run_dir, shards, config, device),
            checkpoint_state={"tokenizer_hash": shards.meta["tokenizer_hash"]},
        )
        trainer = Trainer(stage=STAGE, run=run_dir, config=config, model=model, loader=loader, precision=precision,
                          hooks=hooks, dist=dist)
        if dist.is_main:
            run_dir.record_config(STAGE, config.to_dict())
        if resume:
            trainer.resume(steps_override)
        elif restart:
            trainer.start_fresh()
        if dist.is_main:
            processes = f" x {dist.world} processes ({trainer.parallelism})" if dist.active else ""
            say(f"model: {model.num_params():,} parameters, {config.model.n_layers} layers x {config.model.d_model} "
                f"wide, vocabulary {config.model.vocab_size}; {precision.describe()}")
            say(f"batch: {config.batch_tokens:,} tokens per step ({config.micro_batch} x {config.seq_len} x "
                f"{trainer.grad_accum} accumulated{processes}); training split {train_split.tokens:,} tokens"
                + (f"; time budget {config.time_budget:.0f} s" if config.time_budget and trainer.total_steps is None
                   else ""))
        status = trainer.fit()
        if status == 0 and trainer.last_eval and dist.is_main:
            e = trainer.last_eval
            print(f"validation after {trainer.step} steps: loss {e['val_loss']:.4f}, perplexity {e['val_ppl']:.2f}, "
                  f"{e['val_bpb']:.4f} bits per byte")
        return status


def make_evaluator(split, config: TrainConfig, device: torch.device):
    """Mean validation loss on fixed windows, with perplexity and bits per byte.

    Bits per byte uses the whole split's bytes per token; the windows are a sample of it.
    """
    batches = eval_batches(split, config.seq_len, config.micro_batch, config.eval_tokens, device)

    def evaluate(model: torch.nn.Module) -> dict:
        total, count = 0.0, 0
        for inputs, targets in batches:
            total += model(inputs, targets).item() * targets.numel()
            count += targets.numel()
        loss = total / count
        return {"val_loss": loss, "val_ppl": perplexity(loss), "val_bpb": bits_per_byte(loss, split.tokens, split.bytes)}

    return evaluate


def make_sampler(run_dir: RunDir, shards: TokenShards, config: TrainConfig, device: torch.device):
    """Continuations of the configured prompts, or None when no matching tokenizer is available.

    Each call decodes all prompts together in a fresh engine on the training model (the cache
    lives only while sampling); prompt i always uses seed config.seed + i, and the engine's
    own generators leave the trainer's random state alone.
    """
    if not config.sample_every or not (run_dir.tokenizer / "tokenizer.json").is_file():
        return None  # open_tokens has refused shards made with another tokenizer than this one
    from ownllm.inference.engine import Engine, SamplingParams
    from ownllm.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(run_dir.tokenizer)
    prompts = [tokenizer.encode(p)[-(config.model.max_seq_len - 1):] or [tokenizer.eot_id] for p in config.prompts]
    params = [SamplingParams(max_tokens=config.sample_tokens, temperature=0.8, top_k=50, seed=config.seed + i)
              for i in range(len(prompts))]

    def sample(model: torch.nn.Module) -> list[str]:
        with Engine(model, tokenizer, max_slots=max(1, len(prompts))) as engine:
            completions = engine.generate_batch(prompts, params)
        return [prompt + c.text for prompt, c in zip(config.prompts, completions)]

    return sample
