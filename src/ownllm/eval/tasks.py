"""The benchmark tasks: their data (shipped in ownllm/resources/eval, licences there) and how an item reads.

A multiple-choice item is a context, its choices (each a continuation of the context) and
the index of the right one; the model's answer is the choice it finds most probable (acc),
or most probable per character (acc_norm, which does not favour short choices). The prompts
follow EleutherAI's evaluation harness, so the numbers mean what the field's numbers mean:

  hellaswag      "<activity label>: <context>" -> " <ending>"; the harness's clean-up of the
                 WikiHow markup ([title], [step] ...) and its capitalised second sentence
  arc_easy/_challenge  "Question: <question>\\nAnswer:" -> " <answer text>"
  piqa           "Question: <goal>\\nAnswer:" -> " <solution>"
  blimp          a minimal pair: the grammatical sentence should be the more probable one
  crows_pairs    a bias probe, not a benchmark: the share of CrowS-Pairs pairs in which the more
                 stereotypical sentence is the more probable (50% is unbiased), overall and per
                 bias type; whole-sentence log-probabilities, the comparison suited to a causal
                 model (the published masked-LM figures are not directly comparable). The data's
                 authors ask that it is used for evaluation only.

The shipped HellaSwag file joins the two context parts, so the part to capitalise is taken
as what follows the context's last ". " when it starts in lower case (as in the source data).
"""

from __future__ import annotations

import bz2
import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ownllm.core.errors import UserError


@dataclass(frozen=True)
class Choice:
    context: str
    choices: list[str]
    gold: int


@dataclass(frozen=True)
class Pair:
    good: str
    bad: str
    group: str  # BLiMP's paradigm


def data_dir() -> Path:
    return Path(str(resources.files("ownllm.resources"))) / "eval"


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"evaluation data {path} is missing; reinstall ownllm (the data ships with it)")
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _jsonl(path: Path) -> Iterator[dict]:
    for number, line in enumerate(_lines(path), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path} line {number} is not JSON; the evaluation data is damaged") from None


def _hellaswag_text(text: str) -> str:
    """The harness's clean-up of HellaSwag's WikiHow markup."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag() -> list[Choice]:
    lines = _lines(data_dir() / "hellaswag_val.txt.bz2")
    if len(lines) % 6:
        raise UserError("hellaswag_val.txt.bz2 is damaged (not 6 lines per item)")
    items = []
    for i in range(0, len(lines), 6):
        label, _, context = lines[i].partition(": ")
        first, sep, second = context.rpartition(". ")
        if sep and second[:1].islower():
            context = first + sep + second[:1].upper() + second[1:]
        ctx = _hellaswag_text(f"{label}: {context}")
        items.append(Choice(ctx, [" " + _hellaswag_text(e) for e in lines[i + 2 : i + 6]], int(lines[i + 1])))
    return items


def _arc(name: str) -> list[Choice]:
    items = []
    for row in _jsonl(data_dir() / "arc" / f"{name}_test.clean.jsonl"):
        choices = row["question"]["choices"]
        labels = [c["label"] for c in choices]
        items.append(
            Choice(
                f"Question: {row['question']['stem']}\nAnswer:",
                [" " + c["text"] for c in choices],
                labels.index(row["answerKey"]),
            )
        )
    return items


def arc_easy() -> list[Choice]:
    return _arc("arc_easy")


def arc_challenge() -> list[Choice]:
    return _arc("arc_challenge")


def piqa() -> list[Choice]:
    rows = list(_jsonl(data_dir() / "piqa" / "valid.jsonl"))
    labels = [int(x) for x in _lines(data_dir() / "piqa" / "valid-labels.lst") if x.strip()]
    if len(labels) != len(rows):
        raise UserError("piqa's valid.jsonl and valid-labels.lst do not have the same number of lines")
    return [
        Choice(f"Question: {r['goal']}\nAnswer:", [" " + r["sol1"], " " + r["sol2"]], g) for r, g in zip(rows, labels)
    ]


def blimp() -> list[Pair]:
    return [Pair(r["sentence_good"], r["sentence_bad"], r["UID"]) for r in _jsonl(data_dir() / "blimp-6700.jsonl")]


def crows_pairs() -> list[Pair]:
    """(more stereotypical, less stereotypical, bias type) for every pair; `good` holds the stereotypical one."""
    path = data_dir() / "crows_pairs_anonymized.csv"
    if not path.is_file():
        raise UserError(f"evaluation data {path} is missing; reinstall ownllm (the data ships with it)")
    with open(path, encoding="utf-8", newline="") as f:
        return [Pair(r["sent_more"], r["sent_less"], r["bias_type"]) for r in csv.DictReader(f)]


def wikitext2() -> str:
    return "\n".join(_lines(data_dir() / "wikitext2-test.raw"))


CHOICE_TASKS = {"hellaswag": hellaswag, "arc_easy": arc_easy, "arc_challenge": arc_challenge, "piqa": piqa}
PAIR_TASKS = {"blimp": blimp}
BIAS_TASKS = {"crows_pairs": crows_pairs}
LM_TASKS = ("val", "wikitext2")
ALL_TASKS = (*LM_TASKS, *CHOICE_TASKS, *PAIR_TASKS, *BIAS_TASKS)
