"""Memory of the user: facts found in messages, kept per owner in assistant.db, recalled into the system
prompt when a message is about them, listed and deleted from the chat and through the API; one key never
sees another's."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import httpx
import pytest

from helpers import torch_threads
from helpers.chat import tiny_chat_run
from helpers.runs import ownllm_here
from helpers.server import live_server
from ownllm.assistant.memory import relevant, stated_fact, with_memories
from ownllm.commands.chat import Repl
from ownllm.core.errors import UserError
from ownllm.server.security import owner_id
from ownllm.server.settings import ServerSettings
from ownllm.server.store import Store

KEY = "memory-key"


def test_facts_are_found_in_what_people_say():
    assert stated_fact("Please remember that the meeting is on Friday.") == "the meeting is on Friday"
    assert stated_fact("Hi! my name is Sam") == "The user's name is Sam."
    assert stated_fact("I live in Paris now") == "The user lives in Paris now."
    assert stated_fact("I'm 34 years old") == "The user is 34 years old."
    assert stated_fact("What is 12 * 7?") is None and stated_fact("Tell me a story about a cat") is None
    kept = ["the meeting is on Friday", "The user's name is Sam.", "The user likes green tea."]
    assert relevant(kept, "When is the meeting?") == ["The user's name is Sam.", "the meeting is on Friday"]
    assert relevant(kept, "Hello!") == ["The user's name is Sam."]  # the name, always
    assert with_memories("You are Pip.", ["the meeting is on Friday"]) == (
        "You are Pip. The user told you: The meeting is on Friday."
    )
    assert with_memories(None, []) is None


def test_memories_are_kept_per_owner(tmp_path):
    store = Store(tmp_path / "assistant.db")
    mine = store.remember("me", "  the meeting is   on Friday ")
    assert store.remember("me", "the meeting is on Friday")["id"] == mine["id"]  # kept once
    store.remember("you", "your secret")
    assert [m["text"] for m in store.memories("me")] == ["the meeting is on Friday"]
    assert not store.forget("you", mine["id"]) and store.forget("me", mine["id"]) and store.memories("me") == []
    store.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("memory") / "run"
    shutil.copytree(tiny_chat_run(tmp_path_factory), run)
    return run


def test_the_api_keeps_a_keys_memories_its_own(run):
    with torch_threads(1), live_server(run, ServerSettings(api_key=KEY)) as live:
        store = live.app.state.store
        theirs = store.remember(owner_id("another key", store.secret()), "their secret")
        api = httpx.Client(base_url=live.url + "/api", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        made = api.post("/memories", json={"text": "the meeting is on Friday"})
        assert made.status_code == 201
        conversation = api.post("/conversations", json={}).json()["id"]
        with api.stream("POST", f"/conversations/{conversation}/messages", json={"content": "my name is Sam"}) as r:
            r.read()
        kept = [m["text"] for m in api.get("/memories").json()["memories"]]
        assert kept == ["the meeting is on Friday", "The user's name is Sam."]
        assert api.delete(f"/memories/{theirs['id']}").status_code == 404  # not theirs to see
        assert api.delete(f"/memories/{made.json()['id']}").status_code == 204
        assert [m["text"] for m in api.get("/memories").json()["memories"]] == ["The user's name is Sam."]
        assert httpx.get(live.url + "/api/memories").status_code == 401
        assert api.post("/memories", json={"text": "x" * 501}).status_code == 400


def test_ownllm_chat_remembers_and_lists_and_forgets(run, tmp_path, capsys):
    local = tmp_path / "run"
    shutil.copytree(run, local, ignore=shutil.ignore_patterns("assistant.*"))
    status, err = ownllm_here(
        capsys, "chat", "--run", local, "--max-tokens", "4", "-p", "Remember that I park in bay 7"
    )
    assert status == 0 and "(remembered: I park in bay 7" in err
    store = Store.for_run(local)
    session = SimpleNamespace(memory=store, memory_owner="local")
    repl = Repl(session, local)
    repl.command("/remember the dentist is on Tuesday")
    capsys.readouterr()
    repl.command("/memories")
    assert capsys.readouterr().out == "  1. I park in bay 7\n  2. the dentist is on Tuesday\n"
    repl.command("/forget 1")
    assert [m["text"] for m in store.memories("local")] == ["the dentist is on Tuesday"]
    with pytest.raises(UserError, match="number of a memory"):
        repl.command("/forget 9")
    store.close()


def test_a_run_whose_assistant_db_cannot_be_opened_chats_without_memories(run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("assistant.*"))
    (broken / "assistant.db").mkdir()  # not a file: as unusable as a read-only run directory
    status, err = ownllm_here(capsys, "chat", "--run", broken, "--max-tokens", "4", "-p", "my name is Sam")
    assert status == 0 and "(memories are off: cannot open" in err and "Traceback" not in err
    with pytest.raises(UserError, match="memories are off"):
        Repl(SimpleNamespace(memory=None, memory_owner="local"), broken).command("/memories")
