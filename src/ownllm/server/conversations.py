"""The web page's API: conversations kept in assistant.db, replies streamed as server-sent events.

Mounted under /api by create_app. Every route needs the caller's identity (`require_owner`:
one per API key); a conversation belongs to one owner, and anyone else gets the same 404 as
for an id that never existed, so ids reveal nothing. Errors have the OpenAI shape.

    GET    /api/info                               model, assistant name, default system prompt, limits
    GET    /api/conversations                      the caller's conversations, newest first
    POST   /api/conversations                      {title?, system_prompt?, settings?} -> 201
    GET    /api/conversations/{id}                 with its messages (and their ratings)
    PATCH  /api/conversations/{id}                 rename; change system prompt or settings
    DELETE /api/conversations/{id}                 204
    GET    /api/conversations/{id}/export          everything as a JSON file, replaced replies included
    POST   /api/conversations/{id}/messages        {content, temperature?, max_tokens?, system_prompt?} -> stream
    POST   /api/conversations/{id}/regenerate      {temperature?, max_tokens?, system_prompt?} -> stream
    POST   /api/conversations/{id}/edit            {content, ...}: replace the last user message -> stream
    POST   /api/messages/{id}/feedback             {rating: "up" | "down" | null, comment?}
    GET    /api/memories                           what the assistant keeps about the caller
    POST   /api/memories                           {text} -> 201;  DELETE /api/memories/{id} -> 204
    GET    /api/guardrail-log                      what the guardrail found in the caller's messages and replies

A message that states a fact about its writer ("my name is Sam", "remember that ...") is kept
as a memory of that owner (assistant/memory.py), and the memories a message is about ride in the
system prompt of its reply; each key sees and deletes only its own. So does the guardrail log:
{"entries": [{"id", "route", "direction", "findings", "action", "created"}]}, oldest first.

With knowledge (the caller's own documents or the run's shared ones, app.state.library), a
message is answered from it as on /v1/chat/completions (openai_api.answer_from_knowledge):
when a passage is about the user's last message, the model is asked that message with the
passage, while the conversation keeps the message as typed. The passages are the reply's
`citations` ({"path", "position", "start", "end", "text"} each): in `done`, and saved with the
reply (a message has a "citations" list only when it was given some).

A stream is `text/event-stream`, one JSON object per event:

    event: start        {"user_message": {...} | null, "reply_id": "..."}
    event: text         {"text": "..."}                       as the reply is written
    event: tool_call    {"text": "calculator(12 * 7)"}
    event: tool_result  {"text": "84", "messages": [the call, the result], "reply_id": "..."}
    event: guardrail    {"direction": "input" | "output", "action": "flag" | "mask" | "refuse"}
    event: done         {"finish_reason", "messages": [every message the turn added], "dropped", "usage",
                         "citations": [the passages the reply was given, possibly none]}
    event: error        {"error": {"message", "type", "param", "code"}}   then the stream ends

Before the stream starts the user message and an empty "streaming" reply are saved; the
reply's text is saved every FLUSH_SECONDS while it is written and when it ends. A client
that goes away (the page's stop button aborts the request) cancels the generation and
leaves the reply "interrupted" with the text written so far. Problems known before the
first token (bad input, the model still loading, a full queue, a message longer than the
context) are plain HTTP errors and leave the conversation as it was.

Unlike /v1/chat/completions, a conversation too long for the context drops its oldest
exchanges (never the system prompt or the new message): a chat page must keep working
after many turns. It is not silent: `done` reports how many messages the model did not
see, and the page says so.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from typing import Any, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ownllm.assistant.memory import relevant, stated_fact, with_memories
from ownllm.assistant.reply import ContextOverflow, ReplyEvent, reply
from ownllm.inference.engine import SamplingParams
from ownllm.server.openai_api import answer_from_knowledge, error_body, served
from ownllm.server.schemas import Text
from ownllm.server.security import APIError, require_owner
from ownllm.server.store import ConversationBusy, NothingToReplace, Store, Turn
from ownllm.server.streaming import EventStream, Lease

FLUSH_SECONDS = 0.5  # how often a streaming reply's text is saved: at most this much is lost to a crash
MAX_TITLE_CHARS = 200
MAX_COMMENT_CHARS = 2000
MAX_MEMORY_CHARS = 500
DEFAULT_TEMPERATURE = 0.8

router = APIRouter()


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChatSettings(Strict):
    """Sampling settings a conversation remembers (the page's controls)."""

    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)


