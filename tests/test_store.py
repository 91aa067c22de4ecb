"""The conversation store (assistant.db) and `ownllm feedback export`, on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from ownllm.commands.feedback import build_datasets
from ownllm.core.errors import UserError
from ownllm.server.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ConversationBusy,
    NothingToReplace,
    Store,
)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "assistant.db")
    yield s
    s.close()


def answer(store: Store, owner: str, conversation_id: str, question: str, reply: str, kind: str = "send") -> str:
    """One complete exchange; returns the reply's id."""
    turn = store.begin_turn(owner, conversation_id, kind, question)
    store.finish_message(turn.reply_id, reply)
    return turn.reply_id


def test_conversations_crud_and_owner_isolation(store):
    first = store.create_conversation(
        "alice", title="first", system_prompt="You are Pip.", settings={"temperature": 0.5}
    )
    second = store.create_conversation("alice")
    store.create_conversation("bob", title="bob's")
    assert len(first["id"]) >= 20 and first["id"] != second["id"]
    assert [c["id"] for c in store.list_conversations("alice")] == [second["id"], first["id"]]
    answer(store, "alice", first["id"], "hello", "hi there")
    assert [c["id"] for c in store.list_conversations("alice")] == [first["id"], second["id"]], "newest activity first"

    got = store.get_conversation("alice", first["id"])
    assert got["settings"] == {"temperature": 0.5} and got["system_prompt"] == "You are Pip."
    assert [(m["role"], m["content"], m["status"]) for m in got["messages"]] == [
        ("user", "hello", "complete"),
        ("assistant", "hi there", "complete"),
    ]
    assert store.get_conversation("bob", first["id"]) is None, "another owner sees nothing"
    assert store.update_conversation("bob", first["id"], title="mine now") is None
    assert store.delete_conversation("bob", first["id"]) is False
    assert store.begin_turn("bob", first["id"], "send", "hi") is None
    assert store.rate("bob", got["messages"][1]["id"], "up") is None

    renamed = store.update_conversation("alice", first["id"], title="greetings")
    assert renamed["title"] == "greetings" and renamed["system_prompt"] == "You are Pip."
    exported = store.export_conversation("alice", first["id"])
    assert exported["format"] == "ownllm.conversation" and exported["title"] == "greetings"
    assert [m["content"] for m in exported["messages"]] == ["hello", "hi there"]
    json.dumps(exported)  # plain JSON all the way down

    assert store.delete_conversation("alice", first["id"]) is True
    assert store.get_conversation("alice", first["id"]) is None
    assert [c["id"] for c in store.list_conversations("alice")] == [second["id"]]


def test_title_comes_from_the_first_message(store):
    c = store.create_conversation("me")
    answer(store, "me", c["id"], "  What is a cat?\nTell me more.", "An animal.")
    answer(store, "me", c["id"], "And a dog?", "Another animal.")
    assert store.get_conversation("me", c["id"])["title"] == "What is a cat?"


def test_a_turn_saves_the_user_message_and_a_streaming_reply_at_once(store):
    c = store.create_conversation("me")
    answer(store, "me", c["id"], "one", "reply one")
    turn = store.begin_turn("me", c["id"], "send", "two")
    assert turn.history == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "reply one"},
        {"role": "user", "content": "two"},
    ]
    reopened = Store(store.path, recover=False)  # another connection sees it committed
    messages = reopened.get_conversation("me", c["id"])["messages"]
    assert [(m["content"], m["status"]) for m in messages[2:]] == [("two", "complete"), ("", "streaming")]
    with pytest.raises(ConversationBusy):
        store.begin_turn("me", c["id"], "send", "three")
    store.save_text(turn.reply_id, "reply t")
    assert reopened.get_conversation("me", c["id"])["messages"][-1]["content"] == "reply t"
    store.finish_message(turn.reply_id, "reply two")
    assert reopened.get_conversation("me", c["id"])["messages"][-1]["status"] == "complete"
    reopened.close()


def test_regenerate_and_edit_keep_the_replaced_messages(store):
    c = store.create_conversation("me")
    answer(store, "me", c["id"], "hi", "hello")
    first = answer(store, "me", c["id"], "2+2?", "5")
    turn = store.begin_turn("me", c["id"], "regenerate")
    assert turn.user_id is None and turn.replaced == [first]
    assert turn.history[-1] == {"role": "user", "content": "2+2?"}
    store.finish_message(turn.reply_id, "4")
    assert [m["content"] for m in store.get_conversation("me", c["id"])["messages"]] == ["hi", "hello", "2+2?", "4"]

    edit = store.begin_turn("me", c["id"], "edit", "3+3?")
    store.finish_message(edit.reply_id, "6")
    assert [m["content"] for m in store.get_conversation("me", c["id"])["messages"]] == ["hi", "hello", "3+3?", "6"]
    every = store.export_conversation("me", c["id"])["messages"]
    assert sorted(m["content"] for m in every if not m["active"]) == ["2+2?", "4", "5"]
    by_content = {m["content"]: m for m in every}
    assert by_content["5"]["parent_id"] == by_content["4"]["parent_id"] == by_content["2+2?"]["id"]
    assert by_content["6"]["parent_id"] == by_content["3+3?"]["id"]
    assert by_content["3+3?"]["parent_id"] == by_content["hello"]["id"]


