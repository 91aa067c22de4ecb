"""The chat-skill evaluation: SQuAD's official scoring, the held-out arithmetic, each check on
replies whose verdict is known, the reference metrics, and `ownllm eval` asking a real
fine-tuned model through the reply loop."""

from __future__ import annotations

import json
import re
import shutil
from functools import partial

import pytest

from helpers.processes import finish, torchrun
from helpers.runs import ownllm_here
from ownllm.chatformat.generated import GeneratedMix, generate_conversations, held_out
from ownllm.chatformat.template import ChatTemplate
from ownllm.eval import chat_eval, chat_tasks, squad
from ownllm.eval.chat_tasks import Reply, _answers_from_passage, _closed_book_scores, _computes, _uses_words
from ownllm.inference.engine import Engine
from ownllm.run import RunDir
from ownllm.run.models import resolve_model
from ownllm.tokenizer import Tokenizer


def test_squad_scores_as_the_official_script():
    assert squad.normalize("The  Denver Broncos!") == "denver broncos"
    assert squad.exact_match("the Denver Broncos.", ["Carolina Panthers", "Denver Broncos"]) == 1.0
    assert squad.exact_match("Broncos", ["Denver Broncos"]) == 0.0
    assert squad.f1("Broncos of Denver", ["Denver Broncos"]) == pytest.approx(0.8)  # p 2/3, r 1
    assert squad.f1("Carolina", ["Denver Broncos", "Carolina Panthers"]) == pytest.approx(2 / 3)  # the best gold
    assert squad.f1("nothing here", ["Denver Broncos"]) == 0.0
    assert squad.contains_answer("I think it was the Denver Broncos.", ["Denver Broncos"])
    assert not squad.contains_answer("Denverites", ["Denver"])  # whole words only


def test_squad_loads_whole():
    every = squad.questions(every=True)
    assert len(every) == 10570 and sum(len(q.answers) for q in every) == 34726
    first = squad.questions()
    assert len(first) == 2067 and first[0].question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first[0].answers[0] == "Denver Broncos" and first[0].answers[0] in first[0].context


def _whole_numbers(expression: str) -> list[int]:
    """The whole-number operands of an expression (a decimal such as 12.5 is not one)."""
    return [int(n) for n in re.findall(r"(?<![\d.])\d+(?!\d|\.\d)", expression)]


def test_arithmetic_training_never_draws_the_numbers_the_evaluation_asks_about():
    mix = GeneratedMix(weights={"arithmetic": 1})
    operands = [
        n
        for conversation in generate_conversations(3000, mix=mix, seed=5)
        for message in conversation
        if "tool_call" in message
        for n in _whole_numbers(message["tool_call"]["arguments"])
    ]
    assert len(operands) > 5000 and max(operands) > 1000
    assert not [n for n in operands if held_out(n)]
    items = chat_tasks.chat_calculator()
    asked = [n for item in items for n in _whole_numbers(item.prompt)]
    assert len(items) == 60 and len(asked) == 120 and all(held_out(n) for n in asked)
    assert [i.prompt for i in chat_tasks.chat_calculator()] == [i.prompt for i in items]  # the same every time
    assert sum(held_out(n) for n in range(21, 10_000)) / 9979 == pytest.approx(1 / 8, abs=0.01)


def test_each_check_on_replies_whose_verdict_is_known():
    (name,) = [i for i in chat_tasks.chat_name("Ada") if i.prompt == "Who are you?" and i.seed == 0]
    assert name.check(Reply("I am Ada, a small assistant.")) == {"acc": 1.0}
    assert name.check(Reply("I am Adam.")) == {"acc": 0.0}

    check = partial(_computes, "851")
    assert check(Reply("It is 851.", ("calculator(23 * 37)",))) == {"acc": 1.0, "called": 1.0, "right_call": 1.0}
    assert check(Reply("It is 851.", ())) == {"acc": 0.0, "called": 0.0, "right_call": 0.0}  # no tool, no credit
    assert check(Reply("It is 8510.", ("calculator(23 * 37)",)))["acc"] == 0.0
    assert check(Reply("It is 852.", ("calculator(23 * 36)",))) == {"acc": 0.0, "called": 1.0, "right_call": 0.0}

    story = partial(_uses_words, ("cat", "box"))
    long_tail = (
        " and they played all day in the warm sun until the evening came and everyone went home to eat and sleep well"
    )
    assert story(Reply("Two cats found boxes" + long_tail)) == {"acc": 1.0, "words_used": 1.0}
    assert story(Reply("Two cats found a ball" + long_tail)) == {"acc": 0.0, "words_used": 0.5}
    assert story(Reply("A cat in a box."))["acc"] == 0.0  # not a story: too short

    answerable = partial(_answers_from_passage, "Pepper")
    assert answerable(Reply("Tom's dog is called Pepper.")) == {"acc": 1.0}
    assert answerable(Reply("Tom's dog is called Coco.")) == {"acc": 0.0}
    unanswerable = partial(_answers_from_passage, None)
    assert unanswerable(Reply("The text does not say.")) == {"acc": 1.0}
    assert unanswerable(Reply("Tom is 7 years old.")) == {"acc": 0.0}

    closed = partial(_closed_book_scores, ("Denver Broncos",))
    assert closed(Reply("The Denver Broncos.")) == {"correct": 1.0, "abstained": 0.0, "made_up": 0.0}
    assert closed(Reply("I don't know.")) == {"correct": 0.0, "abstained": 1.0, "made_up": 0.0}
    assert closed(Reply("The Carolina Panthers.")) == {"correct": 0.0, "abstained": 0.0, "made_up": 1.0}


