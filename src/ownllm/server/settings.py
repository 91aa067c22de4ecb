"""How `ownllm serve` runs: where it listens, who may call it, and the limits every request must respect.

The limits exist so that one request cannot take the server down: bodies, messages and
generation lengths are bounded and refused with a clear 4xx before any work is done.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from ownllm.core.errors import UserError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None: no authentication (only sensible on a loopback address)
    insecure: bool = False  # allow a non-loopback bind without a key
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API from other pages; () = none
    max_body_bytes: int = 1 << 20  # request bodies above this are refused (413) before they are parsed
    max_upload_bytes: int = 10 << 20  # a document uploaded to /v1/knowledge/documents (413 past it)
    max_documents: int = 100  # documents each API key may keep in its own knowledge base
    max_messages: int = 256
    max_message_chars: int = 32_000
    max_prompt_chars: int = 100_000  # /v1/completions prompt text
    max_tokens_limit: int = 4096  # the largest max_tokens a request may ask for
    default_max_tokens: int = 512  # when a request gives none (the context still bounds it)
    max_stop: int = 4  # stop strings per request (OpenAI's limit)
    max_stop_chars: int = 64
    max_slots: int = 8  # sequences decoded together
    max_queue: int = 64  # requests waiting for a slot; past that, 503 at once
    max_connections: int = 256  # connections open at once; one more is answered 503 and closed
    header_seconds: float = 10.0  # a request's headers must arrive within this long (connections.py)
    body_seconds: float = 30.0  # and its body within this long of its headers (security.py)
    truncate: bool = False  # drop the oldest turns of an over-long conversation instead of answering 400
    guardrail: str = (
        "mask"  # the blocklist's action on every route: off | flag | mask | refuse (assistant/guardrails.py)
    )
    retriever: str = "bm25"  # how the knowledge bases are searched: bm25 | vector | hybrid (knowledge/base.py)
    stage: str | None = None  # checkpoints to serve: None = sft if the run has one, else pretrain
    device: str = "auto"
    decode: str = "auto"  # the engine's decode step: auto | plain | compiled (inference/engine.py)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def check(self) -> ServerSettings:
        """Refuse settings that are unsafe or impossible, in one line each."""
        if not self.loopback and not self.api_key and not self.insecure:
            raise UserError(
                f"--host {self.host} is reachable from other machines; give --api-key/--api-key-file, "
                f"or --insecure to serve without a key"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("the API key is empty; give a non-empty --api-key or --api-key-file")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port} is not a TCP port (0-65535)")
        if self.max_slots < 1 or self.max_queue < 1:
            raise UserError("--max-slots and --max-queue must be at least 1")
        if self.max_upload_bytes < 1 or self.max_documents < 1:
            raise UserError("--max-upload-mb and --max-documents must be more than 0")
        if self.max_connections < 1:
            raise UserError("--max-connections must be at least 1")
        if not (0 < self.header_seconds <= 3600 and 0 < self.body_seconds <= 3600):
            raise UserError("--header-timeout and --body-timeout must be between 0 and 3600 seconds")
        for origin in self.cors_origins:
            check_origin(origin)
        if self.decode not in ("auto", "plain", "compiled"):
            raise UserError(f"--decode {self.decode} is not one of auto, plain, compiled")
        if self.retriever not in ("bm25", "vector", "hybrid"):
            raise UserError(f"--retriever {self.retriever} is not one of bm25, vector, hybrid")
        if self.guardrail not in ("off", "flag", "mask", "refuse"):
            raise UserError(f"--guardrail {self.guardrail} is not one of off, flag, mask, refuse")
        return self


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_origin(origin: str) -> None:
    """A CORS origin is exactly scheme://host[:port]: browsers compare it as a string."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query or parts.fragment:
        raise UserError(f"--cors-origin {origin!r} is not an origin like https://example.com or http://localhost:3000")
