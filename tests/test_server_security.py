"""The server against hostile and malformed requests: every one a clear 4xx in the OpenAI error shape, never a 5xx.

One server with an API key, a CORS allow-list and small limits serves the table of bad
requests, the auth, Host and Origin checks and a schemathesis fuzz run; a second one with a
single slot and no key checks the 503 of a full server and an error in the middle of a stream.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from helpers import torch_threads
from helpers.chat import GREETING, SONG_REQUEST, tiny_chat_run
from helpers.server import live_server
from ownllm.server.settings import ServerSettings

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ALLOWED = "http://allowed.example"
LIMITS = ServerSettings(
    api_key=KEY,
    cors_origins=(ALLOWED,),
    max_body_bytes=16_384,
    max_messages=8,
    max_message_chars=1000,
    max_prompt_chars=2000,
    max_tokens_limit=64,
    default_max_tokens=16,
    max_stop=2,
    max_stop_chars=8,
    max_slots=2,
    max_queue=2,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_chat_run(tmp_path_factory)


@pytest.fixture(scope="module")
def server(run_dir):
    with torch_threads(1), live_server(run_dir, LIMITS) as live:
        yield live


def user(content="hi"):
    return {"role": "user", "content": content}


def chat_body(**fields):
    return json.dumps({"messages": [user()], "max_tokens": 4, **fields})


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
JSON = {"Content-Type": "application/json"}

# (what, path, body (str or bytes), extra headers, expected status, expected "param" or None)
HOSTILE = [
    ("malformed JSON", CHAT, '{"messages": [', JSON, 400, None),
    ("JSON array", CHAT, "[]", JSON, 400, None),
    ("JSON string", CHAT, '"hello"', JSON, 400, None),
    ("JSON number", CHAT, "42", JSON, 400, None),
    ("JSON null", CHAT, "null", JSON, 400, None),
    ("empty body", CHAT, "", JSON, 400, None),
    ("invalid UTF-8", CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', JSON, 400, None),
    ("nested 5000 deep", CHAT, '{"messages": ' + "[" * 5000 + "]" * 5000 + "}", JSON, 400, None),
    (
        "NaN temperature",
        CHAT,
        '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        JSON,
        400,
        "temperature",
    ),
    ("no content type", CHAT, chat_body(), {"Content-Type": ""}, 415, None),
    ("text/plain (a form post from another site)", CHAT, chat_body(), {"Content-Type": "text/plain"}, 415, None),
    ("form encoded", CHAT, "messages=hi", {"Content-Type": "application/x-www-form-urlencoded"}, 415, None),
    ("body over the limit", CHAT, chat_body(user="x" * 20_000), JSON, 413, None),
    ("no messages", CHAT, "{}", JSON, 400, "messages"),
    ("empty messages", CHAT, '{"messages": []}', JSON, 400, "messages"),
    ("messages not a list", CHAT, '{"messages": "hi"}', JSON, 400, "messages"),
    ("message without role", CHAT, '{"messages": [{"content": "hi"}]}', JSON, 400, "messages[0].role"),
    ("unknown role", CHAT, '{"messages": [{"role": "wizard", "content": "hi"}]}', JSON, 400, "messages[0].role"),
    ("tool role", CHAT, '{"messages": [{"role": "tool", "content": "84"}]}', JSON, 400, "messages[0].role"),
    ("content a number", CHAT, '{"messages": [{"role": "user", "content": 5}]}', JSON, 400, "messages[0].content"),
    ("content null", CHAT, '{"messages": [{"role": "user", "content": null}]}', JSON, 400, "messages[0].content"),
    (
        "image content part",
        CHAT,
        json.dumps(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}
        ),
        JSON,
        400,
        "messages[0].content[0].type",
    ),
    (
        "too many messages",
        CHAT,
        json.dumps({"messages": [user(), {"role": "assistant", "content": "a"}] * 4 + [user()]}),
        JSON,
        400,
        "messages",
    ),
    ("message too long", CHAT, json.dumps({"messages": [user("y" * 1001)]}), JSON, 400, "messages[0].content"),
    ("empty user message", CHAT, json.dumps({"messages": [user("  ")]}), JSON, 400, "messages"),
    ("two user messages in a row", CHAT, json.dumps({"messages": [user(), user()]}), JSON, 400, "messages"),
    (
        "system after user",
        CHAT,
        json.dumps({"messages": [user(), {"role": "system", "content": "x"}]}),
        JSON,
        400,
        "messages",
    ),
    (
        "ends with the assistant",
        CHAT,
        json.dumps({"messages": [user(), {"role": "assistant", "content": "x"}]}),
        JSON,
        400,
        "messages",
    ),
    ("max_tokens 0", CHAT, chat_body(max_tokens=0), JSON, 400, "max_tokens"),
    ("max_tokens negative", CHAT, chat_body(max_tokens=-5), JSON, 400, "max_tokens"),
    ("max_tokens over the limit", CHAT, chat_body(max_tokens=65), JSON, 400, "max_tokens"),
    ("max_tokens a string", CHAT, chat_body(max_tokens="10"), JSON, 400, "max_tokens"),
    ("max_tokens a float", CHAT, chat_body(max_tokens=1e30), JSON, 400, "max_tokens"),
    ("max_tokens a boolean", CHAT, chat_body(max_tokens=True), JSON, 400, "max_tokens"),
    ("max_tokens 10**40", CHAT, chat_body(max_tokens=10**40), JSON, 400, "max_tokens"),
    ("temperature negative", CHAT, chat_body(temperature=-1), JSON, 400, "temperature"),
    ("temperature 3", CHAT, chat_body(temperature=3), JSON, 400, "temperature"),
    ("temperature a string", CHAT, chat_body(temperature="hot"), JSON, 400, "temperature"),
    ("top_p 0", CHAT, chat_body(top_p=0), JSON, 400, "top_p"),
    ("top_p 1.5", CHAT, chat_body(top_p=1.5), JSON, 400, "top_p"),
    ("top_k negative", CHAT, chat_body(top_k=-1), JSON, 400, "top_k"),
    ("repetition_penalty 0", CHAT, chat_body(repetition_penalty=0), JSON, 400, "repetition_penalty"),
    ("n 2", CHAT, chat_body(n=2), JSON, 400, "n"),
    ("three stop strings", CHAT, chat_body(stop=["a", "b", "c"]), JSON, 400, "stop"),
    ("stop string too long", CHAT, chat_body(stop="123456789"), JSON, 400, "stop"),
    ("stop string empty", CHAT, chat_body(stop=[""]), JSON, 400, "stop"),
    ("stop list of numbers", CHAT, chat_body(stop=[1, 2]), JSON, 400, "stop[0]"),
    ("stream a string", CHAT, chat_body(stream="yes"), JSON, 400, "stream"),
    (
        "stream_options without stream",
        CHAT,
        chat_body(stream_options={"include_usage": True}),
        JSON,
        400,
        "stream_options",
    ),
    ("seed a float", CHAT, chat_body(seed=1.5), JSON, 400, "seed"),
    ("seed 2**70", CHAT, chat_body(seed=2**70), JSON, 400, "seed"),
    ("truncate a string", CHAT, chat_body(truncate="yes"), JSON, 400, "truncate"),
    ("tools", CHAT, chat_body(tools=[{"type": "function", "function": {"name": "f"}}]), JSON, 400, "tools"),
    ("logprobs", CHAT, chat_body(logprobs=True), JSON, 400, "logprobs"),
    ("presence_penalty", CHAT, chat_body(presence_penalty=1.0), JSON, 400, "presence_penalty"),
    (
        "json_schema response format",
        CHAT,
        chat_body(response_format={"type": "json_schema"}),
        JSON,
        400,
        "response_format",
    ),
    ("completion without prompt", COMPLETIONS, "{}", JSON, 400, "prompt"),
    ("prompt a number", COMPLETIONS, '{"prompt": 7}', JSON, 400, "prompt"),
    ("prompt of token ids", COMPLETIONS, '{"prompt": [1, 2, 3]}', JSON, 400, "prompt[0]"),
    ("two prompts", COMPLETIONS, '{"prompt": ["a", "b"]}', JSON, 400, "prompt"),
    ("prompt too long", COMPLETIONS, json.dumps({"prompt": "z" * 2001}), JSON, 400, "prompt"),
    ("echo", COMPLETIONS, '{"prompt": "a", "echo": true}', JSON, 400, "echo"),
    ("best_of 3", COMPLETIONS, '{"prompt": "a", "best_of": 3}', JSON, 400, "best_of"),
]


@pytest.mark.parametrize("what, path, body, headers, status, param", HOSTILE, ids=[row[0] for row in HOSTILE])
def test_hostile_requests_get_a_clear_4xx(server, what, path, body, headers, status, param):
    response = httpx.post(server.url + path, content=body, headers={**AUTH, **headers})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "\n" not in error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error


def test_the_table_covers_enough_cases():
    assert len(HOSTILE) >= 30


def test_a_chunked_body_over_the_limit_is_refused(server):
    def chunks():
        for _ in range(40):
            yield b"x" * 1000

    response = httpx.post(server.url + CHAT, content=chunks(), headers={**AUTH, **JSON})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_unknown_routes_and_methods(server):
    assert httpx.get(server.url + "/v1/engines", headers=AUTH).status_code == 404
    wrong_method = httpx.get(server.url + CHAT, headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]


BODIES = {CHAT: chat_body(), COMPLETIONS: json.dumps({"prompt": "a", "max_tokens": 2})}
PROTECTED = [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/x"),
    ("POST", CHAT),
    ("POST", COMPLETIONS),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/api/conversations"),
]


@pytest.mark.parametrize("method, path", PROTECTED)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer{KEY}"])
def test_every_route_needs_the_key(server, method, path, authorization):
    headers = {**JSON, **({"Authorization": authorization} if authorization else {})}
    response = httpx.request(method, server.url + path, headers=headers, content=BODIES.get(path))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_the_right_key_opens_every_route_and_health_needs_none(server):
    for method, path in PROTECTED:
        response = httpx.request(method, server.url + path, headers={**AUTH, **JSON}, content=BODIES.get(path))
        assert response.status_code == (404 if path == "/v1/models/x" else 200), (path, response.text)
    assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    page = httpx.get(server.url + "/")  # the page holds no data: it asks for the key itself
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "host, status",
    [
        ("localhost:{port}", 200),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("LOCALHOST:{port}", 200),
        ("localhost", 200),
        ("evil.example:{port}", 421),
        ("evil.example", 421),
        ("127.0.0.1:{other}", 421),
        ("localhost.evil.example:{port}", 421),
        ("127.0.0.2:{port}", 421),
        ("[::2]:{port}", 421),
    ],
)
def test_the_host_header_must_name_this_machine(server, host, status):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 still sends Host: evil.example."""
    host = host.format(port=server.port, other=server.port + 1)
    response = httpx.get(server.url + "/health", headers={"Host": host})
    assert response.status_code == status
    if status == 421:
        assert response.json()["error"]["code"] == "invalid_host"