class NewConversation(Strict):
    title: Text = Field("", max_length=MAX_TITLE_CHARS)
    system_prompt: Text | None = None  # None: the assistant's default (its persona)
    settings: ChatSettings | None = None


class ConversationChange(Strict):
    title: Text | None = Field(None, max_length=MAX_TITLE_CHARS)
    system_prompt: Text | None = None
    settings: ChatSettings | None = None


class Regenerate(Strict):
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    system_prompt: Text | None = None  # changes the conversation's system prompt from this reply on


class UserMessage(Regenerate):
    content: Text = Field(min_length=1)


class NewMemory(Strict):
    text: Text = Field(min_length=1, max_length=MAX_MEMORY_CHARS)


class Feedback(Strict):
    rating: Literal["up", "down"] | None
    comment: Text = Field("", max_length=MAX_COMMENT_CHARS)


def not_found(what: str = "conversation") -> APIError:
    return APIError(404, f"no such {what}", code="not_found")


def _store(request: Request) -> Store:
    return request.app.state.store


def _check_text(request: Request, text: str | None, field: str) -> None:
    limit = request.app.state.settings.max_message_chars
    if text is not None and len(text) > limit:
        raise APIError(400, f"{field} has {len(text)} characters; at most {limit} are allowed", param=field)


def _check_settings(request: Request, settings: ChatSettings | None) -> None:
    limit = request.app.state.settings.max_tokens_limit
    if settings is not None and settings.max_tokens is not None and settings.max_tokens > limit:
        raise APIError(
            400,
            f"settings.max_tokens is {settings.max_tokens}; at most {limit} is allowed",
            param="settings.max_tokens",
        )


def _default_system_prompt(request: Request) -> str:
    persona = request.app.state.persona
    return persona.system_prompt() if persona is not None else ""


@router.get("/info")
def info(request: Request, owner: str = Depends(require_owner)) -> dict:
    state = request.app.state
    return {
        "model": state.model_id,
        "ready": state.engine is not None,
        "assistant_name": state.persona.name if state.persona is not None else None,
        "system_prompt": _default_system_prompt(request),
        "max_tokens_limit": state.settings.max_tokens_limit,
        "max_message_chars": state.settings.max_message_chars,
    }


@router.get("/conversations")
def list_conversations(request: Request, owner: str = Depends(require_owner)) -> dict:
    return {"conversations": _store(request).list_conversations(owner)}


@router.post("/conversations", status_code=201)
def create_conversation(body: NewConversation, request: Request, owner: str = Depends(require_owner)) -> dict:
    _check_text(request, body.system_prompt, "system_prompt")
    _check_settings(request, body.settings)
    if body.system_prompt is None:
        served(request)  # the default is the loaded model's persona: 503 until it is known
    system = _default_system_prompt(request) if body.system_prompt is None else body.system_prompt
    settings = body.settings.model_dump(exclude_none=True) if body.settings else {}
    return _store(request).create_conversation(owner, body.title, system, settings)


@router.get("/conversations/{conversation_id}")
def get_conversation(conversation_id: str, request: Request, owner: str = Depends(require_owner)) -> dict:
    conversation = _store(request).get_conversation(owner, conversation_id)
    if conversation is None:
        raise not_found()
    return conversation


@router.patch("/conversations/{conversation_id}")
def change_conversation(
    conversation_id: str, body: ConversationChange, request: Request, owner: str = Depends(require_owner)
) -> dict:
    _check_text(request, body.system_prompt, "system_prompt")
    _check_settings(request, body.settings)
    settings = body.settings.model_dump(exclude_none=True) if body.settings else None
    changed = _store(request).update_conversation(
        owner, conversation_id, title=body.title, system_prompt=body.system_prompt, settings=settings
    )
    if changed is None:
        raise not_found()
    return changed


