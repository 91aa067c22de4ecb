"""The web page's API (/api): conversations in assistant.db, streamed replies, feedback, and a SIGKILL mid-reply.

A real server (create_app under uvicorn, tests/helpers/server.py, with an API key) on the tiny
chat model of tests/helpers/chat.py, which at temperature 0 answers "Hello" with "Hi! I am
Pip.", "What is 12 * 7?" with a calculator call then "12 * 7 = 84.", and "Sing" with "la la
la ..." that does not end by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from helpers import REPO, torch_threads
from helpers.chat import GREETING, GREETING_REPLY, SONG_REQUEST, SYSTEM, TOOL_ANSWER, TOOL_QUESTION, tiny_chat_run
from helpers.server import live_server
from ownllm.server.security import legacy_owner_id, owner_id
from ownllm.server.settings import ServerSettings
from ownllm.server.store import Store

KEY = "conversations-key"
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A copy of the shared tiny run: this module's assistant.db is its own."""
    copy = tmp_path_factory.mktemp("conversations") / "run"
    shutil.copytree(tiny_chat_run(tmp_path_factory), copy, ignore=shutil.ignore_patterns("assistant.db*"))
    return copy


@pytest.fixture(scope="module")
def server(run_dir):
    settings = ServerSettings(api_key=KEY, max_slots=2, max_queue=2, max_message_chars=5000)
    with torch_threads(1), live_server(run_dir, settings) as live:
        yield live


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=f"{server.url}/api", headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


