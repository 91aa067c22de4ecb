"""Each API key's own knowledge base: /v1/knowledge upload, list, search and delete, per key, beside the run's.

Two real servers (create_app under uvicorn) share one run, as a server does across a change of
API key: key A's and key B's. The run's knowledge.db (the operator's, `ownllm kb add`) holds
SHARED; what a key uploads is its own. Every hostile upload is checked to change nothing: the
key's list, its search results and the text files kept for it are compared before and after.
The tiny chat model of tests/helpers/chat.py answers, so citations on /v1/chat/completions and
the page's /api show which documents a reply was given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import select
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from helpers import torch_threads
from helpers.chat import tiny_chat_run
from helpers.pdf import minimal_pdf, pdf_pages
from helpers.server import live_server
from ownllm.knowledge.base import KnowledgeBase
from ownllm.knowledge.documents import UnreadableDocument
from ownllm.knowledge.library import FOLDER, BadName, Library, check_name, owner_dir
from ownllm.server.security import owner_id
from ownllm.server.settings import ServerSettings

KEY_A, KEY_B = "knowledge-key-a", "knowledge-key-b"
NOTE = "The quarterly meeting is on Friday in room 4."
QUESTION = "When is the quarterly meeting?"
SHARED = "The office cat is called Biscuit and sleeps on the printer."
SHARED_QUESTION = "What is the office cat called?"
LIMIT = 1 << 20  # --max-upload-mb 1
MAX_DOCUMENTS = 4
OCTET = "application/octet-stream"


@pytest.fixture(scope="module")
def shared_doc(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("operator") / "office.md"
    path.write_text(SHARED)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_doc) -> Path:
    run = tmp_path_factory.mktemp("server_knowledge") / "run"
    shutil.copytree(tiny_chat_run(tmp_path_factory), run, ignore=shutil.ignore_patterns("assistant.*", "knowledge*"))
    kb = KnowledgeBase.for_run(run)
    kb.add(shared_doc)
    kb.close()
    return run


@pytest.fixture(scope="module")
def servers(run):
    settings = ServerSettings(max_upload_bytes=LIMIT, max_documents=MAX_DOCUMENTS, body_seconds=5.0)
    with (
        torch_threads(1),
        live_server(run, dataclasses.replace(settings, api_key=KEY_A)) as a,
        live_server(run, dataclasses.replace(settings, api_key=KEY_B)) as b,
    ):
        yield a, b


def client(server, key: str, path: str = "/v1/knowledge") -> httpx.Client:
    return httpx.Client(base_url=server.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture
def api_a(servers):
    with client(servers[0], KEY_A) as api:
        yield api
        clear(api)


@pytest.fixture
def api_b(servers):
    with client(servers[1], KEY_B) as api:
        yield api
        clear(api)


def clear(api: httpx.Client) -> None:
    for document in own(api):
        assert api.delete(f"/documents/{document['name']}").status_code == 204


def own(api: httpx.Client) -> list[dict]:
    response = api.get("/documents")
    assert response.status_code == 200, response.text
    return [d for d in response.json()["data"] if not d["shared"]]


def upload(api: httpx.Client, name: str, data: bytes | str, content_type: str | None = OCTET) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    content = data.encode() if isinstance(data, str) else data
    return api.post("/documents", params={"name": name}, content=content, headers=headers)


def search(api: httpx.Client, query: str, k: int = 5) -> list[dict]:
    response = api.post("/search", json={"query": query, "k": k})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def owner_files(server, run: Path, key: str) -> dict[str, str]:
    """The text files kept for a key: name -> SHA-256."""
    folder = run / FOLDER / owner_dir(owner_id(key, server.app.state.owner_secret)) / "files"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*"))}


def chat(server, key: str, question: str) -> dict:
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 4, "temperature": 0}
    response = httpx.post(
        server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_upload_list_search_replace_and_delete(api_a, servers, run):
    created = upload(api_a, "notes.md", NOTE + "\n\nBring the budget.")
    assert created.status_code == 201, created.text
    assert created.json() == {
        "id": "notes.md",
        "object": "knowledge.document",
        "name": "notes.md",
        "chunks": 1,
        "status": "added",
    }
    (notes,) = own(api_a)
    assert notes["name"] == "notes.md" and notes["chunks"] == 1 and notes["chars"] == len(NOTE) + 19
    shared = [d for d in api_a.get("/documents").json()["data"] if d["shared"]]
    assert [d["name"] for d in shared] == ["office.md"]  # listed, read-only, its server path not shown
    assert str(run) not in api_a.get("/documents").text

    best = search(api_a, QUESTION)[0]
    assert best["document"] == "notes.md" and not best["shared"] and "Friday" in best["text"]
    assert best["position"] == 0 and best["start"] == 0 and best["score"] > 0
    office = search(api_a, "office cat")[0]
    assert office["document"] == "office.md" and office["shared"]

    again = upload(api_a, "notes.md", NOTE + "\n\nBring the budget.")
    assert again.status_code == 201 and again.json()["status"] == "unchanged"
    changed = upload(api_a, "notes.md", "The quarterly meeting moved to Monday.")
    assert changed.status_code == 201 and changed.json()["status"] == "replaced"
    texts = [p["text"] for p in search(api_a, "quarterly meeting Friday Monday")]
    assert any("Monday" in t for t in texts) and not any("Friday" in t for t in texts)
    assert len(own(api_a)) == 1

    pdf = upload(api_a, "vault.pdf", minimal_pdf("The vault code is 4417."), "application/pdf")
    assert pdf.status_code == 201 and "4417" in search(api_a, "vault code")[0]["text"]
    page = upload(api_a, "page.html", "<p>The garden gate is green.</p><script>x()</script>", "text/html")
    rows = upload(api_a, "rows.jsonl", '{"text": "The boat is named Wave."}\n', "application/x-ndjson")
    assert page.status_code == 201 and rows.status_code == 201
    assert search(api_a, "garden gate")[0]["text"] == "The garden gate is green."

    assert api_a.delete("/documents/notes.md").status_code == 204
    assert api_a.delete("/documents/notes.md").status_code == 404
    assert not any(p["document"] == "notes.md" for p in search(api_a, QUESTION))
    assert sorted(d["name"] for d in own(api_a)) == ["page.html", "rows.jsonl", "vault.pdf"]
    forbidden = api_a.delete("/documents/office.md")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "shared_document"
    assert "notes.md.txt" not in owner_files(servers[0], run, KEY_A)


def test_a_key_never_sees_another_keys_documents(api_a, api_b, servers, run, shared_doc):
    server_a, server_b = servers
    assert upload(api_a, "secret.md", NOTE).status_code == 201
    assert own(api_b) == []
    assert all(not p["document"].startswith("secret") and "room 4" not in p["text"] for p in search(api_b, QUESTION))
    missing = api_b.delete("/documents/secret.md")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert [d["name"] for d in own(api_a)] == ["secret.md"]  # still there

    # The same name in B's own knowledge base is another document.
    assert upload(api_b, "secret.md", "Bananas ripen faster in a paper bag.").json()["status"] == "added"
    assert "room 4" in search(api_a, QUESTION)[0]["text"]
    assert not any("room 4" in p["text"] for p in search(api_b, QUESTION))

    # Chat answers: A's document is cited to A only; the shared one to both.
    (cited,) = chat(server_a, KEY_A, QUESTION)["citations"]
    assert cited["path"] == "secret.md" and cited["text"] == NOTE
    assert "citations" not in chat(server_b, KEY_B, QUESTION)
    for server, key in ((server_a, KEY_A), (server_b, KEY_B)):
        (shared,) = chat(server, key, SHARED_QUESTION)["citations"]
        assert shared["path"] == str(shared_doc.resolve()) and shared["text"] == SHARED
        with client(server, key) as api:
            assert search(api, "office cat")[0]["shared"]

    # The page's replies (/api) read the same knowledge bases as the key's /v1 calls.
    for server, key, expected in ((server_a, KEY_A, ["secret.md"]), (server_b, KEY_B, [])):
        with client(server, key, "/api") as page:
            conversation = page.post("/conversations", json={}).json()["id"]
            reply = page.post(f"/conversations/{conversation}/messages", json={"content": QUESTION, "max_tokens": 4})
            assert reply.status_code == 200, reply.text
            done = [
                json.loads(block.split("data: ", 1)[1]) for block in reply.text.split("\n\n") if "event: done" in block
            ]
            assert [c["path"] for c in done[0].get("citations", [])] == expected


def snapshot(api: httpx.Client, server, run: Path, key: str) -> tuple:
    """Everything a key's knowledge base is: its documents, what searches find, the text files kept."""
    found = [(p["document"], p["text"]) for q in (QUESTION, "budget", "binary junk") for p in search(api, q)]
    return own(api), found, owner_files(server, run, key)


