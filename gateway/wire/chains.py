"""Responses the gateway served, kept so `previous_response_id` can be resolved here.

The gateway forwards every Responses turn stateless (`store: false` upstream with a shared key:
a response stored on a key tenants share could be read through it by another tenant). A client
that chains with `previous_response_id` (the Agents SDK does, Codex does not) gets its chain
resolved from what this gateway saw: for each response it answered with `store` not false, the
conversation as the client sees it (the resolved input, then the output), for CHAIN_TTL_S. An
id this tenant was not answered with (another tenant's, an upstream's, an expired one) cannot
be served: the caller refuses the request clearly.

Storage grows with the conversation, not with its square: a chain's items are one Redis list
(`...:items`), appended to turn by turn, and each response is a pointer `{list, length}` into
it. Resolving is two reads (the pointer, then `LRANGE`). A response chained from one that is not
its list's newest (a branch, or two requests racing from one response) starts a list of its
own, a copy of its prefix. Keys are digests of the tenant and the id: nothing a client sends
shapes a key, and one tenant's id names nothing of another's.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from gateway import jsonio
from gateway.store.store import Client, mapped_errors

CHAIN_TTL_S = 7 * 24 * 3600  # how long a response can be chained from


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:40]


def pointer_key(tenant: str, response_id: str) -> str:
    digest = _digest(tenant, response_id)
    return f"cvm:{{{digest[:8]}}}:resp:{digest}"


def items_key(tenant: str, chain: str) -> str:
    return f"cvm:{{{chain[:8]}}}:chain:{_digest(tenant, chain)}"


@dataclass(frozen=True, slots=True)
class Chain:
    """Where a response's conversation is: the first `length` items of list `list_id`."""

    list_id: str
    length: int


class ResponseChains:
    def __init__(self, client: Client, ttl: int = CHAIN_TTL_S) -> None:
        self._client = client
        self._ttl = ttl

    async def chain(self, tenant: str, response_id: str) -> Chain | None:
        with mapped_errors():
            data = await self._client.get(pointer_key(tenant, response_id))
        found = jsonio.loads(data) if data is not None else None
        if (
            not isinstance(found, dict)
            or not isinstance(found.get("list"), str)
            or not isinstance(found.get("length"), int)
        ):
            return None
        return Chain(found["list"], found["length"])

    async def load(self, tenant: str, response_id: str) -> list[Any] | None:
        """The conversation of a response this tenant was answered with, or None."""
        chain = await self.chain(tenant, response_id)
        if chain is None:
            return None
        with mapped_errors():
            raw = await self._client.lrange(items_key(tenant, chain.list_id), 0, chain.length - 1)
        if len(raw) != chain.length:  # expired under the pointer
            return None
        return [jsonio.loads(item) for item in raw]

    async def save(self, tenant: str, response_id: str, previous: Chain | None, items: list[Any]) -> None:
        """Record `response_id` as `previous`'s conversation followed by `items` (the whole
        conversation when `previous` is None)."""
        encoded = [jsonio.dumps_text(item) for item in items]
        chain = await self._appended(tenant, previous, encoded)
        with mapped_errors():
            pointer = jsonio.dumps_text({"list": chain.list_id, "length": chain.length})
            await self._client.set(pointer_key(tenant, response_id), pointer, ex=self._ttl)

    async def _appended(self, tenant: str, previous: Chain | None, encoded: list[str]) -> Chain:
        if previous is not None:
            key = items_key(tenant, previous.list_id)
            with mapped_errors():
                length = await self._client.rpush(key, *encoded) if encoded else await self._client.llen(key)
                await self._client.expire(key, self._ttl)
            if length == previous.length + len(encoded):  # it was the list's newest: appended in place
                return Chain(previous.list_id, length)
            with mapped_errors():  # a branch: its own list, from a copy of its prefix
                prefix = await self._client.lrange(key, 0, previous.length - 1)
            encoded = [*prefix, *encoded]
        list_id = secrets.token_hex(16)
        if encoded:
            with mapped_errors():
                await self._client.rpush(items_key(tenant, list_id), *encoded)
                await self._client.expire(items_key(tenant, list_id), self._ttl)
        return Chain(list_id, len(encoded))