def test_rouge_l_and_bleu_against_references():
    item = chat_tasks.ChatItem("q", 0, 8, lambda r: {}, ("Tom lives in a big city.",))
    same = chat_eval.reference_metrics(
        [item, item], [Reply("Tom lives in a big city."), Reply("Tom lives in a big city.")]
    )
    assert same["rouge_l"][0] == pytest.approx(1.0) and same["bleu"][0] == pytest.approx(100.0)
    apart = chat_eval.reference_metrics([item], [Reply("Pepper sleeps")])
    assert apart["rouge_l"][0] == 0.0 and apart["bleu"][0] == 0.0
    # ROUGE-L is the longest common subsequence's F-measure: 4 of 6 words in order, 4 of 4 predicted
    part = chat_eval.reference_metrics([item], [Reply("Tom lives in city")])
    assert part["rouge_l"][0] == pytest.approx(2 * (4 / 4) * (4 / 6) / (4 / 4 + 4 / 6))


def test_replies_do_not_depend_on_how_many_are_asked_at_once(chat_run):
    resolved = resolve_model(RunDir.open(chat_run, create=False), "sft", None)
    tokenizer = Tokenizer.load(chat_run / "tokenizer")
    model = resolved.load("cpu")
    template = ChatTemplate(tokenizer)
    results = []
    for slots in (1, 4):
        engine = Engine(model, tokenizer, max_slots=slots, max_queue=slots)
        try:
            results.append(chat_eval.chat_task("chat_name", engine, template, "You are Ada.", "Ada", 6, slots))
        finally:
            engine.close()
    assert results[0]["items"] == 6 and results[0]["examples"] == results[1]["examples"]
    assert results[0]["metrics"] == results[1]["metrics"]


def test_ownllm_eval_asks_the_chat_model(chat_run, capsys):
    tasks = "chat_name,chat_calculator,chat_story,chat_passage,squad,closed_book,chat_multi_turn"
    status, err = ownllm_here(capsys, "eval", "--run", chat_run, "--stage", "pretrain", "--tasks", "piqa,chat_name")
    assert status == 2 and err.count("\n") == 1 and "chat tasks need a fine-tuned model" in err
    status, err = ownllm_here(capsys, "eval", "--run", chat_run, "--tasks", tasks, "--limit", "3")
    assert status == 0, err
    saved = json.loads(next((chat_run / "eval").glob("sft-step_*.json")).read_text())["tasks"]
    assert set(saved) == set(tasks.split(","))
    for name, result in saved.items():
        assert result["items"] + result["skipped"] >= 1, name
        assert all(0 <= v <= (100 if m == "bleu" else 1) for m, v in result["metrics"].items()), name
    assert saved["chat_name"]["items"] == 3 and set(saved["chat_name"]["metrics"]) == {"acc"}
    assert set(saved["chat_calculator"]["metrics"]) == {"acc", "called", "right_call"}
    assert set(saved["closed_book"]["metrics"]) == {"correct", "abstained", "made_up"}
    assert set(saved["chat_multi_turn"]["metrics"]) == {"name", "calculator", "story", "acc"}
    assert saved["squad"]["items"] == 3 and {"exact_match", "f1", "rouge_l", "bleu"} == set(saved["squad"]["metrics"])
    assert saved["squad"]["examples"][0]["prompt"].startswith("Read the text and answer the question.")
    status, err = ownllm_here(capsys, "report", "--run", chat_run)
    assert status == 0, err
    card = (chat_run / "report" / "MODEL_CARD.md").read_text()
    assert "### Chat skills" in card and "arithmetic on numbers its training never drew: " in card
    assert "| chat_name |" not in card  # the skills are said in words, not in the benchmark table
    made_up = saved["closed_book"]["metrics"]["made_up"]
    assert "Hallucination, measured: asked 3 factual questions (from SQuAD) with no text to answer from" in card
    assert f"it made up an answer {made_up:.0%} of the time" in card


