"""`ownllm sft`: fine-tune the pretrained model into an assistant, on conversations.

    ownllm sft --run runs/demo                              # the cpu preset: 2,500 steps, about ten minutes
    ownllm sft --run runs/demo --persona-name Ada --data my_chats.jsonl
    ownllm sft --run runs/demo --mixture mix.toml --set sft.generated=3000 --set lr=3e-4
    ownllm sft --run runs/demo --resume                     # continue exactly from the latest checkpoint

It starts from the latest pretraining checkpoint (weights and model shape), trains with the
same runner and Trainer as pretraining (train/finetuning.py) on the mixture of
chatformat/sft_data.py, with the loss only on what the assistant says, and writes checkpoints/sft/
beside checkpoints/pretrain/. Every
checkpoint carries the persona, which `ownllm chat` turns into its default system prompt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ownllm.assistant.reply import reply
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.sft_data import SFTMixture, load_mixture
from ownllm.chatformat.template import ChatTemplate
from ownllm.commands.common import add_training_arguments
from ownllm.core.errors import UserError
from ownllm.inference.engine import Engine, SamplingParams
from ownllm.model import ModelConfig, Transformer
from ownllm.run import RunDir
from ownllm.train.config import TrainConfig
from ownllm.train.finetuning import SFT_PRESETS, Finetuning, sft_config, sft_overrides
from ownllm.train.runner import check_start, check_tokenizer, latest_pretrained, run_stage

MAX_TOOL_CALLS = 2  # per sampled reply: a model that keeps calling the calculator is stopped


def configure(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(
        parser,
        list(SFT_PRESETS),
        default="cpu",
        preset_help="starting settings: tiny (seconds), cpu (2,500 steps: about 10 minutes on 2 "
        "quiet cores), gpu-small",
        set_help="override a training setting (--set lr=3e-4) or the data mixture "
        "(--set sft.generated=3000, --set sft.bundled.chatterbot=0); repeatable",
        resume_help="continue from the latest fine-tuning checkpoint with its settings and data",
        restart_help="delete the fine-tuning checkpoints and start over",
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="FILE",
        help="your own conversations (JSONL messages, Alpaca, dolly, OpenAssistant or ChatterBot "
        "YAML), trained on in full besides the mixture; repeatable",
    )
    parser.add_argument(
        "--mixture",
        type=Path,
        metavar="FILE",
        help="a TOML file with the data mixture (docs/chat.md); --set sft.* changes it further",
    )
    parser.add_argument("--persona-name", metavar="NAME", help="the assistant's name (default: Pip)")


def run(args: argparse.Namespace) -> int:
    run_dir = RunDir.open(args.run, create=False)
    train_overrides = [s for s in args.overrides if not s.startswith("sft.")]
    data_overrides = [s.removeprefix("sft.") for s in args.overrides if s.startswith("sft.")]
    if args.resume:
        start = check_start(run_dir, Finetuning.name, args.resume, args.restart, args.time_budget)
        if data_overrides or args.data or args.mixture or args.persona_name:
            raise UserError(
                "a resumed run keeps its data and persona; drop --data, --mixture, --persona-name and "
                "--set sft.*, or start over with --restart"
            )
        state = start.saved
        assert state is not None  # check_start read it
        saved = start.saved_config
        config = sft_overrides(saved, train_overrides, saved.model, saved.grad_accum)
        mixture = SFTMixture.from_dict(state["sft_mixture"])
        base, base_id = run_dir.root / state["base_checkpoint"], state.get("base_id")
    else:
        mixture = load_mixture(args.mixture, data_overrides, args.data, args.persona_name)
        base, state = latest_pretrained(run_dir)
        base_id = state.get("id")
        config = sft_config(
            args.preset, ModelConfig.from_dict(state["model_config"]), train_overrides, args.time_budget
        )
        start = check_start(run_dir, Finetuning.name, args.resume, args.restart, args.time_budget)
    check_tokenizer(run_dir, state)
    stage = Finetuning(run_dir, mixture, base, base_id, resume=args.resume, sampler=make_sampler)
    return run_stage(stage, run_dir, config, start)


def make_sampler(template: ChatTemplate, config: TrainConfig, persona: Persona, autocast: torch.dtype | None = None):
    """Greedy replies to fixed questions, with the persona's system prompt, the calculator run for real:
    what `ownllm chat` would answer (the same engine and reply loop), one line each."""
    if not config.sample_every:
        return None
    params = SamplingParams(max_tokens=config.sample_tokens, temperature=0.0)

    def sample(model: Transformer) -> list[str]:
        texts = []
        with Engine(model, template.tokenizer, max_slots=1, stop_ids=template.stop_ids, autocast=autocast) as engine:
            for question in config.prompts:
                conversation = [
                    {"role": "system", "content": persona.system_prompt()},
                    {"role": "user", "content": question},
                ]
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
