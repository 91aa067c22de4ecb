"""A real `ownllm serve` app under uvicorn on 127.0.0.1, in a background thread, for the server tests.

    with live_server(run_dir, ServerSettings(max_slots=2)) as server:
        httpx.get(server.url + "/health")
        server.app.state.engine            # the loaded engine, for checks on its queue

The socket is bound first (port 0: the kernel picks a free one), the server's settings carry
that port (the Host-header check needs it), and the context waits until the model is loaded.
This module holds no tests itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ownllm.server.app import create_app
from ownllm.server.connections import Server, uvicorn_config
from ownllm.server.settings import ServerSettings


@dataclasses.dataclass
class LiveServer:
    app: object
    url: str
    port: int
    settings: ServerSettings


@contextlib.contextmanager
def live_server(run_dir: Path, settings: ServerSettings = ServerSettings(), engine=None) -> Iterator[LiveServer]:  # noqa: B008
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = dataclasses.replace(settings, host="127.0.0.1", port=port)
    app = create_app(run_dir, settings, engine=engine)
    server = Server(uvicorn_config(app, settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started or not app.state.ready.is_set():
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(app, f"http://127.0.0.1:{port}", port, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