def test_two_processes_split_the_items_and_agree_with_one(chat_run, tmp_path, capsys):
    """Under torchrun each process scores every second item; the gathered result is the one process's."""
    tasks = "val,wikitext2,piqa,blimp,chat_name,chat_calculator"
    alone, split = tmp_path / "alone", tmp_path / "split"
    shutil.copytree(chat_run, alone)
    shutil.copytree(chat_run, split)
    status, err = ownllm_here(capsys, "eval", "--run", alone, "--tasks", tasks, "--limit", "5", "--batch-size", "3")
    assert status == 0, err
    status, err = finish(torchrun("eval", "--run", split, "--tasks", tasks, "--limit", "5", "--batch-size", "3"))
    assert status == 0, err
    assert "x 2 processes" in err
    one = json.loads(next((alone / "eval").glob("sft-step_*.json")).read_text())["tasks"]
    two = json.loads(next((split / "eval").glob("sft-step_*.json")).read_text())["tasks"]
    assert two["piqa"]["settings"]["processes"] == 2
    for name in tasks.split(","):
        assert two[name]["items"] == one[name]["items"], name
        assert two[name]["metrics"] == pytest.approx(one[name]["metrics"], rel=1e-5), name
    assert two["chat_name"]["examples"] == one["chat_name"]["examples"]  # the same replies, gathered in order


def test_a_multi_turn_item_scores_every_turn():
    (item,) = chat_tasks.chat_multi_turn("Ada", count=1)
    name_turn, sum_turn = item.earlier
    assert name_turn.prompt in chat_tasks.NAME_QUESTIONS and "story" in item.prompt.lower()
    right_sum = sum_turn.check.args[0]  # the expected result the calculator check holds
    story = " ".join(["Once upon a time there was a", *item.check.args[1][2].args[0], "and it was happy."] * 3)
    replies = Reply(story, (), (Reply("I am Ada."), Reply(f"It is {right_sum}.", (f"calculator({_expr(sum_turn)})",))))
    assert item.check(replies) == {"name": 1.0, "calculator": 1.0, "story": 1.0, "acc": 1.0}
    wrong = Reply("The answer is 27.", (), replies.earlier)
    assert item.check(wrong) == {"name": 1.0, "calculator": 1.0, "story": 0.0, "acc": 0.0}


def _expr(turn) -> str:
    """The expression of a calculator item, from its prompt ("What is 23 plus 37?" -> "23 + 37")."""
    words = {"plus": "+", "minus": "-", "times": "*", "multiplied by": "*", "x": "*"}
    a, b = re.findall(r"\d+", turn.prompt)
    op = next((sym for word, sym in words.items() if f" {word} " in turn.prompt), None)
    op = op or next(c for c in "+-*" if f" {c} " in turn.prompt)
    return f"{a} {op} {b}"


def test_abstaining_includes_the_search_tools_answers():
    from ownllm.eval.chat_tasks import abstains

    assert abstains("I could not find that in the documents.") and abstains("I have no documents to search.")
    assert abstains("The text does not say.") and not abstains("Mia lives in Paris (mia.txt).")


def test_the_skills_are_also_asked_in_phrasings_no_training_conversation_uses():
    """Every third story and sum, and three of the eight name questions, in words the fine-tuning data never uses."""
    from ownllm.chatformat.generated import generate_conversations

    trained = {m["content"] for c in generate_conversations(3000, seed=0) for m in c if m["role"] == "user"}
    for items in (chat_tasks.chat_name("Ada"), chat_tasks.chat_calculator(), chat_tasks.chat_story()):
        groups = {item.group for item in items}
        assert groups == {"trained phrasing", "new phrasing"}
        new = [item for item in items if item.group == "new phrasing"]
        assert len(new) >= len(items) // 3 - 1
        assert not any(item.prompt in trained for item in new)
    story_starts = {p.split(" about ")[0] for p in trained if " story about " in p}
    assert not any(
        item.prompt.split(" about ")[0] in story_starts
        for item in chat_tasks.chat_story()
        if item.group == "new phrasing"
    )
