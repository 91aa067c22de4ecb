"""The ASGI application behind `ownllm serve`: the OpenAI-compatible API, the chat page and its API.

    GET  /health                 503 {"status": "loading"} until the model is loaded, then 200 {"status": "ok"}
    GET  /metrics                Prometheus text
    GET  /api/model-card         the model card (report/MODEL_CARD.md from `ownllm report`), Markdown
    /v1/...                      the OpenAI-compatible API (openai_api.py)
    /v1/knowledge/...            each key's own documents, searched with the run's (knowledge_api.py)
    /api/...                     conversations kept in assistant.db (conversations.py)
    GET  /, /static/...          the chat page

The model loads in a background thread so that the server answers (and /health says
"loading") at once. app.state holds what the routes share: settings, engine (None while
loading), template, persona (None for a model without chat training), store, knowledge
(the run's knowledge.db, if any), library (it and each key's own, knowledge/library.py),
embedder and guardrail (both set with the model: the run's embedder, if it has one, gives the
knowledge bases their vectors and the guardrail its classifier), model_id, metrics, gate
(admission of generations), ready (an Event set when loading ends, well or not) and load_error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from ownllm import __version__
from ownllm.assistant.guardrails import Guardrail
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.template import ChatTemplate
from ownllm.core.errors import UserError
from ownllm.inference.engine import Engine
from ownllm.knowledge.base import DB_NAME as KNOWLEDGE_DB
from ownllm.knowledge.base import KnowledgeBase
from ownllm.knowledge.embeddings import TextEmbedder
from ownllm.knowledge.library import FOLDER as LIBRARY_FOLDER
from ownllm.knowledge.library import Library
from ownllm.server import conversations, embeddings_api, knowledge_api, openai_api
from ownllm.server.metrics import Metrics, MetricsMiddleware
from ownllm.server.security import APIError, install_security, legacy_owner_id, owner_id, require_owner
from ownllm.server.settings import ServerSettings
from ownllm.server.store import Store
from ownllm.server.streaming import GenerationGate

log = logging.getLogger("ownllm.server")

STATIC = Path(__file__).parent / "static"


def create_app(run_dir: Path, settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """The app for `run_dir`; with `engine` given (tests, benchmarks) it serves that engine and does not close it."""
    run_dir = Path(run_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loop = asyncio.get_running_loop()  # where a shutdown signal hands over (connections.Server)
        app.state.store = Store.for_run(run_dir)
        app.state.knowledge = KnowledgeBase(run_dir / KNOWLEDGE_DB) if (run_dir / KNOWLEDGE_DB).is_file() else None
        app.state.library = Library(
            run_dir / LIBRARY_FOLDER,
            lambda: app.state.knowledge,
            max_documents=settings.max_documents,
            open_kb=lambda path: _knowledge_base(path, app.state.embedder, settings.retriever),
        )
        app.state.owner_secret = app.state.store.secret()
        if settings.api_key:  # conversations kept under the old, unkeyed owner id move to the keyed one
            app.state.store.rename_owner(
                legacy_owner_id(settings.api_key), owner_id(settings.api_key, app.state.owner_secret)
            )
        loader = None
        if engine is None:
            loader = threading.Thread(target=_load, args=(app, run_dir, settings), name="ownllm-load", daemon=True)
            loader.start()
        else:
            _load_embedder(app, run_dir, settings, engine.device)
            _serve(app, engine)
            app.state.ready.set()
        try:
            yield
        finally:
            if loader is not None:
                await anyio.to_thread.run_sync(_close_loaded, app)
            app.state.store.close()
            app.state.library.close()
            if app.state.knowledge is not None:
                app.state.knowledge.close()

    # The interactive docs pages load scripts from a CDN: left out. The schema is served below, behind the key.
    app = FastAPI(
        title="ownllm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    app.state.engine = None
    app.state.template = None
    app.state.persona = None
    app.state.store = None
    app.state.knowledge = None  # the run's knowledge base (knowledge.db), when it has one
    app.state.library = None  # the knowledge bases a caller may read: its own and the run's (knowledge/library.py)
    app.state.guardrail = None  # set when the model is loaded (with the run's classifier, if it has one)
    app.state.embedder = None  # the run's own embedder (`ownllm embed train`), once loaded, if it has one
    app.state.model_id = run_dir.resolve().name
    app.state.created = int(time.time())
    app.state.metrics = Metrics()
    app.state.gate = GenerationGate(settings.max_slots + settings.max_queue)
    app.state.replies = {}  # conversation id -> the Lease of the reply being written to it (conversations.py)
    app.state.ready = threading.Event()
    app.state.load_error = None
    app.state.loop = None

    @app.get("/health", include_in_schema=False)
    def health(request: Request) -> JSONResponse:
        state = request.app.state
        if state.engine is not None:
            return JSONResponse({"status": "ok"})
        if state.load_error:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/api/model-card", include_in_schema=False, dependencies=[Depends(require_owner)])
    def model_card() -> PlainTextResponse:
        """The run's model card (report/MODEL_CARD.md, written by `ownllm report`), as Markdown."""
        path = run_dir / "report" / "MODEL_CARD.md"
        if not path.is_file():
            raise APIError(404, f"no model card yet: run `ownllm report --run {run_dir}`", code="not_found")
        return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_owner)])
    def metrics(request: Request) -> PlainTextResponse:
        state = request.app.state
        stats = state.engine.stats() if state.engine is not None else None
        return PlainTextResponse(state.metrics.render(stats), media_type="text/plain; version=0.0.4")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_owner)])
    def openapi_schema(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.include_router(openai_api.router)
    app.include_router(knowledge_api.router)
    app.include_router(embeddings_api.router)
    app.include_router(conversations.router, prefix="/api")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_security(app, settings)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def _load(app: FastAPI, run_dir: Path, settings: ServerSettings) -> None:
    """Background thread: load the engine (and the run's embedder), then serve it; on failure keep the one-line
    reason for /health."""
    try:
        engine = Engine.load(
            run_dir,
            stage=settings.stage,
            device=settings.device,
            decode=settings.decode,
            max_slots=settings.max_slots,
            max_queue=settings.max_queue,
        )
        try:
            _load_embedder(app, run_dir, settings, engine.device)
        except BaseException:
            engine.close()
            raise
        _serve(app, engine)
    except UserError as e:  # a damaged checkpoint, a mismatched tokenizer: `ownllm serve` prints the line and exits
        app.state.load_error = str(e)
    except Exception as e:  # a bug: keep the traceback
        log.exception("loading the model failed")
        app.state.load_error = f"{type(e).__name__}: {e}"
    finally:
        app.state.ready.set()


def _load_embedder(app: FastAPI, run_dir: Path, settings: ServerSettings, device) -> None:
    """The run's embedder for /v1/embeddings, the knowledge bases' vectors and the guardrail's classifier."""
    embedder = TextEmbedder.for_run(run_dir, device)
    app.state.embedder = embedder
    if app.state.knowledge is not None:
        app.state.knowledge.embedder, app.state.knowledge.retriever = embedder, settings.retriever
    if settings.guardrail != "off":
        app.state.guardrail = Guardrail.for_run(run_dir, settings.guardrail, embedder)


def _knowledge_base(path: Path, embedder: TextEmbedder | None, retriever: str) -> KnowledgeBase:
    kb = KnowledgeBase(path, embedder)
    kb.retriever = retriever
    return kb


def _close_loaded(app: FastAPI) -> None:
    """Close the engine this app loaded, once loading is over (a load in progress cannot be interrupted)."""
    app.state.ready.wait()
    if app.state.engine is not None:
        app.state.engine.close()


def _serve(app: FastAPI, engine: Engine) -> None:
    app.state.template = ChatTemplate(engine.tokenizer)
    # Who the chat model was trained to be (recorded by `ownllm sft`); None for a base model, or an
    # engine built by hand (tests, benchmarks) rather than loaded from the run by Engine.load.
    persona = engine.resolved.persona if engine.resolved is not None else None
    app.state.persona = Persona.from_dict(persona) if persona else None
    app.state.engine = engine  # last: a non-None engine means everything else is in place
