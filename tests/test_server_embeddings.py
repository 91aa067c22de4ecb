"""The server with the run's own embedder: POST /v1/embeddings through the official `openai` client, the
knowledge bases' vectors, and the guardrail's classifier on every route (ownllm chat, /v1, the page's /api)."""

from __future__ import annotations

import base64
import json
import sqlite3

import httpx
import numpy as np
import openai
import pytest

from helpers import torch_threads
from helpers.chat import tiny_chat_run
from helpers.runs import ownllm_here, with_embedder
from helpers.server import live_server
from ownllm.assistant.guardrails import REFUSAL
from ownllm.assistant.safety import CLASSIFIER_FILE
from ownllm.knowledge.embeddings import TextEmbedder
from ownllm.server.settings import ServerSettings

KEY = "embed-key-1"
FLAGGED = "purple elephants dance at midnight"  # what the test's classifier is made to flag


@pytest.fixture(scope="module")
def run(chat_run, tmp_path_factory):
    """The tiny chat run with a few steps of embedding training, and a classifier that flags FLAGGED alone."""
    run = with_embedder(chat_run, tmp_path_factory.mktemp("embedded-chat"), steps=4)
    embedder = TextEmbedder.for_run(run)
    assert embedder is not None
    target = embedder.embed([FLAGGED])[0]
    # A direction that only the exact text reaches: cosine 1 gives a logit of +1, cosine 0.99 one of -1.
    record = {
        "embedder": embedder.id,
        "weights": (200 * target).tolist(),
        "bias": -199.0,
        "threshold": 0.5,
        "metrics": {},
    }
    (run / CLASSIFIER_FILE).parent.mkdir(parents=True, exist_ok=True)
    (run / CLASSIFIER_FILE).write_text(json.dumps(record))
    return run


@pytest.fixture(scope="module")
def server(run):
    with torch_threads(1), live_server(run, ServerSettings(api_key=KEY, guardrail="refuse")) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_embeddings_in_the_openai_shape_match_the_runs_embedder(client, run):
    texts = ["The cat sat on the mat.", "A dog ran in the park."]
    expected = TextEmbedder.for_run(run).embed(texts)  # type: ignore[union-attr]
    response = client.embeddings.create(model="anything", input=texts)  # the client asks for base64
    assert [d.index for d in response.data] == [0, 1] and response.model == "anything"
    got = np.array([d.embedding for d in response.data])
    assert got.shape == (2, 256) and np.allclose(got, expected, atol=1e-5)
    assert response.usage.prompt_tokens > 4 and response.usage.total_tokens == response.usage.prompt_tokens
    floats = client.embeddings.create(model="m", input="The cat sat on the mat.", encoding_format="float")
    assert np.allclose(floats.data[0].embedding, expected[0], atol=1e-5)


def test_embeddings_take_token_ids_and_refuse_what_they_cannot_embed(server, run):
    from ownllm.tokenizer import Tokenizer

    ids = Tokenizer.load(run / "tokenizer").encode_ordinary("The cat sat on the mat.")
    headers = {"Authorization": f"Bearer {KEY}"}
    url = server.url + "/v1/embeddings"
    by_ids = httpx.post(url, headers=headers, json={"input": ids, "encoding_format": "base64"}, timeout=60).json()
    by_text = httpx.post(url, headers=headers, json={"input": "The cat sat on the mat."}, timeout=60).json()
    vector = np.frombuffer(base64.b64decode(by_ids["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, by_text["data"][0]["embedding"], atol=1e-5)
    refusals = [
        ({"input": "x", "dimensions": 12}, "dimensions", None),
        ({"input": "word " * 2000}, "input", "context_length_exceeded"),
        ({"input": ""}, "input", None),
        ({"input": []}, "input", None),
        ({"input": [10**9]}, "input", None),
        ({"input": ["a"] * 257}, "input", None),
        ({"input": "x", "encoding_format": "int8"}, None, None),
    ]
    for body, param, code in refusals:
        r = httpx.post(url, headers=headers, json=body, timeout=60)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert (param is None or error["param"] == param) and (code is None or error["code"] == code)
    assert httpx.post(url, json={"input": "x"}, timeout=60).status_code == 401


def test_a_run_without_an_embedder_answers_404_with_the_command(tmp_path_factory):
    run = tiny_chat_run(tmp_path_factory)
    with torch_threads(1), live_server(run, ServerSettings()) as live:
        r = httpx.post(live.url + "/v1/embeddings", json={"input": "x"}, timeout=60)
    assert r.status_code == 404 and "ownllm embed train" in r.json()["error"]["message"]


def test_uploaded_passages_get_the_embedders_vectors(server, run):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "text/markdown"}
    url = server.url + "/v1/knowledge/documents?name=notes.md"
    r = httpx.post(url, headers=headers, content=b"Zoe paints the fence green every spring.", timeout=60)
    assert r.status_code == 201, r.text
    found = httpx.post(
        server.url + "/v1/knowledge/search",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"query": "who paints the fence", "k": 1},
        timeout=60,
    ).json()
    assert "fence" in json.dumps(found)
    dbs = list((run / "knowledge").rglob("knowledge.db"))
    counts = [sqlite3.connect(db).execute("SELECT count(*), count(embedding) FROM chunks").fetchone() for db in dbs]
    assert counts and all(total == embedded and total > 0 for total, embedded in counts)


def test_the_classifier_guards_every_route(server, run, capsys):
    answer = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"messages": [{"role": "user", "content": FLAGGED}]},
        timeout=60,
    ).json()
    assert answer["choices"][0]["finish_reason"] == "content_filter"
    assert answer["choices"][0]["message"]["content"] == REFUSAL
    api = httpx.Client(base_url=server.url + "/api", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    conversation = api.post("/conversations", json={}).json()["id"]
    with api.stream("POST", f"/conversations/{conversation}/messages", json={"content": FLAGGED}) as r:
        streamed = r.read().decode()
    assert "event: guardrail" in streamed and REFUSAL in streamed
    log = api.get("/guardrail-log").json()["entries"]
    assert [(e["route"], e["findings"].split(" (")[0]) for e in log][-2:] == [
        ("/v1/chat/completions", "offensive"),
        ("/api", "offensive"),
    ]
    ordinary = api.post("/conversations", json={}).json()["id"]
    with api.stream("POST", f"/conversations/{ordinary}/messages", json={"content": "hello there"}) as r:
        assert "event: guardrail" not in r.read().decode()
    capsys.readouterr()
    status, _ = ownllm_here(None, "chat", "--run", run, "--guardrail", "refuse", "-p", FLAGGED)
    printed = capsys.readouterr()
    assert status == 0 and "judged offensive" in printed.err and REFUSAL in printed.out


def test_serve_searches_with_the_retriever_it_is_given(run):
    from ownllm.core.errors import UserError

    with pytest.raises(UserError, match="--retriever"):
        ServerSettings(retriever="magic").check()
    with torch_threads(1), live_server(run, ServerSettings(api_key=KEY, retriever="hybrid")) as live:
        kb = live.app.state.library._open_kb(run / "probe.db")
        assert kb.retriever == "hybrid" and kb.embedder is live.app.state.embedder is not None
        kb.close()
