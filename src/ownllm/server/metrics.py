"""/metrics in the Prometheus text format: requests, tokens, latency, and the engine's queue.

Kept in-process and dependency-free: a few counters and histograms behind one lock, rendered
on each scrape. Requests are labelled by route template (/api/conversations/{id}, not each
id), so the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{bound}"}} {n}' for bound, n in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.count}"]
        return out


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = defaultdict(Histogram)
        self.first_token = Histogram()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.generations: dict[str, int] = defaultdict(int)  # by finish reason

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, status)] += 1
            self.latency[route].observe(seconds)

    def observe_generation(
        self, prompt_tokens: int, completion_tokens: int, finish_reason: str, seconds_to_first_token: float | None
    ) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.generations[finish_reason] += 1
            if seconds_to_first_token is not None:
                self.first_token.observe(seconds_to_first_token)

    def render(self, engine_stats: dict | None) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"))

        with self._lock:
            family("ownllm_http_requests_total", "counter", "HTTP requests answered, by route, method and status.")
            for (route, method, status), n in sorted(self.requests.items()):
                labels = f'route="{_escape(route)}",method="{method}",status="{status}"'
                lines.append(f"ownllm_http_requests_total{{{labels}}} {n}")
            family(
                "ownllm_http_request_duration_seconds",
                "histogram",
                "Time from request to the end of the response (the whole stream for streaming replies).",
            )
            for route, histogram in sorted(self.latency.items()):
                lines += histogram.lines("ownllm_http_request_duration_seconds", f'route="{_escape(route)}"')
            family("ownllm_prompt_tokens_total", "counter", "Prompt tokens of finished generations.")
            lines.append(f"ownllm_prompt_tokens_total {self.prompt_tokens}")
            family("ownllm_completion_tokens_total", "counter", "Tokens generated.")
            lines.append(f"ownllm_completion_tokens_total {self.completion_tokens}")
            family("ownllm_generations_total", "counter", "Finished generations, by finish reason.")
            for reason, n in sorted(self.generations.items()):
                lines.append(f'ownllm_generations_total{{finish_reason="{_escape(reason)}"}} {n}')
            family("ownllm_time_to_first_token_seconds", "histogram", "Time from request to the first generated token.")
            lines += self.first_token.lines("ownllm_time_to_first_token_seconds")
        family("ownllm_model_loaded", "gauge", "1 once the model is loaded and requests are served.")
        lines.append(f"ownllm_model_loaded {int(engine_stats is not None)}")
        if engine_stats is not None:
            for key, name, help_text in (
                ("waiting", "ownllm_engine_queue_depth", "Requests waiting for a slot."),
                ("active", "ownllm_engine_active_sequences", "Sequences being decoded."),
                ("slots", "ownllm_engine_slots", "Sequences decoded together at most."),
            ):
                family(name, "gauge", help_text)
                lines.append(f"{name} {engine_stats.get(key, 0)}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsMiddleware:
    """Counts every HTTP response, refusals by the request guard included (route "other" when none matched)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app fails before answering, the server answers 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.observe_request(route, method, status, time.perf_counter() - start)
