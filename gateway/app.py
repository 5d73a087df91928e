"""The ASGI application: routes, error handlers and the lifespan that owns every client.

`create_app(settings)` wires everything through constructor arguments (Starlette 1.x style);
shared clients live in lifespan state. Tests pass their own store URL or upstream.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypedDict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.audit import AuditLog
from gateway.audit_api import decisions, events, journal, metrics, session
from gateway.auth import KeyRing
from gateway.embedded import EmbeddedRedis
from gateway.errors import GatewayError, NotFound, error_response
from gateway.journal import WritebackJournal
from gateway.memory import MemoryService
from gateway.metrics import Metrics
from gateway.models import ModelCatalog
from gateway.pages_api import page
from gateway.pipeline import Services, ToolTokens, chat_completions
from gateway.relay import relay
from gateway.session_state import SessionState
from gateway.settings import Settings
from gateway.store import RedisStore
from gateway.tokens import Tokenizers, prepare_offline
from gateway.upstream import LiteLLMProvider, OpenAICompatible

log = logging.getLogger("clawvm.gateway")
WARM_ENCODINGS = ("o200k_base", "cl100k_base")


class State(TypedDict):
    services: Services


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            yield {"services": await _services(settings, stack)}

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/v1/clawvm/pages/{page_id:str}", page, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}", session, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}/decisions", decisions, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}/events", events, methods=["GET"]),
            Route("/v1/clawvm/sessions/{session_id:str}/journal", journal, methods=["GET"]),
            Route("/v1/{path:path}", relay, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ],
        exception_handlers={GatewayError: _gateway_error, HTTPException: _http_error, Exception: _bug},
        lifespan=lifespan,
    )


async def _services(settings: Settings, stack: AsyncExitStack) -> Services:
    url = settings.store.url
    if settings.store.embedded:
        url = stack.enter_context(EmbeddedRedis(settings.store.data_dir))
    store = RedisStore.from_url(url)
    stack.push_async_callback(store.aclose)
    upstream = OpenAICompatible()
    stack.push_async_callback(upstream.aclose)
    prepare_offline(os.environ)  # tiktoken reads litellm's bundled files, never the network
    tokenizers = Tokenizers.from_env(os.environ)
    for encoding in WARM_ENCODINGS:  # ~0.3 s each: pay it at start-up, not on the first request
        tokenizers.for_encoding(encoding)
    return Services(
        settings=settings,
        keyring=KeyRing(settings),
        sessions=SessionState(store),
        upstream=upstream,
        provider=LiteLLMProvider(),
        tokenizers=tokenizers,
        catalog=ModelCatalog.load(),
        tool_tokens=ToolTokens(),
        metrics=Metrics(),
        audit=AuditLog(store.client),
        memory=MemoryService(WritebackJournal(store.client), store),
    )


async def health(request: Request) -> Response:
    services: Services = request.state.services
    store_ok = await services.sessions.store.ping()
    body = {"status": "ok" if store_ok else "degraded", "store": "ok" if store_ok else "unavailable"}
    return JSONResponse(body, status_code=200 if store_ok else 503)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"Unknown route {request.method} {request.url.path}"))
    error = GatewayError(exc.detail, status_code=exc.status_code)
    if 400 <= exc.status_code < 500:
        error.type = "invalid_request_error"
    return error_response(error)


async def _bug(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        GatewayError(f"internal gateway error ({type(exc).__name__}); this is a bug", status_code=500)
    )
