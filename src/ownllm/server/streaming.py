"""Running the blocking engine under the event loop, and streaming its output as server-sent events.

The engine's generators block while the scheduler thread decodes, so each generation is
iterated by its own pump thread, which hands items to the event loop as they come; the loop
stays free for other requests. When the loop falls behind (many streams, a busy machine), it
takes everything that has arrived at once, so a stream costs one wake-up and one write per
batch of tokens, not per token: what is spent on HTTP shrinks as load grows.

Generations are admitted by a gate sized to the engine's capacity (slots + queue): a request
past it is refused at once with 503 instead of waiting, which also bounds the pump threads.
A client that disconnects cancels its response task; the generator is then closed by its
pump thread (after the token it is waiting for), which cancels the request in the engine
and frees its slot.

When the server is told to stop (SIGTERM, Ctrl-C), `GenerationGate.stop()` wakes every
generation that is waiting for its next item and raises ServerStopping there: a stream ends
with an error event (and `data: [DONE]` on /v1), its reply is saved as interrupted, and only
then does the server close the engine. New generations are refused with 503 meanwhile.
`Lease.interrupt(error)` does the same for one generation (its conversation was deleted).
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
from starlette.responses import StreamingResponse
from starlette.types import Send

from ownllm.server.security import APIError

T = TypeVar("T")
DONE = "data: [DONE]\n\n"


class ServerStopping(APIError):
    """Raised in a generation when the server is shutting down."""

    def __init__(self) -> None:
        super().__init__(
            503, "the server is shutting down: the reply was cut off here", code="server_shutdown", headers=None
        )


class GenerationGate:
    """Admits at most `capacity` generations at once; stop() ends them all (see the module)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.in_flight = 0  # only touched on the event loop's thread
        self.limiter = anyio.CapacityLimiter(capacity)  # worker threads of Lease.run
        self.stopping = False
        self._leases: set[Lease] = set()

    def admit(self) -> Lease:
        if self.stopping:
            raise ServerStopping()
        if self.in_flight >= self.capacity:
            raise APIError(
                503,
                f"the server is busy ({self.capacity} requests running or waiting); try again in a moment",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1
        lease = Lease(self)
        self._leases.add(lease)
        return lease

    def stop(self) -> None:
        """On the event loop's thread: refuse new generations and end the running ones."""
        self.stopping = True
        for lease in list(self._leases):
            lease.interrupt(ServerStopping())


class Lease:
    """One admitted generation: its blocking calls, its iterators' pumps, and its place in the gate."""

    def __init__(self, gate: GenerationGate):
        self.gate = gate
        self.released = False
        self.interrupted: APIError | None = None  # why the generation was ended from outside, if it was
        self._pumps: dict[int, _Pump] = {}

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.gate.limiter)

    async def take(self, iterator: Iterator[T]) -> list[T]:
        """Every item the iterator has produced since the last call (waiting for at least one); [] at its end."""
        self._check()
        return await self._pump(iterator).take()

    async def next(self, iterator: Iterator[T], default: T) -> T:
        """The iterator's next item, or `default` at its end."""
        self._check()
        return await self._pump(iterator).next(default)

    def interrupt(self, error: APIError) -> None:
        """On the event loop's thread: end the generation; whoever waits for its next item gets `error` raised."""
        self.interrupted = self.interrupted or error
        for pump in self._pumps.values():
            pump.interrupt(self.interrupted)

    def _check(self) -> None:
        if self.interrupted is not None:
            raise self.interrupted
        if self.gate.stopping:
            raise ServerStopping()

    async def close(self, iterator: Iterator) -> None:
        """Stop and close the iterator (cancelling its generation), even while the task is being cancelled; release."""
        with anyio.CancelScope(shield=True):
            pump = self._pumps.pop(id(iterator), None)
            if pump is not None:
                await pump.stop()
            elif hasattr(iterator, "close"):
                await self.run(iterator.close)
        if not self.released:
            self.released = True
            self.gate.in_flight -= 1
            self.gate._leases.discard(self)

    def _pump(self, iterator: Iterator) -> _Pump:
        pump = self._pumps.get(id(iterator))
        if pump is None:
            pump = self._pumps[id(iterator)] = _Pump(iterator)
        return pump


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class _Pump:
    """A thread iterating a blocking iterator; the event loop takes its items in batches."""

    def __init__(self, iterator: Iterator):
        self._iterator = iterator
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._arrived: collections.deque = collections.deque()  # filled by the thread
        self._taken: collections.deque = collections.deque()  # moved from _arrived, not yet returned
        self._ready: collections.deque = collections.deque()  # returned by take() for next(), not yet by next()
        self._wakeup = asyncio.Event()
        self._loop_waits = False
        self._stop = False
        self._interrupted: APIError | None = None  # raised by a waiting take() (the server is stopping ...)
        self._finished = False
        self._ended = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="ownllm-pump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._iterator:
                self._put(item)
                if self._stop:
                    break
        except BaseException as e:  # handed to the loop, raised where the item would have been
            self._put(_Raised(e))
        finally:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
            self._put(_END)
            self._call_loop(self._ended.set)

    def _put(self, item: Any) -> None:
        with self._lock:
            self._arrived.append(item)
            wake, self._loop_waits = self._loop_waits, False
        if wake:
            self._call_loop(self._wakeup.set)

    def _call_loop(self, callback: Callable[[], Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: the server has stopped, nobody is waiting
            pass

    async def take(self) -> list:
        if self._ready:  # left by next()
            batch = list(self._ready)
            self._ready.clear()
            return batch
        if not self._taken and not self._finished:
            self._taken.extend(await self._arrivals())
        batch = []
        while self._taken:
            item = self._taken.popleft()
            if item is _END:
                break
            if isinstance(item, _Raised):
                if batch:  # the items before the error now, the error on the next call
                    self._taken.appendleft(item)
                    return batch
                raise item.error
            batch.append(item)
        return batch

    async def next(self, default: Any) -> Any:
        if not self._ready:
            self._ready.extend(await self.take())
        return self._ready.popleft() if self._ready else default

    def interrupt(self, error: APIError) -> None:
        self._interrupted = error
        self._wakeup.set()

    async def _arrivals(self) -> list:
        """What the thread has put since the last call, waiting for at least one item."""
        while True:
            if self._interrupted is not None:
                raise self._interrupted
            with self._lock:
                if self._arrived:
                    batch = list(self._arrived)
                    self._arrived.clear()
                    break
                self._wakeup.clear()
                self._loop_waits = True
            await self._wakeup.wait()
        if batch[-1] is _END or any(isinstance(item, _Raised) for item in batch):
            self._finished = True
        return batch

    async def stop(self) -> None:
        """Ask the thread to stop after its current item, and wait until it has closed the iterator."""
        self._stop = True
        await self._ended.wait()


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class EventStream(StreamingResponse):
    """text/event-stream whose async generator is always closed (aclose) when the response ends."""

    def __init__(self, content: AsyncIterator[str], headers: dict[str, str] | None = None):
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await cast(AsyncGenerator[str, None], self.body_iterator).aclose()  # the `content` given above
