from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from gateway.chat import parse_messages
from gateway.session_state import SessionState
from gateway.store import Keys, RedisStore, VersionConflict, body_digest, session_scope
from gateway.tables import dump_table
from policies.budget import TokenBudget
from policies.pages import PageType
from policies.pagetable import PageTable
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.transcript import Message
from policies.turn import TurnPlan, plan_turn

pytestmark = pytest.mark.anyio

_ids = itertools.count()
BUDGET = TokenBudget(cap=100_000, usable=100_000, hard_limit=100_000, source="config")


@pytest.fixture
def tenant() -> str:
    """A tenant of its own for each test: the Redis server is shared by the test session."""
    return f"st{next(_ids)}"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url)
    yield store
    await store.aclose()


def conversation(turns: int, opening: str = "Read the config please.") -> list[Message]:
    raw: list[dict[str, Any]] = [{"role": "system", "content": "You are an agent. Never delete files."}]
    raw.append({"role": "user", "content": opening})
    for n in range(turns):
        call = {"id": f"c{n}", "type": "function", "function": {"name": "read_file", "arguments": f'{{"n":{n}}}'}}
        raw.append({"role": "assistant", "content": None, "tool_calls": [call]})
        raw.append({"role": "tool", "tool_call_id": f"c{n}", "content": f"contents of file {n}\n" + "data " * 40})
        raw.append({"role": "user", "content": f"Now file {n + 1}."})
    return parse_messages(raw)


def plan(table: PageTable, messages: list[Message]) -> TurnPlan:
    return plan_turn(table, messages, TenantPolicy(name=table.tenant), CharCounter(), BUDGET)


async def turn(state: SessionState, tenant: str, session: str, messages: list[Message]) -> PageTable:
    table = await state.load(tenant, session, "proj")
    result = plan(table, messages)
    await state.commit(table, result.ingest.new_pages)
    return table


async def test_a_new_session_is_an_empty_table(store: RedisStore, tenant: str) -> None:
    table = await SessionState(store).load(tenant, "fresh", "proj")
    assert (table.tenant, table.session, table.project) == (tenant, "fresh", "proj")
    assert table.version == 0 and table.order == [] and table.pages == {}


async def test_round_trip_through_redis(store: RedisStore, tenant: str) -> None:
    committed = await turn(SessionState(store), tenant, "s", conversation(2))
    assert committed.version == 1
    loaded = await SessionState(store).load(tenant, "s", "proj")
    assert loaded is not committed
    assert dump_table(loaded) == dump_table(committed)
    assert loaded.pages == committed.pages and loaded.version == 1


async def test_evidence_bodies_are_stored_by_digest(store: RedisStore, tenant: str) -> None:
    table = await turn(SessionState(store), tenant, "s", conversation(2))
    evidence = [p for p in table.pages.values() if p.type is PageType.EVIDENCE]
    assert len(evidence) == 2
    for page in evidence:
        text = page.reprs.full.text
        assert await store.get_body(tenant, session_scope("s"), body_digest(text)) == text


async def test_a_committed_table_is_served_from_cache(store: RedisStore, tenant: str) -> None:
    state = SessionState(store)
    committed = await turn(state, tenant, "s", conversation(1))
    assert await state.load(tenant, "s", "proj") is committed


async def test_the_caller_owns_a_loaded_table_until_it_commits(store: RedisStore, tenant: str) -> None:
    state = SessionState(store)
    committed = await turn(state, tenant, "s", conversation(1))
    first = await state.load(tenant, "s", "proj")
    second = await state.load(tenant, "s", "proj")  # not handed out twice
    assert first is committed and second is not committed
    assert dump_table(second) == dump_table(committed)


async def test_a_stale_cached_table_loses_its_save_and_is_reloaded(
    store: RedisStore, redis_url: str, tenant: str
) -> None:
    mine, theirs = SessionState(store), SessionState(RedisStore.from_url(redis_url))
    try:
        stale = await turn(mine, tenant, "s", conversation(1))
        newer = await turn(theirs, tenant, "s", conversation(3))  # another replica moves the table on
        assert (stale.version, newer.version) == (1, 2)
        cached = await mine.load(tenant, "s", "proj")
        assert cached is stale  # trusted without a round trip...
        result = plan(cached, conversation(2))
        with pytest.raises(VersionConflict):  # ...because planning on it cannot overwrite the newer table
            await mine.commit(cached, result.ingest.new_pages)
        mine.forget(tenant, "s")
        loaded = await mine.load(tenant, "s", "proj")
        assert loaded.version == 2 and dump_table(loaded) == dump_table(newer)
        appended = plan(loaded, conversation(4))
        assert appended.ingest.kind == "append" and appended.ingest.kept == len(conversation(3))
        await mine.commit(loaded, appended.ingest.new_pages)
        assert loaded.version == 3
    finally:
        await theirs.store.aclose()


