"""`POST /v1/responses/compact`: Codex's compaction, relayed to the tenant's upstream.

The body goes as it came (its items, encrypted ones included, byte for byte) to the tenant's
upstream with the tenant's key, and the answer (the compacted items) comes back as it is. Only
what would read the upstream account is refused: a `previous_response_id`, through a key tenants
share (gateway.api.relay's account-level rule), since the response it names may be another tenant's.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.errors import GatewayError, error_response
from gateway.api.http import read_body, respond, retries_counted, stream_faults_counted
from gateway.turns.services import UNAUTHENTICATED, Services
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.retry import RetryPolicy, with_retries
from gateway.upstream.targets import upstream_target
from gateway.wire.account_refs import refuse as refuse_account_objects
from gateway.wire.base import json_object
from gateway.wire.responses import RESPONSES, refuse_stored_compaction

COMPACT_PATH = "/responses/compact"


async def compact(request: Request) -> Response:
    services: Services = request.state.services
    name = UNAUTHENTICATED
    try:
        tenant = services.keyring.authenticate(request.headers)
        name = tenant.name
        raw = await read_body(request, services.settings.server.max_body_bytes)
        body = json_object(raw)
        refuse_account_objects(raw, body, RESPONSES.owns_account(tenant), tenant.name)
        refuse_stored_compaction(body, RESPONSES.owns_account(tenant))
        target = upstream_target(tenant, request.headers)
        forwarded = RESPONSES.forwarded(request.headers)

        def attempt() -> Awaitable[UpstreamResponse]:
            return services.upstream.send(target, "POST", COMPACT_PATH, raw, forwarded)

        upstream = await with_retries(attempt, RetryPolicy(retries=0), on_retry=retries_counted(services.metrics))
        response = await respond(upstream, {}, stream_faults_counted(services.metrics))
    except GatewayError as exc:
        response = error_response(exc)
    services.metrics.request(name, response.status_code)
    return response
