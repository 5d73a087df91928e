"""The ASGI application: routes, error handlers and the lifespan that owns every client.

`create_app(settings)` wires everything through constructor arguments (Starlette 1.x style);
shared clients live in lifespan state. Tests pass their own store URL or upstream.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TypedDict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.audit_api import decisions, events, journal, metrics, session
from gateway.api.auth import KeyRing
from gateway.api.errors import GatewayError, InvalidRequest, NotFound, error_response_for
from gateway.api.http import HeaderLimit
from gateway.api.limits import ConcurrencyLimit, TenantLimiter
from gateway.api.messages_api import count_tokens
from gateway.api.pages_api import page
from gateway.api.relay import relay
from gateway.api.responses_api import compact
from gateway.api.ui_api import asset, index, prompt, sessions, timeline
from gateway.api.ui_api import page as session_page
from gateway.heap import settle
from gateway.jsonio import NestingTooDeep
from gateway.observability.audit import AuditLog
from gateway.observability.inspector import TurnLog
from gateway.observability.metrics import Metrics
from gateway.settings import Settings
from gateway.store.board import VersionBoard, opened
from gateway.store.embedded import EmbeddedRedis
from gateway.store.journal import WritebackJournal
from gateway.store.memory import MemoryService
from gateway.store.outage import Drainer, OutageQueue
from gateway.store.session_state import SessionState
from gateway.store.store import RedisStore
from gateway.turns.pipeline import chat_completions, turn_route
from gateway.turns.services import Services, ToolTokens
from gateway.upstream.client import OpenAICompatible
from gateway.upstream.models import ModelCatalog
from gateway.upstream.tokens import Tokenizers, prepare_offline
from gateway.wire.chat_litellm import LiteLLMProvider
from gateway.wire.chat_transcripts import TranscriptCache
from gateway.wire.messages import MESSAGES
from gateway.wire.responses import RESPONSES
from policies import intent

log = logging.getLogger("clawvm.gateway")
WARM_ENCODINGS = ("o200k_base", "cl100k_base")


class State(TypedDict):
    services: Services


def create_app(settings: Settings, board: Path | None = None, *, serving: bool = False) -> Starlette:
    """The gateway's application; `board` is the versions board the supervisor of `clawvm serve
    --workers N` made for its workers (gateway.store.board), one per embedded store. `serving`:
    the process is `clawvm serve`'s, whose garbage collector is settled once it has started
    (gateway.heap)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            services = await _services(settings, stack, board)
            if serving:
                settle()
            yield {"services": services}

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/messages", turn_route(MESSAGES), methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            Route("/v1/responses", turn_route(RESPONSES), methods=["POST"]),
            Route("/v1/responses/compact", compact, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/clawvm/pages/{page_id:str}", page, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}", session, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}/decisions", decisions, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}/events", events, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}/journal", journal, methods=["GET"]),
            Route("/v1/clawvm/sessions", sessions, methods=["GET"]),  # the session inspector (gateway.api.ui_api)
            Route("/v1/clawvm/sessions/{session_id:str}/timeline", timeline, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}/prompts/{prompt_id:str}", prompt, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}/pages/{page_id:str}", session_page, methods=["GET"]),
            Route("/ui", index, methods=["GET"]),
            Route("/ui/{name:str}", asset, methods=["GET"]),
            Route("/v1/{path:path}", relay, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            NestingTooDeep: _too_deep,
        },
        middleware=[
            Middleware(Bugs, log_content=settings.server.log_content),
            Middleware(HeaderLimit, limit=settings.server.max_header_bytes),
            Middleware(ConcurrencyLimit),
        ],
        lifespan=lifespan,
    )


async def _services(settings: Settings, stack: AsyncExitStack, board_path: Path | None = None) -> Services:
    url, board = settings.store.url, None
    if settings.store.embedded:  # this process is its only writer
        url = stack.enter_context(EmbeddedRedis(settings.store.data_dir, appendfsync=settings.store.appendfsync))
        board = VersionBoard.private()
    elif board_path is not None:  # a worker on its supervisor's embedded store
        board = opened(board_path)
    if board is not None:
        stack.callback(board.close)
    store = RedisStore.from_url(url)
    stack.push_async_callback(store.aclose)
    upstream = OpenAICompatible()
    stack.push_async_callback(upstream.aclose)
    prepare_offline(os.environ)  # tiktoken reads litellm's bundled files, never the network
    tokenizers = Tokenizers.from_env(os.environ)
    for encoding in WARM_ENCODINGS:  # ~0.3 s each: pay it at start-up, not on the first request
        tokenizers.for_encoding(encoding)
    intent.warm()  # the classifier's typo table (~20 ms): at start-up, not on a user's first order
    sessions, metrics, audit = SessionState(store, board=board), Metrics(), AuditLog(store.client)
    memory = MemoryService(WritebackJournal(store.client), store)
    outage = OutageQueue(
        sessions, memory, audit, metrics, settings.store.outage_queue, settings.store.outage_queue_bytes
    )
    drainer = Drainer(outage)
    drainer.start()
    stack.push_async_callback(drainer.stop)  # runs first at shutdown: deferred turns land before the store closes
    return Services(
        settings=settings,
        keyring=KeyRing(settings),
        sessions=sessions,
        upstream=upstream,
        provider=LiteLLMProvider(),
        tokenizers=tokenizers,
        catalog=ModelCatalog.load(),
        tool_tokens=ToolTokens(),
        transcripts=TranscriptCache(),
        metrics=metrics,
        audit=audit,
        memory=memory,
        outage=outage,
        limiter=TenantLimiter(metrics.in_flight),
        inspector=TurnLog(store.client, settings.ui),
    )


async def health(request: Request) -> Response:
    """Liveness: 200 while the process serves, store outage or not (turns are then degraded)."""
    services: Services = request.state.services
    store_ok = await services.sessions.store.ping()
    return JSONResponse(_probe(services, store_ok, "ok" if store_ok else "degraded"))


async def ready(request: Request) -> Response:
    """Readiness: 503 while the store is unavailable, so a load balancer prefers replicas that
    have theirs (this one still answers, degraded, what reaches it)."""
    services: Services = request.state.services
    store_ok = await services.sessions.store.ping()
    body = _probe(services, store_ok, "ready" if store_ok else "not_ready")
    return JSONResponse(body, status_code=200 if store_ok else 503)


def _probe(services: Services, store_ok: bool, status: str) -> dict[str, object]:
    return {"status": status, "store": "ok" if store_ok else "unavailable", "queued": services.outage.queued}


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response_for(request.url.path, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response_for(request.url.path, NotFound(f"Unknown route {request.method} {request.url.path}"))
    error = GatewayError(exc.detail, status_code=exc.status_code)
    if 400 <= exc.status_code < 500:
        error.type = "invalid_request_error"
    return error_response_for(request.url.path, error)


async def _too_deep(request: Request, exc: Exception) -> Response:
    """A body nested within the JSON parser's limit but past the encoder's (it is re-encoded to
    be forwarded): the client's input, refused like any other bad body."""
    return error_response_for(request.url.path, InvalidRequest(f"The request body is not usable: {exc}."))


class Bugs:
    """Answers an exception no handler took (a bug) with a 500 in the route's API's shape
    (Anthropic's on /v1/messages, else OpenAI's), and keeps it
    from the server.

    Starlette's own last handler (`ServerErrorMiddleware`) sends its answer and then raises the
    exception again, and uvicorn, seeing an exception after the response started, closes the
    connection: a keep-alive client's next request on it fails too. Here the exception stops: a
    whole answer leaves the connection open; one cut short (a stream already under way) is left
    incomplete, and uvicorn closes that connection, as it must. The log names the exception's
    type and where it was raised; its message (which may quote the request) only with
    `server.log_content`."""

    def __init__(self, app: ASGIApp, log_content: bool) -> None:
        self.app = app
        self.log_content = log_content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            self._log(scope, exc)
            if not started:
                bug = GatewayError(f"internal gateway error ({type(exc).__name__}); this is a bug", status_code=500)
                await error_response_for(scope.get("path", ""), bug)(scope, receive, send)

    def _log(self, scope: Scope, exc: Exception) -> None:
        where = f"{scope.get('method')} {scope.get('path')}"
        if self.log_content:
            log.error("unhandled error on %s", where, exc_info=exc)
        else:  # an exception's message may quote the request: log where it happened, not what it said
            trace = "".join(traceback.format_tb(exc.__traceback__))
            log.error("unhandled error on %s: %s\n%s", where, type(exc).__name__, trace)
