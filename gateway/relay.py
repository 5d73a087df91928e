"""Every other `/v1/*` endpoint (models, embeddings, files, ...): relayed to the tenant's upstream unchanged.

A GET is retried like a chat completion (gateway.retry); other methods are sent once, since files,
batches, threads and stored responses are not idempotent."""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import Response

from gateway.http import read_body, respond, retries_counted, retry_policy, stream_faults_counted, upstream_target
from gateway.pipeline import Services
from gateway.retry import RetryPolicy, with_retries
from gateway.upstream import UpstreamResponse

PASSED_HEADERS = ("content-type", "accept", "openai-organization", "openai-project", "openai-beta")


async def relay(request: Request) -> Response:
    services: Services = request.state.services
    tenant = services.keyring.authenticate(request.headers)
    body = await read_body(request, services.settings.server.max_body_bytes) if request.method != "GET" else None
    headers = {name: request.headers[name] for name in PASSED_HEADERS if name in request.headers}
    path = "/" + request.path_params["path"]
    target = upstream_target(tenant, request.headers)
    policy = retry_policy(tenant) if request.method == "GET" else RetryPolicy(retries=0)

    def attempt() -> Awaitable[UpstreamResponse]:
        return services.upstream.send(target, request.method, path, body or None, headers, request.url.query)

    upstream = await with_retries(attempt, policy, on_retry=retries_counted(services.metrics))
    return await respond(upstream, {}, stream_faults_counted(services.metrics))
