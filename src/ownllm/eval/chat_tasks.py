"""The chat-skill tasks: what to ask the fine-tuned assistant, and when its reply passes.

Each task is a list of items: one user message, the seed its reply is sampled with, a token
budget, and a check that turns the reply into per-item scores (1.0 / 0.0, or a share).
eval/chat_eval.py asks them through the real reply loop (persona system prompt, chat
template, calculator tool) and averages. Items are made from fixed seeds, so every run of
the evaluation asks the same questions.

  chat_name        "What is your name?" in 8 phrasings (3 that no training conversation uses)
                   x 5 seeds: the reply names the persona

  Each of the first three tasks also reports its items by phrasing: "trained phrasing" (how the
  fine-tuning data asks) and "new phrasing" (asked in words no training conversation uses), so a
  score is not only a measure of phrasings the model was tuned on.

  chat_calculator  60 sums, differences and products of whole numbers that the arithmetic
                   training never draws (chatformat/generated.py `held_out`), every third in
                   a phrasing the training does not use: acc = a calculator call that computes the right value and a
                   reply that states it; called = any calculator call; right_call
  chat_story       40 requests for a story with one or two asked-for words: acc = every word
                   used (plurals count) in a story of at least 25 words; words_used
  chat_passage     60 made-up passages about a person, a question on each (15% asking what
                   the text does not say: the right answer says so): acc = the reply has the
                   answer's key words; ROUGE-L and BLEU against the reference answer
  squad            SQuAD v1.1 dev, the first question of each paragraph (2,067; those whose
                   prompt does not fit the model's context are skipped and counted): exact
                   match and F1 as the official script computes them, ROUGE-L and BLEU
                   against the gold answers
  closed_book      the same SQuAD questions without the paragraph: correct (a gold answer in
                   the reply), abstained ("I don't know", "the text does not say" ...), and
                   made_up, the rest: a confident wrong answer, the hallucination rate
  chat_multi_turn  20 conversations of three turns: its name, then a sum, then a story, each
                   asked after the replies to the ones before (phrasings and numbers vary):
                   name, calculator, story as above, and acc = all three right
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from ownllm.chatformat.calculator import calculate
from ownllm.chatformat.generated import DOES_NOT_SAY, fact_passage, held_out
from ownllm.chatformat.stories import TOPICS, story_phrase
from ownllm.chatformat.tools import parse_tool_call, run_tool
from ownllm.eval import squad


@dataclass(frozen=True)
class Reply:
    text: str  # the reply's text, tool calls left out
    tool_calls: tuple[str, ...] = ()  # as written after <|tool_call|>: "calculator(12 * 7)"
    earlier: tuple[Reply, ...] = ()  # the replies to the item's earlier turns, in order


@dataclass(frozen=True)
class ChatItem:
    prompt: str
    seed: int
    max_tokens: int
    check: Callable[[Reply], dict[str, float]]
    references: tuple[str, ...] = ()  # for ROUGE-L and BLEU, where the task has them
    group: str = ""  # a sub-population reported on its own (chat_passage: answerable / unanswerable)
    earlier: tuple[ChatItem, ...] = ()  # turns asked first in the same conversation (chat_multi_turn)


def _rng(task: str, i: int) -> random.Random:
    return random.Random(f"ownllm.eval.chat:{task}:{i}")


# chat_name -----------------------------------------------------------------------------------

NAME_QUESTIONS = (
    "What is your name?",
    "What's your name?",
    "Who are you?",
    "Tell me your name.",
    "Hi! What is your name?",
    "May I ask your name?",  # the last three: phrasings no training conversation uses
    "How do people call you?",
    "Sorry, what was your name again?",
)


def _says_name(name: str, reply: Reply) -> dict[str, float]:
    return {"acc": float(re.search(rf"\b{re.escape(name.lower())}\b", reply.text.lower()) is not None)}


TRAINED_NAME_QUESTIONS = 5  # the first five of NAME_QUESTIONS are phrasings the training data uses


def _phrasing(new: bool) -> str:
    return "new phrasing" if new else "trained phrasing"


def chat_name(persona_name: str, seeds: int = 5) -> list[ChatItem]:
    return [
        ChatItem(q, seed, 48, partial(_says_name, persona_name), group=_phrasing(i >= TRAINED_NAME_QUESTIONS))
        for i, q in enumerate(NAME_QUESTIONS)
        for seed in range(seeds)
    ]


# chat_calculator -----------------------------------------------------------------------------

_ASK_SUM = (
    ("What is {a} {op} {b}?", {"+": "+", "-": "-", "*": "*"}),
    ("What is {a} {op} {b}?", {"+": "plus", "-": "minus", "*": "times"}),
    ("Calculate {a} {op} {b}.", {"+": "+", "-": "-", "*": "*"}),
    ("How much is {a} {op} {b}?", {"+": "plus", "-": "minus", "*": "multiplied by"}),
    ("What's {a} {op} {b}?", {"+": "+", "-": "-", "*": "x"}),
    ("Please compute {a} {op} {b}.", {"+": "plus", "-": "minus", "*": "times"}),
)
# Phrasings no training conversation uses: every third item asks with one of these.
_ASK_SUM_NEW = (
    ("Work out {a} {op} {b} for me.", {"+": "+", "-": "-", "*": "*"}),
    ("I need the answer to {a} {op} {b}.", {"+": "plus", "-": "minus", "*": "times"}),
    ("Quick question: {a} {op} {b}?", {"+": "+", "-": "-", "*": "*"}),
)


def _held_out_number(rng: random.Random, low: int, high: int) -> int:
    while not held_out(n := rng.randint(low, high)):
        pass
    return n


def _computes(expected: str, reply: Reply) -> dict[str, float]:
    calls = [parse_tool_call(c) for c in reply.tool_calls]
    called = any(c["name"] == "calculator" for c in calls)
    right_call = any(c["name"] == "calculator" and run_tool(c) == expected for c in calls)
    stated = re.search(rf"(?<![\d.]){re.escape(expected)}(?![\d]|\.\d)", reply.text) is not None
    return {"acc": float(right_call and stated), "called": float(called), "right_call": float(right_call)}


def chat_calculator(count: int = 60) -> list[ChatItem]:
    items = []
    for i in range(count):
        rng = _rng("chat_calculator", i)
        op = rng.choice("+-*")
        high = 99 if op == "*" else 999
        a, b = _held_out_number(rng, 21, high), _held_out_number(rng, 21, high)
        new = i % 3 == 2
        template, words = rng.choice(_ASK_SUM_NEW if new else _ASK_SUM)
        expected = calculate(f"{a} {op} {b}")
        prompt = template.format(a=a, op=words[op], b=b)
        items.append(ChatItem(prompt, i, 64, partial(_computes, expected), group=_phrasing(new)))
    return items


# chat_story ----------------------------------------------------------------------------------


def _uses_words(words: tuple[str, ...], reply: Reply) -> dict[str, float]:
    used = [re.search(rf"\b{w}(?:s|es)?\b", reply.text, re.IGNORECASE) is not None for w in words]
    long_enough = len(reply.text.split()) >= 25
    return {"acc": float(all(used) and long_enough), "words_used": sum(used) / len(used)}


# Phrasings of one-topic requests that no training conversation uses (chatformat/stories.py has those).
STORY_NEW_PHRASINGS = (
    "Could you make up a story about {0}?",
    "I'd like to hear a story about {0}.",
    "Write me a little story about {0}.",
    "Story time! Tell me one about {0}.",
)


def chat_story(count: int = 40) -> list[ChatItem]:
    """Every third request (one topic) in a phrasing of STORY_NEW_PHRASINGS, the rest as training asks."""
    topics = sorted(TOPICS)
    items = []
    for i in range(count):
        rng = _rng("chat_story", i)
        words = tuple(rng.sample(topics, k=rng.choice((1, 1, 1, 2))))
        new = i % 3 == 2
        if new:
            words = words[:1]
            prompt = rng.choice(STORY_NEW_PHRASINGS).format(TOPICS[words[0]])
        else:
            prompt = story_phrase(rng, words)
        items.append(ChatItem(prompt, i, 200, partial(_uses_words, words), group=_phrasing(new)))
    return items


# chat_passage --------------------------------------------------------------------------------

PASSAGE_PROMPTS = (
    "Read the text and answer the question.\n\n{text}\n\nQuestion: {question}",
    "{text}\n\n{question}",
    "Here is a short text:\n\n{text}\n\nAnswer this question: {question}",
)
_ABSTAINS = re.compile(
    r"\b(does not say|doesn't say|do not know|don't know|not sure|no idea|cannot (say|tell|answer|know)|"
    r"can't (say|tell|answer|know)|not mentioned|does not mention|doesn't mention|i'm not able|"
    r"could not find|couldn't find|have no documents)\b",
    re.IGNORECASE,
)


def abstains(text: str) -> bool:
    """Whether a reply declines to answer ("The text does not say.", "I don't know")."""
    return _ABSTAINS.search(text) is not None


def _answers_from_passage(key: str | None, reply: Reply) -> dict[str, float]:
    if key is None:  # the text does not say: so should the reply
        return {"acc": float(abstains(reply.text))}
    return {"acc": float(key.lower() in reply.text.lower() and not abstains(reply.text))}


def chat_passage(count: int = 60) -> list[ChatItem]:
    items = []
    for i in range(count):
        rng = _rng("chat_passage", i)
        text, question, answer, key = fact_passage(rng)
        prompt = rng.choice(PASSAGE_PROMPTS).format(text=text, question=question)
        group = "unanswerable" if answer == DOES_NOT_SAY else "answerable"
        items.append(ChatItem(prompt, i, 48, partial(_answers_from_passage, key), (answer,), group))
    return items


# squad and closed_book -----------------------------------------------------------------------


def _squad_scores(answers: tuple[str, ...], reply: Reply) -> dict[str, float]:
    return {"exact_match": squad.exact_match(reply.text, answers), "f1": squad.f1(reply.text, answers)}


def squad_items() -> list[ChatItem]:
    return [
        ChatItem(
            PASSAGE_PROMPTS[0].format(text=q.context, question=q.question),
            i,
            32,
            partial(_squad_scores, q.answers),
            q.answers,
        )
        for i, q in enumerate(squad.questions())
    ]


def _closed_book_scores(answers: tuple[str, ...], reply: Reply) -> dict[str, float]:
    correct = squad.contains_answer(reply.text, answers)
    abstained = not correct and abstains(reply.text)
    return {"correct": float(correct), "abstained": float(abstained), "made_up": float(not correct and not abstained)}


def closed_book(count: int = 200) -> list[ChatItem]:
    """SQuAD questions asked with no text to answer from (spread over all 48 articles)."""
    questions = squad.questions()
    step = max(1, len(questions) // count)
    return [
        ChatItem(q.question, i, 32, partial(_closed_book_scores, q.answers))
        for i, q in enumerate(questions[::step][:count])
    ]


def _all_turns(names: tuple[str, ...], checks: tuple, reply: Reply) -> dict[str, float]:
    passed = {n: check(r)["acc"] for n, check, r in zip(names, checks, (*reply.earlier, reply), strict=True)}
    return {**passed, "acc": float(all(passed.values()))}


def chat_multi_turn(persona_name: str, count: int = 20) -> list[ChatItem]:
    names, calculators, stories = chat_name(persona_name, seeds=1), chat_calculator(), chat_story()
    made = []
    for i in range(count):
        name, calculator, story = names[i % len(names)], calculators[i], stories[i]
        check = partial(_all_turns, ("name", "calculator", "story"), (name.check, calculator.check, story.check))
        made.append(replace(story, seed=i, check=check, earlier=(name, calculator), group=""))
    return made


def items(name: str, persona_name: str) -> list[ChatItem]:
    """Every item of the task `name` (one of CHAT_TASKS)."""
    if name == "chat_name":
        return chat_name(persona_name)
    if name == "chat_multi_turn":
        return chat_multi_turn(persona_name)
    return {
        "chat_calculator": chat_calculator,
        "chat_story": chat_story,
        "chat_passage": chat_passage,
        "squad": squad_items,
        "closed_book": closed_book,
    }[name]()


CHAT_TASKS = ("chat_name", "chat_calculator", "chat_story", "chat_passage", "squad", "closed_book", "chat_multi_turn")
