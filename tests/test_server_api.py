"""The OpenAI-compatible API, driven by the official `openai` client against a real server.

The model is the tiny chat model of tests/helpers/chat.py, trained until greedy decoding
repeats its conversations: "Hello" -> "Hi! I am Pip.", "What is 12 * 7?" -> a calculator call
then "12 * 7 = 84.", "Sing" -> "la la la ..." without end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from helpers import REPO, torch_threads
from helpers.chat import GREETING, GREETING_REPLY, SONG_REQUEST, SYSTEM, TOOL_ANSWER, TOOL_QUESTION, tiny_chat_run
from helpers.server import live_server
from ownllm.cli import main
from ownllm.inference.engine import Engine, SamplingParams
from ownllm.server.settings import ServerSettings

KEY = "test-key-123"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_chat_run(tmp_path_factory)


@pytest.fixture(scope="module")
def server(run_dir):
    with torch_threads(1), live_server(run_dir, ServerSettings(api_key=KEY, max_slots=4, max_queue=8)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(client, content: str, **kwargs):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], **kwargs)


def test_the_model_card_is_served_once_a_report_wrote_it(server, run_dir):
    headers = {"Authorization": f"Bearer {KEY}"}
    missing = httpx.get(f"{server.url}/api/model-card", headers=headers)
    assert missing.status_code == 404 and "ownllm report --run" in missing.json()["error"]["message"]
    card = run_dir / "report" / "MODEL_CARD.md"
    card.parent.mkdir()
    card.write_text("# Model card: tiny\n\nA test model.\n")
    try:
        found = httpx.get(f"{server.url}/api/model-card", headers=headers)
        assert found.status_code == 200 and found.text.startswith("# Model card: tiny")
        assert found.headers["content-type"].startswith("text/markdown")
        assert httpx.get(f"{server.url}/api/model-card").status_code == 401  # behind the key like the rest
    finally:
        shutil.rmtree(card.parent)


def test_models(client, server, run_dir):
    models = client.models.list().data
    assert [m.id for m in models] == [run_dir.name]
    assert models[0].context_length == server.app.state.engine.context_size
    assert client.models.retrieve(run_dir.name).id == run_dir.name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_chat_answers_in_the_openai_shape(client, run_dir):
    first = chat(client, GREETING, temperature=0)
    second = chat(client, GREETING, temperature=0)
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content == GREETING_REPLY
    assert first.choices[0].finish_reason == "stop"
    assert first.object == "chat.completion" and first.model == run_dir.name
    assert first.id.startswith("chatcmpl-") and len(first.id) >= 9 + 32 and first.id != second.id
    usage = first.usage
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 3
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_the_persona_system_prompt_is_the_default(client):
    with_system = client.chat.completions.create(
        model="tiny",
        temperature=0,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": GREETING}],
    )
    without = chat(client, GREETING, temperature=0)
    assert with_system.usage.prompt_tokens == without.usage.prompt_tokens
    assert with_system.choices[0].message.content == without.choices[0].message.content


def test_chat_streams_deltas_then_finish_then_usage(client):
    chunks = list(chat(client, GREETING, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == GREETING_REPLY
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 3
    assert len({c.id for c in chunks}) == 1
    without_usage = list(chat(client, GREETING, temperature=0, stream=True))
    assert all(c.usage is None for c in without_usage)


def test_the_raw_stream_is_server_sent_events_ending_with_done(server):
    body = {"messages": [{"role": "user", "content": GREETING}], "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert all("choices" in json.loads(line[6:]) for line in events[:-1])


def test_the_calculator_runs_inside_the_reply(client):
    reply = chat(client, TOOL_QUESTION, temperature=0)
    assert reply.choices[0].message.content == TOOL_ANSWER
    stream = chat(client, TOOL_QUESTION, temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream)
    assert streamed == TOOL_ANSWER


def test_completions_continue_plain_text(client, server):
    prompt = "Once upon a time"
    completion = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    choice = completion.choices[0]
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert choice.finish_reason in ("stop", "length") and choice.text
    assert completion.usage.prompt_tokens == len(server.app.state.template.tokenizer.encode(prompt))
    streamed = list(
        client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text
    assert streamed[-1].usage.completion_tokens == completion.usage.completion_tokens


def test_a_seed_gives_the_same_text_and_streaming_the_same_utf8(client):
    """Sampled at a high temperature, where the tiny model also picks byte tokens that split characters."""
    prompt = "Émilie a dit « 日本語 » 🙂 and then"
    texts = [
        client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=2.0, seed=seed)
        .choices[0]
        .text
        for seed in (5, 5, 6)
    ]
    assert texts[0] == texts[1] and texts[2] != texts[0]  # the seed decides the text
    streamed = [
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt=prompt, max_tokens=40, temperature=2.0, seed=5, stream=True
        )
    ]
    assert "".join(streamed) == texts[0]
    chat_text = chat(client, prompt, temperature=2.0, seed=11, max_tokens=40).choices[0].message.content
    chat_streamed = "".join(
        c.choices[0].delta.content or ""
        for c in chat(client, prompt, temperature=2.0, seed=11, max_tokens=40, stream=True)
    )
    assert chat_streamed == chat_text


def test_stop_strings_and_max_tokens(client):
    stopped = chat(client, GREETING, temperature=0, stop=["am"])
    assert stopped.choices[0].message.content == GREETING_REPLY.split("am")[0]
    assert stopped.choices[0].finish_reason == "stop"
    several = chat(client, GREETING, temperature=0, stop=["zzz", "!"])
    assert several.choices[0].message.content == "Hi"
    cut = chat(client, SONG_REQUEST, temperature=0, max_tokens=5)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 5
    newer_name = chat(client, SONG_REQUEST, temperature=0, max_completion_tokens=4)
    assert newer_name.usage.completion_tokens == 4


def long_conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"Tell me a story number {i}. " * 12},
            {"role": "assistant", "content": "Once upon a time there was a cat who liked milk. " * 6},
        ]
    return messages + [{"role": "user", "content": GREETING}]


def test_context_overflow_is_a_400_that_gives_the_numbers(client, server):
    context = server.app.state.engine.context_size
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=long_conversation(20), max_tokens=20)
    error = caught.value.body
    assert error["code"] == "context_length_exceeded"
    prompt_tokens = int(error["message"].split("the prompt has ")[1].split()[0])
    assert prompt_tokens > context - 20 and f"context holds {context}" in error["message"]
    assert "truncate" in error["message"]


def test_truncate_drops_the_oldest_turns_and_says_so(client, server):
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=long_conversation(20), max_tokens=20, temperature=0, extra_body={"truncate": True}
    )
    dropped = int(raw.headers["OwnLLM-Dropped-Messages"])
    reply = raw.parse()
    assert dropped >= 2 and dropped % 2 == 0  # whole exchanges
    assert reply.model_extra["truncated"] == {"dropped_messages": dropped}
    assert reply.usage.prompt_tokens <= server.app.state.engine.context_size - 20
    stream = client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=long_conversation(20),
        max_tokens=20,
        temperature=0,
        stream=True,
        extra_body={"truncate": True},
    )
    assert stream.headers["OwnLLM-Dropped-Messages"] == str(dropped)
    finish = [c for c in stream.parse() if c.choices and c.choices[0].finish_reason]
    assert finish[0].model_extra["truncated"] == {"dropped_messages": dropped}


def test_completions_overflow_and_truncate(client, server):
    context = server.app.state.engine.context_size
    prompt = "the cat sat on the mat " * context
    with pytest.raises(openai.BadRequestError, match=f"context holds {context}"):
        client.completions.create(model="tiny", prompt=prompt, max_tokens=8)
    kept = client.completions.with_raw_response.create(
        model="tiny", prompt=prompt, max_tokens=8, extra_body={"truncate": True}
    )
    assert int(kept.headers["OwnLLM-Dropped-Tokens"]) > 0
    assert kept.parse().usage.prompt_tokens == context - 8


def test_concurrent_clients_are_all_answered(client, server):
    def ask(i: int) -> str:
        if i % 2:
            return "".join(c.choices[0].delta.content or "" for c in chat(client, GREETING, temperature=0, stream=True))
        return chat(client, GREETING, temperature=0).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [GREETING_REPLY] * 8
    assert server.app.state.gate.in_flight == 0


def test_a_client_that_goes_away_frees_its_slot(server):
    engine = server.app.state.engine
    body = {
        "messages": [{"role": "user", "content": SONG_REQUEST}],
        "temperature": 0,
        "max_tokens": 900,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert engine.stats()["active"] == 1
    deadline = time.monotonic() + 60
    while (engine.stats()["active"] or server.app.state.gate.in_flight) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats()["active"] == 0 and server.app.state.gate.in_flight == 0


def test_metrics_count_requests_tokens_and_the_queue(server, client):
    chat(client, GREETING, temperature=0)
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['ownllm_http_requests_total{route="/v1/chat/completions",method="POST",status="200"}'] >= 1
    assert samples["ownllm_completion_tokens_total"] > 0 and samples["ownllm_prompt_tokens_total"] > 0
    assert samples['ownllm_http_request_duration_seconds_count{route="/v1/chat/completions"}'] >= 1
    assert samples["ownllm_engine_queue_depth"] == 0 and samples["ownllm_engine_slots"] == 4
    assert "ownllm_engine_active_sequences" in text and "ownllm_time_to_first_token_seconds_bucket" in text


def test_health_reports_a_model_that_failed_to_load(tmp_path):
    run = tmp_path / "broken"
    (run / "checkpoints" / "sft" / "step_000001").mkdir(parents=True)
    (run / "checkpoints" / "sft" / "latest").write_text("step_000001\n")
    (run / "checkpoints" / "sft" / "step_000001" / "state.json").write_text("{not json")
    with live_server(run, ServerSettings()) as live:
        health = httpx.get(f"{live.url}/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        refused = httpx.post(f"{live.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503 and "failed to load" in refused.json()["error"]["message"]


def test_an_engine_given_to_the_app_is_served_and_left_open(run_dir, tmp_path):
    """How bench/serve.py serves a model that never stops: an engine built by the caller, without stop tokens."""
    engine = Engine.load(run_dir, stop_ids=frozenset())
    with live_server(tmp_path, ServerSettings(), engine=engine) as live:
        assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}
        body = {"prompt": "Hello", "max_tokens": 30, "temperature": 0}
        answer = httpx.post(f"{live.url}/v1/completions", json=body).json()
        assert answer["usage"]["completion_tokens"] == 30 and answer["choices"][0]["finish_reason"] == "length"
        assert answer["model"] == tmp_path.name
    assert engine.generate(engine.tokenizer.encode("Hello"), SamplingParams(max_tokens=2)).ids  # not closed
    engine.close()


def serve(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OWNLLM_PROGRESS": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "ownllm", "serve", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_serve_prints_the_url_and_stops_on_ctrl_c(run_dir, tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"  {KEY}\n")
    process = serve("--run", str(run_dir), "--port", "0", "--api-key-file", str(key_file))
    try:
        lines = []
        while not any("serving" in line for line in lines):
            line = process.stderr.readline()
            assert line, f"ownllm serve ended early: {''.join(lines)}"
            lines.append(line)
        url = lines[-1].split(" at ")[1].split("/ ")[0]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert chat(client, GREETING, temperature=0).choices[0].message.content == GREETING_REPLY
        assert httpx.get(f"{url}/v1/models").status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130  # Ctrl-C, as for every ownllm command
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--host", "0.0.0.0"], "--insecure"),
        (["--api-key", " "], "the API key is empty"),
        (["--api-key-file", "{empty}"], "is empty"),
        (["--api-key-file", "{missing}"], "cannot read the API key"),
        (["--cors-origin", "*"], "is not an origin"),
        (["--stage", "pretrain"], "no pretrain checkpoint"),
        (["--port", "70000"], "is not a TCP port"),
    ],
)
def test_serve_refuses_unsafe_or_impossible_settings(run_dir, tmp_path, capsys, args, message):
    (tmp_path / "empty").write_text("\n")
    args = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for a in args]
    with pytest.raises(SystemExit) as exit_status:
        main(["serve", "--run", str(run_dir), "--port", "0", *args])
    stderr = capsys.readouterr().err
    assert exit_status.value.code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr


def test_serve_refuses_a_port_in_use(run_dir, server, capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--run", str(run_dir), "--port", str(server.port)])
    assert f"cannot listen on 127.0.0.1:{server.port}" in capsys.readouterr().err
