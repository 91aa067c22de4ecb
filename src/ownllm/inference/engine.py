"""The generation engine: every path that generates text (CLI, chat, HTTP server) goes through it.

The model runs with a preallocated KV cache (ownllm.model.kv_cache.KVCache) of `max_slots`
slots x the model's max_seq_len. A request is one sequence in one slot: its prompt is
prefilled once into the slot (alone, batch 1), then every decode step runs one token of every
active sequence together, each row at its own position and attending only to its own slot.

One scheduler thread (started at the first request) owns the model and the cache. Callers on
any thread submit requests; between decode steps the scheduler moves waiting requests into
free slots (continuous batching) and hands each request's events to its caller through the
request's own queue. At most `max_queue` requests wait for a slot; past that `EngineBusy` is
raised at once (the server answers 503). An error in the scheduler reaches the callers it
concerns as an exception; it never leaves them waiting.

Sampling per request (inference/sampling.py): temperature (0 = greedy), top_k (0 = off), top_p
(1 = off), repetition_penalty (1 = off, CTRL-style over prompt + generated ids), and a seed for
the request's own torch.Generator: the same seed gives the same text whatever else is in the
batch, and the global random state is never touched.

Decoding on CUDA replays each step from a CUDA graph (inference/graphed_decode.py): at batch 1
a small model is otherwise bound by kernel launches, not by the GPU. `decode="plain"` turns
that off; on a CPU every step runs as plain PyTorch unless `decode="compiled"` asks for the
same fixed-shape step compiled by torch.compile (docs/benchmarks.md, "Generation").

A generation ends on a stop token (the engine's defaults, <|endoftext|> unless told otherwise,
plus params.stop_ids), a stop string (params.stop: not part of the output, and text that could
begin one is held back until it is known not to; inference/detokenize.py), max_tokens, or a
full context. finish_reason: "stop" (token or string), "length" (max_tokens or context full),
"cancelled" (the consumer closed the stream, or the engine was closed). Special tokens are
never part of `text`; they are reported in `token_ids` / `stop_token`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ownllm.core.device import resolve_device
from ownllm.core.errors import UserError
from ownllm.core.interrupts import sigint_blocked
from ownllm.inference.detokenize import Detokenizer
from ownllm.inference.graphed_decode import StaticDecoder
from ownllm.inference.sampling import RowSampler, pick_tokens
from ownllm.model import Transformer
from ownllm.model.kv_cache import KVCache
from ownllm.run import RunDir
from ownllm.run.models import ResolvedModel, resolve_model
from ownllm.tokenizer import Tokenizer

FINISH_REASONS = ("stop", "length", "cancelled")
DECODE_MODES = ("auto", "plain", "static", "graphs", "compiled")  # auto: graphs on CUDA, plain elsewhere
# A penalty divides or multiplies logits: at 1e-38 it is 0 in float32 and the logits inf (NUL text).
MIN_PENALTY, MAX_PENALTY = 0.01, 100.0


class EngineBusy(UserError):
    """Every slot is busy and the waiting queue is full: try again later (HTTP 503)."""


class EngineError(RuntimeError):
    """The model failed while generating this request (the cause is chained); the engine keeps serving."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.8  # 0: greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0: all
    top_p: float = 1.0  # keep the smallest set of tokens whose probabilities add up to top_p; 1: all
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the context less likely
    seed: int | None = None  # None: a fresh random seed per request
    stop: tuple[str, ...] = ()  # stop strings, not included in the output
    stop_ids: frozenset[int] = frozenset()  # stop tokens in addition to the engine's defaults

    def validate(self) -> SamplingParams:
        """Raise UserError naming the first out-of-range field; return the settings with stop/stop_ids normalised."""
        checks = [
            ("max_tokens", isinstance(self.max_tokens, int) and self.max_tokens >= 1, "an integer of at least 1"),
            ("temperature", _number(self.temperature) and self.temperature >= 0, "a number of at least 0"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer of at least 0 (0: off)"),
            ("top_p", _number(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1] (1: off)"),
            (
                "repetition_penalty",
                _number(self.repetition_penalty) and MIN_PENALTY <= self.repetition_penalty <= MAX_PENALTY,
                f"a number from {MIN_PENALTY} to {MAX_PENALTY} (1: off; further out a logit overflows float32)",
            ),
            (
                "seed",
                self.seed is None
                or (isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63),
                "an integer in [0, 2**63) or none",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise UserError(f"sampling setting {name}={getattr(self, name)!r} is invalid: it must be {expected}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise UserError(f"stop strings must be non-empty strings; got {list(stop)!r}")
        stop_ids = frozenset(self.stop_ids)
        if not all(isinstance(i, int) and i >= 0 for i in stop_ids):
            raise UserError(f"stop_ids must be token ids (integers of at least 0); got {sorted(stop_ids, key=str)!r}")
        return dataclasses.replace(self, stop=stop, stop_ids=stop_ids)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Event:
    """One piece of a streamed generation."""

    text: str  # text decoded since the previous event ("" is possible, e.g. for a held-back partial character)
    token_ids: list[int]  # the ids generated since the previous event (a stop token included)
    finish_reason: str | None = None  # set on the last event only
    stop_token: int | None = None  # the stop token that ended the generation, if one did


@dataclass
class Completion:
    prompt_tokens: int
    ids: list[int]  # generated ids, without the stop token
    text: str  # decoded text, without special tokens and without the stop string
    finish_reason: str
    stop_token: int | None = None
    seconds_to_first_token: float = 0.0
    seconds: float = 0.0


class _Failure:
    """Put on a request's event queue instead of an Event when the scheduler failed it."""

    def __init__(self, error: BaseException):
        self.error = error


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    sampler: RowSampler
    detokenizer: Detokenizer
    events: queue.SimpleQueue = dataclasses.field(default_factory=queue.SimpleQueue)
    cancelled: bool = False  # set by the consumer; the scheduler frees the slot before its next step
    done: bool = False  # the last event (or a failure) has been put on `events`
    slot: int = -1
    generated: int = 0
    last: int = 0  # the newest token: the input of the next decode step

    @property
    def cached(self) -> int:
        """Tokens held in the slot's cache: the prompt and every generated token but the newest."""
        return len(self.prompt) + self.generated - 1


class Engine:
    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        *,
        max_slots: int = 8,
        max_queue: int = 64,
        stop_ids: frozenset[int] | None = None,
        decode: str = "auto",
        autocast: torch.dtype | None = None,
    ):
        """model in eval mode on its device; stop_ids: default stop tokens (None: {tokenizer.eot_id}).

        decode: "graphs" (CUDA graphs), "plain" (one PyTorch call per step), "static" (the graphs'
        fixed-shape step without capture, for tests), "compiled" (that step through torch.compile:
        the fast path on a CPU once compiled, seconds per new shape first), or "auto" (graphs on
        CUDA, else plain).
        autocast: run the model under autocast to this dtype (the training samples run in the
        training's precision: autocast is per thread, and the scheduler is a thread of its own).
        """
        if decode not in DECODE_MODES:
            raise ValueError(f"decode={decode!r}; expected one of {DECODE_MODES}")
        if model.config.vocab_size < tokenizer.vocab_size:
            raise UserError(
                f"the model has {model.config.vocab_size} output tokens but the tokenizer "
                f"{tokenizer.vocab_size}; use the tokenizer the model was trained with"
            )
        if max_slots < 1 or max_queue < 0:
            raise ValueError("an engine needs at least one slot and a non-negative queue length")
        self.model, self.tokenizer = model, tokenizer
        self.max_slots, self.max_queue = max_slots, max_queue
        self.stop_ids = frozenset({tokenizer.eot_id} if stop_ids is None else stop_ids)
        weight = next(model.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        if decode == "auto":
            decode = "graphs" if self.device.type == "cuda" else "plain"
        self.decode = decode
        self.autocast = autocast
        self.resolved: ResolvedModel | None = None  # which checkpoint, when made by Engine.load
        self._static: StaticDecoder | None = None  # the scheduler's, with the cache, for decode != "plain"
        self._vocab = tokenizer.vocab_size  # logits past the tokenizer's vocabulary (padding) are never sampled
        self._cache: KVCache | None = None  # allocated by the scheduler thread on first use
        # Shared by the callers and the scheduler, always under the lock:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: list[_Request] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._broken: BaseException | None = None  # what stopped the scheduler thread, if it died
        # The scheduler thread's alone (and close()'s, once that thread has stopped), never locked:
        self._active: list[_Request] = []  # in slot order (slots 0..B-1 let the cache use slices)
        # Published by the scheduler for the other threads: one int, replaced whole. The slots in
        # use: the active sequences and those admitted but not prefilled yet (as _admit counts them).
        self._active_count = 0

    @classmethod
    def load(
        cls,
        run: str | Path,
        stage: str | None = None,
        device: str = "auto",
        checkpoint: str | Path | None = None,
        **kwargs,
    ) -> Engine:
        """The model run/models.py resolves (stage None: the chat model if any, else the base model;
        checkpoint: a step directory instead of the latest), with the run's tokenizer.

        On CUDA the weights run in bf16 where the GPU supports it; on CPU in fp32. kwargs go to
        Engine(). `engine.resolved` says which checkpoint it is (its stage, state and persona).
        """
        run_dir = RunDir.open(run, create=False)
        resolved = resolve_model(run_dir, stage, checkpoint)
        torch_device = resolve_device(device)
        model = resolved.load(torch_device)
        tokenizer = Tokenizer.load(run_dir.tokenizer)
        if torch_device.type == "cuda" and torch.cuda.is_bf16_supported():
            for p in model.parameters():  # the weights only: the rotary table keeps full precision
                p.data = p.data.to(torch.bfloat16)
        engine = cls(model, tokenizer, **kwargs)
        engine.resolved = resolved
        return engine

    @property
    def context_size(self) -> int:
        """The most tokens a prompt plus its completion can have (the model's max_seq_len)."""
        return self.model.config.max_seq_len

    def stream(self, prompt_ids: list[int], params: SamplingParams = SamplingParams()) -> _Stream:
        """Events as tokens are decoded; the last one has finish_reason. Closing the iterator cancels.

        The request is queued at once: a bad prompt or setting (UserError) and EngineBusy are
        raised by this call, before the first event is asked for.
        """
        (request,) = self._submit([prompt_ids], [params], bounded=True)
        return _Stream(self, request)

    def generate(self, prompt_ids: list[int], params: SamplingParams = SamplingParams()) -> Completion:
        return self.generate_batch([prompt_ids], [params])[0]

    def generate_batch(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] = SamplingParams()
    ) -> list[Completion]:
        """Several prompts decoded together; greedy outputs equal generating each alone.

        They are queued together whatever max_queue says (one caller, not a flood), and run
        max_slots at a time.
        """
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling settings")
        start = time.perf_counter()
        streams = [_Stream(self, r) for r in self._submit(prompts, params, bounded=False)]
        completions = []
        try:
            for prompt, stream in zip(prompts, streams):
                completions.append(_collect(stream, len(prompt), start))
        finally:
            for stream in streams:
                stream.close()
        return completions

    def stats(self) -> dict:
        """{"active": running sequences, "waiting": queued requests, "slots": max_slots}: for /metrics.

        A snapshot without the lock: each number is whole, the two may be a step apart.
        """
        return {"active": self._active_count, "waiting": len(self._waiting), "slots": self.max_slots}

    def close(self) -> None:
        """Stop the scheduler thread (pending requests finish with "cancelled")."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:  # the scheduler has stopped: nothing else touches these now
            for request in self._waiting + self._active:
                self._finish(request, Event("", [], "cancelled"))
            self._waiting.clear()
            self._active.clear()
            self._active_count = 0

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- callers' side ---------------------------------------------------------------------

    def _submit(self, prompts: list[list[int]], params: list[SamplingParams], bounded: bool) -> list[_Request]:
        requests = [self._request(list(p), s.validate()) for p, s in zip(prompts, params)]
        with self._lock:
            if self._closed:
                raise RuntimeError("this engine has been closed")
            if self._broken is not None:
                raise EngineError(f"the engine has stopped: {type(self._broken).__name__}: {self._broken}")
            # Requests wait a moment for the scheduler to admit them even when slots are free.
            free_slots = self.max_slots - self._active_count
            if bounded and len(self._waiting) + len(requests) > self.max_queue + free_slots:
                raise EngineBusy(
                    f"the engine is busy ({self.max_slots} generating, {len(self._waiting)} waiting); "
                    f"try again in a moment"
                )
            self._waiting.extend(requests)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ownllm-engine", daemon=True)
                with sigint_blocked():  # blocked from its first instruction (it blocks SIGTERM too, in _run)
                    self._thread.start()
            self._wake.notify()
        return requests

    def _request(self, prompt: list[int], params: SamplingParams) -> _Request:
        if not prompt:
            raise UserError("the prompt is empty; generation needs at least one token (e.g. <|endoftext|>)")
        if len(prompt) > self.context_size - 1:
            raise UserError(
                f"the prompt has {len(prompt)} tokens but the context holds {self.context_size} "
                f"(at most {self.context_size - 1} for the prompt); shorten it"
            )
        if not all(isinstance(t, int) for t in prompt) or min(prompt) < 0 or max(prompt) >= self._vocab:
            raise UserError(f"prompt token ids must be integers in [0, {self._vocab})")
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        sampler = RowSampler(
            params.temperature,
            params.top_k,
            params.top_p,
            params.repetition_penalty,
            generator,
            self._vocab,
            self.device,
            prompt,
        )
        return _Request(
            prompt, params, self.stop_ids | params.stop_ids, sampler, Detokenizer(self.tokenizer, params.stop)
        )

    def _cancel(self, request: _Request) -> None:
        request.cancelled = True
        with self._lock:
            if request in self._waiting:  # never started: free its place in the queue now
                self._waiting.remove(request)
                self._finish(request, Event("", [], "cancelled"))

    # ---- the scheduler thread ----------------------------------------------------------------

    def _run(self) -> None:
        # Ctrl-C and SIGTERM are for the main thread: the kernel may hand a process's signal to any
        # thread that does not block it, and one caught here would leave the main thread asleep
        # in a read (e.g. `ownllm chat` waiting at its prompt) without ever seeing it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            precision = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else nullcontext()
            with torch.inference_mode(), precision:
                if self._cache is None:
                    self._cache = KVCache(self.model.config, self.max_slots, device=self.device, dtype=self.dtype)
                    if self.decode != "plain":
                        self._static = StaticDecoder(
                            self.model,
                            self._cache,
                            self._vocab,
                            graphs=self.decode == "graphs",
                            compiled=self.decode == "compiled",
                        )
                while True:
                    new = self._admit()
                    if new is None:
                        return
                    for request in new:
                        self._prefill(request)
                    for request in [r for r in self._active if r.cancelled]:
                        self._finish(request, Event("", [], "cancelled"))
                    if self._active:
                        self._decode_step()
        except BaseException as e:  # e.g. no memory for the cache: nobody may be left waiting
            with self._lock:
                self._broken = e
                self._fail(self._waiting + self._active, e)
                self._waiting.clear()

    def _admit(self) -> list[_Request] | None:
        """Waiting requests moved into free slots; blocks while there is nothing to do; None: closed.

        A waiting request whose stream was dropped (marked cancelled without the lock) ends here.
        """
        with self._lock:
            while not self._waiting and not self._active and not self._closed:
                self._wake.wait()
            if self._closed:
                return None
            for request in [r for r in self._waiting if r.cancelled]:
                self._waiting.remove(request)
                self._finish(request, Event("", [], "cancelled"))
            used = {r.slot for r in self._active}
            free = [slot for slot in range(self.max_slots) if slot not in used]
            new = []
            while self._waiting and free:
                request = self._waiting.pop(0)
                request.slot = free.pop(0)
                new.append(request)
            self._active_count = len(self._active) + len(new)  # a slot is taken from admission on
            return new

    def _prefill(self, request: _Request) -> None:
        """Run the prompt alone into its slot, choose the first token."""
        self._active.append(request)  # already counted in _active_count by _admit
        self._active.sort(key=lambda r: r.slot)
        try:
            n = len(request.prompt)
            ids = torch.tensor([request.prompt], device=self.device)
            assert self._cache is not None
            logits = self.model(ids, cache=self._cache.view([request.slot], [0], n), last_only=True)[:, 0]
            token = pick_tokens(logits[:, : self._vocab], [request.sampler])[0]
            self._advance(request, token)
        except Exception as e:  # this request fails; the others go on
            self._fail([request], e)

    def _decode_step(self) -> None:
        """One token for every active sequence: one forward of shape (active, 1)."""
        rows = list(self._active)
        try:
            if self._static is not None:
                logits = self._static([r.slot for r in rows], [r.cached for r in rows], [r.last for r in rows])
            else:
                ids = torch.tensor([r.last for r in rows], device=self.device).view(-1, 1)
                assert self._cache is not None
                view = self._cache.view([r.slot for r in rows], [r.cached for r in rows], 1)
                logits = self.model(ids, cache=view, last_only=True)[:, 0, : self._vocab]
            tokens = pick_tokens(logits, [r.sampler for r in rows])
            for request, token in zip(rows, tokens):
                self._advance(request, token)
        except Exception as e:
            self._fail([r for r in rows if not r.done], e)

    def _advance(self, request: _Request, token: int) -> None:
        """Account for a new token: send its text, or the last event when the sequence ends."""
        request.generated += 1
        request.last = token
        if token in request.stop_ids:
            self._finish(request, Event(request.detokenizer.flush(), [token], "stop", stop_token=token))
            return
        request.sampler.observe(token)
        text = request.detokenizer.add(token)
        if request.detokenizer.stopped:
            finish = "stop"
        elif request.generated >= request.params.max_tokens or request.cached + 1 >= self.context_size:
            finish = "length"  # cached + 1: the cached tokens and the new one fill the context
            text += request.detokenizer.flush()
        else:
            request.events.put(Event(text, [token]))
            return
        self._finish(request, Event(text, [token], finish))

    def _finish(self, request: _Request, last: Event | _Failure) -> None:
        if request.done:
            return
        request.done = True
        request.events.put(last)
        if request in self._active:
            self._active.remove(request)
            self._active_count -= 1

    def _fail(self, requests: list[_Request], error: BaseException) -> None:
        for request in requests:
            self._finish(request, _Failure(error))


class _Stream:
    """The iterator stream() returns: events from the request's queue; closing it (or dropping it) cancels."""

    def __init__(self, engine: Engine, request: _Request):
        self._engine, self._request = engine, request
        self._finished = False

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Event:
        if self._finished:
            raise StopIteration
        try:
            item = self._request.events.get()
        except BaseException:  # KeyboardInterrupt in the consumer: stop generating for it
            self.close()
            raise
        if isinstance(item, _Failure):
            self._finished = True
            raise EngineError(f"generation failed: {type(item.error).__name__}: {item.error}") from item.error
        if item.finish_reason is not None:
            self._finished = True
        return item

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._engine._cancel(self._request)

    def __del__(self) -> None:
        # No lock here: the collector may run this on a thread that holds the engine's lock. The
        # scheduler ends a marked request at its next step (active) or admission (waiting).
        if not self._finished:
            self._finished = True
            self._request.cancelled = True


def _collect(stream: _Stream, prompt_tokens: int, start: float) -> Completion:
    ids, texts, first = [], [], None
    for event in stream:
        if first is None:
            first = time.perf_counter()
        ids.extend(event.token_ids)
        texts.append(event.text)
        if event.finish_reason is not None:
            if event.stop_token is not None:
                ids.pop()
            now = time.perf_counter()
            return Completion(
                prompt_tokens, ids, "".join(texts), event.finish_reason, event.stop_token, first - start, now - start
            )
    raise AssertionError("a stream ends with a finish_reason")
