"""`POST /v1/messages/count_tokens`: the tokens of the prompt the gateway would forward.

Claude Code sizes its context from this count (and from `usage`): the request is planned like a
turn, on a copy of the session's table (`gateway.turns.pipeline.dry_run`: nothing is stored), and the
assembled prompt, not the agent's, is counted by the tenant's Messages API upstream.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import Response

from gateway import jsonio
from gateway.api.errors import GatewayError
from gateway.api.http import read_body, respond, retries_counted
from gateway.jsonio import JSONAnswer
from gateway.turns.pipeline import dry_run
from gateway.turns.services import UNAUTHENTICATED, Services
from gateway.turns.sessions import resolve
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.retry import with_retries
from gateway.upstream.targets import retry_policy
from gateway.wire.account_refs import refuse as refuse_account_objects
from gateway.wire.messages import MESSAGES, counted_body, error_body, parse_request


async def count_tokens(request: Request) -> Response:
    services: Services = request.state.services
    name = UNAUTHENTICATED
    try:
        tenant = services.keyring.authenticate(request.headers)
        name = tenant.name
        raw = await read_body(request, services.settings.server.max_body_bytes)
        chat = parse_request(raw, counting=True)
        refuse_account_objects(raw, chat.body, MESSAGES.owns_account(tenant), tenant.name)
        ids = resolve(request.headers, MESSAGES.names(chat), chat.messages, tenant.name)
        body = await dry_run(services, tenant, chat, ids, MESSAGES)
        counted = jsonio.dumps(counted_body(body))
        target = MESSAGES.target(tenant, request.headers)
        forwarded = MESSAGES.forwarded(request.headers)

        def attempt() -> Awaitable[UpstreamResponse]:
            return services.upstream.send(target, "POST", "/v1/messages/count_tokens", counted, forwarded)

        upstream = await with_retries(attempt, retry_policy(tenant), on_retry=retries_counted(services.metrics))
        response = await respond(upstream, {"x-clawvm-session": ids.session}, shape=error_body)
    except GatewayError as exc:
        response = JSONAnswer(error_body(exc), status_code=exc.status_code)
    services.metrics.request(name, response.status_code)
    return response
