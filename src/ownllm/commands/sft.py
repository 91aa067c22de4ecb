"""`ownllm sft`: fine-tune the pretrained model into an assistant, on conversations.

    ownllm sft --run runs/demo                              # the cpu preset: 1,500 steps, about ten minutes
    ownllm sft --run runs/demo --persona-name Ada --data my_chats.jsonl
    ownllm sft --run runs/demo --mixture mix.toml --set sft.generated=3000 --set lr=3e-4
    ownllm sft --run runs/demo --resume                     # continue exactly from the latest checkpoint

It starts from the latest pretraining checkpoint (weights and model shape), trains with the
same Trainer as pretraining on the mixture of chat/sft_data.py, with the loss only on what
the assistant says, and writes checkpoints/sft/ beside checkpoints/pretrain/. Every
checkpoint carries the persona, which `ownllm chat` turns into its default system prompt.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from ownllm.chatformat.persona import Persona
from ownllm.chatformat.sft_data import SFTData, SFTLoader, SFTMixture, build_sft_data, eval_batches, load_mixture
from ownllm.chatformat.template import ChatTemplate
from ownllm.commands.common import add_run_argument
from ownllm.core.console import say
from ownllm.run.token_shards import tokenizer_hash
from ownllm.core.errors import StaleArtifactError, UserError
from ownllm.model import ModelConfig, Transformer
from ownllm.run import RunDir
from ownllm.tokenizer import Tokenizer
from ownllm.run import checkpoints
from ownllm.train import distributed
from ownllm.train.config import PRESETS, TrainConfig, apply_overrides, parse_duration, set_value
from ownllm.train.trainer import Hooks, Trainer

STAGE = "sft"
BASE_STAGE = "pretrain"

# What fine-tuning changes in each pretraining preset (the machine settings stay): a lower learning
# rate than pretraining and its own short warm-up and decay; one conversation per row, so a step is
# micro_batch conversations and seq_len is the model's context. The cpu preset fixes the steps, not
# the time: the demo model's calculator answers are right in 30% of samples after 1,000 steps and
# in all 20 after 1,500, wherever the steps run (about 10 minutes on two quiet CPU cores;
# docs/benchmarks.md, "Chat fine-tuning").
SFT_PRESETS: dict[str, dict] = {
    "tiny": {"steps": 30, "lr": 1e-3, "warmup_steps": 3, "micro_batch": 8, "eval_every": 10, "sample_every": 0,
             "checkpoint_every": 10, "sample_tokens": 24},
    "cpu": {"time_budget": 0.0, "steps": 1500, "lr": 1e-3, "min_lr_ratio": 0.1, "warmup_steps": 10,
            "micro_batch": 16, "eval_every": 250, "sample_every": 500, "checkpoint_every": 250, "sample_tokens": 160},
    # Not measured (no GPU here): about 5 epochs of the default mixture at a third of pretraining's lr.
    "gpu-small": {"steps": 1000, "lr": 2e-4, "warmup_steps": 50, "micro_batch": 32, "eval_every": 200,
                  "sample_every": 500, "checkpoint_every": 500, "sample_tokens": 200},
}
SAMPLE_QUESTIONS = "What is your name?|What is 12 * 7?|Tell me a story about a cat."
MAX_TOOL_CALLS = 2  # per sampled reply: a model that keeps calling the calculator is stopped


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--preset", choices=list(SFT_PRESETS), default="cpu",
                        help="starting settings: tiny (seconds), cpu (1,500 steps: about 10 minutes on 2 quiet "
                             "cores), gpu-small (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training setting (--set lr=3e-4) or the data mixture "
                             "(--set sft.generated=3000, --set sft.bundled.chatterbot=0); repeatable")
    parser.add_argument("--data", action="append", default=[], metavar="FILE",
                        help="your own conversations (JSONL messages, Alpaca, dolly, OpenAssistant or ChatterBot "
                             "YAML), trained on in full besides the mixture; repeatable")
    parser.add_argument("--mixture", type=Path, metavar="FILE",
                        help="a TOML file with the data mixture (docs/chat.md); --set sft.* changes it further")
    parser.add_argument("--persona-name", metavar="NAME", help="the assistant's name (default: Pip)")
    parser.add_argument("--time-budget", metavar="DURATION",
                        help="plan the number of steps to finish in this wall-clock time, e.g. 5m, 90s, 1h")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue from the latest fine-tuning checkpoint with its settings and data")
    group.add_argument("--restart", action="store_true", help="delete the fine-tuning checkpoints and start over")


def run(args: argparse.Namespace) -> int:
    run_dir = RunDir.open(args.run, create=False)
    train_overrides = [s for s in args.overrides if not s.startswith("sft.")]
    data_overrides = [s.removeprefix("sft.") for s in args.overrides if s.startswith("sft.")]
    stage_dir = run_dir.checkpoints / STAGE
    latest = checkpoints.latest_checkpoint(stage_dir)
    steps_override = None
    if args.resume:
        if latest is None:
            raise UserError(f"nothing to resume: no checkpoint in {stage_dir}; run without --resume")
        if args.time_budget is not None:
            raise UserError("--time-budget plans a new run; to train a resumed run longer use --set steps=N")
        if data_overrides or args.data or args.mixture or args.persona_name:
            raise UserError("a resumed run keeps its data and persona; drop --data, --mixture, --persona-name and "
                            "--set sft.*, or start over with --restart")
        state = checkpoints.read_state(latest)
        saved = TrainConfig.from_dict(state["train_config"])
        config = sft_overrides(saved, train_overrides, saved.model, saved.grad_accum)
        if config.steps != saved.steps:
            steps_override = config.steps
        mixture = SFTMixture.from_dict(state["sft_mixture"])
        base = run_dir.root / state["base_checkpoint"]
    else:
        mixture = load_mixture(args.mixture, data_overrides, args.data, args.persona_name)
        base = checkpoints.latest_checkpoint(run_dir.checkpoints / BASE_STAGE)
        if base is None:
            raise UserError(f"no pretrained model in {run_dir.checkpoints / BASE_STAGE}; "
                            f"run `ownllm pretrain --run {run_dir.root}` first")
        base_state = checkpoints.read_state(base)
        model_config = ModelConfig.from_dict(base_state["model_config"])
        config = sft_config(args.preset, model_config, train_overrides, args.time_budget)
        if latest is not None and not args.restart:
            raise UserError(f"{stage_dir} already has checkpoints; continue with --resume or start over with --restart")
        state = base_state
    if state.get("tokenizer_hash") != tokenizer_hash(run_dir.tokenizer):
        raise StaleArtifactError(
            f"{run_dir.tokenizer} is not the tokenizer the model was trained with; retrain the model "
            f"(`ownllm pretrain --run {run_dir.root} --restart`) or restore that tokenizer"
        )
    return train(run_dir, config, mixture, base, resume=args.resume, restart=args.restart,
                 steps_override=steps_override)


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
        raise UserError("fine-tuning keeps the pretrained model's shape; drop the model.* settings "
                        "from --set (model.dropout may change)")
    if updated.micro_batch < 1:
        raise UserError("fine-tuning needs micro_batch set to a number of conversations (--set micro_batch=16)")
    if not any(item.partition("=")[0].strip() == "batch_tokens" for item in overrides):
        updated.batch_tokens = updated.micro_batch * updated.seq_len * grad_accum
    return updated.validate()


def train(run_dir: RunDir, config: TrainConfig, mixture: SFTMixture, base: Path, resume: bool = False,
          restart: bool = False, steps_override: int | None = None) -> int:
    if config.threads:
        torch.set_num_threads(config.threads)
    with distributed.setup(config.device) as dist:
        # Under torchrun each process takes micro_batch conversations per micro-step: a new run's
        # step grows with the processes (a resumed run keeps the batch_tokens it saved).
        if dist.world > 1 and not resume:
            config.batch_tokens *= dist.world
        device = dist.device
        precision = dist.precision(config.dtype)
        torch.manual_seed(config.seed)
        tokenizer = Tokenizer.load(run_dir.tokenizer)
        template = ChatTemplate(tokenizer)
        data = build_sft_data(mixture, template, config.seq_len)
        if dist.is_main:
            for line in data.summary():
                say(line)
        model = Transformer(config.model).to(device)
        model.grad_checkpointing = config.grad_checkpointing
        if not resume:
            checkpoints.load_weights(base, model)
        loader = SFTLoader(data.train, config.seq_len, config.micro_batch, config.seed,
                           pad_id=template.end_of_turn_id, device=device, rank=dist.rank, world=dist.world,
                           fingerprint=data.fingerprint)
        base_name = str(base.relative_to(run_dir.root))
        hooks = Hooks(
            evaluate=make_evaluator(data, config, template, device),
            sample=make_sampler(template, config, mixture.persona),
            checkpoint_state={"tokenizer_hash": tokenizer_hash(run_dir.tokenizer),
                              "persona": mixture.persona.to_dict(), "base_checkpoint": base_name,
                              "sft_mixture": mixture.to_dict()},
        )
        if dist.is_main:
            run_dir.record_config(STAGE, {**config.to_dict(), "base_checkpoint": base_name,
                                          "mixture": mixture.to_dict()})
        trainer = Trainer(stage=STAGE, run=run_dir, config=config, model=model, loader=loader, precision=precision,
                          hooks=hooks, dist=dist)
        if resume:
            trainer.resume(steps_override)
        elif restart:
            trainer.start_fresh()
        if dist.is_main:
            processes = f" x {dist.world} processes" if dist.active else ""
            say(f"fine-tuning {base_name} as {mixture.persona.name}: {model.num_params():,} parameters, "
                f"{config.micro_batch * trainer.grad_accum * dist.world} conversations per step{processes}, "
                f"lr {config.lr:g}; {precision.describe()}"
                + (f"; time budget {config.time_budget:.0f} s" if config.time_budget and trainer.total_steps is None
                   else ""))
        status = trainer.fit()
        if status == 0 and trainer.last_eval and dist.is_main:
            print(f"held-out loss after {trainer.step} steps of fine-tuning: {trainer.last_eval['val_loss']:.4f}")
        return status


def make_evaluator(data: SFTData, config: TrainConfig, template: ChatTemplate, device: torch.device):
    """The loss on what the assistant says in the held-out conversations (each trained token counts once)."""
    if not data.held_out:
        return None
    batches = eval_batches(data.held_out, config.micro_batch, template.end_of_turn_id, device)

    def evaluate(model: torch.nn.Module) -> dict:
        total, count = 0.0, 0
        for inputs, targets in batches:
            trained = int((targets != -100).sum())
            total += model(inputs, targets).item() * trained
            count += trained
        return {"val_loss": total / count}

    return evaluate


def make_sampler(template: ChatTemplate, config: TrainConfig, persona: Persona):
    """Greedy replies to fixed questions, with the persona's system prompt, the calculator run for real:
    what `ownllm chat` would answer (the same engine and reply loop), one line each."""
    if not config.sample_every:
        return None
    from ownllm.assistant.reply import reply
    from ownllm.inference.engine import Engine, SamplingParams

    params = SamplingParams(max_tokens=config.sample_tokens, temperature=0.0)

    def sample(model: torch.nn.Module) -> list[str]:
        texts = []
        with Engine(model, template.tokenizer, max_slots=1, stop_ids=template.stop_ids) as engine:
            for question in config.prompts:
                conversation = [{"role": "system", "content": persona.system_prompt()},
                                {"role": "user", "content": question}]
                shown = ""
                for event in reply(engine, template, conversation, params, max_tool_calls=MAX_TOOL_CALLS):
                    if event.kind == "text":
                        shown += event.text
                    elif event.kind == "tool_call":
                        shown += f"[{event.text}"
                    elif event.kind == "tool_result":
                        shown += f" = {event.text}] "
                    elif event.finish_reason == "length":
                        shown += " [...]"
                texts.append(f"{question} -> {shown}")
        return texts

    return sample
