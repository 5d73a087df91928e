"""The services a request uses, wired once per process (gateway.api.app's lifespan builds them):
settings, keys, the store and the session state behind it, upstream clients, tokenizers, the
model catalog, caches, metrics, audit, write-back memory, the outage queue, limits and the
session inspector. Every route reads them from `request.state.services`; nothing else is shared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway import jsonio
from gateway.api.auth import KeyRing
from gateway.api.errors import ServiceUnavailable
from gateway.api.limits import TenantLimiter
from gateway.observability.audit import AuditLog
from gateway.observability.inspector import TurnLog
from gateway.observability.metrics import Metrics
from gateway.settings import Settings
from gateway.store.memory import MemoryService
from gateway.store.outage import OutageQueue
from gateway.store.session_state import SessionState
from gateway.store.store import StoreError, StoreUnavailable
from gateway.upstream.client import OpenAICompatible
from gateway.upstream.models import ModelCatalog
from gateway.upstream.tokens import TiktokenCounter, Tokenizers, count_tools
from gateway.wire.base import Wire
from gateway.wire.chat_litellm import LiteLLMProvider
from gateway.wire.chat_transcripts import TranscriptCache

log = logging.getLogger("clawvm.gateway")
UNAUTHENTICATED = "-"  # the tenant label of a request whose key was refused
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    keyring: KeyRing
    sessions: SessionState
    upstream: OpenAICompatible
    provider: LiteLLMProvider
    tokenizers: Tokenizers
    catalog: ModelCatalog
    tool_tokens: ToolTokens
    transcripts: TranscriptCache
    metrics: Metrics
    audit: AuditLog
    memory: MemoryService
    outage: OutageQueue  # turns deferred while the store is unavailable
    limiter: TenantLimiter = field(default_factory=TenantLimiter)  # requests in flight per tenant (gateway.api.limits)
    inspector: TurnLog | None = None  # per-turn records for the session inspector (gateway.observability.inspector)


class ToolTokens:
    """Token counts of tool schemas, remembered: agents send the same tools every turn.

    A body read by its appended bytes (gateway.wire.appended) holds the very `tools` list of the
    body it extends, so a list seen before is known by identity, without serialising it again;
    any other list by its compact JSON. Parsed bodies are never changed in place (a kept body's
    members are shared with the next one), so the identity of a held list is its content. The
    recall tool's schema is counted once per encoding and wire format."""

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity
        self._counts: dict[tuple[str, bytes], int] = {}
        self._seen: dict[tuple[str, int], tuple[list[Any], int]] = {}  # (encoding, id) -> (the list, count)
        self._recall: dict[tuple[str, str], int] = {}

    def count(self, counter: TiktokenCounter, tools: object) -> int:
        if not isinstance(tools, list) or not tools:
            return 0
        seen = self._seen.get((counter.name, id(tools)))
        if seen is not None and seen[0] is tools:
            return seen[1]
        key = (counter.name, jsonio.dumps(tools))
        found = self._counts.get(key)
        if found is None:
            found = _kept(self._counts, key, count_tools(counter, tools), self._capacity)
        _kept(self._seen, (counter.name, id(tools)), (tools, found), self._capacity)
        return found

    def recall(self, counter: TiktokenCounter, wire: Wire, name: str) -> int:
        """Tokens of the recall tool's schema (`name`) in `wire`'s format."""
        key = (counter.name, f"{wire.name}\x1f{name}")
        found = self._recall.get(key)
        if found is None:
            found = self._recall[key] = count_tools(counter, [wire.recall_tool(name)])
        return found


def _kept(cache: dict[K, V], key: K, value: V, capacity: int) -> V:
    """`value` stored under `key`, the oldest entry dropped first when `cache` is full."""
    cache.pop(key, None)
    if len(cache) >= capacity:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def store_failure(exc: StoreError, what: str, code: str | None = None) -> ServiceUnavailable:
    """The 503 for a store failure: the client learns the store is unavailable (and, for a
    refusal, the Redis error code); the exception's text, which may name internal hosts and
    ports, goes to the log only."""
    log.warning("%s: the page store failed: %s: %s", what, type(exc).__name__, exc)
    reason = f" ({exc.reason})" if isinstance(exc, StoreUnavailable) else ""
    return ServiceUnavailable(f"the page store is unavailable{reason}; retry the request", code=code)
