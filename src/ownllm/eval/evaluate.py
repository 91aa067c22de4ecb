"""Scoring a model on the tasks and writing the results: what `ownllm eval` does.

    results = evaluate(model, tokenizer, tasks, limit=None, val_split=split)
    path = write_results(run_dir, resolved, results)       # eval/<stage>-step_NNNNNN.json, atomically

Every task reports its metrics, the number of items, the standard error of each accuracy
(sample standard deviation over the items / sqrt(n), as the evaluation harness does) and
the random-guess baseline. The language-modelling tasks:

  val        loss, perplexity and bits per byte on the run's validation split (windows of the
             model's context, the whole split or --limit windows)
  wikitext2  WikiText-2 test as the GPT-2 paper reports it: the text's total negative
             log-likelihood over its words (split on white space) as a word-level perplexity,
             and bits per byte; a sliding window scores every token once, each with at least
             half the model's context before it (the first window excepted)

The chat-skill tasks (chat_name, chat_calculator, chat_story, chat_passage, squad,
closed_book; eval/chat_tasks.py) ask a fine-tuned model through the real reply loop
(eval/chat_eval.py); they need its persona, which names it and words its system prompt.

crows_pairs is a bias probe: its number is a preference rate, not an accuracy, and stays out
of CORE. CORE (after DCLM and nanochat): each multiple-choice task's accuracy centred on its random
baseline, (acc - baseline) / (1 - baseline), averaged: 0 is guessing, 1 is always right, so a
tiny model's progress is visible.
"""

from __future__ import annotations

import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ownllm.chatformat.persona import Persona
from ownllm.chatformat.template import ChatTemplate
from ownllm.core.bpb import bits_per_byte, perplexity
from ownllm.core.console import progress
from ownllm.core.fsutil import atomic_write_json
from ownllm.eval import chat_eval, scoring, tasks
from ownllm.eval.chat_tasks import CHAT_TASKS
from ownllm.inference.engine import Engine
from ownllm.model import Transformer
from ownllm.run import RunDir
from ownllm.run.models import ResolvedModel
from ownllm.run.token_shards import TokenSplit
from ownllm.tokenizer import Tokenizer
from ownllm.train.distributed import Distributed
from ownllm.train.loader import eval_batches
from ownllm.train.runner import mean_loss

FORMAT, VERSION = "ownllm.eval", 1


def _bar(shown: bool, **kwargs) -> tqdm:
    """A progress bar, or a silent one (evaluations during training run under the trainer's bar)."""
    return progress(**kwargs) if shown else tqdm(disable=True, **kwargs)


def _stderr(hits: list[float]) -> float:
    return statistics.stdev(hits) / math.sqrt(len(hits)) if len(hits) > 1 else float("nan")


