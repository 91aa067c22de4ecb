"""Who may call the server and what a request may look like, checked before any route runs.

- API key: with a key configured, every route but /health (and the static page, which holds
  no data) needs `Authorization: Bearer KEY`, compared in constant time. The guard checks it
  before reading a body, so a client without the key gets its 401 at once and cannot make the
  server buffer anything; the routes check it again (`require_owner`), which also derives the
  caller's identity from the key, so conversations are kept per key.
- Host header: a server bound to a loopback address answers only requests addressed to
  localhost, 127.0.0.1, [::1] or the address it is bound to (127.0.0.2 ...). A web page on
  another domain whose DNS name is re-pointed to 127.0.0.1 (DNS rebinding) sends its own name
  in Host and is refused (421).
- Origin: a browser request from a page of another origin is refused (403) unless that origin
  is on the --cors-origin allow-list; CORS headers are sent only for allow-listed origins.
- Bodies: a body must be JSON (415 otherwise; this also blocks form posts from other sites,
  which cannot send application/json without a CORS preflight), at most max_body_bytes (413),
  counted while it arrives, so a chunked body without Content-Length cannot get around it, and
  complete within body_seconds (408). A refusal sent before the body was read closes the
  connection, so a client cannot keep trickling bytes into it; a small body that is already
  there (DRAIN_BYTES, DRAIN_SECONDS) is read and dropped first, or the close could reset the
  connection before the client reads the refusal. The one exception is the
  document upload (RAW_BODY_ROUTES: the file itself is the body), which applies the same
  checks itself with its own limits (knowledge_api.py); the Host, Origin and key checks stand.

- Response headers, on every response: the page's Content-Security-Policy with
  frame-ancestors 'none' (no other site may frame it; a meta tag cannot say that),
  X-Frame-Options for older browsers, X-Content-Type-Options: nosniff, no Referer.

Every refusal has the OpenAI error shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ownllm.assistant.reply import ContextOverflow
from ownllm.core.errors import UserError
from ownllm.inference.engine import EngineBusy
from ownllm.server.settings import ServerSettings

log = logging.getLogger("ownllm.server")

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
HOST_HEADER = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?$")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Routes whose body is a file, not JSON: they check its type, size and time themselves (knowledge_api.py).
RAW_BODY_ROUTES = {("POST", "/v1/knowledge/documents")}
# Pydantic names the member of a union a value failed in the error location: "str", "list[str]", "TextPart".
# Field names are snake_case, so a type name, a validated type ("function-after[...]") or a CamelCase
# model name is a union tag.
UNION_TAG = re.compile(r"^(str|int|float|bool|dict\[.*\]|list\[.*\]|function-\w+\[.*\]|[A-Z]\w*)$")


class APIError(Exception):
    """Raised anywhere in a route or dependency; answered as an OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type or error_type(status)
        self.param, self.code, self.headers = param, code, headers

    def response(self) -> JSONResponse:
        return openai_error(self.status, self.message, self.type, self.param, self.code, self.headers)


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(
    status: int,
    message: str,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error body every OpenAI client understands."""
    body = {"error": {"message": message, "type": type or error_type(status), "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def owner_id(api_key: str | None, secret: bytes) -> str:
    """The identity a key's conversations are stored under: a keyed hash (HMAC-SHA256 with the server's
    secret, Store.secret), so neither the key nor anything to test key guesses against is stored."""
    if not api_key:
        return "local"
    return "hmac:" + hmac.new(secret, api_key.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def legacy_owner_id(api_key: str) -> str:
    """How owners were named before the keyed hash (a bare, shortened SHA-256): migrated at start-up."""
    return "sha256:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


def _key_matches(authorization: str, key: str) -> bool:
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), key.encode("utf-8"))


def _missing_key() -> APIError:
    return APIError(
        401,
        "missing or wrong API key: send the header 'Authorization: Bearer YOUR_KEY'",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_owner(request: Request) -> str:
    """FastAPI dependency: the caller's identity, or a 401 when a key is required and missing or wrong."""
    key = request.app.state.settings.api_key
    if not key:
        return "local"
    if not _key_matches(request.headers.get("authorization", ""), key):
        raise _missing_key()
    return owner_id(key, request.app.state.owner_secret)


