"""Each API key's own knowledge base, beside the run's shared one: /v1/knowledge.

    POST   /v1/knowledge/documents?name=notes.md   the body is the file itself -> 201
           {"id", "object": "knowledge.document", "name", "chunks", "status": "added" | "replaced" | "unchanged"}
    GET    /v1/knowledge/documents                 {"object": "list", "data": [{"id", "object", "name", "chars",
                                                   "chunks", "created", "shared"}, ...]}: the key's own, then the
                                                   run's (shared: true, read-only)
    DELETE /v1/knowledge/documents/{name}          204; 404 when the key has no such document (another key's
                                                   included), 403 for a shared one
    POST   /v1/knowledge/search                    {"query", "k": 5} -> {"object": "list", "data": [{"object":
                                                   "knowledge.passage", "document", "shared", "position", "start",
                                                   "end", "text", "score"}, ...]}, best first

A key never sees another key's documents: uploads go to the caller's own knowledge base
(DIR/knowledge/<owner>/, knowledge/library.py), and everything the caller lists, searches,
deletes or is answered from on /v1/chat/completions and the page is their own plus the run's
`knowledge.db` (filled with `ownllm kb add` by whoever runs the server). Search merges the two
by rank (reciprocal rank fusion; BM25 scores of two tables do not compare), `score` is that
fused score.

An upload is the raw file as the body, no multipart form:

    curl -X POST 'http://127.0.0.1:8000/v1/knowledge/documents?name=notes.md' \\
         -H 'Authorization: Bearer KEY' -H 'Content-Type: application/octet-stream' --data-binary @notes.md

Its type is the name's suffix (.txt .md .markdown .html .htm .jsonl .pdf). The Content-Type
must be application/octet-stream or that type's own (application/pdf, text/markdown,
text/html, application/x-ndjson or application/jsonl): the three types a web page on another
site may send without asking first (text/plain and the two form types) are refused, as the
JSON routes refuse them, so the route does not rest on the Origin check alone. The request
guard (security.py) leaves this one body to the route, which applies the same rules with its
own limit: more than --max-upload-mb (10 MB) is refused with 413 as soon as Content-Length or
the bytes counted so far say so, without reading the rest (the connection is closed), and the
body must arrive within --body-timeout (408). At most UPLOADS_AT_ONCE bodies are read at once
(503 past that) and READERS_AT_ONCE documents parsed, so uploads cannot fill memory or the
thread pool.

What an upload must be, or nothing changes (the add is one transaction, the old text kept):
a plain file name (400: no /, \\, '..', leading '.'); a type ownllm reads (415); text
(422: NUL bytes, invalid UTF-8 past 1%, a broken PDF or JSON Lines file, no text at all);
within bounds (413: the text at most twice the upload limit, a PDF within its page, time and
decompression limits, knowledge/documents.py); and at most --max-documents per key (403,
code document_limit; replacing one is always allowed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, NoReturn

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from ownllm.knowledge.documents import (
    MAX_CHARS,
    DocumentTooLarge,
    ReadLimits,
    UnreadableDocument,
    UnsupportedDocument,
    check_suffix,
)
from ownllm.knowledge.library import BadName, DocumentLimit, check_name
from ownllm.server.schemas import Text
from ownllm.server.security import APIError, require_owner


def loaded(request: Request) -> None:
    """503 until the model and the run's embedder are loaded: passages added before would lack its vectors."""
    if not request.app.state.ready.is_set():
        raise APIError(503, "the model is still loading; try again in a moment", code="model_not_ready")


router = APIRouter(prefix="/v1/knowledge", dependencies=[Depends(require_owner), Depends(loaded)])

UPLOADS_AT_ONCE = 8  # bodies being received at once, each at most max_upload_bytes in memory
READERS_AT_ONCE = 2  # documents being parsed at once (a PDF may take seconds of a thread)
READ_SECONDS = 30.0  # reading an uploaded PDF's text
MAX_QUERY_CHARS = 2000
MAX_K = 50
CLOSE = {"Connection": "close"}  # for a refusal sent before the body was read: do not wait for it
OCTET_STREAM = "application/octet-stream"
MEDIA_TYPES = {
    ".txt": (),
    ".md": ("text/markdown", "text/x-markdown"),
    ".markdown": ("text/markdown", "text/x-markdown"),
    ".html": ("text/html",),
    ".htm": ("text/html",),
    ".jsonl": ("application/jsonl", "application/x-ndjson", "application/x-jsonlines"),
    ".pdf": ("application/pdf",),
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
    }
}


@dataclass
class _Uploads:
    """Per app (each has its own event loop): bodies in progress, and the threads that parse them."""

    receiving: int = 0
    readers: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(READERS_AT_ONCE))


class SearchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
    query: Annotated[Text, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 5


@router.post("/documents", status_code=201, openapi_extra=UPLOAD_BODY)
async def upload_document(request: Request, name: str | None = None, owner: str = Depends(require_owner)) -> dict:
    """Add (or replace) one document of the caller's from the request body; see the module's docstring."""
    state = request.app.state
    refusal = _check_upload(name, request.headers.get("content-type"))
    if refusal is not None:
        await _refuse(request, refusal)
    assert name is not None  # checked
    uploads = getattr(state, "uploads", None)
    if uploads is None:
        uploads = state.uploads = _Uploads()  # on the event loop's thread: no race
    if uploads.receiving >= UPLOADS_AT_ONCE:
        raise APIError(
            503,
            "too many uploads at once; try again in a moment",
            code="server_busy",
            headers={"Retry-After": "1", **CLOSE},
        )
    uploads.receiving += 1
    try:
        data = await _receive(request, state.settings.max_upload_bytes, state.settings.body_seconds)
    finally:
        uploads.receiving -= 1
    limits = ReadLimits(max_chars=min(MAX_CHARS, 2 * state.settings.max_upload_bytes), seconds=READ_SECONDS)
    try:
        status, chunks = await anyio.to_thread.run_sync(
            state.library.add, owner, name, data, limits, limiter=uploads.readers
        )
    except DocumentTooLarge as e:
        raise APIError(413, str(e), code="document_too_large") from None
    except UnreadableDocument as e:
        raise APIError(422, str(e), code="unreadable_document") from None
    except DocumentLimit as e:
        raise APIError(403, f"{e} (--max-documents)", code="document_limit") from None
    return {"id": name, "object": "knowledge.document", "name": name, "chunks": chunks, "status": status}


def _check_upload(name: str | None, content_type: str | None) -> APIError | None:
    """What is wrong with an upload before its body is read: its name, its type, its Content-Type."""
    if not name:
        return APIError(400, "give the document's name: POST /v1/knowledge/documents?name=notes.md", param="name")
    try:
        suffix = check_suffix(check_name(name))
    except BadName as e:
        return APIError(400, str(e), param="name", code="invalid_name")
    except UnsupportedDocument as e:
        return APIError(415, str(e), param="name", code="unsupported_document")
    media_type = (content_type or "").partition(";")[0].strip().lower()
    allowed = (OCTET_STREAM, *MEDIA_TYPES[suffix])
    if media_type not in allowed:
        return APIError(
            415,
            f"send the file's bytes as the body with Content-Type: {' or '.join(allowed)} (got "
            f"{media_type or 'none'}; text/plain and forms are refused: a page on another site may send them "
            f"without asking)",
            code="unsupported_media_type",
        )
    return None


async def _refuse(request: Request, error: APIError) -> NoReturn:
    """Raise `error` once the body is read and dropped: a server that answers and closes while the client
    is still sending resets the connection, and the client may lose the answer. A body past the limit,
    or too slow, is not waited for (the connection closes)."""
    settings = request.app.state.settings
    try:
        await _receive(request, settings.max_upload_bytes, settings.body_seconds, keep=False)
    except APIError:
        error.headers = {**(error.headers or {}), **CLOSE}
    raise error


async def _receive(request: Request, limit: int, seconds: float, keep: bool = True) -> bytes:
    """The body (b"" unless keep), counted as it arrives: 413 past `limit` (nothing more read), 408 past `seconds`."""
    too_large = APIError(
        413,
        f"the document is larger than {limit:,} bytes (--max-upload-mb); split it",
        code="body_too_large",
        headers=CLOSE,
    )
    if int(request.headers.get("content-length", "0")) > limit:  # the HTTP parser has checked it is a number
        raise too_large
    parts, size = [], 0
    try:
        with anyio.fail_after(seconds):
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise too_large
                if keep:
                    parts.append(part)
    except TimeoutError:
        raise APIError(
            408, f"the document did not arrive within {seconds:g} seconds", code="request_timeout", headers=CLOSE
        ) from None
    except ClientDisconnect:
        raise APIError(400, "the client went away while sending the document", headers=CLOSE) from None
    return b"".join(parts)


@router.get("/documents")
def list_documents(request: Request, owner: str = Depends(require_owner)) -> dict:
    documents = request.app.state.library.documents(owner)
    return {"object": "list", "data": [_document(d) for d in documents]}


def _document(d: dict) -> dict:
    return {
        "id": d["name"],
        "object": "knowledge.document",
        "name": d["name"],
        "chars": d["chars"],
        "chunks": d["chunks"],
        "created": int(d["added"]),
        "shared": d["shared"],
    }


@router.delete("/documents/{name}", status_code=204)
def delete_document(name: str, request: Request, owner: str = Depends(require_owner)) -> Response:
    library = request.app.state.library
    try:
        removed = library.remove(owner, name)
    except BadName as e:
        raise APIError(400, str(e), param="name", code="invalid_name") from None
    except UnsupportedDocument:
        removed = False  # no document of that type can exist
    if not removed:
        if any(d["shared"] and d["name"] == name for d in library.documents(owner)):
            raise APIError(
                403,
                f"{name} is in the run's shared knowledge base, read-only here (`ownllm kb remove` on the server)",
                code="shared_document",
            )
        raise APIError(404, f"no document {name!r} in this key's knowledge base", code="document_not_found")
    return Response(status_code=204)


@router.post("/search")
def search(body: SearchRequest, request: Request, owner: str = Depends(require_owner)) -> dict:
    passages = request.app.state.library.search(owner, body.query, body.k)
    return {
        "object": "list",
        "data": [
            {
                "object": "knowledge.passage",
                "document": Path(p.hit.path).name,  # a shared one's path stays on the server
                "shared": p.shared,
                "position": p.hit.position,
                "start": p.hit.start,
                "end": p.hit.end,
                "text": p.hit.text,
                "score": p.score,
            }
            for p in passages
        ],
    }
