"""Conversation loaders on the bundled real files and on broken ones: counts, line numbers, best-ranked paths."""

from __future__ import annotations

import json
import random
import re

import pytest

from ownllm.chatformat import Persona, bundled_sft_dir, detect_format, load_bundled, load_conversations, validate
from ownllm.chatformat.report import MAX_REPORTED_PROBLEMS
from ownllm.core.errors import UserError

SFT = bundled_sft_dir()
OASST = SFT / "oasst-en100-trees.jsonl"
DOLLY = SFT / "dolly-151.jsonl"
CHATTERBOT = SFT / "chatterbot-english"


def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def test_bundled_files_and_their_licences_are_shipped():
    licences = (SFT / "LICENSES.md").read_text(encoding="utf-8")
    for name, licence in (
        ("oasst-en100-trees.jsonl", "Apache-2.0"),
        ("dolly-151.jsonl", "CC BY-SA 3.0"),
        ("chatterbot-english", "BSD-3-Clause"),
    ):
        assert (SFT / name).exists()
        assert re.search(rf"{re.escape(name)}.*{re.escape(licence)}", licences), name


def test_every_bundled_source_loads_into_valid_conversations():
    results = {r.report.source: r for r in load_bundled()}
    assert results["oasst-en100-trees.jsonl"].report.loaded == 100  # one best path per tree
    assert results["dolly-151.jsonl"].report.loaded == 151
    assert results["chatterbot-english"].report.loaded > 800
    for result in results.values():
        for conversation in result.conversations:
            assert validate(conversation, for_training=True) == conversation
            assert conversation[-1]["role"] == "assistant"


def test_oasst_follows_the_best_ranked_reply_not_the_file_order(tmp_path):
    trees = [json.loads(line) for line in OASST.read_text(encoding="utf-8").splitlines()]

    def best_path(node):  # the rule, written independently: lowest rank, then an answered follow-up
        path = [node]
        while node["replies"]:
            ranked = [r for r in node["replies"] if r.get("rank") is not None]
            if ranked:
                node = min(ranked, key=lambda r: r["rank"])
            else:
                node = next((r for r in node["replies"] if r["replies"]), node["replies"][0])
            path.append(node)
        while path[-1]["role"] != "assistant":
            path.pop()
        return [
            {"role": "user" if n["role"] == "prompter" else "assistant", "content": n["text"].strip()} for n in path
        ]

    expected = [best_path(t["prompt"]) for t in trees]
    assert load_conversations(OASST).conversations == expected
    assert max(len(c) for c in expected) >= 4  # multi-turn paths are exercised

    def shuffle_ranked(node, rng):  # reorder every list of ranked replies (unranked ones keep their order)
        if all(r.get("rank") is not None for r in node["replies"]):
            rng.shuffle(node["replies"])
        for reply in node["replies"]:
            shuffle_ranked(reply, rng)

    rng = random.Random(0)
    for tree in trees:
        shuffle_ranked(tree["prompt"], rng)
    assert sum(t["prompt"]["replies"][0].get("rank") != 0 for t in trees) > 30  # the order really changed
    shuffled = write_lines(tmp_path / "shuffled.jsonl", [json.dumps(t) for t in trees])
    assert load_conversations(shuffled, format="oasst").conversations == expected


def test_oasst_skips_deleted_and_failed_replies_and_prefers_answered_follow_ups(tmp_path):
    def msg(role, text, rank=None, replies=(), **extra):
        return {"role": role, "text": text, "rank": rank, "replies": list(replies), **extra}

    tree = {
        "prompt": msg(
            "prompter",
            "Question?",
            replies=[
                msg("assistant", "deleted best", rank=0, deleted=True),
                msg("assistant", "unranked", rank=None),
                msg("assistant", "failed review", rank=1, review_result=False),
                msg(
                    "assistant",
                    "the best usable answer",
                    rank=2,
                    replies=[
                        msg("prompter", "follow-up nobody answered"),
                        msg("prompter", "answered follow-up", replies=[msg("assistant", "final answer", rank=0)]),
                    ],
                ),
            ],
        )
    }
    no_answer = {"prompt": msg("prompter", "Anyone?", replies=[msg("assistant", "gone", rank=0, deleted=True)])}
    path = write_lines(tmp_path / "trees.jsonl", [json.dumps(tree), json.dumps(no_answer)])
    loaded = load_conversations(path, format="oasst")
    assert [m["content"] for m in loaded.conversations[0]] == [
        "Question?",
        "the best usable answer",
        "answered follow-up",
        "final answer",
    ]
    assert loaded.report.skipped == 1 and loaded.report.problems == ["trees.jsonl:2: the tree has no assistant reply"]


