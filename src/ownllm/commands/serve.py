"""`ownllm serve`: the chat page and the OpenAI-compatible API for a run's model.

    ownllm serve --run runs/demo                               # http://127.0.0.1:8000/
    ownllm serve --run runs/demo --host 0.0.0.0 --api-key-file key.txt

The socket is bound before anything else, so a port in use is a one-line error, and port 0
picks a free one (the URL printed says which). The model loads in the background; the URL
is printed once it is ready. Ctrl-C stops the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import socket
import threading
from pathlib import Path

from ownllm.commands.common import add_decode_argument, add_retriever_argument, add_run_argument
from ownllm.core.console import say
from ownllm.core.errors import UserError
from ownllm.run import RunDir
from ownllm.server.connections import Server, uvicorn_config
from ownllm.server.settings import ServerSettings


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = ServerSettings()
    add_run_argument(parser)
    parser.add_argument(
        "--host", default=defaults.host, help="address to listen on (default: %(default)s, this machine only)"
    )
    parser.add_argument(
        "--port", type=int, default=defaults.port, help="TCP port; 0 picks a free one (default: %(default)s)"
    )
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on every route but /health")
    key.add_argument(
        "--api-key-file", type=Path, metavar="FILE", help="read the key from FILE (keeps it out of the process list)"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="allow listening on a non-loopback address without an API key"
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="URL",
        help="let web pages from this origin (e.g. http://localhost:3000) call the API; repeatable",
    )
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="drop the oldest turns of over-long conversations instead of answering 400",
    )
    parser.add_argument(
        "--max-slots",
        type=int,
        default=defaults.max_slots,
        metavar="N",
        help="sequences generated together (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=defaults.max_queue,
        metavar="N",
        help="requests that may wait for a slot; more are answered 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        metavar="N",
        help="connections open at once; more are answered 503 and closed (default: %(default)s)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=defaults.max_upload_bytes / (1 << 20),
        metavar="MB",
        help="the largest document a key may upload to its knowledge base (default: %(default)g)",
    )
    parser.add_argument(
        "--max-documents",
        type=int,
        default=defaults.max_documents,
        metavar="N",
        help="documents each API key may keep in its own knowledge base (default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=defaults.header_seconds,
        metavar="SECONDS",
        help="close a connection whose request headers take longer (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.body_seconds,
        metavar="SECONDS",
        help="answer 408 to a request whose body takes longer (default: %(default)s)",
    )
    parser.add_argument(
        "--guardrail",
        default=defaults.guardrail,
        choices=("off", "flag", "mask", "refuse"),
        help="the blocklist on every route's messages and replies; findings are logged in assistant.db "
        "(default: %(default)s)",
    )
    add_retriever_argument(parser)
    parser.add_argument("--stage", choices=("sft", "pretrain"), help="checkpoints to serve (default: sft if any)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_decode_argument(parser)
    parser.add_argument("--access-log", action="store_true", help="print a line per request")


def run(args: argparse.Namespace) -> int:
    from ownllm.run.models import resolve_model  # lazy: start-up (`ownllm serve --help` skips torch)
    from ownllm.server.app import create_app  # lazy: start-up (and FastAPI)

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        api_key=_api_key(args),
        insecure=args.insecure,
        cors_origins=tuple(args.cors_origin),
        truncate=args.truncate,
        max_slots=args.max_slots,
        max_queue=args.max_queue,
        max_connections=args.max_connections,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        max_documents=args.max_documents,
        header_seconds=args.header_timeout,
        body_seconds=args.body_timeout,
        guardrail=args.guardrail,
        retriever=args.retriever,
        device=args.device,
        decode=args.decode,
    ).check()
    run_dir = RunDir.open(args.run, create=False)
    stage = resolve_model(run_dir, args.stage).stage  # a missing or stale model is refused before the port is taken
    sock = _bind(settings.host, settings.port)
    settings = dataclasses.replace(settings, port=sock.getsockname()[1], stage=stage)
    app = create_app(run_dir.root, settings)
    server = _Server(uvicorn_config(app, settings, access_log=args.access_log))
    say(f"loading the {stage} model of {run_dir.root} ...")
    threading.Thread(target=_announce, args=(app, server, settings), name="ownllm-announce", daemon=True).start()
    server.run(sockets=[sock])
    if server.interrupted:
        raise KeyboardInterrupt  # after the graceful shutdown: "interrupted", exit status 130
    if app.state.load_error:
        raise UserError(f"the model could not be loaded: {app.state.load_error}")
    return 0


class _Server(Server):
    """The app's server (connections.py), where Ctrl-C also ends `ownllm serve` with status 130 every time.

    uvicorn re-raises a caught SIGINT once it has shut down, but from inside asyncio.run, whose
    own SIGINT handler turns it into a cancellation of the main task or a KeyboardInterrupt
    depending on where the event loop is at that instant (seen: exit status 0 under load). We
    keep SIGINT out of that re-raise and raise KeyboardInterrupt ourselves after run() returns.
    SIGTERM is left to uvicorn: re-raised with its default action, it ends the process.
    """

    interrupted = False

    def handle_exit(self, sig: int, frame) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGINT:
            self.interrupted = True
            self._captured_signals.remove(signal.SIGINT)  # uvicorn 0.54's list of signals to re-raise


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is None:
        return args.api_key
    try:
        key = args.api_key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the API key from {args.api_key_file}: {e}") from None
    if not key:
        raise UserError(f"{args.api_key_file} is empty; put the API key in it")
    return key


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host} is not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    return sock


def _announce(app, server, settings: ServerSettings) -> None:
    """Say where to go once the model is loaded; stop the server if it could not be."""
    app.state.ready.wait()
    if app.state.load_error:
        server.should_exit = True
        return
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}"
    key = ", API key required" if settings.api_key else ""
    say(f"serving {app.state.model_id} at {url}/ (chat page) and {url}/v1 (OpenAI API{key}); Ctrl-C stops")
