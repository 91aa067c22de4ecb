"""The generation engine: every path that generates text (CLI, chat, HTTP server) goes through it.

CONTRACT (lead, session 2) -- the helper implementing this file keeps these names and meanings.

- The model runs with a preallocated KV cache (ownllm.model.kv_cache.KVCache) of `max_slots`
  slots x the model's max_seq_len. A request = one Sequence in one slot: its prompt is
  prefilled once into the slot, then every `step()` decodes one token for every active
  sequence together (rows of different lengths; each row attends only to its own positions).
- Thread-safe: `stream()`/`generate()` may be called from several threads at once (the HTTP
  server); one scheduler thread drives the running batch, new requests join it between decode
  steps (continuous batching). At most `max_queue` requests wait for a slot; past that
  `EngineBusy` is raised at once (the server answers 503).
- Sampling per request: temperature (0 = greedy), top_k (0 = off), top_p (1 = off),
  repetition_penalty (1 = off, CTRL-style over prompt + generated ids), seed (a per-request
  torch.Generator: the same seed gives the same text whatever else is in the batch).
- Stops: a stop token (engine default = tokenizer's <|endoftext|>, plus params.stop_ids), a stop
  string (params.stop; the stop string itself is not in the output and no text that could be
  the start of a stop string is streamed until it is known not to be), max_tokens, or a full
  context. finish_reason: "stop" (token or string), "length" (max_tokens or context full),
  "cancelled" (the consumer closed the stream or called cancel).
- Text: special tokens are never part of `text` (they are reported in `token_ids` / `stop_token`);
  text is decoded from bytes incrementally and never splits a multi-byte UTF-8 character.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ownllm.errors import UserError
from ownllm.tokenizer import Tokenizer

FINISH_REASONS = ("stop", "length", "cancelled")


class EngineBusy(UserError):
    """Every slot is busy and the waiting queue is full: try again later (HTTP 503)."""


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

    def validate(self) -> "SamplingParams":
        """Raise UserError naming the first out-of-range field."""
        raise NotImplementedError


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


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, *, max_slots: int = 8, max_queue: int = 64,
                 stop_ids: frozenset[int] | None = None):
        """model in eval mode on its device; stop_ids: default stop tokens (None: {tokenizer.eot_id})."""
        raise NotImplementedError

    @classmethod
    def load(cls, run: str | Path, stage: str | None = None, device: str = "auto", **kwargs) -> "Engine":
        """The latest checkpoint of `stage` in the run (None: sft if it has one, else pretrain), its tokenizer."""
        raise NotImplementedError

    @property
    def context_size(self) -> int:
        """The most tokens a prompt plus its completion can have (the model's max_seq_len)."""
        raise NotImplementedError

    def stream(self, prompt_ids: list[int], params: SamplingParams = SamplingParams()) -> Iterator[Event]:
        """Events as tokens are decoded; the last one has finish_reason. Closing the iterator cancels."""
        raise NotImplementedError

    def generate(self, prompt_ids: list[int], params: SamplingParams = SamplingParams()) -> Completion:
        raise NotImplementedError

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] = SamplingParams()
                       ) -> list[Completion]:
        """Several prompts decoded together; greedy outputs equal generating each alone."""
        raise NotImplementedError

    def stats(self) -> dict:
        """{"active": running sequences, "waiting": queued requests, "slots": max_slots}: for /metrics."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the scheduler thread (pending requests finish with "cancelled")."""
        raise NotImplementedError