def test_dolly_wrapper_and_end_marker_are_stripped():
    loaded = load_conversations(DOLLY)
    assert detect_format(DOLLY) == "dolly"
    for conversation in loaded.conversations:
        for message in conversation:
            assert "###" not in message["content"] and "Below is an instruction" not in message["content"]
    first = loaded.conversations[0]
    assert first[0]["content"] == "Why is Citizen Kane considered the Best Film?"
    assert first[1]["content"].startswith("The American Film Institute")
    with_input = next(c for c in loaded.conversations if c[0]["content"].startswith("Extract the majors of Suzanne"))
    instruction, context = with_input[0]["content"].split("\n\n", 1)
    assert instruction.endswith("Separate them with a comma.") and context.startswith("Collins graduated")
    assert with_input[1]["content"] == "Theater Arts, Theater, Telecommunications, Fine Arts in dramatic writing"


def test_dolly_with_an_unexpected_wrapper_is_skipped(tmp_path):
    good = {"prompt": "### Instruction:\nSay hi.\n\n### Response:", "answer": "Hi!###eos_token###"}
    plain = {"prompt": "Say hello.", "answer": "Hello!"}
    odd = {"prompt": "### Human: Say hi.\n### Assistant:", "answer": "Hi"}
    loaded = load_conversations(write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in (good, plain, odd)]))
    assert loaded.conversations == [
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}],
    ]
    assert loaded.report.skipped == 1 and loaded.report.problems[0].startswith("d.jsonl:3: the prompt's")


def test_messages_jsonl_skips_malformed_lines_and_reports_them_by_number(tmp_path):
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    lines = [
        json.dumps(ok),  # 1
        "",  # 2: blank lines are not records
        "{not json",  # 3
        "[1, 2]",  # 4
        json.dumps({"conversation": []}),  # 5
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "beep"}]}),  # 6
        b"\xff\xfe not utf-8",  # 7
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),  # 8
        json.dumps(ok),  # 9: an exact duplicate
        json.dumps({"messages": [{"role": "user", "content": " Hey "}, {"role": "assistant", "content": "Yo"}]}),
    ]
    loaded = load_conversations(write_lines(tmp_path / "chats.jsonl", lines))
    report = loaded.report
    assert (report.loaded, report.skipped, report.duplicates) == (2, 6, 1)
    assert (
        report.problems
        == [
            "chats.jsonl:3: not JSON (Expecting property name enclosed in double quotes at column 2)",
            "chats.jsonl:4: not a JSON object",
            "chats.jsonl:5: no 'messages' list",
            "chats.jsonl:6: message 2 has role 'robot'; expected one of system, user, assistant, tool",
            "chats.jsonl:7: not UTF-8 text",
        ][:MAX_REPORTED_PROBLEMS]
    )
    assert loaded.conversations[1][0]["content"] == "Hey"  # text is stripped
    summary = report.summary()
    assert summary.startswith("chats.jsonl: 2 conversations, 1 duplicates dropped, 6 malformed records skipped (")
    assert summary.endswith("; and 1 more)") and "\n" not in summary


def test_messages_jsonl_keeps_tool_calls(tmp_path):
    chat = {
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "", "tool_call": {"name": "calculator", "arguments": "2 + 2"}},
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "4."},
        ]
    }
    loaded = load_conversations(write_lines(tmp_path / "tools.jsonl", [json.dumps(chat)]))
    assert loaded.conversations == [chat["messages"]]


