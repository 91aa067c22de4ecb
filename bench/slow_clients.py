"""The slow-client attack on `ownllm serve`: what 200 stalled connections without the key cost the server.

A real `ownllm serve --api-key KEY` runs as a child process. Then, without the key:

    100 connections send a request promising a 1 MiB body, then all but its last 10 bytes, and stall
    100 connections send the start of a request's headers and never finish them

and hold. Every few seconds the script prints the server's memory (RSS), its open file
descriptors, and how many of the 200 connections the server has already closed (a closed
connection reads as end-of-file here). Before the fixes of issue 12 the body was read before
the key was checked and nothing bounded header or body time: memory rose by ~100 MB and 200
files stayed open until the clients hung up. `--src DIR` runs the server from another
checkout's src/ (an older commit, in a `git worktree`) to measure the difference.

    .venv/bin/python bench/slow_clients.py --run runs/demo
    git worktree add /tmp/before ae629cd && .venv/bin/python bench/slow_clients.py --run runs/demo --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
BODY = 1 << 20


def start_server(run: str, src: Path, log: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(src), "OWNLLM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ownllm", "serve", "--run", run, "--port", "0", "--api-key", KEY],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while "serving" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ownllm serve did not start: {log.read_text()}")
        time.sleep(0.1)
    line = next(line for line in log.read_text().splitlines() if "serving" in line)
    return process, int(line.split(" at ")[1].split("/ ")[0].rsplit(":", 1)[1])


def slow_body(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
    ).encode()
    sock.setblocking(False)
    payload = head + b" " * (BODY - 10)
    sent, deadline = 0, time.monotonic() + 10
    while sent < len(payload) and time.monotonic() < deadline:  # a server that stops reading is not waited for
        try:
            sent += sock.send(payload[sent:])
        except BlockingIOError:
            select.select([], [sock], [], 0.1)
        except OSError:  # closed by the server
            break
    return sock


def slow_headers(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Never-Ends: ".encode())
    sock.setblocking(False)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ directory to run the server from")
    parser.add_argument("--connections", type=int, default=100, help="of each kind")
    parser.add_argument("--hold", type=float, default=40, help="seconds to hold the connections")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_server(args.run, args.src, Path(tmp) / "serve.log")
        server = psutil.Process(process.pid)
        try:
            time.sleep(2)
            print(f"{platform.node()} {platform.processor() or platform.machine()}, server from {args.src}")
            rss0, fds0 = server.memory_info().rss, server.num_fds()
            print(f"before the attack: RSS {rss0 / 2**20:.0f} MiB, {fds0} open files")
            start = time.monotonic()
            socks = [slow_body(port) for _ in range(args.connections)]
            socks += [slow_headers(port) for _ in range(args.connections)]
            print(f"{len(socks)} connections made in {time.monotonic() - start:.1f} s")
            print(f"{'seconds':>8} {'RSS MiB':>8} {'files':>6} {'closed by the server':>21}")
            closed: set[int] = set()
            for at in (1, 5, 10, 15, 20, 30, 40, 60, 90):
                if at > args.hold:
                    break
                time.sleep(max(0.0, start + at - time.monotonic()))
                closed |= {i for i, s in enumerate(socks) if i not in closed and closed_by_server(s)}
                rss, fds = server.memory_info().rss, server.num_fds()
                print(f"{at:>8} {rss / 2**20:>8.0f} {fds:>6} {len(closed):>10} of {len(socks)}")
            for sock in socks:
                sock.close()
            time.sleep(2)
            print(
                f"after the clients left: RSS {server.memory_info().rss / 2**20:.0f} MiB, {server.num_fds()} open files"
            )
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
