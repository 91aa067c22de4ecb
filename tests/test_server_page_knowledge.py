"""The page's API (/api) with a knowledge base and the guardrail: citations kept with replies, a per-key safety log.

A real server (create_app under uvicorn, with an API key) on the tiny chat model of
tests/helpers/chat.py, in a run whose knowledge base holds one document, NOTE.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from helpers import torch_threads
from helpers.chat import GREETING, GREETING_REPLY, tiny_chat_run
from helpers.server import live_server
from ownllm.knowledge.base import KnowledgeBase
from ownllm.server.security import owner_id
from ownllm.server.settings import ServerSettings

KEY = "page-knowledge-key"
NOTE = "The quarterly meeting is on Friday in room 4."
QUESTION = "When is the quarterly meeting?"


def say(api, conversation: str, content: str | None, action: str = "messages", **settings) -> list[tuple[str, dict]]:
    """Send (or regenerate, edit) greedily; the stream's (event, data) pairs."""
    body = {"temperature": 0, **settings, **({"content": content} if content is not None else {})}
    response = api.post(f"/conversations/{conversation}/{action}", json=body)
    assert response.status_code == 200, response.text
    blocks = [b.strip() for b in response.text.split("\n\n") if b.strip()]
    pairs = [dict(line.split(": ", 1) for line in b.split("\n")) for b in blocks]
    return [(p["event"], json.loads(p["data"])) for p in pairs]


def new_conversation(api) -> str:
    return api.post("/conversations", json={}).json()["id"]


def messages(api, conversation: str) -> list[dict]:
    return api.get(f"/conversations/{conversation}").json()["messages"]


@pytest.fixture(scope="module")
def note(tmp_path_factory):
    path = tmp_path_factory.mktemp("documents") / "notes.md"
    path.write_text(NOTE)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, note):
    run = tmp_path_factory.mktemp("page_knowledge") / "run"
    shutil.copytree(tiny_chat_run(tmp_path_factory), run, ignore=shutil.ignore_patterns("assistant.*", "knowledge.*"))
    kb = KnowledgeBase.for_run(run)
    kb.add(note)
    kb.close()
    with torch_threads(1), live_server(run, ServerSettings(api_key=KEY, guardrail="mask")) as live:
        yield live


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=f"{server.url}/api", headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


def test_a_reply_from_the_knowledge_base_keeps_its_citations(api, server, note):
    conversation = new_conversation(api)
    done = say(api, conversation, QUESTION, max_tokens=8)[-1][1]
    citation = {"path": str(note.resolve()), "position": 0, "start": 0, "end": len(NOTE), "text": NOTE}
    assert done["citations"] == [citation]
    user, answer = done["messages"]
    assert user["content"] == QUESTION and "citations" not in user, "the message is kept as typed"
    assert answer["citations"] == [citation], "saved with the reply"
    assert messages(api, conversation) == done["messages"], "and returned with it"

    # The model was asked with the passage: without the knowledge base the same question is a shorter prompt.
    kb, server.app.state.knowledge = server.app.state.knowledge, None
    try:
        alone = say(api, new_conversation(api), QUESTION, max_tokens=8)[-1][1]
    finally:
        server.app.state.knowledge = kb
    assert alone["citations"] == [] and "citations" not in alone["messages"][-1]
    assert done["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"] + len(NOTE) // 2

    # Regenerate and edit ask the knowledge base again; a message about none of it cites nothing.
    regenerated = say(api, conversation, None, "regenerate", max_tokens=8)[-1][1]
    assert regenerated["citations"] == [citation] and messages(api, conversation)[-1]["citations"] == [citation]
    edited = say(api, conversation, GREETING, "edit", max_tokens=32)[-1][1]
    assert edited["citations"] == [] and [m["content"] for m in edited["messages"]] == [GREETING, GREETING_REPLY]
    assert "citations" not in messages(api, conversation)[-1]
    exported = api.get(f"/conversations/{conversation}/export").json()["messages"]
    assert [m.get("citations") for m in exported if m["role"] == "assistant"] == [[citation], [citation], None]


def test_the_guardrail_log_is_the_callers_own(api, server):
    store = server.app.state.store
    other = owner_id("someone else's key", store.secret())
    store.log_guardrail(other, "/api", "input", "theirs", "mask")
    stream = say(api, new_conversation(api), "you ass", max_tokens=4)
    assert ("guardrail", {"direction": "input", "action": "mask"}) in stream
    entries = api.get("/guardrail-log").json()["entries"]
    assert [(e["route"], e["direction"], e["findings"], e["action"]) for e in entries if e["direction"] == "input"] == [
        ("/api", "input", "ass", "mask")
    ]
    assert all(set(e) == {"id", "route", "direction", "findings", "action", "created"} for e in entries), "no owner"
    assert [e["findings"] for e in store.guardrail_log(other)] == ["theirs"], "the other key's entry is still there"
    assert httpx.get(f"{server.url}/api/guardrail-log").status_code == 401