def test_regenerate_or_edit_needs_a_user_message(store):
    c = store.create_conversation("me")
    for kind in ("regenerate", "edit"):
        with pytest.raises(NothingToReplace):
            store.begin_turn("me", c["id"], kind, "x")


def test_an_abandoned_turn_leaves_the_conversation_as_it_was(store):
    c = store.create_conversation("me")
    answer(store, "me", c["id"], "hi", "hello")
    before = store.get_conversation("me", c["id"])["messages"]
    for kind in ("send", "regenerate", "edit"):
        turn = store.begin_turn("me", c["id"], kind, "something else")
        store.abandon_turn(turn)
        assert store.get_conversation("me", c["id"])["messages"] == before
    assert len(store.export_conversation("me", c["id"])["messages"]) == 2


def test_a_tool_call_is_saved_with_its_result(store):
    c = store.create_conversation("me")
    turn = store.begin_turn("me", c["id"], "send", "What is 12 * 7?")
    store.tool_step(turn, "", {"name": "calculator", "arguments": "12 * 7"}, "84")
    store.finish_message(turn.reply_id, "12 * 7 = 84.")
    messages = store.get_conversation("me", c["id"])["messages"]
    assert [(m["role"], m["content"], m.get("tool_call")) for m in messages] == [
        ("user", "What is 12 * 7?", None),
        ("assistant", "", {"name": "calculator", "arguments": "12 * 7"}),
        ("tool", "84", None),
        ("assistant", "12 * 7 = 84.", None),
    ]
    assert len(turn.added) == 4


def test_replies_cut_off_by_a_crash_become_interrupted(tmp_path):
    path = tmp_path / "assistant.db"
    writer = Store(path)
    c = writer.create_conversation("me")
    answer(writer, "me", c["id"], "first", "done")
    turn = writer.begin_turn("me", c["id"], "send", "second")
    writer.save_text(turn.reply_id, "half a rep")
    # A reader (feedback export) while the server streams must not touch the live reply.
    Store(path, recover=False).close()
    assert writer.get_conversation("me", c["id"])["messages"][-1]["status"] == "streaming"
    # The server restarts (the old connection is simply dropped, as by SIGKILL).
    restarted = Store(path)
    messages = restarted.get_conversation("me", c["id"])["messages"]
    assert [(m["content"], m["status"]) for m in messages] == [
        ("first", "complete"),
        ("done", "complete"),
        ("second", "complete"),
        ("half a rep", "interrupted"),
    ]
    answer(restarted, "me", c["id"], "third", "fine")  # the conversation goes on after the cut
    restarted.close()
    writer.close()


def test_a_new_database_is_private_and_opened_by_many_at_once(tmp_path):
    path = tmp_path / "assistant.db"
    stores, errors = [], []

    def open_store():
        try:
            stores.append(Store(path))
        except Exception as e:  # noqa: BLE001 -- reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and {s.schema_version for s in stores} == {SCHEMA_VERSION}
    for s in stores:
        s.close()
    assert path.stat().st_mode & 0o077 == 0, "other users cannot read the conversations"


def test_a_version_1_database_is_migrated(tmp_path):
    path = tmp_path / "assistant.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    db.execute("INSERT INTO conversations VALUES ('c1', 'me', 'old', '', '{}', 1.0, 2.0)")
    db.executemany(
        "INSERT INTO messages VALUES (?, 'c1', ?, ?, ?, NULL, 'complete', 1.0)",
        [
            ("m0", 0, "user", "hi"),
            ("m1", 1, "assistant", "hello"),
            ("m2", 2, "user", "bye"),
            ("m3", 3, "assistant", "see you"),
        ],
    )
    db.commit()
    db.close()

    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION == 5
    conversation = store.get_conversation("me", "c1")
    assert [m["content"] for m in conversation["messages"]] == ["hi", "hello", "bye", "see you"]
    assert not any("citations" in m for m in conversation["messages"]), "old replies cite nothing"
    parents = {m["id"]: m["parent_id"] for m in store.export_conversation("me", "c1")["messages"]}
    assert parents == {"m0": None, "m1": "m0", "m2": "m1", "m3": "m2"}
    store.rate("me", "m3", "up")  # the new table works on old data
    regenerated = store.begin_turn("me", "c1", "regenerate")
    assert regenerated.replaced == ["m3"]
    store.close()
    assert Store(path).schema_version == 5, "opening again applies nothing twice"


