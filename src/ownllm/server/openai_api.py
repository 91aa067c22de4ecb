"""The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models.

Both generation routes turn their request into a stream of text pieces ending with a
`Finished` summary (chat: through `assistant.reply`, which runs the calculator tool and trims
context; completions: straight from the engine), then answer either as one JSON object or as
server-sent events in OpenAI's chunk format:

    data: {"choices": [{"delta": {"role": "assistant", "content": ""}}], ...}
    data: {"choices": [{"delta": {"content": "Hello"}}], ...}            one per decoded piece
    data: {"choices": [{"delta": {}, "finish_reason": "stop"}], ...}
    data: {"choices": [], "usage": {...}}                                 with stream_options.include_usage
    data: [DONE]

The first piece is awaited before the response starts, so a prompt that does not fit (400)
or a full engine (503) is a proper HTTP status; an error after that ends the stream with
`data: {"error": {...}}` and `data: [DONE]`.

Context policy: a conversation longer than the context is refused with a 400 stating its
token count and the context size, unless the request (or `ownllm serve --truncate`) asks for
`"truncate": true`; then the oldest turns are dropped (the system message and the latest
user message kept) and the response says so: a `truncated` field and an
OwnLLM-Dropped-Messages header (OwnLLM-Dropped-Tokens for /v1/completions, which keeps the
end of the prompt).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ownllm.assistant.knowledge import Citation, augment
from ownllm.assistant.reply import ContextOverflow, ReplyEvent, fit_to_context, prompt_fits, reply
from ownllm.chatformat.conversation import Conversation, InvalidConversation, validate
from ownllm.chatformat.template import ChatTemplate
from ownllm.core.errors import UserError
from ownllm.inference.engine import Engine, EngineBusy, SamplingParams
from ownllm.server.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, GenerationFields
from ownllm.server.security import APIError, require_owner
from ownllm.server.streaming import DONE, EventStream, Lease, sse

log = logging.getLogger("ownllm.server")

router = APIRouter(prefix="/v1", dependencies=[Depends(require_owner)])


@dataclass
class Finished:
    """The end of a generation, after its last text piece."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    dropped: int = 0  # messages (chat) or tokens (completions) dropped from the start to fit the context


def served(request: Request) -> Any:
    """app.state once the model is loaded, else 503."""
    state = request.app.state
    if state.engine is None:
        message = (
            f"the model failed to load ({state.load_error})"
            if state.load_error
            else "the model is still loading; try again in a moment"
        )
        raise APIError(503, message, code="model_not_ready", headers={"Retry-After": "2"})
    return state


@router.get("/models")
def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(request.app.state)]}


@router.get("/models/{model_id}")
def get_model(model_id: str, request: Request) -> dict:
    if model_id != request.app.state.model_id:
        raise APIError(
            404,
            f"no model {model_id!r}; this server serves {request.app.state.model_id!r}",
            param="model",
            code="model_not_found",
        )
    return _model_card(request.app.state)


def _model_card(state: Any) -> dict:
    card = {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "ownllm"}
    if state.engine is not None:
        card["context_length"] = state.engine.context_size
    return card


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, owner: str = Depends(require_owner)):
    state = served(request)
    body.check(state.settings)
    conversation = chat_conversation(body.messages, state.persona)
    params = sampling_params(body, state.settings.default_max_tokens)
    truncate = state.settings.truncate if body.truncate is None else body.truncate
    started = time.perf_counter()
    lease = state.gate.admit()
    pieces: Iterator = iter(())
    citations: list[Citation] = []
    try:
        dropped = 0
        if body.knowledge is not False:
            conversation, citations = await lease.run(
                answer_from_knowledge, state, conversation, params.max_tokens, owner
            )
        if truncate:  # trimmed here, not only inside reply(), so the count can go in the headers of a stream
            conversation, dropped = await lease.run(
                fit, state.template, conversation, state.engine.context_size, params.max_tokens
            )
        events = reply(state.engine, state.template, conversation, params, truncate=truncate, guardrail=state.guardrail)

        def log(direction: str, findings: str) -> None:  # runs in the pump thread; the store is thread-safe
            state.store.log_guardrail(owner, "/v1/chat/completions", direction, findings, state.guardrail.action)

        pieces = chat_pieces(events, dropped, log)
        first = await lease.next(pieces, None)
    except BaseException:
        await lease.close(pieces)
        raise
    headers = {"OwnLLM-Dropped-Messages": str(dropped)} if dropped else {}
    fmt = ChatFormat(state.model_id, [asdict(c) for c in citations])
    return await respond(fmt, body, lease, pieces, first, started, headers, state.metrics)


