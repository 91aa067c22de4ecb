"""`ownllm chat`: the session (history, settings, save/load), one-shot and piped use, and the
interactive loop driven through a pseudo-terminal, all on a tiny model trained to answer the
fixture's questions (tests/helpers/chat.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path

import pexpect
import pytest

from helpers import REPO, run_ownllm
from helpers.chat import GREETING, GREETING_REPLY, SONG_REQUEST, SYSTEM, TOOL_ANSWER, TOOL_QUESTION, tiny_chat_run
from ownllm.assistant.session import ChatSession, Settings
from ownllm.cli import main
from ownllm.commands.chat import Repl, describe_tool_call
from ownllm.core.errors import UserError

GREEDY = Settings(temperature=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_chat_run(tmp_path_factory)


@pytest.fixture(scope="module")
def session(run):
    session = ChatSession.open(run, settings=GREEDY, device="cpu")
    yield session
    session.close()


@pytest.fixture
def fresh(session, one_torch_thread):
    session.reset()
    session.system, session.settings = SYSTEM, GREEDY
    return session


def reply_text(events) -> str:
    return "".join(e.text for e in events if e.kind == "text")


# ---- the session ------------------------------------------------------------------------------


def test_the_default_system_prompt_is_the_persona_the_checkpoint_records(session):
    assert session.system == SYSTEM and session.note == f"system prompt: {SYSTEM}"


def test_history_grows_turn_by_turn_with_tool_calls_and_results(fresh):
    assert reply_text(fresh.send(TOOL_QUESTION)) == TOOL_ANSWER
    fresh.set("max_tokens", "12")
    assert reply_text(fresh.send(SONG_REQUEST)).startswith("la la")  # what the model learnt after the first turn
    assert [m["role"] for m in fresh.conversation()] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert fresh.history[1]["tool_call"] == {"name": "calculator", "arguments": "12 * 7"}


def test_a_stopped_reply_is_kept_as_far_as_it_got(fresh):
    fresh.set("max_tokens", "900")
    events = fresh.send(SONG_REQUEST)
    text = ""
    while text.count("la") < 5:
        text += next(events).text
    events.close()
    assert fresh.history == [{"role": "user", "content": SONG_REQUEST}, {"role": "assistant", "content": text}]
    fresh.set("max_tokens", "10")
    assert list(fresh.send(GREETING))[-1].kind == "done"  # and the conversation goes on
    assert [m["role"] for m in fresh.history] == ["user", "assistant", "user", "assistant"]


def test_a_message_too_long_for_the_context_leaves_the_history_as_it_was(fresh):
    list(fresh.send(GREETING))
    before = list(fresh.history)
    with pytest.raises(UserError, match="context holds"):
        list(fresh.send("la " * 2000))
    assert fresh.history == before


def test_settings_are_checked_and_unknown_names_are_listed(fresh):
    fresh.set("temperature", "0.7")
    fresh.set("seed", "3")
    fresh.set("seed", "none")
    assert (fresh.settings.temperature, fresh.settings.seed) == (0.7, None)
    with pytest.raises(UserError) as raised:
        fresh.set("temprature", "1")
    assert str(raised.value) == (
        "unknown setting 'temprature'; settings: temperature, top_k, top_p, repetition_penalty, max_tokens, seed"
    )
    for name, value in (("temperature", "-1"), ("top_p", "0"), ("max_tokens", "many"), ("top_k", "1.5")):
        with pytest.raises(UserError):
            fresh.set(name, value)
    assert fresh.settings.temperature == 0.7


def test_save_and_load_give_back_the_same_conversation_and_settings(fresh, tmp_path):
    list(fresh.send(TOOL_QUESTION))
    fresh.set("top_k", "7")
    path = fresh.save(tmp_path / "chat.json")
    saved = json.loads(path.read_text())
    assert saved["format"] == "ownllm.chat" and saved["messages"] == fresh.conversation()
    conversation, settings = fresh.conversation(), fresh.settings
    fresh.reset()
    fresh.system, fresh.settings = None, GREEDY
    fresh.load(path)
    assert fresh.conversation() == conversation and fresh.settings == settings


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "not JSON"),
        (json.dumps({"messages": []}), "is not a saved chat"),
        (json.dumps({"format": "ownllm.chat", "version": 9, "messages": []}), "version 9"),
        (
            json.dumps(
                {
                    "format": "ownllm.chat",
                    "version": 1,
                    "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}],
                }
            ),
            "message 2 is a user message after a user message",
        ),
        (
            json.dumps({"format": "ownllm.chat", "version": 1, "messages": [{"role": "user", "content": "hi"}]}),
            "ends with a user message",
        ),
        (
            json.dumps({"format": "ownllm.chat", "version": 1, "messages": [], "settings": {"temperature": -2}}),
            "temperature=-2.0 is invalid",
        ),
        (
            json.dumps({"format": "ownllm.chat", "version": 1, "messages": [], "settings": {"warmth": 1}}),
            "unknown settings ['warmth']",
        ),
    ],
)
def test_load_refuses_a_bad_file_in_one_line_and_changes_nothing(fresh, tmp_path, content, expected):
    list(fresh.send(GREETING))
    before = (fresh.conversation(), fresh.settings)
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError) as raised:
        fresh.load(path)
    assert expected in str(raised.value) and "\n" not in str(raised.value)
    assert (fresh.conversation(), fresh.settings) == before
    with pytest.raises(UserError, match="no such file"):
        fresh.load(tmp_path / "missing.json")


def test_the_chat_says_once_when_earlier_turns_stop_fitting(fresh, run, capsys):
    filler = "The little dog ran to the park and played with a big red ball all day long. " * 3
    for _ in range(12):
        fresh.history += [{"role": "user", "content": filler}, {"role": "assistant", "content": filler}]
    fresh.set("max_tokens", "8")
    repl = Repl(fresh, run)
    repl.answer(GREETING)
    notice = capsys.readouterr().err
    assert fresh.last_dropped > 0
    assert f"the {fresh.last_dropped} oldest messages no longer fit in the context" in notice
    fresh.history = fresh.history[:-2]  # the same conversation again: the same number dropped, no news
    repl.answer(GREETING)
    assert "no longer fit" not in capsys.readouterr().err


def test_tool_calls_are_shown_readably():
    assert describe_tool_call({"name": "calculator", "arguments": "12 * 7"}, "84") == "calculator: 12 * 7 = 84"
    assert (
        describe_tool_call({"name": "calculator", "arguments": "1 / 0"}, "error: division by zero")
        == "calculator: 1 / 0 -> error: division by zero"
    )
    assert (
        describe_tool_call({"name": "", "arguments": "12 * 7"}, "error: a tool call must look like ...")
        == "tool call: 12 * 7 -> error: a tool call must look like ..."
    )


# ---- one answer for a script --------------------------------------------------------------------


def test_dash_p_prints_only_the_answer_on_stdout(run):
    result = run_ownllm("chat", "--run", run, "-p", TOOL_QUESTION, "--temperature", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout == TOOL_ANSWER + "\n"
    assert "[calculator: 12 * 7 = 84]" in result.stderr


def test_a_piped_prompt_is_answered_once(run, monkeypatch, capsys, one_torch_thread):
    """In-process: stdin that is not a terminal is read whole as the one prompt."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(GREETING + "\n"))
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--run", str(run), "--temperature", "0", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert (exited.value.code, out) == (0, GREETING_REPLY + "\n"), err