def test_a_database_from_a_newer_ownllm_is_refused(tmp_path):
    path = tmp_path / "assistant.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(UserError, match="newer"):
        Store(path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "assistant.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(UserError, match="cannot open"):
        Store(path)


def test_feedback_is_kept_replaced_and_removed_with_its_conversation(store):
    c = store.create_conversation("me")
    reply = answer(store, "me", c["id"], "hi", "hello")
    user = store.get_conversation("me", c["id"])["messages"][0]["id"]
    assert store.rate("me", user, "up") is None, "only assistant messages are rated"
    assert store.rate("me", reply, "down", "rude")["rating"] == "down"
    rated = store.rate("me", reply, "up", "")
    assert (rated["rating"], rated["comment"]) == ("up", "")
    assert store.get_conversation("me", c["id"])["messages"][1]["rating"] == "up"
    assert store.rate("me", reply, None)["rating"] is None
    store.rate("me", reply, "up")
    store.delete_conversation("me", c["id"])
    assert store.rated_replies() == []
    assert store._read("SELECT COUNT(*) FROM feedback")[0][0] == 0


def test_threads_share_one_store(store):
    conversations = [store.create_conversation(f"owner{i}") for i in range(4)]

    def chat(i):
        for n in range(10):
            answer(store, f"owner{i}", conversations[i]["id"], f"q{n}", f"a{n}")

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, c in enumerate(conversations):
        assert len(store.get_conversation(f"owner{i}", c["id"])["messages"]) == 20


def test_feedback_becomes_sft_conversations_and_preference_pairs(store):
    c = store.create_conversation("me", system_prompt="You are Pip.")
    store.rate("me", answer(store, "me", c["id"], "hi", "hello!"), "up")
    bad = answer(store, "me", c["id"], "2+2?", "5")
    store.rate("me", bad, "down")
    good = store.begin_turn("me", c["id"], "regenerate")
    store.tool_step(good, "", {"name": "calculator", "arguments": "2+2"}, "4")
    store.finish_message(good.reply_id, "It is 4.")
    store.rate("me", good.reply_id, "up")
    stopped = store.begin_turn("me", c["id"], "send", "tell me a story")
    store.finish_message(stopped.reply_id, "Once upon a", status="interrupted")
    store.rate("me", stopped.reply_id, "up")
    other = store.create_conversation("you")  # the same question elsewhere, answered badly
    store.rate("you", answer(store, "you", other["id"], "hi", "go away"), "down")

    sft, pairs, counts = build_datasets(store.rated_replies())
    assert counts == {"up": 3, "down": 2, "unfinished": 1, "invalid": 0}
    system = {"role": "system", "content": "You are Pip."}
    assert sft == [
        [system, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
        [
            system,
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello!"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "", "tool_call": {"name": "calculator", "arguments": "2+2"}},
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "It is 4."},
        ],
    ]
    assert pairs == [
        {
            "prompt": sft[1][:4],
            "chosen": sft[1][4:],
            "rejected": [{"role": "assistant", "content": "5"}],
        }
    ], "the other conversation has no system prompt: another prompt, no pair"


def test_feedback_export_command(tmp_path, ownllm):
    run = tmp_path / "run"
    store = Store.for_run(run)
    c = store.create_conversation("me")
    store.rate("me", answer(store, "me", c["id"], "hi", "hello"), "up")
    store.rate("me", answer(store, "me", c["id"], "hi", "hey", kind="edit"), "down")
    store.close()

    result = ownllm("feedback", "export", "--run", run)
    assert result.returncode == 0, result.stderr
    assert "1 thumbs up, 1 thumbs down" in result.stderr and "1 preference pairs" in result.stderr
    sft = [json.loads(line) for line in (run / "feedback" / "sft.jsonl").read_text().splitlines()]
    assert sft == [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    from ownllm.chatformat.datasets import load_conversations

    assert load_conversations(run / "feedback" / "sft.jsonl").conversations == [sft[0]["messages"]]
    pairs = [json.loads(line) for line in (run / "feedback" / "preferences.jsonl").read_text().splitlines()]
    assert pairs == [
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "hey"}],
        }
    ]

    out = tmp_path / "elsewhere"
    assert ownllm("feedback", "export", "--run", run, "--out", out).returncode == 0
    assert (out / "sft.jsonl").read_text() == (run / "feedback" / "sft.jsonl").read_text()

    missing = ownllm("feedback", "export", "--run", tmp_path / "nothing-here")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    no_db = ownllm("feedback", "export", "--run", empty_run)
    assert no_db.returncode == 2 and "nothing was rated" in no_db.stderr
