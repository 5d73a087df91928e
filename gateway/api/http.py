"""HTTP plumbing shared by the routes: bounded request heads and bodies, relayed answers, a
client's hang-up.

Limits: `HeaderLimit` (ASGI middleware) refuses a request whose head (request target and headers)
passes `server.max_header_bytes` with 431; `read_body` refuses a body past `server.max_body_bytes`
with 413. Both answer in the route's API's error shape (Anthropic's on /v1/messages). The header
limit is enforced here rather than by the HTTP parser because uvicorn's httptools parser (its
default when installed) has no such setting; `h11_max_incomplete_event_size` covers only the h11
parser.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import jsonio
from gateway.api.errors import (
    ClientDisconnected,
    GatewayError,
    HeadersTooLarge,
    InvalidRequest,
    PayloadTooLarge,
    UpstreamTimeout,
    error_body,
    error_response_for,
    from_status,
)
from gateway.observability.metrics import Metrics
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.retry import OnRetry
from gateway.upstream.sse import ending_cleanly, error_event

log = logging.getLogger("clawvm.gateway")
T = TypeVar("T")
OnError = Callable[[GatewayError], None]
ERROR_SNIPPET = 300  # characters of a non-OpenAI error body quoted in our message
ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # an upstream 5xx's `code` kept: an identifier, no text


class HeaderLimit:
    """Refuses, with 431, an HTTP request whose head is larger than `limit` bytes, before any route
    (and so before authentication) sees it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = head_bytes(scope)
            if size > self.limit:
                message = (
                    f"The request line and headers ({size} bytes) exceed this gateway's limit of "
                    f"{self.limit} bytes (server.max_header_bytes)."
                )
                await error_response_for(scope.get("path", ""), HeadersTooLarge(message))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def head_bytes(scope: Scope) -> int:
    """Bytes of the request target and the header block as sent (`name: value\\r\\n` per header)."""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
    return target + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes. A body that came in one
    message (`gateway.api.protocol.ReadAhead`) is that message's bytes, not a copy of them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(int(declared), limit))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(_too_large(size, limit))
            if chunk:  # the stream ends with an empty chunk: a join of one part is that part
                chunks.append(chunk)
    except ClientDisconnect as exc:
        raise InvalidRequest("the client disconnected before sending the whole body") from exc
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (
        f"The request body ({size} bytes so far) exceeds this gateway's limit of {limit} bytes (server.max_body_bytes)."
    )


def retries_counted(metrics: Metrics) -> OnRetry:
    return lambda reason: metrics.upstream_fault(f"retry_{reason}")


def stream_faults_counted(metrics: Metrics) -> OnError:
    def count(exc: GatewayError) -> None:
        metrics.upstream_fault("stream_timeout" if isinstance(exc, UpstreamTimeout) else "stream_dropped")

    return count


Shape = Callable[[GatewayError], object]  # an error's body in the client's wire format


async def respond(
    upstream: UpstreamResponse,
    ours: Mapping[str, str],
    on_error: OnError | None = None,
    *,
    log_content: bool = False,
    shape: Shape = error_body,
    event: Callable[[GatewayError], bytes] = error_event,
) -> Response:
    """The upstream's answer with our headers on top: a stream relayed as it comes (a failure
    mid-stream ends it with `event`, reported to `on_error`), an error in `shape` (OpenAI's by
    default). `log_content`: a 5xx body (which may quote the request) may be logged, not only its size."""
    headers = {name: value for name, value in upstream.headers}
    headers.update(ours)
    if upstream.status >= 500:
        return await _server_error(upstream, headers, log_content, shape)
    if upstream.status >= 400:
        return await _error(upstream, headers, shape)
    if upstream.is_stream:
        return StreamingResponse(
            ending_cleanly(upstream.aiter_raw(), on_error, event),
            status_code=upstream.status,
            headers=headers,
            background=BackgroundTask(upstream.aclose),
        )
    return Response(await upstream.read(), status_code=upstream.status, headers=headers)


async def _server_error(
    upstream: UpstreamResponse, headers: dict[str, str], log_content: bool, shape: Shape = error_body
) -> Response:
    """An upstream 5xx with its status, headers (Retry-After) and error `code` (when an identifier)
    but a message of ours: its body, OpenAI-shaped or not, may quote internal hosts, ports or a
    library's exception text. The body is logged (its size only, unless `server.log_content`)."""
    body = await upstream.read()
    if log_content:
        log.warning("the upstream answered %d: %r", upstream.status, body[:ERROR_SNIPPET])
    else:
        log.warning("the upstream answered %d (%d bytes)", upstream.status, len(body))
    message = f"the upstream answered {upstream.status}; the request may be retried"
    error = from_status(upstream.status, message, code=_error_code(body))
    headers = {name: value for name, value in headers.items() if name != "content-type"}
    return Response(jsonio.dumps(shape(error)), upstream.status, headers, media_type="application/json")


def _error_code(body: bytes) -> str | None:
    """The `code` of an OpenAI-shaped error body when it is a plain identifier (`server_error`)."""
    try:
        data = jsonio.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and ERROR_CODE.fullmatch(code) else None


async def _error(upstream: UpstreamResponse, headers: dict[str, str], shape: Shape = error_body) -> Response:
    """An upstream 4xx with its status and headers (Retry-After, rate-limit counters): its body
    as it is when OpenAI-shaped (the provider's words to the caller), else that body's head quoted
    in an OpenAI error of that status."""
    body = await upstream.read()
    if _openai_error(body):
        return Response(body, status_code=upstream.status, headers=headers)
    text = " ".join(body.decode("utf-8", "replace").split())[:ERROR_SNIPPET] or "(empty body)"
    error = from_status(upstream.status, f"the upstream answered {upstream.status}: {text}")
    headers = {name: value for name, value in headers.items() if name != "content-type"}
    return Response(jsonio.dumps(shape(error)), upstream.status, headers, media_type="application/json")


def _openai_error(body: bytes) -> bool:
    try:
        data = jsonio.loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled if the client hangs up first (then `ClientDisconnected`, status 499).

    Call it once the request body is read: the only message left to receive is the disconnect.
    A cancelled upstream call closes its connection, so the upstream stops generating."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its cleanup (releasing the upstream) runs
    if task.cancelled():
        raise ClientDisconnected("the client closed the connection before the answer; the upstream call was cancelled")
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