HOSTILE = [
    # (name, body, content type, status, error code)
    ("notes.md", b"\x00\x01\x02\x03binary" * 100, OCTET, 422, "unreadable_document"),  # over an existing one
    ("junk.txt", bytes(range(128, 256)) * 50, OCTET, 422, "unreadable_document"),  # invalid UTF-8, no NUL
    ("notes.md", b"", OCTET, 422, "unreadable_document"),
    ("blank.txt", b"  \n\n\t ", OCTET, 422, "unreadable_document"),
    ("bomb.pdf", pdf_pages(b" " * (64 << 20), pages=12, flate=True), "application/pdf", 413, "document_too_large"),
    ("broken.pdf", b"%PDF-1.4\nnot really a pdf", OCTET, 422, "unreadable_document"),
    ("rows.jsonl", b'{"text": "ok"}\nnot json\n', OCTET, 422, "unreadable_document"),
    ("../notes.md", NOTE.encode(), OCTET, 400, "invalid_name"),
    ("sub/notes.md", NOTE.encode(), OCTET, 400, "invalid_name"),
    ("sub\\notes.md", NOTE.encode(), OCTET, 400, "invalid_name"),
    ("..", NOTE.encode(), OCTET, 400, "invalid_name"),
    (".notes.md", NOTE.encode(), OCTET, 400, "invalid_name"),
    ("notes\x00.md", NOTE.encode(), OCTET, 400, "invalid_name"),
    ("", NOTE.encode(), OCTET, 400, None),
    ("program.exe", b"MZ\x90\x00", OCTET, 415, "unsupported_document"),
    ("notes", NOTE.encode(), OCTET, 415, "unsupported_document"),
    ("other.md", NOTE.encode(), "text/plain", 415, "unsupported_media_type"),
    ("other.md", NOTE.encode(), "multipart/form-data; boundary=x", 415, "unsupported_media_type"),
    ("other.md", NOTE.encode(), "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("other.md", NOTE.encode(), None, 415, "unsupported_media_type"),
    ("other.md", NOTE.encode(), "application/pdf", 415, "unsupported_media_type"),
]


def test_hostile_uploads_get_a_4xx_and_change_nothing(api_a, servers, run):
    assert pdf_pages(b" " * (64 << 20), pages=12, flate=True).__len__() < LIMIT  # the bomb fits the upload limit
    assert upload(api_a, "notes.md", NOTE + "\n\nBring the budget.").status_code == 201
    before = snapshot(api_a, servers[0], run, KEY_A)
    assert before[0] and before[2]
    for name, body, content_type, status, code in HOSTILE:
        started = time.monotonic()
        response = upload(api_a, name, body, content_type)
        assert response.status_code == status, (name, content_type, response.text)
        error = response.json()["error"]
        assert error["code"] == code and error["message"] and "Traceback" not in error["message"], name
        assert time.monotonic() - started < 10, name
        assert snapshot(api_a, servers[0], run, KEY_A) == before, name
    unauthorized = httpx.post(f"{servers[0].url}/v1/knowledge/documents?name=x.md", content=b"x", headers={})
    assert unauthorized.status_code == 401
    assert snapshot(api_a, servers[0], run, KEY_A) == before


def test_a_few_stray_bytes_and_a_long_line_within_the_limit_are_fine(api_a):
    latin = ("Un cafe au lait. " * 100).encode() + "Cr\u00e8me br\u00fbl\u00e9e.".encode("latin-1")
    assert upload(api_a, "menu.txt", latin).json()["status"] == "added"
    line = b"word " * (LIMIT // 5) + b"x" * (LIMIT % 5)  # exactly the limit, one line, no sentence end
    assert len(line) == LIMIT
    started = time.monotonic()
    response = upload(api_a, "line.txt", line)
    assert response.status_code == 201, response.text
    assert response.json()["chunks"] > LIMIT // 600 and time.monotonic() - started < 10
    assert all(len(p["text"]) <= 600 for p in search(api_a, "word", k=3))


def test_a_key_keeps_at_most_max_documents(api_a, servers, run):
    for i in range(MAX_DOCUMENTS):
        assert upload(api_a, f"doc{i}.md", f"Document number {i} is here.").status_code == 201
    before = snapshot(api_a, servers[0], run, KEY_A)
    refused = upload(api_a, "one-more.md", "One too many.")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "document_limit"
    assert snapshot(api_a, servers[0], run, KEY_A) == before
    assert upload(api_a, "doc0.md", "Document zero, rewritten.").json()["status"] == "replaced"  # replacing is fine
    assert api_a.delete("/documents/doc1.md").status_code == 204
    assert upload(api_a, "one-more.md", "Room again.").status_code == 201


def raw_upload(server, headers: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        f"POST /v1/knowledge/documents?name=big.txt HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {KEY_A}\r\nContent-Type: {OCTET}\r\n{headers}\r\n".encode()
    )
    return sock


def read_response(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(10)
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_body_over_the_limit_is_refused_without_reading_the_rest(api_a, servers, run):
    server = servers[0]
    assert upload(api_a, "notes.md", NOTE).status_code == 201
    before = snapshot(api_a, server, run, KEY_A)
    declared = raw_upload(server, f"Content-Length: {50 << 20}\r\n")  # a 50 MB line announced, none of it sent
    started = time.monotonic()
    answer = read_response(declared)  # answered and closed at once, not after 50 MB
    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer and time.monotonic() - started < 5

    # No length given: counted as it comes. Sent at a pace the server reads it, the byte past the limit gets a 413.
    paced = raw_upload(server, "Transfer-Encoding: chunked\r\n")
    piece = b"word " * (1 << 13)  # 40 KB of one line
    for _ in range(LIMIT // len(piece)):
        paced.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        time.sleep(0.005)
    paced.sendall(b"%x\r\n%s\r\n" % (LIMIT % len(piece) + 1, b"x" * (LIMIT % len(piece) + 1)))
    answer = read_response(paced)
    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer, answer[:200]

    # Sent as fast as it goes: the server stops reading at the limit and closes; the client cannot push 50 MB.
    flood, sent = raw_upload(server, "Transfer-Encoding: chunked\r\n"), 0
    piece = b"word " * (1 << 18)  # 1.25 MB
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
        while sent < 50 << 20 and not select.select([flood], [], [], 0)[0]:
            flood.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
    assert sent < 20 << 20, f"the server took {sent >> 20} MB"
    with contextlib.suppress(ConnectionResetError):  # the refusal may be lost to the reset of a client still sending
        answer = read_response(flood)
        assert not answer or answer.startswith(b"HTTP/1.1 413")
    assert snapshot(api_a, server, run, KEY_A) == before


def test_search_is_checked_and_behind_the_key(api_a, servers):
    for body in ({"query": "", "k": 5}, {"query": "x", "k": 0}, {"query": "x", "k": 51}, {"k": 5}, {"query": 3}):
        response = api_a.post("/search", json=body)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error", body
    assert api_a.post("/search", content=b"query", headers={"Content-Type": "text/plain"}).status_code == 415
    url = servers[0].url + "/v1/knowledge"
    for method, path in (("GET", "/documents"), ("POST", "/search"), ("DELETE", "/documents/a.md")):
        assert httpx.request(method, url + path).status_code == 401
    assert api_a.delete("/documents/..%5Cx.md").status_code == 400


# -- the library itself, without a server ----------------------------------------------------------------------


def test_owner_folders_are_plain_file_names_one_per_owner():
    keyed = owner_id("some key", b"secret")
    names = [owner_dir(o) for o in ("local", keyed, "../../etc", "a:b", "a-b", "x" * 500)]
    assert names[0] == "local" and names[1] == "hmac-" + keyed.split(":")[1]
    assert all(re.fullmatch(r"[a-z0-9-]{1,64}", n) for n in names) and len(set(names)) == len(names)
    for bad in ("", " ", "a/b.md", "a\\b.md", "..md", "x..y.md", ".md", "a:b.md", "a\tb.md", " a.md", "\ud800.md"):
        with pytest.raises(BadName):
            check_name(bad)
    assert check_name("Notes 2024 (final).md") == "Notes 2024 (final).md"


def test_search_fuses_by_rank_with_the_owners_own_first(tmp_path):
    shared = KnowledgeBase(tmp_path / "shared.db")
    for i in range(3):
        doc = tmp_path / f"shared{i}.md"
        doc.write_text(f"Shared passage about apples {'apples ' * (3 - i)}number {i}.")
        shared.add(doc)
    library = Library(tmp_path / "knowledge", lambda: shared)
    for i in range(2):
        library.add("alice", f"own{i}.md", f"Own passage about apples {'apples ' * (2 - i)}number {i}.".encode())
    found = library.search("alice", "apples", k=5)
    assert [(Path(p.hit.path).name, p.shared) for p in found] == [
        ("own0.md", False),
        ("shared0.md", True),
        ("own1.md", False),
        ("shared1.md", True),
        ("shared2.md", True),
    ]
    assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
    assert [h.path for h in library.for_owner("bob").search("apples", k=2)] == [
        str((tmp_path / "shared0.md").resolve()),
        str((tmp_path / "shared1.md").resolve()),
    ]
    assert not library.folder("bob").exists()  # searching opens nothing for an owner without documents
    library.close()
    shared.close()


def test_open_knowledge_bases_are_bounded_and_one_in_use_is_never_closed(tmp_path):
    library = Library(tmp_path / "knowledge", max_open=2)
    with library._own("owner0", create=True) as held:
        assert held is not None
        for i in range(1, 6):
            library.add(f"owner{i}", "a.md", f"Owner {i} keeps pears.".encode())
            assert library.open_count() <= 3  # the bound, plus the one held
        assert held.kb.documents() == []  # still open
    assert library.open_count() <= 2
    for i in range(1, 6):  # reopened when needed
        assert [p.hit.text for p in library.search(f"owner{i}", "pears")] == [f"Owner {i} keeps pears."]
    library.close()
    with pytest.raises(RuntimeError):
        library.search("owner1", "pears")


def test_a_failed_add_leaves_the_documents_and_their_text_as_they_were(tmp_path, monkeypatch):
    library = Library(tmp_path / "knowledge")
    library.add("alice", "notes.md", NOTE.encode())
    kept = library.folder("alice") / "files" / "notes.md.txt"
    before = (library.documents("alice"), kept.read_text())

    def broken(self, path, chunking=None):
        raise OSError("disk full")

    monkeypatch.setattr(KnowledgeBase, "add", broken)
    with pytest.raises(OSError):
        library.add("alice", "notes.md", b"New text that never lands.")
    with pytest.raises(OSError):
        library.add("alice", "other.md", b"Another that never lands.")
    assert (library.documents("alice"), kept.read_text()) == before
    assert sorted(p.name for p in kept.parent.iterdir()) == ["notes.md.txt"]
    monkeypatch.undo()
    with pytest.raises(UnreadableDocument):
        library.add("alice", "notes.md", b"\x00binary")
    assert (library.documents("alice"), kept.read_text()) == before
    library.close()


def test_a_moved_run_keeps_its_owners_documents_replaceable_and_deletable(tmp_path):
    library = Library(tmp_path / "a" / "knowledge")
    library.add("alice", "notes.md", NOTE.encode())
    library.close()
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = Library(tmp_path / "b" / "knowledge")
    assert [d["name"] for d in moved.documents("alice")] == ["notes.md"]
    assert moved.add("alice", "notes.md", NOTE.encode())[0] == "replaced"  # the entry under the old path goes
    assert [d["name"] for d in moved.documents("alice")] == ["notes.md"]
    assert moved.remove("alice", "notes.md") and moved.documents("alice") == []
    moved.close()
