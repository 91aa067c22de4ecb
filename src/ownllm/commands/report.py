"""`ownllm report`: the run's report, report/report.md with plots in report/plots/.

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
    from ownllm.eval.report import write_report  # lazy: start-up (matplotlib)

    path = write_report(runs, args.out or runs[0].root / "report")
    say(f"report written to {path}")
    return 0