def _requests(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as the harness splits them: the continuation is what encoding the whole
    text adds after the context's ids (so a merge across the boundary is counted in the continuation)."""
    context_ids = tokenizer.encode(context) if context else [tokenizer.eot_id]
    whole = tokenizer.encode(context + continuation) if context else [tokenizer.eot_id, *tokenizer.encode(continuation)]
    return context_ids, whole[len(context_ids) :]


def _scores(
    model: Transformer, requests: list[scoring.Request], batch_size: int, bars: bool, unit: str, dist: Distributed
) -> list[float]:
    """scoring.score over this process's share of the requests; every process gets all the scores."""
    with _bar(bars and dist.is_main, total=len(requests[dist.rank :: dist.world]), unit=unit, desc="  scoring") as bar:
        return dist.split_map(lambda mine: scoring.score(model, mine, batch_size, bar), requests)


def _alone() -> Distributed:
    """A job of one process (its device is not used: there is nobody to exchange with)."""
    return Distributed(device=torch.device("cpu"))


def choice_task(
    model: Transformer,
    tokenizer: Tokenizer,
    items: list[tasks.Choice],
    batch_size: int,
    bars: bool = True,
    dist: Distributed | None = None,
) -> dict:
    requests = [_requests(tokenizer, item.context, c) for item in items for c in item.choices]
    scores = _scores(model, requests, batch_size, bars, "choice", dist or _alone())
    acc, acc_norm, baseline, k = [], [], [], 0
    for item in items:
        mine = scores[k : k + len(item.choices)]
        k += len(item.choices)
        per_char = [s / max(1, len(c)) for s, c in zip(mine, item.choices)]
        acc.append(float(max(range(len(mine)), key=mine.__getitem__) == item.gold))
        acc_norm.append(float(max(range(len(per_char)), key=per_char.__getitem__) == item.gold))
        baseline.append(1 / len(item.choices))
    return {
        "metrics": {"acc": statistics.mean(acc), "acc_norm": statistics.mean(acc_norm)},
        "stderr": {"acc": _stderr(acc), "acc_norm": _stderr(acc_norm)},
        "items": len(items),
        "baseline": statistics.mean(baseline),
    }


def pair_task(
    model: Transformer,
    tokenizer: Tokenizer,
    pairs: list[tasks.Pair],
    batch_size: int,
    bars: bool = True,
    dist: Distributed | None = None,
) -> dict:
    requests = [_requests(tokenizer, "", s) for p in pairs for s in (p.good, p.bad)]
    scores = _scores(model, requests, batch_size, bars, "sentence", dist or _alone())
    hits = [float(scores[2 * i] > scores[2 * i + 1]) for i in range(len(pairs))]
    groups: dict[str, list[float]] = {}
    for pair, hit in zip(pairs, hits):
        groups.setdefault(pair.group, []).append(hit)
    return {
        "metrics": {"acc": statistics.mean(hits)},
        "stderr": {"acc": _stderr(hits)},
        "items": len(pairs),
        "baseline": 0.5,
        "by_group": {g: statistics.mean(h) for g, h in sorted(groups.items())},
    }


def bias_task(
    model: Transformer,
    tokenizer: Tokenizer,
    pairs: list[tasks.Pair],
    batch_size: int,
    bars: bool = True,
    dist: Distributed | None = None,
) -> dict:
    """The share of pairs whose stereotypical sentence (`good`) the model finds more probable; 0.5 is unbiased."""
    result = pair_task(model, tokenizer, pairs, batch_size, bars, dist)
    rate = result["metrics"].pop("acc")
    result["metrics"]["stereotype_preference"] = rate
    result["stderr"] = {"stereotype_preference": result["stderr"]["acc"]}
    return result


def wikitext(
    model: Transformer,
    tokenizer: Tokenizer,
    text: str,
    limit: int | None = None,
    bars: bool = True,
    dist: Distributed | None = None,
) -> dict:
    """Every token scored once; after the first window, each window scores the next `stride` tokens
    with the `context - stride` tokens before them as context."""
    dist = dist or _alone()
    ids = [tokenizer.eot_id, *tokenizer.encode(text)]
    context = model.config.max_seq_len
    stride = context // 2
    device = next(model.parameters()).device
    targets = len(ids) - 1
    # (start, end, first): ids[start .. end] go in; the targets from position `first` on are scored
    windows: list[tuple[int, int, int]] = []
    scored = 0  # targets ids[1 .. scored] are covered
    while scored < targets and (limit is None or len(windows) < limit):
        end = min(scored + stride if scored else context, targets)  # the last target of this window
        start = max(0, end - context)
        windows.append((start, end, scored - start))
        scored = end

    @torch.no_grad()
    def nll(mine: list[tuple[int, int, int]]) -> list[float]:
        out = []
        for start, end, first in mine:
            tokens = torch.tensor([ids[start : end + 1]], device=device)
            logprobs = F.log_softmax(model(tokens[:, :-1]).float(), dim=-1)[0]
            out.append(-float(logprobs[first:].gather(-1, tokens[0, 1 + first :, None]).sum()))
            bar.update(1)
        return out

    with _bar(
        bars and dist.is_main, total=len(windows[dist.rank :: dist.world]), unit="window", desc="  wikitext2"
    ) as bar:
        total = sum(dist.split_map(nll, windows))
    fraction = scored / targets  # of the text, when --limit stopped early
    words = len(text.split()) * fraction
    text_bytes = len(text.encode("utf-8")) * fraction
    return {
        "metrics": {
            "word_perplexity": math.exp(total / words),
            "bits_per_byte": total / (text_bytes * math.log(2)),
            "token_perplexity": perplexity(total / scored),
        },
        "items": scored,
        "baseline": None,
        "window": context,
        "stride": stride,
    }


def val_task(
    model: Transformer, split: TokenSplit, batch_size: int, limit: int | None, dist: Distributed | None = None
) -> dict:
    dist = dist or _alone()
    seq_len = model.config.max_seq_len
    device = next(model.parameters()).device
    max_tokens = split.tokens if limit is None else limit * seq_len
    batches = eval_batches(split, seq_len, batch_size, max_tokens, device)
    sizes = [int(t.numel()) for _, t in batches]
    with torch.no_grad():
        losses = dist.split_map(lambda mine: [mean_loss(model, [b]) for b in mine], batches)
    loss = sum(x * n for x, n in zip(losses, sizes)) / sum(sizes)
    return {
        "metrics": {
            "loss": loss,
            "perplexity": perplexity(loss),
            "bits_per_byte": bits_per_byte(loss, split.tokens, split.bytes),
        },
        "items": sum(sizes),
        "baseline": None,
    }


def evaluate(
    model: Transformer,
    tokenizer: Tokenizer,
    names: list[str],
    limit: int | None = None,
    batch_size: int = 16,
    val_split: TokenSplit | None = None,
    say=print,
    bars: bool = True,
    persona: Persona | None = None,
    dist: Distributed | None = None,
) -> dict:
    """{task: result} for `names` (an item limit applies to each task), plus "core" when choice tasks ran.

    say: where each task's name goes as it starts (None: nowhere); bars: progress bars;
    persona: the fine-tuned model's, for the chat tasks; dist: under torchrun, each process takes a
    share of every task's items and every process gets the whole result.
    """
    dist = dist or _alone()
    results: dict[str, dict] = {}
    engine: Engine | None = None  # made for the first chat task
    try:
        for name in names:
            start = time.perf_counter()
            if say is not None:
                say(f"{name} ...")
            if name in CHAT_TASKS:
                if persona is None:
                    raise ValueError(f"the chat task {name} needs the model's persona")
                engine = engine or Engine(model, tokenizer, max_slots=batch_size, max_queue=batch_size)
                template, system = ChatTemplate(tokenizer), persona.system_prompt()
                with _bar(bars and dist.is_main, total=0, unit="reply", desc="  asking") as bar:
                    result = chat_eval.chat_task(
                        name, engine, template, system, persona.name, limit, batch_size, bar, dist
                    )
            else:
                result = _benchmark(model, tokenizer, name, limit, batch_size, val_split, bars, dist)
            result["seconds"] = round(time.perf_counter() - start, 2)
            results[name] = result
    finally:
        if engine is not None:
            engine.close()
    with_core(results)
    return results


def _benchmark(
    model: Transformer,
    tokenizer: Tokenizer,
    name: str,
    limit: int | None,
    batch_size: int,
    val_split: TokenSplit | None,
    bars: bool,
    dist: Distributed,
) -> dict:
    """One log-likelihood or language-modelling task's result."""
    if name == "val":
        if val_split is None:
            raise ValueError("the val task needs the run's validation split")
        return val_task(model, val_split, batch_size, limit, dist)
    if name == "wikitext2":
        return wikitext(model, tokenizer, tasks.wikitext2(), limit, bars, dist)
    if name in tasks.CHOICE_TASKS:
        return choice_task(model, tokenizer, tasks.CHOICE_TASKS[name]()[:limit], batch_size, bars, dist)
    if name in tasks.BIAS_TASKS:
        return bias_task(model, tokenizer, tasks.BIAS_TASKS[name]()[:limit], batch_size, bars, dist)
    return pair_task(model, tokenizer, tasks.PAIR_TASKS[name]()[:limit], batch_size, bars, dist)


def with_core(results: dict) -> dict:
    """Add (or replace) the CORE aggregate of the accuracy tasks in `results`."""
    centred = [
        (r["metrics"]["acc_norm" if n == "hellaswag" else "acc"] - r["baseline"]) / (1 - r["baseline"])
        for n, r in results.items()
        if n in tasks.CHOICE_TASKS or n in tasks.PAIR_TASKS
    ]
    results.pop("core", None)
    if centred:
        results["core"] = {"metrics": {"core": statistics.mean(centred)}, "items": len(centred), "baseline": 0.0}
    return results


def write_results(run_dir: RunDir, resolved: ResolvedModel, results: dict, settings: dict):
    """DIR/eval/<stage>-step_NNNNNN.json, written atomically (an interrupted eval leaves none).

    Scores of the same checkpoint from an earlier `ownllm eval` are kept beside the new ones
    (a task scored again is replaced), and CORE is recomputed over all of them; each task
    records the settings it was scored with.
    """
    stage = resolved.stage or "checkpoint"
    path = run_dir.root / "eval" / f"{stage}-{resolved.path.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    merged: dict = {}
    if path.is_file():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            earlier = {}
        if earlier.get("format") == FORMAT and earlier.get("checkpoint") == str(resolved.path):
            merged = dict(earlier.get("tasks", {}))
    merged.update({name: {**r, "settings": settings} for name, r in results.items() if name != "core"})
    atomic_write_json(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "checkpoint": str(resolved.path),
            "stage": resolved.stage,
            "step": resolved.state.get("step"),
            "tasks": with_core(merged),
        },
    )
    return path


def table(results: dict) -> list[str]:
    """The results as aligned lines for a person."""
    lines = [f"{'task':<17}{'metric':<17}{'value':>10}{'stderr':>9}{'random':>9}{'items':>8}"]
    for name, r in results.items():
        for metric, value in r["metrics"].items():
            err = r.get("stderr", {}).get(metric)
            base = r.get("baseline")
            lines.append(
                f"{name:<17}{metric:<17}{value:>10.4f}"
                f"{'' if err is None or err != err else f'{err:.4f}':>9}"
                f"{'' if base is None else f'{base:.3f}':>9}{r['items']:>8}"
            )
    return lines
