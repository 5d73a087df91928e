"""The per-session audit streams: the decision trace and the lifecycle and fault events.

Both are Redis streams beside the session's pages (`Keys.decisions`, `Keys.events`, one hash
tag, so one pipeline writes both on Redis Cluster too). Each entry holds one field, `r`: the
record as compact JSON. Streams are capped near `max_records` entries (`MAXLEN ~`), so a long
session keeps its recent history at a bounded cost. Reads page forward: `after` is the last id
a reader has seen (exclusive), `-` to start from the beginning.

`read` is the generic reader, for streams whose entries are flat field maps (the write-back
journal): each entry comes back as its fields plus `id`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from gateway import jsonio
from gateway.store.store import Keys, mapped_errors, session_scope

FIELD = "r"
START = "-"
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
UNREADABLE_CHARS = 200


class InvalidCursor(ValueError):
    """An `after` that is not a stream id (`<ms>-<seq>`) nor `-`."""


class AuditLog:
    def __init__(self, client: aioredis.Redis, *, max_records: int = 10_000) -> None:
        self._client = client
        self._max = max_records

    async def record(
        self,
        tenant: str,
        session: str,
        decisions: Sequence[Mapping[str, Any]],
        events: Sequence[Mapping[str, Any]],
    ) -> None:
        """Append a turn's decisions and events, in one round trip; nothing when both are empty."""
        if not decisions and not events:
            return
        keys = Keys.of(tenant, session_scope(session))
        with mapped_errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for key, records in ((keys.decisions, decisions), (keys.events, events)):
                    for rec in records:
                        pipe.xadd(key, {FIELD: jsonio.dumps_text(rec)}, maxlen=self._max, approximate=True)
                await pipe.execute()

    async def served(self, tenant: str, session: str, pages: Sequence[str]) -> set[str]:
        """Note pages a recall served; returns those a recall had served before (refetches)."""
        if not pages:
            return set()
        key = Keys.of(tenant, session_scope(session)).recalled
        with mapped_errors():
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.smismember(key, list(pages))
                pipe.sadd(key, *pages)
                before, _ = await pipe.execute()
        return {page for page, seen in zip(pages, before, strict=True) if seen}

    async def count(self, tenant: str, session: str, counts: Mapping[str, int]) -> None:
        """Add to the session's tally counts observed after a response."""
        if not any(counts.values()):
            return
        key = Keys.of(tenant, session_scope(session)).counts
        with mapped_errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for name, n in sorted(counts.items()):
                    if n:
                        pipe.hincrby(key, name, n)
                await pipe.execute()

    async def counts(self, tenant: str, session: str) -> dict[str, int]:
        key = Keys.of(tenant, session_scope(session)).counts
        with mapped_errors():
            raw = await self._client.hgetall(key)
        return {str(k): int(v) for k, v in raw.items()}

    async def decisions(
        self, tenant: str, session: str, *, after: str = START, count: int = 100
    ) -> list[dict[str, Any]]:
        return await self._records(Keys.of(tenant, session_scope(session)).decisions, after, count)

    async def events(self, tenant: str, session: str, *, after: str = START, count: int = 100) -> list[dict[str, Any]]:
        return await self._records(Keys.of(tenant, session_scope(session)).events, after, count)

    async def read(self, key: str, *, after: str = START, count: int = 100) -> list[dict[str, Any]]:
        """Entries of any stream as flat field maps plus `id`, oldest first, after `after`."""
        return [{**fields, "id": entry_id} for entry_id, fields in await self._range(key, after, count)]

    async def newest(self, key: str, *, count: int = 100) -> list[dict[str, Any]]:
        """The newest `count` records of a stream (the decision trace, the events), oldest first."""
        with mapped_errors():
            entries = list(await self._client.xrevrange(key, max="+", min="-", count=max(count, 1)))
        return [decode(entry_id, fields) for entry_id, fields in reversed(entries)]

    async def _records(self, key: str, after: str, count: int) -> list[dict[str, Any]]:
        return [decode(entry_id, fields) for entry_id, fields in await self._range(key, after, count)]

    async def _range(self, key: str, after: str, count: int) -> list[tuple[str, dict[str, str]]]:
        start = lower_bound(after)
        with mapped_errors():
            return list(await self._client.xrange(key, min=start, max="+", count=max(count, 1)))


def lower_bound(after: str) -> str:
    """The XRANGE start for entries strictly after `after`."""
    if after == START:
        return START
    if STREAM_ID.fullmatch(after) is None:
        raise InvalidCursor(f"invalid cursor {after!r}: expected a stream id such as 1712345678901-0, or '-'")
    return "(" + after


def decode(entry_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """One entry's JSON record plus `id`; a record that does not decode is shown, not dropped."""
    raw = fields.get(FIELD, "")
    try:
        value = jsonio.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return {"id": entry_id, "unreadable": raw[:UNREADABLE_CHARS]}
    return {**value, "id": entry_id}