def install_security(app: FastAPI, settings: ServerSettings) -> None:
    """Error handlers, then the CORS allow-list and the request guard (the guard runs first)."""
    app.add_exception_handler(APIError, lambda request, e: e.response())
    # The stubs want handlers of any Exception; Starlette calls each only with its own class.
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(UserError, _user_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(SecurityHeaders)


class SecurityHeaders:
    """Pure ASGI middleware: SECURITY_HEADERS on every HTTP response, refusals and errors included."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _user_error(request: Request, e: UserError) -> JSONResponse:
    if isinstance(e, EngineBusy):
        return openai_error(503, str(e), code="server_busy", headers={"Retry-After": "1"})
    if isinstance(e, ContextOverflow):
        return openai_error(
            400,
            f'{e} (or send "truncate": true to drop the oldest turns)',
            param="messages",
            code="context_length_exceeded",
        )
    return openai_error(400, str(e))


def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return openai_error(e.status_code, message.get(e.status_code, str(e.detail)), headers=e.headers)


def _internal_error(request: Request, e: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return openai_error(500, "internal server error (a bug: the server log has the details)")


def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 list of problems -> one OpenAI-shaped 400 (as OpenAI answers) naming the most specific one."""
    errors: Sequence[dict[str, Any]] = e.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        detail = errors[0].get("ctx", {}).get("error", "decode error")
        return openai_error(400, f"the request body is not valid JSON ({detail})")
    located = [(_param(error.get("loc", ())), error) for error in errors]
    param = max((p for p, _ in located), key=lambda p: p.count(".") + p.count("["))
    if not param:
        missing = errors[0].get("type") == "missing"
        return openai_error(
            400, "the request needs a JSON object body" if missing else "the request body must be a JSON object"
        )
    # A value that fits none of a union's types gets one message per type: say them all.
    messages = dict.fromkeys(error.get("msg", "invalid value") for p, error in located if p == param)
    return openai_error(400, f"{param}: {' or '.join(messages)}", param=param)


def _param(loc: tuple) -> str:
    """("body", "messages", 0, "content", "list[TextPart]", 1, "text") -> "messages[0].content[1].text"."""
    param = ""
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part != "body" and not UNION_TAG.match(part):
            param += f".{part}" if param else part
    return param


def open_path(path: str) -> bool:
    """Routes that need no key: the health check and the page itself (it holds no data)."""
    return path in ("/", "/health") or path.startswith("/static/")


DRAIN_BYTES = 64 * 1024  # a refused request's body up to this size is read before the answer (_drained)
DRAIN_SECONDS = 2.0


class RequestGuard:
    """Pure ASGI middleware: Host, Origin and API-key checks, then the content type, size and time of the body."""

    def __init__(self, app: ASGIApp, settings: ServerSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._check_host(headers) or self._check_origin(headers) or self._check_key(scope, headers)
        raw = (scope["method"], scope["path"]) in RAW_BODY_ROUTES
        body_state = "unread" if scope["method"] in BODY_METHODS and _has_body(headers) else "none"
        if refusal is None and body_state == "unread" and not raw:
            refusal = _check_content_type(headers)
            if refusal is None:
                body, refusal = await self._read_body(headers, receive)
                if body is None and refusal is None:
                    return  # the client went away while sending
                body_state = "partly read" if refusal is not None else "read"
                if refusal is None:
                    assert body is not None  # None comes only with a refusal, or when the client left (above)
                    receive = _replay(body, receive)
        if refusal is not None:
            if body_state == "partly read" or (body_state == "unread" and not await _drained(headers, receive)):
                refusal.headers["Connection"] = "close"  # its body may still be on the way: do not wait for it
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check_key(self, scope: Scope, headers: Headers) -> JSONResponse | None:
        key = self.settings.api_key
        if not key or scope["method"] == "OPTIONS" or open_path(scope["path"]):
            return None  # a CORS preflight never carries credentials; CORSMiddleware answers it
        if _key_matches(headers.get("authorization", ""), key):
            return None
        return _missing_key().response()

    def _check_host(self, headers: Headers) -> JSONResponse | None:
        if not self.settings.loopback:
            return None
        match = HOST_HEADER.match(headers.get("host", ""))
        host, port = (match.group(1).lower(), match.group(2)) if match else ("", None)
        port_ok = port is None or self.settings.port == 0 or int(port) == self.settings.port
        bound = self.settings.host.lower().strip("[]")
        allowed = {*LOOPBACK_HOSTS, f"[{bound}]" if ":" in bound else bound}
        if host not in allowed or not port_ok:
            names = ", ".join(sorted(allowed))
            return openai_error(
                421,
                f"this server answers only requests to {names} on port {self.settings.port}, "
                f"not {headers.get('host', '(no Host header)')!r}",
                code="invalid_host",
            )
        return None

    def _check_origin(self, headers: Headers) -> JSONResponse | None:
        origin = headers.get("origin")
        if origin is None or origin in self.settings.cors_origins:
            return None
        same_origin = origin.partition("://")[2] == headers.get("host", "").lower()
        if same_origin:
            return None
        return openai_error(
            403,
            f"requests from pages on {origin} are not allowed; start the server with "
            f"--cors-origin {origin} to allow them",
            code="origin_not_allowed",
        )

    async def _read_body(self, headers: Headers, receive: Receive) -> tuple[bytes | None, JSONResponse | None]:
        limit = self.settings.max_body_bytes
        too_large = openai_error(413, f"the request body is larger than {limit} bytes", code="body_too_large")
        if int(headers.get("content-length", "0")) > limit:  # the HTTP parser has checked it is a number
            return b"", too_large
        chunks, size = [], 0
        with anyio.move_on_after(self.settings.body_seconds):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None, None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return b"", too_large
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks), None
        seconds = f"{self.settings.body_seconds:g}"
        return b"", openai_error(
            408, f"the request body did not arrive within {seconds} seconds", code="request_timeout"
        )


async def _drained(headers: Headers, receive: Receive) -> bool:
    """Read and drop the body of a request refused before it was read, if it is small and comes at once.

    Closing a connection whose body is still unread makes the kernel reset it, and the reset can
    reach the client before it has read the refusal ("connection reset" instead of a 401). A body
    of at most DRAIN_BYTES, whole within DRAIN_SECONDS, is read first; a larger, chunked or slow
    one is not waited for (the connection is closed), so refusals cost a slow client nothing."""
    length = headers.get("content-length")
    if length is None or int(length) > DRAIN_BYTES:
        return False
    with anyio.move_on_after(DRAIN_SECONDS):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            if not message.get("more_body", False):
                return True
    return False


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "chunked" in headers.get("transfer-encoding", "").lower()


def _check_content_type(headers: Headers) -> JSONResponse | None:
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json")):
        return None
    shown = media_type or "none"
    return openai_error(
        415,
        f"the request body must be JSON sent with 'Content-Type: application/json' (got {shown})",
        code="unsupported_media_type",
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that gives the app the body already read, then whatever the client sends next (disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