@router.delete("/conversations/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: str, request: Request, owner: str = Depends(require_owner)) -> Response:
    """Delete it; a reply still being written to it is stopped first (its stream ends with an error event)."""
    if await run_in_threadpool(_store(request).get_conversation, owner, conversation_id, False) is None:
        raise not_found()
    running = request.app.state.replies.get(conversation_id)
    if running is not None:
        running.interrupt(APIError(409, "the conversation was deleted while this reply was written", code="deleted"))
    if not await run_in_threadpool(_store(request).delete_conversation, owner, conversation_id):
        raise not_found()
    return Response(status_code=204)


@router.get("/conversations/{conversation_id}/export")
def export_conversation(conversation_id: str, request: Request, owner: str = Depends(require_owner)) -> JSONResponse:
    exported = _store(request).export_conversation(owner, conversation_id)
    if exported is None:
        raise not_found()
    return JSONResponse(
        exported, headers={"Content-Disposition": f'attachment; filename="conversation-{conversation_id}.json"'}
    )


@router.get("/memories")
def list_memories(request: Request, owner: str = Depends(require_owner)) -> dict:
    return {"memories": _store(request).memories(owner)}


@router.post("/memories", status_code=201)
def add_memory(body: NewMemory, request: Request, owner: str = Depends(require_owner)) -> dict:
    if not body.text.strip():
        raise APIError(400, "text is empty; say what to remember", param="text")
    return _store(request).remember(owner, body.text)


@router.delete("/memories/{memory_id}", status_code=204)
def delete_memory(memory_id: str, request: Request, owner: str = Depends(require_owner)) -> Response:
    if not _store(request).forget(owner, memory_id):
        raise not_found("memory")
    return Response(status_code=204)


@router.get("/guardrail-log")
def guardrail_log(request: Request, owner: str = Depends(require_owner)) -> dict:
    fields = ("id", "route", "direction", "findings", "action", "created")
    return {"entries": [{k: e[k] for k in fields} for e in _store(request).guardrail_log(owner)]}


@router.post("/messages/{message_id}/feedback")
def rate_message(message_id: str, body: Feedback, request: Request, owner: str = Depends(require_owner)) -> dict:
    rated = _store(request).rate(owner, message_id, body.rating, body.comment)
    if rated is None:
        raise not_found("assistant message")
    return rated


@router.post("/conversations/{conversation_id}/messages")
async def send_message(
    conversation_id: str, body: UserMessage, request: Request, owner: str = Depends(require_owner)
) -> EventStream:
    return await _reply(request, owner, conversation_id, "send", body)


@router.post("/conversations/{conversation_id}/regenerate")
async def regenerate(
    conversation_id: str, body: Regenerate, request: Request, owner: str = Depends(require_owner)
) -> EventStream:
    return await _reply(request, owner, conversation_id, "regenerate", body)


@router.post("/conversations/{conversation_id}/edit")
async def edit_last_message(
    conversation_id: str, body: UserMessage, request: Request, owner: str = Depends(require_owner)
) -> EventStream:
    return await _reply(request, owner, conversation_id, "edit", body)


async def _reply(request: Request, owner: str, conversation_id: str, kind: str, body: Regenerate) -> EventStream:
    """Save the turn, generate up to the first event (errors become HTTP errors), then stream the rest."""
    state = served(request)  # 503 while the model loads
    content = getattr(body, "content", None)
    if content is not None and not content.strip():
        raise APIError(400, "content is empty; type a message", param="content")
    _check_text(request, content, "content")
    _check_text(request, body.system_prompt, "system_prompt")
    if body.max_tokens is not None and body.max_tokens > state.settings.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {body.max_tokens}; at most {state.settings.max_tokens_limit} is allowed",
            param="max_tokens",
        )
    store: Store = state.store
    conversation = await run_in_threadpool(store.get_conversation, owner, conversation_id, False)
    if conversation is None:
        raise not_found()
    settings = {**conversation["settings"], **body.model_dump(include={"temperature", "max_tokens"}, exclude_none=True)}
    if settings != conversation["settings"] or body.system_prompt not in (None, conversation["system_prompt"]):
        await run_in_threadpool(
            lambda: store.update_conversation(
                owner, conversation_id, system_prompt=body.system_prompt, settings=settings
            )
        )
    system = conversation["system_prompt"] if body.system_prompt is None else body.system_prompt
    if content is not None and (fact := stated_fact(content)):
        await run_in_threadpool(store.remember, owner, fact)
    kept = [m["text"] for m in await run_in_threadpool(store.memories, owner)]
    system = with_memories(system, relevant(kept, content or "")) or ""
    params = SamplingParams(
        max_tokens=settings.get("max_tokens") or state.settings.default_max_tokens,
        temperature=settings.get("temperature", DEFAULT_TEMPERATURE),
    )
    started = time.perf_counter()
    lease = state.gate.admit()  # 503 at once when the server is full
    events: Iterator[ReplyEvent] = iter(())
    turn: Turn | None = None
    citations: list[dict] = []
    try:
        turn = await lease.run(store.begin_turn, owner, conversation_id, kind, content)
        if turn is None:  # deleted since we looked
            raise not_found()
        prompt = ([{"role": "system", "content": system}] if system.strip() else []) + turn.history
        # The model reads the passage (the caller's knowledge base or the run's); the stored message stays as typed.
        prompt, cited = await lease.run(answer_from_knowledge, state, prompt, params.max_tokens, owner)
        citations = [asdict(c) for c in cited]
        events = reply(state.engine, state.template, prompt, params, truncate=True, guardrail=state.guardrail)
        first = await lease.next(events, None)
        added = await lease.run(store.get_messages, list(turn.added))
    except BaseException as e:
        await lease.close(events)
        if turn is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(store.abandon_turn, turn)
        if isinstance(e, ConversationBusy):
            raise APIError(409, str(e), code="conversation_busy") from None
        if isinstance(e, NothingToReplace):
            raise APIError(400, str(e)) from None
        if isinstance(e, ContextOverflow):
            raise APIError(400, str(e), param="content", code="context_length_exceeded") from None
        raise  # EngineBusy becomes a 503, other errors a 400 or 500, in the app's handlers
    start = {"user_message": added[0] if turn.user_id else None, "reply_id": turn.reply_id}
    state.replies[conversation_id] = lease  # one reply at a time per conversation (the store's ConversationBusy)
    stream = _stream(state, owner, lease, turn, events, first, start, time.perf_counter() - started, citations)
    return EventStream(stream, headers={"Cache-Control": "no-store"})


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(
    state: Any,
    owner: str,
    lease: Lease,
    turn: Turn,
    events: Iterator[ReplyEvent],
    event: ReplyEvent | None,
    start: dict,
    first_token: float,
    citations: list[dict],
) -> AsyncIterator[str]:
    """The reply as server-sent events, saved as it goes (with its citations). Closing this stops the generation."""
    store: Store = state.store
    text, finished = "", False
    last_flush = time.monotonic()
    try:
        yield sse("start", start)
        while event is not None:
            if event.kind == "text":
                text += event.text
                yield sse("text", {"text": event.text})
                if time.monotonic() - last_flush >= FLUSH_SECONDS:
                    await lease.run(store.save_text, turn.reply_id, text)
                    last_flush = time.monotonic()
            elif event.kind == "tool_call":
                yield sse("tool_call", {"text": event.text})
            elif event.kind == "guardrail":
                action = state.guardrail.action
                await lease.run(store.log_guardrail, owner, "/api", event.finish_reason, event.text, action)
                yield sse("guardrail", {"direction": event.finish_reason, "action": action})
            elif event.kind == "tool_result":
                call, result = event.messages
                await lease.run(store.tool_step, turn, call["content"], call["tool_call"], result["content"])
                text = ""
                saved = await lease.run(store.get_messages, turn.added[-3:-1])
                yield sse("tool_result", {"text": event.text, "messages": saved, "reply_id": turn.reply_id})
            elif event.kind == "done" and event.finish_reason == "cancelled":  # the engine was closed
                raise APIError(503, "the reply was cut off: the server is shutting down", code="cancelled")
            elif event.kind == "done":
                text = event.messages[-1]["content"]
                await lease.run(store.finish_message, turn.reply_id, text, "complete", citations)
                finished = True
                state.metrics.observe_generation(
                    event.prompt_tokens, event.completion_tokens, event.finish_reason, first_token
                )
                yield sse(
                    "done",
                    {
                        "finish_reason": event.finish_reason,
                        "messages": await lease.run(store.get_messages, list(turn.added)),
                        "dropped": event.dropped,
                        "usage": {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens},
                        "citations": citations,
                    },
                )
            event = await lease.next(events, None)
    except Exception as e:  # the stream has started: the error is its last event
        yield sse("error", {"error": error_body(e)})
    finally:
        if state.replies.get(turn.conversation_id) is lease:
            del state.replies[turn.conversation_id]
        await lease.close(events)  # cancels the generation if it is still running
        if not finished:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(store.finish_message, turn.reply_id, text, "interrupted", citations)
