"""HTTP plumbing shared by the routes: bounded body reads, upstream targets, relaying answers."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from gateway.auth import client_key
from gateway.errors import InvalidRequest, PayloadTooLarge
from gateway.settings import Tenant
from gateway.upstream import UpstreamResponse, UpstreamTarget


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit` bytes."""
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
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise InvalidRequest("the client disconnected before sending the whole body") from exc
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (
        f"The request body ({size} bytes so far) exceeds this gateway's limit of {limit} bytes (server.max_body_bytes)."
    )


def upstream_target(tenant: Tenant, headers: Mapping[str, str]) -> UpstreamTarget:
    settings = tenant.upstream
    key = client_key(headers) if settings.forward_client_key else settings.api_key
    return UpstreamTarget(api_base=settings.api_base, api_key=key, timeout=settings.timeout)


async def respond(upstream: UpstreamResponse, ours: Mapping[str, str]) -> Response:
    headers = {name: value for name, value in upstream.headers}
    headers.update(ours)
    if upstream.is_stream:
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status,
            headers=headers,
            background=BackgroundTask(upstream.aclose),
        )
    return Response(await upstream.read(), status_code=upstream.status, headers=headers)
