"""`ownllm sample`: print a continuation of a prompt from the latest checkpoint.

    ownllm sample --run runs/demo --prompt "Once upon a time" --max-tokens 200 --temperature 0.8 --top-k 50 --seed 1

The text goes to stdout as it is generated; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ownllm.cli import add_run_argument
from ownllm.data.token_shards import tokenizer_hash
from ownllm.errors import StaleArtifactError, UserError
from ownllm.run import RunDir


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--prompt", default="Once upon a time", help="text to continue (default: %(default)r)")
    parser.add_argument("--max-tokens", type=int, default=200, metavar="N", help="new tokens at most (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="randomness: 0 always picks the most likely token (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=50, metavar="K",
                        help="sample among the K most likely tokens; 0 for all (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="make the output repeatable")
    parser.add_argument("--samples", type=int, default=1, metavar="N", help="how many continuations (default: 1)")
    parser.add_argument("--stage", default="pretrain", help="whose checkpoints to use (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, metavar="DIR", help="a step_NNNNNN directory instead of the latest")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args: argparse.Namespace) -> int:
    if args.max_tokens < 1 or args.temperature < 0 or args.top_k < 0 or args.samples < 1:
        raise UserError("--max-tokens and --samples must be at least 1, --temperature and --top-k at least 0")
    run_dir = RunDir.open(args.run, create=False)
    from ownllm.inference.sample import generate
    from ownllm.tokenizer import Tokenizer
    from ownllm.train.checkpoint import latest_checkpoint, load_model
    from ownllm.train.device import resolve_device

    path = args.checkpoint or latest_checkpoint(run_dir.checkpoints / args.stage)
    if path is None:
        raise UserError(f"no checkpoint in {run_dir.checkpoints / args.stage}; train first with `ownllm {args.stage} --run {args.run}`")
    device = resolve_device(args.device)
    model, state = load_model(Path(path), device)
    tokenizer = Tokenizer.load(run_dir.tokenizer)
    if state.get("tokenizer_hash") and tokenizer_hash(run_dir.tokenizer) != state["tokenizer_hash"]:
        raise StaleArtifactError(
            f"{path} was trained with another tokenizer than {run_dir.tokenizer}; retrain, or use the matching run"
        )
    prompt = tokenizer.encode(args.prompt) or [tokenizer.eot_id]  # an empty prompt starts a fresh document
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed if args.seed is not None else torch.seed())
    for n in range(args.samples):
        if n:
            print("\n" + "-" * 40)
        sys.stdout.write(args.prompt)
        new: list[int] = []
        shown = ""
        for token in generate(model, prompt, args.max_tokens, args.temperature, args.top_k, generator,
                              stop_token=tokenizer.eot_id):
            if token == tokenizer.eot_id:
                break
            new.append(token)
            text = tokenizer.decode(new)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                sys.stdout.write(text[len(shown):])
                sys.stdout.flush()
                shown = text
        print(tokenizer.decode(new)[len(shown):])
    return 0