def events(response: httpx.Response) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a whole server-sent event stream."""
    out = []
    for block in response.text.split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.strip().split("\n"))
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def _blocks(response: httpx.Response):
    """The event blocks of a stream as they arrive."""
    buffer = ""
    for text in response.iter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield block


def say(api, conversation: str, content: str | None, action: str = "messages", **settings) -> list[tuple[str, dict]]:
    body = {**GREEDY, **settings, **({"content": content} if content is not None else {})}
    response = api.post(f"/conversations/{conversation}/{action}", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return events(response)


def new_conversation(api, **body) -> str:
    response = api.post("/conversations", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def messages(api, conversation: str) -> list[dict]:
    return api.get(f"/conversations/{conversation}").json()["messages"]


def test_conversations_are_created_listed_renamed_exported_and_deleted(api):
    first = api.post("/conversations", json={})
    assert first.status_code == 201
    created = first.json()
    assert created["system_prompt"] == SYSTEM, "the persona's prompt is the default"
    assert len(created["id"]) >= 20
    other = new_conversation(api, title="mine", system_prompt="", settings={"temperature": 0.3, "max_tokens": 64})
    listed = [c["id"] for c in api.get("/conversations").json()["conversations"]]
    assert listed.index(other) < listed.index(created["id"]), "newest first"

    renamed = api.patch(f"/conversations/{created['id']}", json={"title": "Renamed"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Renamed"
    got = api.get(f"/conversations/{other}").json()
    assert (got["title"], got["system_prompt"], got["settings"], got["messages"]) == (
        "mine",
        "",
        {"temperature": 0.3, "max_tokens": 64},
        [],
    )

    say(api, created["id"], GREETING)
    exported = api.get(f"/conversations/{created['id']}/export")
    assert exported.status_code == 200
    assert "attachment" in exported.headers["content-disposition"]
    assert [m["content"] for m in exported.json()["messages"]] == [GREETING, GREETING_REPLY]

    assert api.delete(f"/conversations/{created['id']}").status_code == 204
    assert api.get(f"/conversations/{created['id']}").status_code == 404
    assert api.delete(f"/conversations/{created['id']}").status_code == 404
    assert created["id"] not in [c["id"] for c in api.get("/conversations").json()["conversations"]]


def test_a_message_streams_its_reply_and_both_are_stored(api, server):
    conversation = new_conversation(api)
    stream = say(api, conversation, GREETING)
    kinds = [kind for kind, _ in stream]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"text"} and len(kinds) > 3
    start, done = stream[0][1], stream[-1][1]
    assert "".join(data["text"] for kind, data in stream if kind == "text") == GREETING_REPLY
    assert done["finish_reason"] == "stop" and done["dropped"] == 0 and done["usage"]["completion_tokens"] > 0
    assert [(m["id"], m["role"], m["content"], m["status"]) for m in done["messages"]] == [
        (start["user_message"]["id"], "user", GREETING, "complete"),
        (start["reply_id"], "assistant", GREETING_REPLY, "complete"),
    ]
    assert messages(api, conversation) == done["messages"]
    got = api.get(f"/conversations/{conversation}").json()
    assert got["title"] == GREETING and got["settings"] == {"temperature": 0}


def test_a_tool_call_streams_as_call_and_result(api):
    conversation = new_conversation(api)
    stream = say(api, conversation, TOOL_QUESTION)
    assert [kind for kind, _ in stream if kind != "text"] == ["start", "tool_call", "tool_result", "done"]
    tool_call = next(data for kind, data in stream if kind == "tool_call")
    tool_result = next(data for kind, data in stream if kind == "tool_result")
    assert (tool_call["text"], tool_result["text"]) == ("calculator(12 * 7)", "84")
    assert "".join(data["text"] for kind, data in stream if kind == "text") == TOOL_ANSWER
    stored = messages(api, conversation)
    assert [(m["role"], m["content"], m.get("tool_call")) for m in stored] == [
        ("user", TOOL_QUESTION, None),
        ("assistant", "", {"name": "calculator", "arguments": "12 * 7"}),
        ("tool", "84", None),
        ("assistant", TOOL_ANSWER, None),
    ]
    assert tool_result["messages"] == stored[1:3] and tool_result["reply_id"] == stored[3]["id"]


def test_regenerate_and_edit_replace_the_last_reply_and_keep_the_old_one(api):
    conversation = new_conversation(api)
    say(api, conversation, GREETING)
    first_reply = messages(api, conversation)[-1]["id"]
    regenerated = say(api, conversation, None, action="regenerate")
    assert regenerated[0][1]["user_message"] is None
    assert [m["content"] for m in messages(api, conversation)] == [GREETING, GREETING_REPLY]
    assert messages(api, conversation)[-1]["id"] != first_reply

    say(api, conversation, TOOL_QUESTION, action="edit")
    assert [m["content"] for m in messages(api, conversation)] == [TOOL_QUESTION, "", "84", TOOL_ANSWER]
    kept = api.get(f"/conversations/{conversation}/export").json()["messages"]
    assert sorted(m["content"] for m in kept if not m["active"]) == sorted([GREETING, GREETING_REPLY, GREETING_REPLY])

    empty = new_conversation(api)
    refused = api.post(f"/conversations/{empty}/regenerate", json={})
    assert refused.status_code == 400 and "no user message" in refused.json()["error"]["message"]


def test_feedback_on_a_reply(api, server):
    conversation = new_conversation(api)
    say(api, conversation, GREETING)
    user, reply = messages(api, conversation)
    rated = api.post(f"/messages/{reply['id']}/feedback", json={"rating": "down", "comment": "curt"})
    assert rated.status_code == 200 and (rated.json()["rating"], rated.json()["comment"]) == ("down", "curt")
    assert messages(api, conversation)[1]["rating"] == "down"
    assert api.post(f"/messages/{reply['id']}/feedback", json={"rating": "up"}).json()["rating"] == "up"
    rated_in_db = server.app.state.store.rated_replies()
    assert any(r["message_id"] == reply["id"] and r["rating"] == "up" for r in rated_in_db)
    assert api.post(f"/messages/{reply['id']}/feedback", json={"rating": None}).json()["rating"] is None
    assert api.post(f"/messages/{user['id']}/feedback", json={"rating": "up"}).status_code == 404
    assert api.post("/messages/no-such-message/feedback", json={"rating": "up"}).status_code == 404


def test_another_key_sees_nothing_of_a_conversation(api, server):
    """Conversations kept under another key (the server restarted with a new one) do not exist for this one."""
    store = server.app.state.store
    other = owner_id("someone else's key", store.secret())
    theirs = store.create_conversation(other, title="private")
    turn = store.begin_turn(other, theirs["id"], "send", "secret")
    store.finish_message(turn.reply_id, "classified")
    mine = new_conversation(api)
    assert owner_id(KEY, store.secret()) != other
    assert theirs["id"] not in [c["id"] for c in api.get("/conversations").json()["conversations"]]
    path = f"/conversations/{theirs['id']}"
    requests = [
        ("GET", path, None),
        ("PATCH", path, {"title": "x"}),
        ("DELETE", path, None),
        ("GET", path + "/export", None),
        ("POST", path + "/messages", {"content": "hi"}),
        ("POST", path + "/regenerate", {}),
        ("POST", path + "/edit", {"content": "hi"}),
        ("POST", f"/messages/{turn.reply_id}/feedback", {"rating": "up"}),
    ]
    for method, url, body in requests:
        response = api.request(method, url, json=body)
        unknown = api.request(method, url.replace(theirs["id"], "x" * 22).replace(turn.reply_id, "y" * 22), json=body)
        assert response.status_code == unknown.status_code == 404, (method, url)
        assert response.json() == unknown.json(), "the same answer as for an id that never existed"
    assert store.get_conversation(other, theirs["id"])["title"] == "private"
    assert messages(api, mine) == []


def test_every_route_needs_the_key(server):
    with httpx.Client(base_url=f"{server.url}/api", timeout=10) as anonymous:
        for method, path in [
            ("GET", "/info"),
            ("GET", "/conversations"),
            ("POST", "/conversations"),
            ("GET", "/conversations/x"),
            ("POST", "/conversations/x/messages"),
            ("POST", "/messages/x/feedback"),
            ("GET", "/memories"),
            ("GET", "/guardrail-log"),
        ]:
            response = anonymous.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["type"] == "authentication_error"


BAD_REQUESTS = [
    # (method, path ("{c}": an existing conversation), body or raw bytes, expected status)
    ("POST", "/conversations", {"title": "x" * 201}, 400),
    ("POST", "/conversations", {"title": 5}, 400),
    ("POST", "/conversations", {"colour": "red"}, 400),
    ("POST", "/conversations", {"settings": {"temperature": -1}}, 400),
    ("POST", "/conversations", {"settings": {"max_tokens": 10**9}}, 400),
    ("POST", "/conversations", {"system_prompt": "x" * 5001}, 400),
    ("POST", "/conversations", [1, 2], 400),
    ("POST", "/conversations", b"{not json", 400),
    ("PATCH", "/conversations/{c}", {"title": None, "settings": {"temperature": "hot"}}, 400),
    ("PATCH", "/conversations/{c}", {"settings": {"top_k": 3}}, 400),
    ("POST", "/conversations/{c}/messages", {}, 400),
    ("POST", "/conversations/{c}/messages", {"content": ""}, 400),
    ("POST", "/conversations/{c}/messages", {"content": "   \n"}, 400),
    ("POST", "/conversations/{c}/messages", {"content": "x" * 5001}, 400),
    ("POST", "/conversations/{c}/messages", {"content": ["hi"]}, 400),
    ("POST", "/conversations/{c}/messages", {"content": "hi", "temperature": 3}, 400),
    ("POST", "/conversations/{c}/messages", {"content": "hi", "temperature": "0.5"}, 400),
    ("POST", "/conversations/{c}/messages", {"content": "hi", "max_tokens": 0}, 400),
    ("POST", "/conversations/{c}/messages", {"content": "hi", "max_tokens": 5000}, 400),
    ("POST", "/conversations/{c}/messages", {"content": "hi", "max_tokens": 1.5}, 400),
    ("POST", "/conversations/{c}/messages", {"content": "hi", "role": "system"}, 400),
    ("POST", "/conversations/{c}/messages", {"content": "hi", "system_prompt": "x" * 5001}, 400),
    ("POST", "/conversations/{c}/edit", {"content": "hi"}, 400),  # nothing to edit yet
    ("POST", "/conversations/{c}/regenerate", {"content": "hi"}, 400),
    ("POST", "/conversations/missing/messages", {"content": "hi"}, 404),
    ("POST", "/messages/missing/feedback", {"rating": "meh"}, 400),
    ("POST", "/messages/missing/feedback", {"rating": 1}, 400),
    ("POST", "/messages/missing/feedback", {"rating": "up", "comment": "x" * 2001}, 400),
    ("POST", "/messages/missing/feedback", {}, 400),
    ("GET", "/conversations/" + "%00" * 3, None, 404),
    ("PUT", "/conversations/{c}", {"title": "x"}, 405),
]


@pytest.mark.parametrize("method, path, body, status", BAD_REQUESTS)
def test_bad_requests_are_4xx_in_the_openai_shape(api, method, path, body, status):
    conversation = new_conversation(api)
    kwargs = (
        {"content": body, "headers": {"Content-Type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    response = api.request(method, path.replace("{c}", conversation), **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert messages(api, conversation) == [], "a refused message is not stored"


def test_a_message_longer_than_the_context_is_refused_and_nothing_is_stored(api, server):
    conversation = new_conversation(api)
    say(api, conversation, GREETING)
    before = messages(api, conversation)
    words = " ".join(f"word{i}" for i in range(560))  # well over the 1024-token context, under 5000 characters
    response = api.post(f"/conversations/{conversation}/messages", json={"content": words})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "tokens" in response.json()["error"]["message"]
    assert messages(api, conversation) == before


def test_old_exchanges_are_dropped_to_fit_the_context_and_reported(api):
    conversation = new_conversation(api)
    song = say(api, conversation, SONG_REQUEST, max_tokens=900)
    assert song[-1][1]["finish_reason"] == "length"
    done = say(api, conversation, GREETING, max_tokens=100)[-1][1]
    assert done["dropped"] == 2, "the song exchange no longer fits with room for the reply"
    assert done["messages"][-1]["content"] == GREETING_REPLY, "the model saw the system prompt and the greeting"
    assert len(messages(api, conversation)) == 4, "nothing is deleted from the conversation"


def test_a_client_that_goes_away_stops_the_reply_and_leaves_it_interrupted(api, server):
    conversation = new_conversation(api)
    with api.stream(
        "POST", f"/conversations/{conversation}/messages", json={**GREEDY, "content": SONG_REQUEST, "max_tokens": 900}
    ) as response:
        seen = ""
        for block in _blocks(response):
            if block.startswith("event: text"):
                seen += json.loads(block.split("data: ", 1)[1])["text"]
            if seen.count("la") >= 5:
                break  # closing the response closes the connection
    deadline = time.monotonic() + 60
    while messages(api, conversation)[-1]["status"] == "streaming":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    reply = messages(api, conversation)[-1]
    assert reply["status"] == "interrupted"
    assert reply["content"].startswith(seen) and reply["content"].count("la") < 900
    while server.app.state.engine.stats()["active"]:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.05)


def test_a_second_message_while_a_reply_streams_is_refused(api):
    conversation = new_conversation(api)
    with api.stream(
        "POST", f"/conversations/{conversation}/messages", json={**GREEDY, "content": SONG_REQUEST, "max_tokens": 900}
    ) as response:
        blocks = _blocks(response)  # kept: a dropped reader would close the connection
        next(blocks)
        busy = api.post(f"/conversations/{conversation}/messages", json={"content": GREETING})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "conversation_busy"
        assert api.post(f"/conversations/{conversation}/regenerate", json={}).status_code == 409


def test_a_reply_cut_off_by_a_shutdown_ends_with_an_error_event(run_dir):
    with live_server(run_dir, ServerSettings()) as own, httpx.Client(base_url=f"{own.url}/api", timeout=60) as api:
        conversation = new_conversation(api)
        with api.stream(
            "POST",
            f"/conversations/{conversation}/messages",
            json={**GREEDY, "content": SONG_REQUEST, "max_tokens": 900},
        ) as response:
            blocks = _blocks(response)
            next(blocks)
            own.app.state.engine.close()  # what stopping the server does to a reply in progress
            last = list(blocks)[-1]
        assert last.startswith("event: error")
        assert json.loads(last.split("data: ", 1)[1])["error"]["code"] == "cancelled"
        assert messages(api, conversation)[-1]["status"] == "interrupted"


def _serve(run_dir, log_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OWNLLM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:  # a file, not a pipe: the server never blocks on a full pipe
        process = subprocess.Popen(
            [sys.executable, "-m", "ownllm", "serve", "--run", str(run_dir), "--port", "0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while "serving" not in log_path.read_text():
        assert process.poll() is None, f"ownllm serve exited: {log_path.read_text()}"
        assert time.monotonic() < deadline, "ownllm serve did not become ready"
        time.sleep(0.1)
    line = next(line for line in log_path.read_text().splitlines() if "serving" in line)
    return process, line.split(" at ")[1].split("/ ")[0] + "/api"


def test_sigkill_mid_reply_keeps_finished_messages_and_marks_the_reply_interrupted(run_dir, tmp_path):
    """`ownllm serve` is killed while a reply streams; a server started again on the run finds everything."""
    run_dir = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("assistant.db*"))
    process, url = _serve(run_dir, tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=url, timeout=60) as api:
            conversation = new_conversation(api)
            say(api, conversation, TOOL_QUESTION)
            finished = messages(api, conversation)
            watcher = Store.for_run(run_dir, recover=False)  # reads the file as another process would
            with api.stream(
                "POST",
                f"/conversations/{conversation}/messages",
                json={**GREEDY, "content": SONG_REQUEST, "max_tokens": 900},
            ) as response:
                blocks = _blocks(response)
                reply_id = json.loads(next(blocks).split("data: ", 1)[1])["reply_id"]
                deadline = time.monotonic() + 30
                while True:  # wait for the first periodic save of the reply's text, reading the stream meanwhile
                    next(blocks)
                    saved = {m["id"]: m for m in watcher.get_conversation("local", conversation)["messages"]}
                    if saved[reply_id]["content"]:
                        break
                    assert time.monotonic() < deadline
                assert saved[reply_id]["status"] == "streaming"
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            watcher.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # The restarted server: the same app, here in a thread (a second process start costs seconds).
    with (
        torch_threads(1),
        live_server(run_dir, ServerSettings()) as restarted,
        httpx.Client(base_url=f"{restarted.url}/api", timeout=60) as api,
    ):
        after = messages(api, conversation)
        assert after[:4] == finished, "every finished message is there, unchanged"
        assert [m["role"] for m in after[4:]] == ["user", "assistant"]
        assert after[4]["content"] == SONG_REQUEST and after[4]["status"] == "complete"
        reply = after[5]
        assert reply["id"] == reply_id and reply["status"] == "interrupted"
        assert reply["content"].startswith(saved[reply_id]["content"]) and reply["content"].startswith("la")
        stream = say(api, conversation, GREETING, max_tokens=8)  # the conversation goes on
        assert stream[-1][0] == "done"


def test_sigterm_mid_reply_ends_the_streams_with_an_error_and_marks_the_reply_interrupted(run_dir, tmp_path):
    """`ownllm serve` is told to stop (SIGTERM) while a page reply and a /v1 stream are being written."""
    run_dir = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("assistant.db*"))
    process, url = _serve(run_dir, tmp_path / "serve.log")
    base = url.removesuffix("/api")
    try:
        with httpx.Client(base_url=url, timeout=60) as api, httpx.Client(base_url=base, timeout=60) as v1:
            conversation = new_conversation(api)
            body = {"messages": [{"role": "user", "content": SONG_REQUEST}], "max_tokens": 900, "stream": True}
            with (
                api.stream(
                    "POST",
                    f"/conversations/{conversation}/messages",
                    json={**GREEDY, "content": SONG_REQUEST, "max_tokens": 900},
                ) as page,
                v1.stream("POST", "/v1/chat/completions", json={**GREEDY, **body}) as openai_stream,
            ):
                blocks, lines = _blocks(page), openai_stream.iter_lines()
                reply_id = json.loads(next(blocks).split("data: ", 1)[1])["reply_id"]
                for _ in range(3):  # both are streaming
                    next(blocks)
                    next(line for line in lines if line.startswith("data: "))
                stopped = time.monotonic()
                os.kill(process.pid, signal.SIGTERM)
                rest_of_page = list(blocks)
                rest_of_v1 = [line for line in lines if line.startswith("data: ")]
            assert process.wait(timeout=30) is not None
            seconds = time.monotonic() - stopped
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    last = rest_of_page[-1]
    assert last.startswith("event: error"), rest_of_page[-3:]
    assert json.loads(last.split("data: ", 1)[1])["error"]["code"] == "server_shutdown"
    assert rest_of_v1[-1] == "data: [DONE]" and json.loads(rest_of_v1[-2][6:])["error"]["code"] == "server_shutdown"
    assert seconds < 15, f"the server took {seconds:.1f} s to stop"
    store = Store.for_run(run_dir, recover=False)  # as the file was left, before any restart recovers it
    try:
        reply = {m["id"]: m for m in store.get_conversation("local", conversation)["messages"]}[reply_id]
    finally:
        store.close()
    assert reply["status"] == "interrupted" and reply["content"]


def test_deleting_a_conversation_stops_its_reply(api, server):
    conversation = new_conversation(api)
    body = {**GREEDY, "content": SONG_REQUEST, "max_tokens": 900}
    with api.stream("POST", f"/conversations/{conversation}/messages", json=body) as response:
        blocks = _blocks(response)
        for _ in range(4):  # the reply is being written
            next(blocks)
        assert api.delete(f"/conversations/{conversation}").status_code == 204
        rest = list(blocks)
    assert (
        rest[-1].startswith("event: error") and json.loads(rest[-1].split("data: ", 1)[1])["error"]["code"] == "deleted"
    )
    assert sum(block.startswith("event: text") for block in rest) < 100  # stopped, not written to the end (900)
    deadline = time.monotonic() + 10
    while server.app.state.engine.stats()["active"]:  # the generation left the engine
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert api.get(f"/conversations/{conversation}").status_code == 404


def test_owners_are_a_keyed_hash_and_old_unkeyed_ones_are_migrated(run_dir, tmp_path):
    run_dir = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("assistant.*"))
    store = Store.for_run(run_dir)
    old = store.create_conversation(legacy_owner_id(KEY), title="from before")  # as an older ownllm stored it
    store.close()
    for _ in range(2):  # the secret survives a restart: the same key finds the same conversations
        with (
            torch_threads(1),
            live_server(run_dir, ServerSettings(api_key=KEY)) as live,
            httpx.Client(base_url=f"{live.url}/api", headers={"Authorization": f"Bearer {KEY}"}) as api,
        ):
            assert [c["id"] for c in api.get("/conversations").json()["conversations"]] == [old["id"]]
    secret = run_dir / "assistant.secret"
    assert len(secret.read_bytes()) == 32 and secret.stat().st_mode & 0o777 == 0o600
    store = Store.for_run(run_dir, recover=False)
    owners = {row["owner"] for row in store._read("SELECT owner FROM conversations")}
    store.close()
    assert owners == {owner_id(KEY, secret.read_bytes())} and next(iter(owners)).startswith("hmac:")
