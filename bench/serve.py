"""Serving throughput: aggregate completion tokens/s for 1, 4 and 16 concurrent streaming clients.

A real `ownllm serve` app runs under uvicorn in a child process (so the clients do not share
its interpreter); the clients are threads in this process, each streaming
POST /v1/completions over HTTP one request after another. Every request generates exactly
--max-tokens tokens: the child's engine has no stop token at all (Engine(stop_ids=frozenset()),
set up by this script only; a normal server stops at <|endoftext|>), so no request ends early
and every configuration does the same work per request.

The model is the `cpu` preset's shape (3 layers x 192, vocabulary 8192) with random weights
and a synthetic tokenizer of 8192 ids (throughput does not depend on what the weights say),
or a run's trained checkpoint with --run. Sampling: temperature 0.8 (--temperature), a seed
per request.

Rounds are interleaved (1, 4, 16 clients, then again), so a neighbour's burst of load on a
shared machine hits every configuration; we print the median over rounds and the median of
the per-round ratios of N clients to 1 client (the figure to quote), and the server
process's CPU time per token, which what other processes do on a shared machine disturbs
less than the wall clock.

    .venv/bin/python bench/serve.py                        # random weights, 1/4/16 clients, 3 rounds
    .venv/bin/python bench/serve.py --run runs/demo --rounds 5 --max-tokens 128
    python bench/serve.py --device cuda --preset gpu-small --clients 1,4,16,64 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PROMPT = "Once upon a time, in a small village by the sea, there lived a"


def serve_child(args: argparse.Namespace) -> None:
    """The child process: build the engine, bind a free port, print it, serve until killed."""
    import torch
    import uvicorn

    from ownllm.inference.engine import Engine
    from ownllm.model import Transformer
    from ownllm.server.app import create_app
    from ownllm.server.settings import ServerSettings
    from ownllm.tokenizer import Tokenizer
    from ownllm.train.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    slots = max(args.clients)
    if args.run:
        engine = Engine.load(args.run, device=args.device, max_slots=slots, max_queue=slots, stop_ids=frozenset())
    else:
        config = load_config(args.preset).model
        config.vocab_size = 8192
        torch.manual_seed(0)
        pairs = ((bytes([a]), bytes([b])) for a in range(256) for b in range(256))
        tokenizer = Tokenizer([next(pairs) for _ in range(config.vocab_size - 256 - 16)])
        model = Transformer(config).eval().to(args.device)
        if args.device == "cuda" and torch.cuda.is_bf16_supported():
            for p in model.parameters():  # as Engine.load: the weights only
                p.data = p.data.to(torch.bfloat16)
        engine = Engine(model, tokenizer, max_slots=slots, max_queue=slots, stop_ids=frozenset())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as run_dir:  # the app keeps assistant.db in its run directory
        settings = ServerSettings(port=port, max_slots=slots, max_queue=slots, max_tokens_limit=args.max_tokens)
        app = create_app(Path(run_dir), settings, engine=engine)
        print(port, flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def stream_completion(
    client: httpx.Client, url: str, max_tokens: int, temperature: float, seed: int
) -> tuple[int, float]:
    """(completion tokens, seconds to the first text) of one streamed request."""
    body = {
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    tokens = None
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"the server failed a request: {chunk['error']['message']}")
            if chunk["choices"] and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if tokens != max_tokens:
        raise RuntimeError(f"a request generated {tokens} tokens, not {max_tokens}")
    return tokens, first or 0.0


def measure(
    url: str, clients: int, requests: int, max_tokens: int, temperature: float, seed: int, server: psutil.Process
) -> dict:
    """`clients` threads, each streaming `requests` completions back to back; all start together."""
    barrier = threading.Barrier(clients + 1)
    results: list[list[tuple[int, float]]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client_thread(i: int) -> None:
        with httpx.Client(timeout=600) as client:
            barrier.wait()
            try:
                for r in range(requests):
                    results[i].append(stream_completion(client, url, max_tokens, temperature, seed + i * requests + r))
            except BaseException as e:  # reported by the main thread
                errors.append(e)

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    me = psutil.Process()
    start, cpu_start, client_start = time.perf_counter(), _cpu(server), _cpu(me)
    for t in threads:
        t.join()
    seconds, cpu, client_cpu = time.perf_counter() - start, _cpu(server) - cpu_start, _cpu(me) - client_start
    if errors:
        raise errors[0]
    tokens = sum(n for per_client in results for n, _ in per_client)
    first_token = statistics.median(t for per_client in results for _, t in per_client)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "ttft": first_token,
        "cpu_ms": cpu / tokens * 1000,
        "client_cpu_ms": client_cpu / tokens * 1000,
    }


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def wait_ready(url: str, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit("the server process ended before it was ready")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server was not ready within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="serve this run's trained model (default: random weights)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients to measure (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=2, help="requests per client per round (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the server (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's (default: %(default)s)")
    parser.add_argument("--preset", default="cpu", help="the random model's shape (default: %(default)s)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    if args.serve:
        serve_child(args)
        return

    command = [
        sys.executable,
        __file__,
        "--serve",
        "--clients",
        ",".join(map(str, args.clients)),
        "--max-tokens",
        str(args.max_tokens),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--preset",
        args.preset,
    ]
    if args.run:
        command += ["--run", str(args.run)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{child.stdout.readline().strip()}"
        wait_ready(url, child)
        load_before = os.getloadavg()
        server = psutil.Process(child.pid)
        measure(url, max(args.clients), 1, args.max_tokens, args.temperature, seed=10**6, server=server)  # warm-up
        rounds: dict[int, list[dict]] = {n: [] for n in args.clients}
        for r in range(args.rounds):
            for n in args.clients:
                rounds[n].append(
                    measure(url, n, args.requests, args.max_tokens, args.temperature, seed=r * 10_000, server=server)
                )
        load_after = os.getloadavg()
    finally:
        child.terminate()
        child.wait(timeout=30)

    model = f"run {args.run}" if args.run else f"{args.preset} preset shape, random weights, vocab 8192"
    print(
        f"model: {model}; {args.max_tokens} tokens per request at temperature {args.temperature}, "
        f"{args.requests} requests per client per round, {args.rounds} rounds; "
        f"server torch threads: {args.threads or 'default'}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, server on {args.device}; "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    base = args.clients[0]
    print(
        f"{'clients':>8} {'tok/s median':>13} {'best':>8} {'per client':>11} {'TTFT median':>12} "
        f"{'server CPU/token':>17} {'client CPU/token':>17} {'vs ' + str(base):>8}"
    )
    for n in args.clients:
        tok_s = [m["tok_s"] for m in rounds[n]]
        ratio = statistics.median(m["tok_s"] / b["tok_s"] for m, b in zip(rounds[n], rounds[base]))
        print(
            f"{n:>8} {statistics.median(tok_s):>13.1f} {max(tok_s):>8.1f} {statistics.median(tok_s) / n:>11.1f} "
            f"{statistics.median(m['ttft'] for m in rounds[n]) * 1000:>10.0f}ms "
            f"{statistics.median(m['cpu_ms'] for m in rounds[n]):>15.2f}ms "
            f"{statistics.median(m['client_cpu_ms'] for m in rounds[n]):>15.2f}ms {ratio:>7.2f}x"
        )


if __name__ == "__main__":
    main()
