"""Every other `/v1/*` endpoint (models, embeddings, files, ...): relayed to the tenant's upstream unchanged."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.http import read_body, respond, upstream_target
from gateway.pipeline import Services

PASSED_HEADERS = ("content-type", "accept", "openai-organization", "openai-project", "openai-beta")


async def relay(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    body = await read_body(request, services.settings.server.max_body_bytes) if request.method != "GET" else None
    headers = {name: request.headers[name] for name in PASSED_HEADERS if name in request.headers}
    path = "/" + request.path_params["path"]
    upstream = await services.upstream.send(
        upstream_target(tenant, request.headers), request.method, path, body or None, headers, request.url.query
    )
    return await respond(upstream, {})
