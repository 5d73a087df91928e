"""Per-tenant limit on concurrent requests (`tenants.<name>.limits.max_concurrent_requests`).

One tenant may have at most its limit of requests in flight in this gateway process; the next one
is answered 429 in the route's API's shape (OpenAI's, or Anthropic's on /v1/messages;
`rate_limit_error`, code `concurrency_limit_exceeded`) with a
`Retry-After` header, so one tenant cannot take every connection, upstream slot and store
connection from the others. The count is per process: N replicas let a tenant have N times its
limit in flight.

`ConcurrencyLimit` is the ASGI middleware that applies it to every `/v1/*` route (chat
completions, the relayed upstream routes, the audit and pages APIs). It holds the slot for the
whole response: a streamed answer keeps its slot until its last byte is sent, or until the client
hangs up (the response task ends then), and releases it in a `finally`, whatever ended it. A
request whose key is refused is passed on untouched: its route answers 401. /health, /ready and
/metrics are not limited. `clawvm_requests_in_flight{tenant}` (gateway.observability.metrics) shows the count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.errors import AuthenticationFailed, GatewayError, RateLimited, error_response_for
from gateway.settings import Tenant

LIMITED_PREFIX = "/v1/"
CHAT_PATH = "/v1/chat/completions"
RETRY_AFTER_S = 1
CODE = "concurrency_limit_exceeded"


@dataclass(slots=True)
class Slot:
    """One request's hold on its tenant's limit; `release` is idempotent."""

    limiter: TenantLimiter
    tenant: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter._release(self.tenant)


@dataclass(slots=True)
class TenantLimiter:
    """Requests in flight per tenant, in one process (one event loop: no lock needed);
    `observe(tenant, n)` hears every change (the in-flight gauge of gateway.observability.metrics)."""

    observe: Callable[[str, int], None] | None = None
    _in_flight: dict[str, int] = field(default_factory=dict)

    def acquire(self, tenant: Tenant) -> Slot:
        """A slot for one request of `tenant`, or RateLimited (429) when it is at its limit."""
        limit = tenant.limits.max_concurrent_requests
        held = self._in_flight.get(tenant.name, 0)
        if limit and held >= limit:
            raise RateLimited(
                f"Too many concurrent requests for this API key: {held} in flight, the limit is {limit} "
                f"(tenants.{tenant.name}.limits.max_concurrent_requests). Retry when one has finished.",
                code=CODE,
            )
        self._set(tenant.name, held + 1)
        return Slot(self, tenant.name)

    def in_flight(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)

    def _release(self, tenant: str) -> None:
        self._set(tenant, max(self._in_flight.get(tenant, 0) - 1, 0))

    def _set(self, tenant: str, held: int) -> None:
        if held:
            self._in_flight[tenant] = held
        else:
            self._in_flight.pop(tenant, None)
        if self.observe is not None:
            self.observe(tenant, held)


class ConcurrencyLimit:
    """ASGI middleware: `TenantLimiter` around every `/v1/*` request (see the module docstring).
    It reads the app's services from the lifespan state of the request's scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = scope.get("state", {}).get("services") if scope["type"] == "http" else None
        if services is None or not scope["path"].startswith(LIMITED_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            tenant = services.keyring.authenticate(Headers(scope=scope))
        except AuthenticationFailed:  # the route answers it
            await self.app(scope, receive, send)
            return
        try:
            slot = services.limiter.acquire(tenant)
        except GatewayError as exc:
            if scope["path"] == CHAT_PATH:  # the requests metric counts chat requests
                services.metrics.request(tenant.name, exc.status_code)
            await error_response_for(scope["path"], exc, {"retry-after": str(RETRY_AFTER_S)})(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            slot.release()
