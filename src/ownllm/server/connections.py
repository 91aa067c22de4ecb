"""Connections: what a slow or greedy client may hold, and the uvicorn configuration that enforces it.

uvicorn's HTTP/1.1 protocol waits as long as a client likes for a request's headers, and
accepts every connection it is offered. A few hundred clients that connect and then trickle
(or never finish) their headers would hold sockets, file descriptors and memory until they
hang up. The protocol here adds the two limits a public server needs:

  header_seconds   a connection must deliver complete request headers within this long of
                   connecting, or of the end of its previous response; else it is closed
                   (a 408 first, when nothing else is in flight on it)
  max_connections  connections open at once; one more is answered 503 and closed at once

The request body's own deadline (body_seconds) is kept by the request guard (security.py),
which also checks the API key before reading a body at all, so an unauthenticated client
cannot make the server buffer anything.

Shutting down (`Server`): on SIGTERM or Ctrl-C the generations in flight are ended first
(streaming.GenerationGate.stop: each stream sends an error event, /v1 streams then
`data: [DONE]`, and its reply is saved as interrupted); uvicorn then waits up to
GRACE_SECONDS for the connections to close before it cancels what is left, and the app's
lifespan closes the engine and the database.
"""

from __future__ import annotations

import asyncio
import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ownllm.server.settings import ServerSettings

GRACE_SECONDS = 5  # after SIGTERM or Ctrl-C: streams end with an error event, then at most this long to finish


def _raw_response(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n" + ("retry-after: 1\r\n" if status == 503 else "") + "\r\n"
    )
    return head.encode() + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a cap on open connections (see the module)."""

    header_seconds: float = 10.0
    max_connections: int = 256

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            transport.write(
                _raw_response(
                    503,
                    "Service Unavailable",
                    f"the server has {self.max_connections} connections open; try again in a moment",
                    "too_many_connections",
                )
            )
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_seconds, self._headers_overdue)

    def _headers_overdue(self) -> None:
        """Close the connection if no request's headers have arrived since the timer was armed."""
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return  # closed already, or a request is being read or answered
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(
                _raw_response(
                    408,
                    "Request Timeout",
                    f"the request headers did not arrive within {self.header_seconds:g} seconds",
                    "request_timeout",
                )
            )
        self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server, which ends the app's generations as soon as it is told to exit."""

    def handle_exit(self, sig: int, frame) -> None:
        state = getattr(self.config.app, "state", None)
        loop = getattr(state, "loop", None)
        if state is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(state.gate.stop)  # a signal handler: hand the work to the event loop
        super().handle_exit(sig, frame)


def uvicorn_config(app, settings: ServerSettings, **kwargs) -> uvicorn.Config:
    """The uvicorn configuration of `ownllm serve` (and of the tests' live servers): our protocol and limits."""
    protocol = type(
        "ServeH11Protocol",
        (LimitedH11Protocol,),
        {"header_seconds": settings.header_seconds, "max_connections": settings.max_connections},
    )
    kwargs.setdefault("log_level", "warning")
    return uvicorn.Config(app, http=protocol, timeout_graceful_shutdown=GRACE_SECONDS, **kwargs)