def test_a_missing_run_exits_2_with_one_line(tmp_path):
    result = run_ownllm("chat", "--run", tmp_path / "missing", "-p", "hi")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("error: run directory") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args, stdin, expected",
    [
        (["-p", "hi", "--temperature", "-1"], "", "temperature=-1.0 is invalid"),
        (["-p", "hi", "--max-tokens", "0"], "", "max_tokens=0 is invalid"),
        (["--stage", "pretrain", "-p", "hi"], "", "no pretrain checkpoint"),
        ([], "   \n", "the prompt is empty"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(run, monkeypatch, capsys, args, stdin, expected):
    """In-process (the same main() as the command, without a second PyTorch start-up per case)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--run", str(run), *args])
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


# ---- the interactive loop through a pseudo-terminal ----------------------------------------------


def threads_taking_ctrl_c(pid: int) -> list[int]:
    """The ids of the process's threads that do not block SIGINT (Linux's /proc)."""
    taking = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        blocked = next(line for line in (task / "status").read_text().splitlines() if line.startswith("SigBlk:"))
        if not int(blocked.split()[1], 16) & (1 << (signal.SIGINT - 1)):
            taking.append(int(task.name))
    return taking


def test_interactive_chat_through_a_terminal(run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TERM": "dumb", "OWNLLM_PROGRESS": "0"}
    chat = pexpect.spawn(
        sys.executable,
        ["-m", "ownllm", "chat", "--run", str(run), "--device", "cpu"],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    try:

        def command(line: str, *expected: str) -> None:
            chat.sendline(line)
            for text in expected:
                chat.expect_exact(text)
            chat.expect_exact("> ")

        chat.expect_exact(f"system prompt: {SYSTEM}")
        chat.expect_exact("> ")
        command("/help", "/save FILE", "/set NAME VALUE")
        command("/set temperature 0", "temperature=0.0")
        command("/set warmth 1", "error: unknown setting 'warmth'; settings: temperature, top_k")
        command(TOOL_QUESTION, "[calculator: 12 * 7 = 84]", TOOL_ANSWER)
        # A long reply streams (we see it before it ends) and Ctrl-C stops it without leaving.
        command("/set max_tokens 900", "max_tokens=900")
        chat.sendline(SONG_REQUEST)
        chat.expect_exact("la la la")
        chat.sendcontrol("c")
        chat.expect_exact("[stopped]")
        chat.expect_exact("> ")
        # Every thread is up by now (torch's pools, the engine's): none but the main one may take
        # Ctrl-C, or a Ctrl-C at the prompt can leave the main thread asleep in input().
        assert threads_taking_ctrl_c(chat.pid) == [chat.pid]
        saved = tmp_path / "chat.json"
        command(f"/save {saved}", "saved to")
        command("/reset", "conversation cleared")
        command(f"/load {saved}", "loaded", "6 messages")  # question, call, result, answer; the song
        # Ctrl-C at the prompt clears the line (else the next line would read "half a line/reset",
        # a message for the model). We wait for the echo first: readline notices a Ctrl-C only
        # while it waits for keys, not while it still handles a burst of them (no typist is that
        # fast). The fresh "> " is not awaited: the terminal flushes its output on Ctrl-C, and a
        # prompt written just before the flush is lost (a race in the kernel's tty, not ours).
        chat.send("half a line")
        chat.expect_exact("half a line")
        chat.sendcontrol("c")
        command("/reset", "conversation cleared")
        # Ctrl-D leaves with status 0.
        command(GREETING, GREETING_REPLY)
        chat.sendcontrol("d")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0, chat.before
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    song = messages[-1]["content"]
    assert song.startswith("la la la") and len(song) < 3 * 800  # stopped well before max_tokens