async def test_a_lost_race_surfaces_as_version_conflict(store: RedisStore, tenant: str) -> None:
    await turn(SessionState(store), tenant, "s", conversation(1))
    one, two = SessionState(store), SessionState(store)
    ours, theirs = await one.load(tenant, "s", "proj"), await two.load(tenant, "s", "proj")
    await two.commit(theirs, plan(theirs, conversation(2)).ingest.new_pages)
    result = plan(ours, conversation(1, opening="A different request."))
    with pytest.raises(VersionConflict) as caught:
        await one.commit(ours, result.ingest.new_pages)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    one.forget(tenant, "s")
    reloaded = await one.load(tenant, "s", "proj")
    assert reloaded.version == 2 and dump_table(reloaded) == dump_table(theirs)


async def test_an_unchanged_table_keeps_its_version(store: RedisStore, tenant: str) -> None:
    state = SessionState(store)
    table = await turn(state, tenant, "s", conversation(1))
    again = await state.load(tenant, "s", "proj")
    await state.commit(again, [])
    assert again is table and again.version == 1


async def test_forget_drops_the_cached_table(store: RedisStore, tenant: str) -> None:
    state = SessionState(store)
    committed = await turn(state, tenant, "s", conversation(1))
    state.forget(tenant, "s")
    state.forget(tenant, "never-seen")
    loaded = await state.load(tenant, "s", "proj")
    assert loaded is not committed and dump_table(loaded) == dump_table(committed)


async def test_the_cache_is_bounded(store: RedisStore, tenant: str) -> None:
    state = SessionState(store, capacity=1)
    first = await turn(state, tenant, "s1", conversation(1))
    second = await turn(state, tenant, "s2", conversation(1, opening="Other."))
    assert await state.load(tenant, "s2", "proj") is second
    evicted = await state.load(tenant, "s1", "proj")
    assert evicted is not first and dump_table(evicted) == dump_table(first)


async def test_a_cached_table_whose_stored_copy_vanished_is_not_saved_over_nothing(
    store: RedisStore, redis_url: str, tenant: str
) -> None:
    state = SessionState(store)
    await turn(state, tenant, "s", conversation(1))
    async with aioredis.Redis.from_url(redis_url) as raw:
        await raw.delete(Keys.of(tenant, session_scope("s")).table)  # e.g. evicted under maxmemory
    cached = await state.load(tenant, "s", "proj")
    with pytest.raises(VersionConflict):
        await state.commit(cached, plan(cached, conversation(2)).ingest.new_pages)
    state.forget(tenant, "s")
    fresh = await state.load(tenant, "s", "proj")
    assert fresh.version == 0 and fresh.order == []


# -- the per-session lock -------------------------------------------------------------------


async def test_the_lock_serialises_users_of_one_session(store: RedisStore) -> None:
    state = SessionState(store)
    log: list[str] = []
    holding, release = anyio.Event(), anyio.Event()

    async def first() -> None:
        async with state.locked("t", "s"):
            log.append("first in")
            holding.set()
            await release.wait()
            log.append("first out")

    async def second() -> None:
        await holding.wait()
        async with state.locked("t", "s"):
            log.append("second in")

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        group.start_soon(second)
        await holding.wait()
        for _ in range(20):
            await anyio.sleep(0)
        assert log == ["first in"]
        release.set()
    assert log == ["first in", "first out", "second in"]


async def test_other_sessions_and_tenants_are_not_blocked(store: RedisStore) -> None:
    state = SessionState(store)
    entered: list[tuple[str, str]] = []
    async with state.locked("t", "s"):
        for key in (("t", "other"), ("u", "s")):
            with anyio.fail_after(5):
                async with state.locked(*key):
                    entered.append(key)
    assert entered == [("t", "other"), ("u", "s")]


async def test_the_lock_is_released_when_the_holder_fails(store: RedisStore) -> None:
    state = SessionState(store)
    with pytest.raises(RuntimeError):
        async with state.locked("t", "s"):
            raise RuntimeError("boom")
    with anyio.fail_after(5):
        async with state.locked("t", "s"):
            pass


async def test_concurrent_turns_of_one_session_never_conflict_under_the_lock(store: RedisStore, tenant: str) -> None:
    state = SessionState(store)
    transcripts = [conversation(n) for n in range(1, 7)]
    versions: list[int] = []

    async def one_turn(messages: list[Message]) -> None:
        async with state.locked(tenant, "busy"):
            table = await state.load(tenant, "busy", "proj")
            await anyio.sleep(0)  # give the others a chance to barge in
            result = plan(table, messages)
            await state.commit(table, result.ingest.new_pages)
            versions.append(table.version)

    async with anyio.create_task_group() as group:
        for messages in transcripts:
            group.start_soon(one_turn, messages)
    assert versions == list(range(1, len(transcripts) + 1))
    final = await SessionState(store).load(tenant, "busy", "proj")
    assert final.version == len(transcripts)
