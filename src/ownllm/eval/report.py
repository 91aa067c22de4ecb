"""The run report: what a person reads after a run (`ownllm report`), as Markdown and PNG plots.

    path = write_report([RunDir("runs/a"), RunDir("runs/b")], out=Path("runs/a/report"))

report.md holds the tables (data, tokenizer, model, compute, evaluations next to their random
baselines and, labelled as such, published GPT-2 figures) and links the plots in plots/: the
pretraining loss and validation bits per byte against tokens seen, the learning rate, the
gradient norm, tokens/s, fine-tuning's losses, and benchmark scores across checkpoints. With
several runs every plot and table puts them side by side. Everything is read from the run
directories (metrics.jsonl, corpus/manifest.json, tokens/meta.json, checkpoints, eval/): a
report can be made again at any time, and a missing part is said, not guessed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ownllm.core.fsutil import atomic_write_text  # noqa: E402
from ownllm.model import ModelConfig, Transformer  # noqa: E402
from ownllm.run import RunDir  # noqa: E402
from ownllm.run.checkpoints import latest_checkpoint, read_state  # noqa: E402

# For orientation only: figures published for GPT-2 small (124M parameters, 117M in its paper).
GPT2_SMALL = {
    ("hellaswag", "acc_norm"): "0.29-0.31 (GPT-2 124M)",
    ("wikitext2", "word_perplexity"): "29.41 (GPT-2 117M, GPT-2 paper table 3)",
    ("squad", "exact_match"): "0.400 (logistic regression, SQuAD paper); 0.808 (BERT-base)",
    ("squad", "f1"): "0.510 (logistic regression, SQuAD paper); 0.885 (BERT-base)",
}


def read_metrics(run: RunDir) -> list[dict]:
    path = run.root / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash: the rest still counts
    return records


def read_evals(run: RunDir) -> list[dict]:
    """The eval results of the run's checkpoints, in step order."""
    files = sorted((run.root / "eval").glob("*.json")) if (run.root / "eval").is_dir() else []
    results = [json.loads(p.read_text(encoding="utf-8")) for p in files]
    return sorted((r for r in results if r.get("format") == "ownllm.eval"), key=lambda r: (r["stage"] or "", r["step"]))


def _series(records: list[dict], stage: str, key: str, x: str) -> tuple[list, list]:
    points = [(r[x], r[key]) for r in records if r.get("stage") == stage and key in r and x in r]
    return [p[0] for p in points], [p[1] for p in points]


