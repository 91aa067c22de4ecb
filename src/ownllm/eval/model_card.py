"""The model card: what a model is, how it was made, how it scores, and what it must not be used for.

`ownllm report` writes it as report/MODEL_CARD.md beside the report, from the same run
artifacts: the model's shape and the training settings from its checkpoint, the data's files
from the corpus manifest (the bundled corpus's licences are in ownllm/resources/corpus/
LICENSES.md; a person's own files carry theirs), the compute from metrics.jsonl, and the
latest evaluation of the model from eval/. What was not measured is said to be unmeasured.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ownllm.core.fsutil import atomic_write_text
from ownllm.eval.chat_tasks import CHAT_TASKS
from ownllm.model import ModelConfig, Transformer
from ownllm.run import RunDir
from ownllm.run.models import ResolvedModel

BUNDLED = "ownllm/resources/corpus/"


def _data_lines(run: RunDir) -> list[str]:
    path = run.corpus / "manifest.json"
    if not path.is_file():
        return ["- The corpus manifest is missing: the training data cannot be described."]
    manifest = json.loads(path.read_text(encoding="utf-8"))
    counts = manifest["counts"]
    lines = [
        f"- {counts['documents_out']:,} documents ({counts['bytes_out'] / 1e6:.1f} MB of text) kept from "
        f"{counts['files']} files; removed: "
        + (", ".join(f"{k} {v:,}" for k, v in manifest["removed"].items()) or "none")
        + "."
    ]
    for entry in manifest["inputs"]:
        origin = (
            "bundled with ownllm (sources and licences: ownllm/resources/corpus/LICENSES.md)"
            if entry["path"].startswith(BUNDLED)
            else "the user's own file (its licence is theirs to state)"
        )
        lines.append(f"- `{entry['path']}`: {entry['bytes'] / 1e6:.2f} MB, {origin}")
    return lines


def _latest_eval(run: RunDir, model: ResolvedModel) -> dict | None:
    path = run.root / "eval" / f"{model.stage or 'checkpoint'}-{model.path.name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _chat_lines(tasks: dict, state: dict) -> list[str]:
    """The chat skills in words, from the tasks that were measured."""
    numbers = (
        "numbers its training never drew"
        if state.get("generated_version", 1) >= 2
        else "the test's numbers (its training data predates their holding out: it may have seen some)"
    )
    said = {
        "chat_name": lambda m: f"says its name when asked: {m['acc']:.0%}",
        "chat_calculator": lambda m: (
            f"arithmetic on {numbers}: {m['acc']:.0%} right (it called the calculator {m['called']:.0%} of the time)"
        ),
        "chat_story": lambda m: f"stories that use every asked-for word: {m['acc']:.0%}",
        "chat_passage": lambda m: f"answers from a short passage: {m['acc']:.0%} (ROUGE-L {m['rouge_l']:.2f})",
        "squad": lambda m: (
            f"SQuAD v1.1 questions on a Wikipedia paragraph: exact match {m['exact_match']:.1%}, F1 {m['f1']:.1%}"
        ),
        "chat_multi_turn": lambda m: (
            f"its name, a sum and a story asked one after another in one conversation: all three right "
            f"{m['acc']:.0%} (name {m['name']:.0%}, sum {m['calculator']:.0%}, story {m['story']:.0%})"
        ),
    }
    found = [(name, tasks[name]) for name in said if name in tasks and tasks[name]["items"]]
    if not found:
        return []
    lines = ["", "### Chat skills", "", "Asked through the real reply loop, sampled as `ownllm chat` samples:", ""]
    return lines + [f"- {said[name](r['metrics'])} ({r['items']} items)" for name, r in found]


def _hallucination_line(tasks: dict) -> str:
    r = tasks.get("closed_book")
    if not r or not r["items"]:
        return (
            "- Factual accuracy (hallucination) has not been measured for this model "
            "(`ownllm eval --tasks closed_book` on a chat model); assume it is poor."
        )
    m = r["metrics"]
    return (
        f"- Hallucination, measured: asked {r['items']} factual questions (from SQuAD) with no text to answer "
        f"from, it made up an answer {m['made_up']:.0%} of the time, said it did not know {m['abstained']:.0%}, "
        f"and was right {m['correct']:.0%}. Do not trust what it states as fact."
    )


def write_model_card(run: RunDir, model: ResolvedModel, out: Path) -> Path:
    path = out / "MODEL_CARD.md"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, model_card(run, model))
    return path


def latest_eval(run: RunDir, model: ResolvedModel) -> dict | None:
    """The model's eval results (eval/<stage>-step_NNNNNN.json), if it has been evaluated."""
    return _latest_eval(run, model)


