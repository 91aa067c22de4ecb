"""`ownllm report`: the run's report, report/report.md with plots in report/plots/, and MODEL_CARD.md.

ownllm report --run runs/demo                          # runs/demo/report/report.md
ownllm report --run runs/demo --compare runs/other     # both runs on the same plots and tables
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ownllm.commands.common import add_run_argument
from ownllm.core.console import say
from ownllm.run import RunDir


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--compare", nargs="+", default=[], metavar="DIR", help="other runs to put beside it")
    parser.add_argument("--out", type=Path, metavar="DIR", help="where to write (default: RUN/report)")


def run(args: argparse.Namespace) -> int:
    runs = [RunDir.open(path, create=False) for path in [args.run, *args.compare]]
    from ownllm.core.errors import UserError  # lazy: with the rest
    from ownllm.eval.model_card import write_model_card  # lazy: start-up (torch)
    from ownllm.eval.report import write_report  # lazy: start-up (matplotlib)
    from ownllm.run.models import resolve_model  # lazy: start-up (torch)

    out = args.out or runs[0].root / "report"
    path = write_report(runs, out)
    say(f"report written to {path}")
    try:
        card = write_model_card(runs[0], resolve_model(runs[0], check_tokenizer=False), out)
    except UserError as e:  # no model yet: the report still describes the data
        say(f"no model card: {e}")
    else:
        say(f"model card written to {card}")
    return 0