def _plot(
    path: Path, title: str, xlabel: str, ylabel: str, lines: dict[str, tuple[list, list]], logy: bool = False
) -> bool:
    lines = {label: xy for label, xy in lines.items() if xy[0]}
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, label=label, marker="o" if len(xs) <= 30 else None, markersize=3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()  # says the run (and the stage), even for one line
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plots(runs: list[RunDir], metrics: dict[str, list[dict]], evals: dict[str, list[dict]], out: Path) -> list:
    out.mkdir(parents=True, exist_ok=True)

    def per_run(fn: Callable[[str], tuple[list, list]], suffix: str = "") -> dict:
        return {f"{run.root.name}{suffix}": fn(run.root.name) for run in runs}

    plots = [
        (
            "loss.png",
            "Pretraining loss",
            "tokens seen",
            "loss (nats per token)",
            {
                **per_run(lambda n: _series(metrics[n], "pretrain", "loss", "tokens"), " train"),
                **per_run(lambda n: _series(metrics[n], "pretrain", "val_loss", "tokens"), " validation"),
            },
            True,
        ),
        (
            "bpb.png",
            "Validation bits per byte",
            "tokens seen",
            "bits per byte",
            per_run(lambda n: _series(metrics[n], "pretrain", "val_bpb", "tokens")),
            False,
        ),
        (
            "lr.png",
            "Learning rate",
            "step",
            "learning rate",
            per_run(lambda n: _series(metrics[n], "pretrain", "lr", "step")),
            False,
        ),
        (
            "grad_norm.png",
            "Gradient norm (before clipping)",
            "step",
            "global L2 norm",
            per_run(lambda n: _series(metrics[n], "pretrain", "grad_norm", "step")),
            True,
        ),
        (
            "throughput.png",
            "Training speed",
            "step",
            "tokens/s",
            per_run(lambda n: _series(metrics[n], "pretrain", "tok_per_s", "step")),
            False,
        ),
        (
            "mfu.png",
            "Model FLOPs utilisation",
            "step",
            "MFU",
            per_run(lambda n: _series(metrics[n], "pretrain", "mfu", "step")),
            False,
        ),
        (
            "sft.png",
            "Chat fine-tuning loss (assistant tokens)",
            "step",
            "loss",
            {
                **per_run(lambda n: _series(metrics[n], "sft", "loss", "step"), " train"),
                **per_run(lambda n: _series(metrics[n], "sft", "val_loss", "step"), " held out"),
            },
            False,
        ),
        (
            "core.png",
            "CORE across checkpoints (0: guessing)",
            "step",
            "CORE",
            {
                f"{run.root.name} {stage}": (
                    [e["step"] for e in evals[run.root.name] if e["stage"] == stage and "core" in e["tasks"]],
                    [
                        e["tasks"]["core"]["metrics"]["core"]
                        for e in evals[run.root.name]
                        if e["stage"] == stage and "core" in e["tasks"]
                    ],
                )
                for run in runs
                for stage in ("pretrain", "sft")
            },
            False,
        ),
    ]
    written = []
    for name, title, xlabel, ylabel, lines, logy in plots:
        if _plot(out / name, title, xlabel, ylabel, lines, logy):
            written.append((name, title))
    return written


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) >= 1e4 else f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _run_table(runs: list[RunDir], metrics: dict[str, list[dict]]) -> list[str]:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Callable[[RunDir], str]) -> None:
        cells = []
        for run in runs:
            try:
                cells.append(fn(run))
            except (OSError, KeyError, ValueError, TypeError):
                cells.append("-")
        rows.append((label, cells))

    def manifest(run: RunDir) -> dict:
        return json.loads((run.corpus / "manifest.json").read_text(encoding="utf-8"))

    def tokens(run: RunDir) -> dict:
        return json.loads((run.tokens / "meta.json").read_text(encoding="utf-8"))

    def state(run: RunDir, stage: str) -> dict:
        path = latest_checkpoint(run.checkpoints / stage)
        if path is None:
            raise KeyError(stage)
        return read_state(path)

    def start(run: RunDir, stage: str) -> dict:
        return next(r for r in metrics[run.root.name] if r.get("stage") == stage and r.get("event") == "start")

    def last(run: RunDir, stage: str, key: str):
        return [r[key] for r in metrics[run.root.name] if r.get("stage") == stage and key in r][-1]

    def model_line(run: RunDir) -> str:
        c = state(run, "pretrain")["model_config"]
        with torch.device("meta"):  # the shape alone: no memory, no time
            n = Transformer(ModelConfig.from_dict(c)).num_params()
        shape = f"{c['n_layers']} layers x {c['d_model']}, {c['n_heads']} heads, context {c['max_seq_len']}"
        return f"{n:,} parameters: {shape}"

    row(
        "documents kept / read",
        lambda r: f"{manifest(r)['counts']['documents_out']:,} / {manifest(r)['counts']['documents_in']:,}",
    )
    row("removed (why)", lambda r: ", ".join(f"{k} {v:,}" for k, v in manifest(r)["removed"].items()) or "none")
    row("vocabulary", lambda r: f"{tokens(r)['vocab_size']:,}")
    row(
        "train / val tokens",
        lambda r: f"{tokens(r)['splits']['train']['tokens']:,} / {tokens(r)['splits']['val']['tokens']:,}",
    )
    row(
        "bytes per token (val)",
        lambda r: f"{tokens(r)['splits']['val']['bytes'] / tokens(r)['splits']['val']['tokens']:.2f}",
    )
    row("model", model_line)
    row("pretraining steps, tokens", lambda r: f"{state(r, 'pretrain')['step']:,}, {state(r, 'pretrain')['tokens']:,}")
    row(
        "pretraining compute",
        lambda r: f"{start(r, 'pretrain')['flops_per_token'] * state(r, 'pretrain')['tokens']:.3g} FLOPs",
    )
    row("pretraining wall time", lambda r: f"{state(r, 'pretrain')['elapsed'] / 60:.1f} min")
    row("device, precision", lambda r: start(r, "pretrain")["precision"].split(", peak")[0])
    row("final validation bits per byte", lambda r: f"{last(r, 'pretrain', 'val_bpb'):.4f}")
    row("fine-tuning steps, held-out loss", lambda r: f"{state(r, 'sft')['step']:,}, {last(r, 'sft', 'val_loss'):.4f}")
    lines = ["| | " + " | ".join(run.root.name for run in runs) + " |", "|---|" + "---|" * len(runs)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return lines


def _eval_table(runs: list[RunDir], evals: dict[str, list[dict]]) -> list[str]:
    lines = []
    for run in runs:
        for result in evals[run.root.name]:
            lines += [
                "",
                f"**{run.root.name}, {result['stage']} step {result['step']}** (`{result['checkpoint']}`)",
                "",
                "| task | metric | value | stderr | random | items | published, for orientation |",
                "|---|---|---|---|---|---|---|",
            ]
            for task, r in result["tasks"].items():
                for metric, value in r["metrics"].items():
                    err = r.get("stderr", {}).get(metric)
                    lines.append(
                        f"| {task} | {metric} | {_fmt(value)} | {_fmt(err)} | {_fmt(r.get('baseline'), 3)} "
                        f"| {r['items']:,} | {GPT2_SMALL.get((task, metric), '')} |"
                    )
    return lines or ["", "No evaluation yet: run `ownllm eval --run DIR`."]


def write_report(runs: list[RunDir], out: Path) -> Path:
    """report.md and plots/*.png in `out`; returns the report's path."""
    metrics = {run.root.name: read_metrics(run) for run in runs}
    evals = {run.root.name: read_evals(run) for run in runs}
    plots = _plots(runs, metrics, evals, out / "plots")
    names = ", ".join(f"`{run.root}`" for run in runs)
    lines = [
        f"# ownllm report: {names}",
        "",
        "Made by `ownllm report` from the run directories; every figure below was measured in the run.",
        "",
        "## The runs",
        "",
        *_run_table(runs, metrics),
        "",
        "## Training",
        "",
    ]
    lines += [f"![{title}](plots/{name})" for name, title in plots] or ["No training metrics yet."]
    lines += ["", "## Evaluation", *_eval_table(runs, evals), ""]
    path = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