def test_a_request_without_host_is_refused(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 421")


def test_cors_only_for_the_allow_list(server):
    allowed = httpx.get(server.url + "/v1/models", headers={**AUTH, "Origin": ALLOWED})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED
    preflight = httpx.options(
        server.url + CHAT,
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]
    for method in ("GET", "OPTIONS"):
        foreign = httpx.request(
            method,
            server.url + "/v1/models",
            headers={**AUTH, "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers
    same_origin = httpx.get(server.url + "/v1/models", headers={**AUTH, "Origin": server.url})
    assert same_origin.status_code == 200 and "access-control-allow-origin" not in same_origin.headers


@pytest.mark.parametrize("examples, same_cases_every_run", [(5, True), pytest.param(60, False, marks=pytest.mark.slow)])
def test_fuzzing_every_route_finds_no_server_error(server, examples, same_cases_every_run):
    """Schemathesis generates valid and invalid requests for every operation of the served schema (the
    OpenAI routes, the conversations, feedback); each case with an id in its path is sent twice: with
    the generated id and with the id of a real conversation (and its reply), so that the bodies reach
    the handlers behind the 404. The routes outside the schema get every method with odd bodies."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    api = httpx.Client(base_url=server.url, headers=AUTH, timeout=60)

    def real_ids() -> dict[str, str]:
        conversations = api.get("/api/conversations").json()["conversations"]
        if conversations:
            conversation = api.get(f"/api/conversations/{conversations[0]['id']}").json()
            replies = [m for m in conversation["messages"] if m["role"] == "assistant"]
            if replies:
                return {"conversation_id": conversation["id"], "message_id": replies[-1]["id"]}
        made = api.post("/api/conversations", json={"title": "fuzzed"}).json()
        with api.stream("POST", f"/api/conversations/{made['id']}/messages", json={"content": "hi"}) as reply:
            reply.read()
        return real_ids()

    spec = api.get("/openapi.json").json()
    assert {"/api/conversations/{conversation_id}/messages", "/api/messages/{message_id}/feedback"} <= set(
        spec["paths"]
    )
    schema = schemathesis.openapi.from_dict(spec)
    failures = []

    def send(case) -> None:
        response = case.call(base_url=server.url, headers=AUTH, timeout=30)
        if response.status_code >= 500:
            failures.append(
                f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code} {response.text[:200]}"
            )

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=same_cases_every_run,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def no_server_error(case):
                send(case)
                if case.path_parameters:
                    ids = real_ids()
                    case.path_parameters = {name: ids.get(name, value) for name, value in case.path_parameters.items()}
                    send(case)

            try:
                no_server_error()
            except Unsatisfiable:  # an operation without parameters has no invalid request to make
                assert mode == GenerationMode.NEGATIVE
    bodies = [None, b"", b"{", b'{"a": 1}', b"[1, 2]", "\u00e9\ud800".encode("utf-8", "surrogatepass"), b"\x00" * 64]
    for path in ("/", "/health", "/metrics", "/openapi.json", "/api/model-card", "/static/app.js", "/nowhere"):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
            for body in bodies:
                response = api.request(method, path, content=body, headers={"Content-Type": "application/json"})
                if response.status_code >= 500:
                    failures.append(f"{method} {path} {body!r} -> {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures[:10])


@pytest.fixture
def one_slot(run_dir):
    """No key, no CORS, one slot and one place in the queue."""
    with live_server(run_dir, ServerSettings(max_slots=1, max_queue=1)) as live:
        yield live


def open_stream(client: httpx.Client, url: str, content: str, max_tokens: int = 1000):
    body = {"messages": [user(content)], "temperature": 0, "max_tokens": max_tokens, "stream": True}
    response = client.send(client.build_request("POST", url + CHAT, json=body), stream=True)
    lines = response.iter_lines()
    assert json.loads(next(lines)[6:])["choices"][0]["delta"]["role"] == "assistant"
    return response, lines


def test_a_full_server_answers_503_at_once_and_cors_is_off_by_default(one_slot):
    """One reply generating (a long song), one waiting for the slot: the next request is refused at once."""
    engine = one_slot.app.state.engine
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(1) as pool:
        first, _ = open_stream(client, one_slot.url, SONG_REQUEST)
        waiting = pool.submit(client.post, one_slot.url + CHAT, json={"messages": [user(GREETING)], "max_tokens": 4})
        while engine.stats()["waiting"] == 0:
            time.sleep(0.005)
        start = time.monotonic()
        refused = client.post(one_slot.url + CHAT, json={"messages": [user(GREETING)], "max_tokens": 4})
        assert refused.status_code == 503 and time.monotonic() - start < 2
        assert refused.json()["error"]["code"] == "server_busy" and refused.headers["Retry-After"] == "1"
        first.close()  # frees the slot: the waiting request is answered
        assert waiting.result().status_code == 200
    assert httpx.get(one_slot.url + "/v1/models").status_code == 200  # no key configured: open
    foreign = httpx.get(one_slot.url + "/v1/models", headers={"Origin": ALLOWED})
    assert foreign.status_code == 403


def test_an_error_in_the_middle_of_a_stream_ends_it_with_an_error_event_and_done(one_slot):
    with httpx.Client(timeout=30) as client:
        response, lines = open_stream(client, one_slot.url, SONG_REQUEST)
        next(lines)
        one_slot.app.state.engine.close()  # what a shutdown does to a generation in progress
        rest = [line for line in lines if line]
        response.close()
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][6:])["error"]
    assert error["code"] == "cancelled" and error["message"]