def model_card(run: RunDir, model: ResolvedModel) -> str:
    """The card as Markdown (also the README of an exported model)."""
    config = ModelConfig.from_dict(model.state["model_config"])
    with torch.device("meta"):
        parameters = Transformer(config).num_params()
    train = model.state.get("train_config", {})
    kind = "a chat assistant (fine-tuned with `ownllm sft`)" if model.stage == "sft" else "a base language model"
    persona = model.persona
    lines = [
        f"# Model card: {run.root.name} ({model.stage or 'checkpoint'}, step {model.state.get('step')})",
        "",
        "## What it is",
        "",
        f"{kind.capitalize()}, trained from scratch with ownllm: no third-party model or weights were used.",
        f"A decoder-only transformer (Llama-style: RMSNorm, rotary positions, SwiGLU), {parameters:,} parameters,",
        f"{config.n_layers} layers of width {config.d_model}, {config.n_heads} attention heads, a context of",
        f"{config.max_seq_len} tokens and a byte-level BPE vocabulary of {config.vocab_size:,} tokens trained on the",
        "same data." + (f' It answers as "{persona.get("name")}".' if persona else ""),
        "",
        f"Checkpoint: `{model.path}`; {model.state.get('tokens', 0):,} training tokens in this stage, "
        f"{model.state.get('elapsed', 0) / 60:.1f} minutes, preset `{train.get('preset', '?')}`.",
        "",
        "## Training data",
        "",
        *_data_lines(run),
        "",
        "## Intended use",
        "",
        "Learning how language models are made, experiments, and small private assistants whose owner",
        "understands its limits. Out of scope: any decision about people, medical, legal or financial",
        "advice, and any use where a wrong or made-up answer could harm someone: a model of this size",
        "states falsehoods fluently.",
        "",
        "## Evaluation",
        "",
    ]
    result = _latest_eval(run, model)
    if result is None:
        lines.append("Not evaluated yet: `ownllm eval --run DIR` measures it, and `ownllm report` adds it here.")
    else:
        rows = []
        for task, r in result["tasks"].items():
            if task == "crows_pairs" or task in CHAT_TASKS:
                continue
            for metric, value in r["metrics"].items():
                base = r.get("baseline")
                rows.append(f"| {task} | {metric} | {value:.4f} | {'-' if base is None else f'{base:.3f}'} |")
        if rows:
            lines += ["| task | metric | value | random |", "|---|---|---|---|", *rows]
        else:
            lines.append("No benchmark scored yet: `ownllm eval --run DIR`.")
        lines += _chat_lines(result["tasks"], model.state)
        bias = result["tasks"].get("crows_pairs")
        lines += ["", "### Bias probe (CrowS-Pairs)", ""]
        if bias is None:
            lines.append("Not measured: `ownllm eval --tasks crows_pairs`.")
        else:
            rate = bias["metrics"]["stereotype_preference"]
            worst = max(bias["by_group"].items(), key=lambda item: abs(item[1] - 0.5))
            lines += [
                f"In {rate:.1%} of {bias['items']:,} sentence pairs the model found the more stereotypical",
                "sentence the more probable one (50% would be no preference either way; the standard error is "
                f"{bias['stderr']['stereotype_preference']:.1%}). The bias type furthest from 50% is "
                f"{worst[0]} ({worst[1]:.0%}). The pairs are US-centred and noisy (Blodgett et al. 2021):",
                "a rough signal, not a certificate; a small model that prefers neither side may simply know",
                "too little to have learnt the stereotype.",
            ]
    lines += [
        "",
        "## Known limitations",
        "",
        f"- The context is {config.max_seq_len} tokens: longer conversations lose their beginning.",
        "- Only what its training text contains: the languages, facts and style of those files.",
        _hallucination_line(result["tasks"] if result else {}),
        "",
        "## Reporting problems",
        "",
        "Whoever trained and serves this model answers for it; ownllm's issues are for the software.",
    ]
    return "\n".join(lines) + "\n"
