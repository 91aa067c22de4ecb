"""SQuAD v1.1 (dev): questions on Wikipedia paragraphs, and the official way to score an answer.

    questions = squad.questions()                    # one per paragraph: the first asked of it
    squad.exact_match("the Denver Broncos", ["Denver Broncos"]) == 1.0
    squad.f1("Broncos of Denver", ["Denver Broncos"]) == 0.8

The scores follow the official evaluation script of SQuAD v1.1: both texts are normalised
(lower case, punctuation and the articles a/an/the removed, white space collapsed); exact
match is 1 when the normalised texts are equal, F1 is the harmonic mean of the precision and
recall of their words (as a multiset); each takes the best over the gold answers.

The file also serves retrieval (its 2,067 paragraphs are a small document collection).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass

from ownllm.core.errors import UserError
from ownllm.eval.tasks import data_dir

FILE = "squad-dev-v1.1.json"


@dataclass(frozen=True)
class Question:
    title: str  # the article's
    context: str  # the paragraph
    question: str
    answers: tuple[str, ...]  # the gold answers, duplicates kept as in the file


def questions(every: bool = False) -> list[Question]:
    """The first question of each paragraph (every=True: all 10,570), in the file's order."""
    path = data_dir() / FILE
    if not path.is_file():
        raise UserError(f"evaluation data {path} is missing; reinstall ownllm (the data ships with it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        items = []
        for article in data:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"] if every else paragraph["qas"][:1]:
                    answers = tuple(a["text"] for a in qa["answers"])
                    items.append(Question(article["title"], paragraph["context"], qa["question"], answers))
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path} is not SQuAD v1.1 JSON; the evaluation data is damaged") from None
    return items


_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    """The official script's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    return max(float(normalize(prediction) == normalize(a)) for a in answers)


def _f1(prediction: str, answer: str) -> float:
    predicted, gold = normalize(prediction).split(), normalize(answer).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    return max(_f1(prediction, a) for a in answers)


def contains_answer(text: str, answers: tuple[str, ...] | list[str]) -> bool:
    """Whether a gold answer, normalised, appears word for word in the normalised text."""
    words = f" {normalize(text)} "
    return any(f" {normalize(a)} " in words for a in answers if normalize(a))
