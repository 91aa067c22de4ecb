"""Asking the assistant: the chat-skill tasks (eval/chat_tasks.py) through the real reply loop.

Every item is one conversation, exactly as `ownllm chat` would hold it: the persona's system
prompt, the user's message, the chat template, the calculator tool loop (assistant/reply.py),
sampled at the chat command's default settings (temperature 0.8, top-k 50) with the item's
own seed. The engine's continuous batching runs `slots` conversations at once; a seed gives
the same reply whatever else is in the batch, so the scores do not depend on the batch size
(up to floating point: a batch of another shape may round a logit differently, which turns a
sampled token only when its draw falls right at a boundary; seen once in ~10,000 tokens).

A task's result: the mean of each per-item score with its standard error; ROUGE-L (F-measure,
stemmed, the best over the references; `rouge-score`) and corpus BLEU (`sacrebleu`, 0-100)
where the items have reference answers; the scores of each group of items; the number of
items skipped because their prompt does not fit the model's context with room for the reply;
and the first few exchanges, so a reader sees what the numbers are made of.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ownllm.assistant.reply import prompt_fits, reply
from ownllm.assistant.session import Settings
from ownllm.chatformat.conversation import Conversation
from ownllm.chatformat.template import ChatTemplate
from ownllm.eval import chat_tasks
from ownllm.eval.chat_tasks import ChatItem, Reply
from ownllm.inference.engine import Engine
from ownllm.train.distributed import Distributed

EXAMPLES = 3  # exchanges kept in the result


def conversation(system: str | None, prompt: str) -> Conversation:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def ask(engine: Engine, template: ChatTemplate, system: str | None, item: ChatItem) -> Reply:
    """The assistant's reply to one item, through the reply loop (tool calls run); an item with earlier
    turns is one conversation, each turn asked after the replies before it (the oldest dropped if need be)."""
    history: Conversation = []
    replies: list[Reply] = []
    for turn in (*item.earlier, item):
        params = replace(Settings().sampling(), max_tokens=turn.max_tokens, seed=item.seed)
        message = {"role": "user", "content": turn.prompt}
        text: list[str] = []
        calls: list[str] = []
        head = [{"role": "system", "content": system}] if system else []
        whole = head + history + [message]
        for event in reply(engine, template, whole, params, truncate=bool(item.earlier)):
            if event.kind == "text":
                text.append(event.text)
            elif event.kind == "tool_call":
                calls.append(event.text)
            elif event.kind == "done":
                history += [message, *event.messages]
        replies.append(Reply("".join(text).strip(), tuple(calls)))
    return replace(replies[-1], earlier=tuple(replies[:-1]))


def fitting(items: list[ChatItem], fits, limit: int | None) -> tuple[list[ChatItem], int]:
    """(the first `limit` items that fit the context, how many of those looked at did not)."""
    kept: list[ChatItem] = []
    skipped = 0
    for item in items:
        if limit is not None and len(kept) >= limit:
            break
        if fits(item):
            kept.append(item)
        else:
            skipped += 1
    return kept, skipped


def _stderr(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")


def reference_metrics(items: list[ChatItem], replies: list[Reply]) -> dict[str, tuple[float, float | None]]:
    """{"rouge_l": (mean, stderr), "bleu": (corpus BLEU, None)} over the items that have references."""
    import sacrebleu  # lazy: start-up
    from rouge_score import rouge_scorer  # lazy: start-up (nltk), needed only here

    pairs = [(item.references, r.text) for item, r in zip(items, replies) if item.references]
    if not pairs:
        return {}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score_multi(list(refs), text)["rougeL"].fmeasure for refs, text in pairs]
    # sacrebleu takes reference streams of equal length: a shorter list repeats its first
    # answer, which changes neither the clipped n-gram counts nor the closest reference length.
    width = max(len(refs) for refs, _ in pairs)
    streams = [[refs[k] if k < len(refs) else refs[0] for refs, _ in pairs] for k in range(width)]
    bleu = sacrebleu.corpus_bleu([text for _, text in pairs], streams).score
    return {"rouge_l": (statistics.mean(rouge), _stderr(rouge)), "bleu": (bleu, None)}


def chat_task(
    name: str,
    engine: Engine,
    template: ChatTemplate,
    system: str | None,
    persona_name: str,
    limit: int | None = None,
    slots: int = 8,
    bar=None,
    dist: Distributed | None = None,
) -> dict:
    """One chat-skill task's result (see the module's docstring); under torchrun (dist) each process
    asks its share of the items and every process gets the whole result."""

    def fits(item: ChatItem) -> bool:
        return prompt_fits(template, conversation(system, item.prompt), engine.context_size, item.max_tokens)

    dist = dist or Distributed(device=engine.device)  # a job of one process
    items, skipped = fitting(chat_tasks.items(name, persona_name), fits, limit)
    if bar is not None:
        bar.reset(total=len(items[dist.rank :: dist.world]))

    def one(item: ChatItem) -> Reply:
        answer = ask(engine, template, system, item)
        if bar is not None:
            bar.update(1)
        return answer

    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="ownllm-eval") as pool:
        replies = dist.split_map(lambda mine: list(pool.map(one, mine)), items)
    scores = [item.check(r) for item, r in zip(items, replies)]
    result: dict = {"metrics": {}, "stderr": {}, "items": len(items), "skipped": skipped, "baseline": None}
    for metric in scores[0] if scores else ():
        values = [s[metric] for s in scores]
        result["metrics"][metric] = statistics.mean(values)
        result["stderr"][metric] = _stderr(values)
    for metric, (value, err) in reference_metrics(items, replies).items():
        result["metrics"][metric] = value
        if err is not None:
            result["stderr"][metric] = err
    groups: dict[str, list[float]] = {}
    for item, s in zip(items, scores):
        if item.group:
            groups.setdefault(item.group, []).append(next(iter(s.values())))
    if groups:
        result["by_group"] = {g: statistics.mean(v) for g, v in sorted(groups.items())}
    result["sampling"] = {"temperature": Settings().temperature, "top_k": Settings().top_k, "seeds": "one per item"}
    result["examples"] = [
        {"prompt": item.prompt, "reply": r.text, "tool_calls": list(r.tool_calls)}
        for item, r in zip(items[:EXAMPLES], replies)
    ]
    return result