def answer_from_knowledge(
    state: Any, conversation: Conversation, max_tokens: int, owner: str
) -> tuple[Conversation, list[Citation]]:
    """The conversation with its last message asked with a passage from the knowledge bases `owner` may read
    (their own and the run's shared one; knowledge/library.py), if one is about it."""
    if state.library is None or not conversation or conversation[-1]["role"] != "user":
        return conversation, []
    head = conversation[:1] if conversation[0]["role"] == "system" else []

    def fits(text: str) -> bool:
        asked = [*head, {"role": "user", "content": text}]
        return prompt_fits(state.template, asked, state.engine.context_size, max_tokens)

    message, citations = augment(conversation[-1]["content"], state.library.for_owner(owner), fits)
    return [*conversation[:-1], {"role": "user", "content": message}], citations


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    state = served(request)
    body.check(state.settings)
    params = sampling_params(body, state.settings.default_max_tokens)
    truncate = state.settings.truncate if body.truncate is None else body.truncate
    tokenizer = state.template.tokenizer
    started = time.perf_counter()
    lease = state.gate.admit()
    pieces: Iterator = iter(())
    try:
        ids = await lease.run(tokenizer.encode, body.text()) or [tokenizer.eot_id]  # "" starts a fresh document
        context, reserved = state.engine.context_size, reply_room(state.engine.context_size, params.max_tokens)
        dropped = max(0, len(ids) - (context - reserved))
        if dropped and not truncate:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens and the context holds {context}, {reserved} of "
                f'them kept for the completion; shorten the prompt (or send "truncate": true to '
                f"keep its end)",
                param="prompt",
                code="context_length_exceeded",
            )
        pieces = completion_pieces(state.engine, ids[dropped:], params, dropped)
        first = await lease.next(pieces, None)
    except BaseException:
        await lease.close(pieces)
        raise
    headers = {"OwnLLM-Dropped-Tokens": str(dropped)} if dropped else {}
    return await respond(CompletionFormat(state.model_id), body, lease, pieces, first, started, headers, state.metrics)


