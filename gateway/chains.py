"""Responses the gateway served, kept so `previous_response_id` can be resolved here.

The gateway forwards every Responses turn stateless (`store: false` upstream with a shared key:
a response stored on a key tenants share could be read through it by another tenant). A client
that chains with `previous_response_id` (the Agents SDK does, Codex does not) gets its chain
resolved from what this gateway saw: for each response it answered with `store` not false, the
whole conversation as the client sees it (the resolved input, then the output) under the
tenant and the response id, for CHAIN_TTL_S. An id this tenant was not answered with (another
tenant's, an upstream's, an expired one) cannot be served: the request is refused clearly.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway import jsonio
from gateway.store import Client, mapped_errors

CHAIN_TTL_S = 7 * 24 * 3600  # how long a response can be chained from


def chain_key(tenant: str, response_id: str) -> str:
    """The key of one response's conversation: the id is hashed (nothing a client sends shapes a key)."""
    digest = hashlib.sha256(f"{tenant}\x1f{response_id}".encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"cvm:{{{digest[:8]}}}:resp:{digest}"


class ResponseChains:
    def __init__(self, client: Client, ttl: int = CHAIN_TTL_S) -> None:
        self._client = client
        self._ttl = ttl

    async def save(self, tenant: str, response_id: str, items: list[Any]) -> None:
        with mapped_errors():
            await self._client.set(chain_key(tenant, response_id), jsonio.dumps_text(items), ex=self._ttl)

    async def load(self, tenant: str, response_id: str) -> list[Any] | None:
        with mapped_errors():
            data = await self._client.get(chain_key(tenant, response_id))
        if data is None:
            return None
        items = jsonio.loads(data)
        return items if isinstance(items, list) else None
