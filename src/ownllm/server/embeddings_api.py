"""POST /v1/embeddings in OpenAI's shape, from the run's own embedder (`ownllm embed train`).

    {"input": "text" | ["text", ...] | [token ids] | [[token ids], ...], "model": "...",
     "encoding_format": "float" | "base64", "dimensions": the embedder's size (or left out)}
    -> {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [...]}],
        "model": "...", "usage": {"prompt_tokens": N, "total_tokens": N}}

The official `openai` client asks for base64 unless told otherwise (little-endian float32, as
OpenAI sends it). Token ids are this run's tokenizer's. Vectors are unit length, so a dot
product is the cosine similarity. An input longer than the embedder's context is a 400
(context_length_exceeded), as OpenAI answers; a run without an embedder answers 404 with the
command that makes one. At most MAX_INPUTS inputs a request (and the server's request body
limit holds, as on every route).
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from ownllm.server.schemas import Text, _Strict
from ownllm.server.security import APIError, require_owner

MAX_INPUTS = 256

router = APIRouter(prefix="/v1", dependencies=[Depends(require_owner)])


class EmbeddingRequest(_Strict):
    input: Text | list[Text] | list[int] | list[list[int]]
    model: str | None = None  # the run's embedder is the one model; any name is accepted
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def embedder_of(request: Request) -> Any:
    """The run's embedder once loaded; 503 while loading, 404 when the run has none."""
    state = request.app.state
    if not state.ready.is_set():
        raise APIError(503, "the model is still loading; try again in a moment", code="model_not_ready")
    if state.embedder is None:
        raise APIError(
            404,
            "this run has no embedder; train one with `ownllm embed train --run DIR` and restart the server",
            code="model_not_found",
        )
    return state.embedder


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict:
    embedder = embedder_of(request)
    if body.dimensions is not None and body.dimensions != embedder.dim:
        raise APIError(400, f"this embedder makes {embedder.dim} dimensions; leave dimensions out", param="dimensions")
    raw: list = (
        [body.input] if isinstance(body.input, str) or (body.input and isinstance(body.input[0], int)) else body.input
    )
    if not raw or len(raw) > MAX_INPUTS:
        raise APIError(400, f"input must hold 1 to {MAX_INPUTS} texts", param="input")
    texts, tokens = [], 0
    for item in raw:
        if isinstance(item, list):
            if any(not 0 <= t < embedder.tokenizer.vocab_size for t in item):
                raise APIError(400, "input holds token ids outside this run's vocabulary", param="input")
            text = embedder.tokenizer.decode(item)
            count = len(item)
        else:
            text = item
            count = embedder.count_tokens(item)
        if count == 0:
            raise APIError(400, "input must not be empty", param="input")
        if count > embedder.max_tokens:
            raise APIError(
                400,
                f"an input has {count} tokens; this embedder reads at most {embedder.max_tokens}",
                param="input",
                code="context_length_exceeded",
            )
        texts.append(text)
        tokens += count
    vectors = await run_in_threadpool(embedder.embed, texts)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
            if body.encoding_format == "base64"
            else [float(x) for x in v],
        }
        for i, v in enumerate(vectors)
    ]
    model = body.model or f"{request.app.state.model_id}-embed"
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
