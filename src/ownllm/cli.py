"""The `ownllm` command: parse arguments, then call one stage.

Each subcommand is a module of ownllm/commands/, named for it, with two functions:
`configure(parser)` adds its arguments, `run(args)` resolves the run directory and calls
the library. Modules are imported only when their subcommand is chosen, so `ownllm --help`
stays fast (no PyTorch import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ownllm import __version__
from ownllm.core.errors import UserError
from ownllm.core.interrupts import sigint_blocked

# name -> (module, one-line help). The order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("ownllm.commands.data", "clean and deduplicate raw text files into a corpus"),
    "tokenizer": ("ownllm.commands.tokenizer", "train a byte-level BPE tokenizer on the corpus"),
    "tokenize": ("ownllm.commands.tokenize", "encode the corpus into token shards for training"),
    "pretrain": ("ownllm.commands.pretrain", "pretrain the transformer on the token shards"),
    "sample": ("ownllm.commands.sample", "print a continuation of a prompt from the latest checkpoint"),
    "sft": ("ownllm.commands.sft", "fine-tune the pretrained model into a chat assistant"),
    "eval": ("ownllm.commands.eval", "score a model: benchmarks (HellaSwag, ARC, PIQA, ...) and a chat model's skills"),
    "report": ("ownllm.commands.report", "write the run's report: plots of the training and tables of results"),
    "chat": ("ownllm.commands.chat", "talk to the assistant in the terminal, or answer one prompt (-p)"),
    "feedback": ("ownllm.commands.feedback", "export the replies rated on the web page as fine-tuning data"),
    "serve": ("ownllm.commands.serve", "serve the chat page and an OpenAI-compatible API for the model"),
    "embed": ("ownllm.commands.embed", "train the run's own text embedder (for the knowledge base and guardrail)"),
    "guardrail": ("ownllm.commands.guardrail", "train and try the guardrail's classifier (on the run's embeddings)"),
    "kb": ("ownllm.commands.kb", "the knowledge base: add, list, remove and search your documents"),
    "export": ("ownllm.commands.export", "export the model for Hugging Face transformers, llama.cpp (GGUF) or Ollama"),
}

EPILOG = """\
a run directory (--run DIR) holds every stage's artifacts; stages read what earlier stages wrote:
  ownllm data --run runs/demo              # corpus/   (bundled corpus if no --input)
  ownllm tokenizer --run runs/demo         # tokenizer/
  ownllm tokenize --run runs/demo          # tokens/
  ownllm pretrain --run runs/demo          # checkpoints/pretrain/
  ownllm sample --run runs/demo --prompt "Once upon a time"
  ownllm sft --run runs/demo               # checkpoints/sft/      (chat fine-tuning)
  ownllm eval --run runs/demo              # eval/: benchmark scores of the latest model
  ownllm report --run runs/demo            # report/report.md with plots
  ownllm chat --run runs/demo              # talk to it in the terminal (-p "question" answers once)
  ownllm serve --run runs/demo             # the chat page and an OpenAI-compatible API on 127.0.0.1:8000
run `ownllm COMMAND --help` for a command's options."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ownllm",
        description="From a folder of raw text to your own AI assistant, with no third-party model anywhere.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ownllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        # The threads that importing the command starts (torch's) leave Ctrl-C to the main thread;
        # one pressed meanwhile arrives when the block ends, as "interrupted" below.
        with sigint_blocked():
            parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            sys.exit(2)
        status = args._run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
