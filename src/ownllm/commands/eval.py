"""`ownllm eval`: score a checkpoint on benchmark tasks; print a table, write eval/<stage>-step_NNNNNN.json.

    ownllm eval --run runs/demo                                  # every task, the latest chat model (else base)
    ownllm eval --run runs/demo --stage pretrain --tasks hellaswag,arc_easy --limit 200
    ownllm eval --run runs/demo --checkpoint runs/demo/checkpoints/pretrain/step_000400
    torchrun --nproc_per_node 4 -m ownllm eval --run runs/big     # each process scores a share of the items

Benchmarks (any model): val (the run's validation split), wikitext2, hellaswag, arc_easy,
arc_challenge, piqa, blimp, crows_pairs (a bias probe). Chat skills (a fine-tuned model, asked
through the reply loop): chat_name, chat_calculator, chat_story, chat_passage, squad,
closed_book, chat_multi_turn (name, sum and story in one conversation). The default is every
task the model can take. --limit N scores the first N items of each (windows for val and
wikitext2).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ownllm.commands.common import add_run_argument
from ownllm.core.console import say
from ownllm.core.errors import UserError
from ownllm.run import RunDir

# eval/tasks.py's ALL_TASKS and eval/chat_tasks.py's CHAT_TASKS (not imported: `--help` stays free of torch)
BENCHMARKS = ("val", "wikitext2", "hellaswag", "arc_easy", "arc_challenge", "piqa", "blimp", "crows_pairs")
CHAT_TASKS = ("chat_name", "chat_calculator", "chat_story", "chat_passage", "squad", "closed_book", "chat_multi_turn")
TASK_NAMES = BENCHMARKS + CHAT_TASKS


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--stage", choices=("sft", "pretrain"), help="whose latest checkpoint (default: sft if any)")
    parser.add_argument("--checkpoint", type=Path, metavar="DIR", help="a step_NNNNNN directory instead")
    parser.add_argument(
        "--tasks",
        metavar="LIST",
        help=f"comma-separated tasks (default: every one the model can take): {','.join(TASK_NAMES)}",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="score only the first N items of each task")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="sequences per forward pass")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args: argparse.Namespace) -> int:
    names = None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
    if names is not None:
        unknown = [t for t in names if t not in TASK_NAMES]
        if unknown or not names:
            raise UserError(f"unknown task {', '.join(unknown) or '(none given)'}; tasks: {', '.join(TASK_NAMES)}")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    run_dir = RunDir.open(args.run, create=False)
    # The library is imported here, not above: `ownllm eval --help` does not import torch.
    import torch  # lazy: start-up

    from ownllm.chatformat.persona import Persona  # lazy: start-up
    from ownllm.eval.evaluate import evaluate, table, write_results  # lazy: start-up
    from ownllm.run.models import resolve_model  # lazy: start-up
    from ownllm.run.token_shards import open_tokens  # lazy: start-up
    from ownllm.tokenizer import Tokenizer  # lazy: start-up
    from ownllm.train import distributed  # lazy: start-up

    resolved = resolve_model(run_dir, args.stage, args.checkpoint)
    persona = Persona.from_dict(resolved.persona) if resolved.persona else None
    if names is None:
        names = list(BENCHMARKS + (CHAT_TASKS if persona else ()))
    chat = [t for t in names if t in CHAT_TASKS]
    if chat and persona is None:
        raise UserError(
            f"{', '.join(chat)}: the chat tasks need a fine-tuned model, and {resolved.path} is not one "
            f"(run `ownllm sft --run {args.run}` first, or leave out --stage pretrain)"
        )
    tokenizer = Tokenizer.load(run_dir.tokenizer)
    val_split = None
    if "val" in names:
        val_split = open_tokens(run_dir.tokens, run_dir.tokenizer, run_dir.corpus).split("val")
    with distributed.setup(args.device) as dist:
        if dist.active and dist.device.type == "cpu":  # the processes on a machine share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.local_world))
        model = resolved.load(dist.device)
        processes = f" x {dist.world} processes" if dist.active else ""
        if dist.is_main:
            say(
                f"evaluating {resolved.path} on {dist.device.type}{processes}: {', '.join(names)}"
                + (f" (first {args.limit} items each)" if args.limit else "")
            )
        results = evaluate(
            model,
            tokenizer,
            names,
            args.limit,
            args.batch_size,
            val_split,
            say=say if dist.is_main else None,
            bars=dist.is_main,
            persona=persona,
            dist=dist,
        )
        if not dist.is_main:
            return 0
        settings = {
            "tasks": names,
            "limit": args.limit,
            "batch_size": args.batch_size,
            "device": dist.device.type,
            "processes": dist.world,
        }
        path = write_results(run_dir, resolved, results, settings)
        for line in table(results):
            print(line)
        say(f"results written to {path}")
        return 0
