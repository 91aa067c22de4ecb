"""`ownllm export`: the run's model in the formats other tools run.

    ownllm export --run runs/demo --format hf --out exported/demo        # transformers, vLLM
    ownllm export --run runs/demo --format gguf --out demo.gguf          # llama.cpp (--quantize q8_0)
    ownllm export --run runs/demo --format ollama --out exported/ollama  # demo.gguf + Modelfile for `ollama create`

The chat model is exported if the run has one (--stage pretrain for the base model). Nothing
is half-written: the output is made under a temporary name beside OUT and renamed into place;
an existing OUT is replaced only with --force.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from ownllm.commands.common import add_run_argument
from ownllm.core.console import say
from ownllm.core.errors import UserError
from ownllm.run import RunDir

FORMATS = ("hf", "gguf", "ollama")


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help="hf (a directory), gguf (a file), ollama")
    parser.add_argument("--out", required=True, type=Path, help="the directory (hf, ollama) or .gguf file to write")
    parser.add_argument("--stage", choices=("sft", "pretrain"), help="which model (default: the chat model if any)")
    parser.add_argument("--checkpoint", type=Path, metavar="DIR", help="a step_NNNNNN directory instead")
    parser.add_argument(
        "--quantize", default="f32", choices=("f32", "q8_0"), help="gguf, ollama: weight format (default: f32)"
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not args.force and (out.is_file() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty; choose another --out or add --force to replace it")
    if args.format == "hf" and args.quantize != "f32":
        raise UserError("--quantize is for gguf and ollama; the hf format is float32")
    run_dir = RunDir.open(args.run, create=False)
    # The library is imported here, not above: `ownllm export --help` does not import torch.
    from ownllm.export import formats  # lazy: start-up
    from ownllm.run.models import resolve_model  # lazy: start-up

    model = resolve_model(run_dir, args.stage, args.checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
        made = formats.export(args.format, run_dir, model, Path(scratch), out.name, args.quantize)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        made.rename(out)
    say(f"exported the {model.stage or 'checkpoint'} model {model.path} as {args.format} to {out}")
    if args.quantize != "f32":
        say(formats.quantization_cost(run_dir, model, args.quantize))
    for line in formats.how_to_use(args.format, out):
        print(line)
    return 0
