"""`ownllm sample`: print a continuation of a prompt from the latest checkpoint.

    ownllm sample --run runs/demo --prompt "Once upon a time" --max-tokens 200 --temperature 0.8 --top-k 50 --seed 1

The text goes to stdout as the engine decodes it; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ownllm.commands.common import add_decode_argument, add_run_argument
from ownllm.core.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--prompt", default="Once upon a time", help="text to continue (default: %(default)r)")
    parser.add_argument(
        "--max-tokens", type=int, default=200, metavar="N", help="new tokens at most (default: %(default)s)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="randomness: 0 always picks the most likely token (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=50,
        metavar="K",
        help="sample among the K most likely tokens; 0 for all (default: %(default)s)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        metavar="P",
        help="sample among the most likely tokens that make up probability P; 1 for all (default: %(default)s)",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="above 1 makes tokens already in the text less likely (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="make the output repeatable (sample n uses seed + n)")
    parser.add_argument("--samples", type=int, default=1, metavar="N", help="how many continuations (default: 1)")
    parser.add_argument("--stage", default="pretrain", help="whose checkpoints to use (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, metavar="DIR", help="a step_NNNNNN directory instead of the latest")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_decode_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ownllm.inference.engine import Engine, SamplingParams  # lazy: start-up (`--help` skips torch)

    if args.samples < 1:
        raise UserError("--samples must be at least 1")
    settings = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
    }
    SamplingParams(**settings).validate()  # a bad flag is reported before the model is loaded
    with Engine.load(
        args.run, stage=args.stage, device=args.device, checkpoint=args.checkpoint, max_slots=1, decode=args.decode
    ) as engine:
        tokenizer = engine.tokenizer
        prompt = tokenizer.encode(args.prompt) or [tokenizer.eot_id]  # an empty prompt starts a fresh document
        room = min(args.max_tokens, engine.context_size // 2)  # for the continuation, keeping most of a long prompt
        prompt = prompt[-(engine.context_size - room) :]  # the end of a prompt that leaves too little room
        for n in range(args.samples):
            if n:
                print("\n" + "-" * 40)
            sys.stdout.write(args.prompt)
            seed = None if args.seed is None else args.seed + n
            for event in engine.stream(prompt, SamplingParams(**settings, seed=seed)):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            print()
    return 0