def reply_room(context_size: int, max_tokens: int) -> int:
    """Tokens of the context kept free for the reply: max_tokens, or a quarter of the context if that is less
    (the rule assistant.reply applies)."""
    return min(max_tokens, context_size // 4)


def fit(
    template: ChatTemplate, conversation: Conversation, context_size: int, max_tokens: int
) -> tuple[Conversation, int]:
    """fit_to_context with reply()'s budget, and its error naming the whole context."""
    reserved = reply_room(context_size, max_tokens)
    try:
        return fit_to_context(template, conversation, context_size - reserved)
    except ContextOverflow as e:
        raise ContextOverflow(e.prompt_tokens, context_size, reserved) from None


def chat_conversation(messages: list[ChatMessage], persona: Any) -> Conversation:
    """OpenAI messages -> a checked conversation ending with the user, with the persona's system prompt
    when the client sent none (the chat model was trained with it)."""
    conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
    try:
        conversation = validate(conversation)
    except InvalidConversation as e:
        raise APIError(400, str(e), param="messages") from None
    if conversation[-1]["role"] != "user":
        raise APIError(
            400, "the last message must be the user's; the reply is the assistant's next message", param="messages"
        )
    if persona is not None and conversation[0]["role"] != "system":
        conversation.insert(0, {"role": "system", "content": persona.system_prompt()})
    return conversation


def sampling_params(body: GenerationFields, default_max_tokens: int) -> SamplingParams:
    defaults = SamplingParams()

    def given(value, default):
        return default if value is None else value

    return SamplingParams(
        max_tokens=given(body.max_tokens, default_max_tokens),
        temperature=given(body.temperature, defaults.temperature),
        top_k=given(body.top_k, defaults.top_k),
        top_p=given(body.top_p, defaults.top_p),
        repetition_penalty=given(body.repetition_penalty, defaults.repetition_penalty),
        seed=body.seed,
        stop=body.stop_strings(),
    ).validate()


def chat_pieces(
    events: Generator[ReplyEvent, None, None], dropped_before: int, on_guardrail: Callable[[str, str], None]
) -> Iterator[str | Finished]:
    """The assistant's text as it is written (tool calls run inside reply(), unseen), then Finished;
    what the guardrail finds goes to on_guardrail(direction, findings)."""
    with closing(events):
        for event in events:
            if event.kind == "text" and event.text:
                yield event.text
            elif event.kind == "guardrail":
                on_guardrail(event.finish_reason or "", event.text)
            elif event.kind == "done":
                assert event.finish_reason is not None  # the engine's last event always has one
                yield Finished(
                    event.finish_reason, event.prompt_tokens, event.completion_tokens, dropped_before + event.dropped
                )


def completion_pieces(engine: Engine, ids: list[int], params: SamplingParams, dropped: int) -> Iterator[str | Finished]:
    stream = engine.stream(ids, params)
    with closing(stream):
        generated = 0
        for event in stream:
            generated += len(event.token_ids)
            if event.text:
                yield event.text
            if event.finish_reason is not None:
                yield Finished(event.finish_reason, len(ids), generated, dropped)  # a stop token counts, as in reply()


class ChatFormat:
    """OpenAI's chat.completion objects."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"
    truncated_key = "dropped_messages"  # in the "truncated" field of a response that dropped turns

    def __init__(self, model_id: str, citations: list[dict] | None = None):
        self.id = self.id_prefix + secrets.token_hex(16)  # unguessable
        self.created, self.model = int(time.time()), model_id
        self.citations = citations or []  # passages from the knowledge base the reply was given
        # The chunk of a text delta, around its JSON-encoded text: built once, as streaming writes one per piece.
        mark = "\u0000piece\u0000"
        self._text_around = sse(self.envelope(self.chunk_object, [self.delta(mark)])).split(json.dumps(mark))

    def text_chunk(self, text: str) -> str:
        before, after = self._text_around
        return before + json.dumps(text, ensure_ascii=False) + after

    def envelope(self, kind: str, choices: list[dict], **extra) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def ending(self, dropped: int) -> dict:
        """What the whole response (or a stream's last chunk) adds: dropped turns, cited passages."""
        extra: dict[str, Any] = {"truncated": {self.truncated_key: dropped}} if dropped else {}
        if self.citations:
            extra["citations"] = self.citations
        return extra

    def choice(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}

    def delta(self, delta: dict | str, finish_reason: str | None = None) -> dict:
        body = {"content": delta} if isinstance(delta, str) else delta
        return {"index": 0, "delta": body, "finish_reason": finish_reason}

    def opening(self) -> dict | None:
        return self.delta({"role": "assistant", "content": ""})


class CompletionFormat(ChatFormat):
    """OpenAI's text_completion objects (the same shape streamed or not)."""

    object = chunk_object = "text_completion"
    id_prefix = "cmpl-"
    truncated_key = "dropped_tokens"

    def choice(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def delta(self, delta: dict | str, finish_reason: str | None = None) -> dict:
        return self.choice(delta if isinstance(delta, str) else "", finish_reason)

    def opening(self) -> dict | None:
        return None


async def respond(
    fmt: ChatFormat,
    body: GenerationFields,
    lease: Lease,
    pieces: Iterator,
    first: Any,
    started: float,
    headers: dict[str, str],
    metrics: Any,
):
    """The whole reply as one object, or the stream (the first piece is already here)."""
    first_token = time.perf_counter() - started
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        return EventStream(_stream(fmt, lease, pieces, first, first_token, usage, metrics), headers=headers)
    parts = [first] if first is not None else []
    try:
        while batch := await lease.take(pieces):
            parts += batch
    finally:
        await lease.close(pieces)
    finished = _finished(parts[-1] if parts else None)
    metrics.observe_generation(finished.prompt_tokens, finished.completion_tokens, finished.finish_reason, first_token)
    text = "".join(p for p in parts if isinstance(p, str))
    extra = fmt.ending(finished.dropped)
    return JSONResponse(
        fmt.envelope(fmt.object, [fmt.choice(text, finished.finish_reason)], usage=_usage(finished), **extra),
        headers=headers,
    )


async def _stream(
    fmt: ChatFormat, lease: Lease, pieces: Iterator, first: Any, first_token: float, include_usage: bool, metrics: Any
) -> AsyncIterator[str]:
    try:
        opening = fmt.opening()
        if opening is not None:
            yield sse(fmt.envelope(fmt.chunk_object, [opening]))
        batch = [first]
        while batch and isinstance(batch[-1], str):
            # What arrived while the last chunk was written goes out as one delta.
            yield fmt.text_chunk("".join(batch))
            batch = await lease.take(pieces)
        if len(batch) > 1:
            yield fmt.text_chunk("".join(batch[:-1]))
        finished = _finished(batch[-1] if batch else None)
        metrics.observe_generation(
            finished.prompt_tokens, finished.completion_tokens, finished.finish_reason, first_token
        )
        extra = fmt.ending(finished.dropped)
        yield sse(fmt.envelope(fmt.chunk_object, [fmt.delta({}, finished.finish_reason)], **extra))
        if include_usage:
            yield sse(fmt.envelope(fmt.chunk_object, [], usage=_usage(finished)))
    except Exception as e:  # the status line is sent: the error goes in the stream
        yield sse({"error": error_body(e)})
    finally:
        await lease.close(pieces)
    yield DONE


def _finished(last: Any) -> Finished:
    if not isinstance(last, Finished):
        raise RuntimeError("the generation ended without a finish event")
    if last.finish_reason == "cancelled":
        raise APIError(503, "the generation was cancelled (the server is shutting down)", code="cancelled")
    return last


def _usage(finished: Finished) -> dict:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def error_body(e: Exception) -> dict:
    """The OpenAI error object for an exception raised after a stream started."""
    if isinstance(e, APIError):
        return {"message": e.message, "type": e.type, "param": e.param, "code": e.code}
    if isinstance(e, EngineBusy):
        return {"message": str(e), "type": "server_error", "param": None, "code": "server_busy"}
    if isinstance(e, UserError):
        return {"message": str(e), "type": "invalid_request_error", "param": None, "code": None}
    log.exception("error during a streamed reply")
    return {
        "message": "internal server error (a bug: the server log has the details)",
        "type": "server_error",
        "param": None,
        "code": None,
    }
