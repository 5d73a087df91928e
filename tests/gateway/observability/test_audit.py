"""gateway.observability.audit against the real Redis: write a turn's decisions and events, page through them."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.observability.audit import AuditLog, InvalidCursor, lower_bound
from gateway.store.embedded import free_port
from gateway.store.store import InvalidKeyError, Keys, RedisStore, StoreUnavailable, session_scope

pytestmark = pytest.mark.anyio
TENANT = "audit-t"
_ids = itertools.count()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    store = RedisStore.from_url(redis_url)
    yield store.client
    await store.aclose()


def fresh() -> str:
    return f"audit-{next(_ids)}"


async def test_records_come_back_with_their_ids_in_order(client: aioredis.Redis) -> None:
    log, session = AuditLog(client), fresh()
    decisions = [{"page_id": "p:a", "action": "degrade", "reason": "budget"}, {"page_id": "p:b", "n": 2}]
    events = [{"type": "fault", "kind": "flush_miss", "detail": "é ok"}]
    await log.record(TENANT, session, decisions, events)
    got = await log.decisions(TENANT, session)
    assert [{k: v for k, v in r.items() if k != "id"} for r in got] == decisions
    assert all(lower_bound(r["id"]) for r in got)  # each id is a valid cursor
    assert [r["detail"] for r in await log.events(TENANT, session)] == ["é ok"]


async def test_nothing_is_written_when_both_are_empty(client: aioredis.Redis) -> None:
    log, session = AuditLog(client), fresh()
    await log.record(TENANT, session, [], [])
    keys = Keys.of(TENANT, session_scope(session))
    assert await client.exists(keys.decisions, keys.events) == 0


async def test_after_is_exclusive_and_count_limits(client: aioredis.Redis) -> None:
    log, session = AuditLog(client), fresh()
    await log.record(TENANT, session, [{"n": i} for i in range(5)], [])
    first = await log.decisions(TENANT, session, count=2)
    assert [r["n"] for r in first] == [0, 1]
    second = await log.decisions(TENANT, session, after=first[-1]["id"], count=2)
    assert [r["n"] for r in second] == [2, 3]
    rest = await log.decisions(TENANT, session, after=second[-1]["id"], count=10)
    assert [r["n"] for r in rest] == [4]
    assert await log.decisions(TENANT, session, after=rest[-1]["id"]) == []


async def test_streams_are_capped_near_max_records(client: aioredis.Redis) -> None:
    log, session = AuditLog(client, max_records=10), fresh()
    for start in range(0, 600, 100):
        await log.record(TENANT, session, [{"n": i} for i in range(start, start + 100)], [])
    length = await client.xlen(Keys.of(TENANT, session_scope(session)).decisions)
    assert 10 <= length < 600
    newest = await log.decisions(TENANT, session, count=1000)
    assert newest[-1]["n"] == 599


async def test_generic_read_returns_flat_fields(client: aioredis.Redis) -> None:
    log, session = AuditLog(client), fresh()
    key = Keys.of(TENANT, session_scope(session)).writeback
    await client.xadd(key, {"op": "append", "field": "notes", "status": "committed"})
    await client.xadd(key, {"op": "set", "field": "goal", "status": "rejected"})
    rows = await log.read(key)
    assert [(r["op"], r["status"]) for r in rows] == [("append", "committed"), ("set", "rejected")]
    assert [r["field"] for r in await log.read(key, after=rows[0]["id"])] == ["goal"]


async def test_an_unreadable_record_is_shown_not_dropped(client: aioredis.Redis) -> None:
    log, session = AuditLog(client), fresh()
    key = Keys.of(TENANT, session_scope(session)).events
    await client.xadd(key, {"r": "{not json"})
    await client.xadd(key, {"r": "[1, 2]"})
    await log.record(TENANT, session, [], [{"kind": "refetch"}])
    rows = await log.events(TENANT, session)
    assert [r.get("unreadable") for r in rows] == ["{not json", "[1, 2]", None]
    assert rows[2]["kind"] == "refetch"


@pytest.mark.parametrize("bad", ["", "abc", "1-", "(1-0", "1-0-0", "+"])
def test_bad_cursors_are_refused(bad: str) -> None:
    with pytest.raises(InvalidCursor):
        lower_bound(bad)


def test_cursors() -> None:
    assert lower_bound("-") == "-"
    assert lower_bound("1712345678901-3") == "(1712345678901-3"


async def test_bad_session_ids_are_refused_before_any_round_trip(client: aioredis.Redis) -> None:
    with pytest.raises(InvalidKeyError):
        await AuditLog(client).decisions(TENANT, "bad id with spaces")


async def test_redis_errors_become_store_errors() -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await AuditLog(store.client).record(TENANT, fresh(), [{"n": 1}], [])
        with pytest.raises(StoreUnavailable):
            await AuditLog(store.client).events(TENANT, fresh())
    finally:
        await store.aclose()


async def test_newest_reads_the_last_records_oldest_first(client: aioredis.Redis) -> None:
    log, session = AuditLog(client), fresh()
    await log.record(TENANT, session, [{"n": n} for n in range(5)], [])
    key = Keys.of(TENANT, session_scope(session)).decisions
    assert [r["n"] for r in await log.newest(key, count=3)] == [2, 3, 4]
    assert await log.newest(Keys.of(TENANT, session_scope(fresh())).decisions) == []