def test_alpaca_records_with_and_without_input(tmp_path):
    records = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "No answer here.", "input": ""},
        {"instruction": "Bad input type.", "input": 7, "output": "x"},
    ]
    loaded = load_conversations(write_lines(tmp_path / "alpaca.jsonl", [json.dumps(r) for r in records]))
    assert detect_format(tmp_path / "alpaca.jsonl") == "alpaca"
    assert loaded.conversations == [
        [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
    ]
    assert loaded.report.problems == ["alpaca.jsonl:3: missing text 'output'", "alpaca.jsonl:4: 'input' is not text"]


def test_chatterbot_corpus_real_files():
    loaded = load_conversations(CHATTERBOT)
    report = loaded.report
    # trivia.yml line 35 really is broken: its question lacks the second "- ".
    assert report.skipped == 1 and report.problems == ["trivia.yml:35: a dialogue must be a list of texts"]
    assert report.duplicates > 1000  # tech_support.yml repeats the same dialogues many times
    greetings = [c for c in loaded.conversations if c[0]["content"] == "Hi, How is it going?"]
    assert {c[1]["content"] for c in greetings} >= {"Good", "Fine", "Okay", "Great"}


CHATTERBOT_YAML = """\
categories:
- identity
conversations:
- - What is your name?
  - My name is ChatterBot.
- - Are you a chatter bot?
  - Yes, I am chatterbot, the best chatterbots ever.
- - Do you agree?
  - yes
- - What is six times seven?
  - 42
- - Hello
  - Hi
  - How are you?
- - just a question
- not a list
- - - nested
  - x
- - ''
  - empty question
"""


def test_chatterbot_renames_the_other_bot_and_reports_bad_dialogues(tmp_path):
    path = tmp_path / "bot.yml"
    path.write_text(CHATTERBOT_YAML, encoding="utf-8")
    loaded = load_conversations(path, persona=Persona(name="Wren"))
    assert detect_format(path) == "chatterbot"
    texts = [[m["content"] for m in c] for c in loaded.conversations]
    assert texts == [
        ["What is your name?", "My name is Wren."],
        ["Are you a Wren?", "Yes, I am Wren, the best chatterbots ever."],  # the plural common noun stays
        ["Do you agree?", "yes"],  # YAML would have made this True
        ["What is six times seven?", "42"],  # ... and this an int
        ["Hello", "Hi"],  # the unanswered last question is dropped
    ]
    assert loaded.report.edited == 2
    assert loaded.report.problems == [
        "bot.yml:15: a dialogue needs a user turn and an answer",
        "bot.yml:16: a dialogue must be a list of texts",
        "bot.yml:17: a dialogue must be a list of texts",
        "bot.yml:19: message 1 (user) is empty",
    ]


def test_broken_yaml_is_reported_with_its_line(tmp_path):
    good = tmp_path / "good.yml"
    good.write_text("conversations:\n- - Hi\n  - Hello\n", encoding="utf-8")
    (tmp_path / "broken.yml").write_text("conversations:\n- - Hi\n  - [unclosed\n", encoding="utf-8")
    (tmp_path / "other.yml").write_text("categories: [x]\n", encoding="utf-8")
    loaded = load_conversations(tmp_path)
    assert loaded.conversations == [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]]
    assert loaded.report.skipped == 2
    assert loaded.report.problems[0].startswith("broken.yml:4: not valid YAML")
    assert loaded.report.problems[1] == "other.yml:1: no 'conversations' list"


def test_user_mistakes_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_conversations(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="unknown conversation format 'csv'"):
        load_conversations(DOLLY, format="csv")
    unknown = write_lines(tmp_path / "unknown.jsonl", [json.dumps({"question": "q", "reply": "a"})])
    with pytest.raises(UserError, match="cannot tell the format"):
        load_conversations(unknown)
    all_bad = write_lines(tmp_path / "bad.jsonl", ["{", json.dumps({"messages": "x"})])
    with pytest.raises(UserError, match=r"no usable messages conversations in .*bad.jsonl \(bad.jsonl:1: not JSON"):
        load_conversations(all_bad)
    with pytest.raises(UserError, match="has no JSON object per line"):
        load_conversations(write_lines(tmp_path / "text.jsonl", ["hello"]))
