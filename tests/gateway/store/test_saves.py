"""The saves feed (gateway.store.saves) over a real Redis server and a real Redis Cluster: every
save announces its table's new version, and a worker trusts a cached table only while it has
heard every save since the table came from the store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
import redis.asyncio as aioredis

from gateway.store.saves import SavesFeed, announced
from gateway.store.session_state import SessionState
from gateway.store.store import SAVED_CHANNEL, Keys, RedisStore, session_scope
from policies.pagetable import PageTable
from tests.gateway.store.test_session_state import conversation, turn

pytestmark = pytest.mark.anyio

WAIT_S = 10.0  # a bound on waiting for a message, never a timing assertion


async def until(condition: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.005)
    assert condition(), what


class Worker:
    """One process's view: a store client, its session cache and its saves feed."""

    def __init__(self, url: str) -> None:
        self.store = RedisStore.from_url(url)
        self.sessions = SessionState(self.store)
        self.feed = SavesFeed(self.store.client, self.sessions.heard)
        self.sessions.feed = self.feed

    async def __aenter__(self) -> Worker:
        self.feed.start()
        await until(lambda: self.feed.live, "the feed subscribes")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.feed.stop()
        await self.store.aclose()


@pytest.fixture
async def workers(redis_url: str) -> AsyncIterator[Callable[[], Awaitable[Worker]]]:
    opened: list[Worker] = []

    async def open_worker() -> Worker:
        worker = await Worker(redis_url).__aenter__()
        opened.append(worker)
        return worker

    yield open_worker
    for worker in opened:
        await worker.__aexit__()


def test_an_announcement_names_a_session_table_and_its_version() -> None:
    key = Keys.of("acme", session_scope("s-1:part")).table
    assert announced(f"{key} 7") == ("acme", "s-1:part", 7)
    assert announced(f"{Keys.of('acme', 'project:p').table} 7") is None  # a project table: not cached here
    for junk in (None, b"x", "", "7", f"{key}", f"{key} seven", f"{key} -1", "cvm:{acme}:table 3", f"{key} ³"):
        assert announced(junk) is None


async def test_every_save_is_announced_with_its_new_version(store: RedisStore, redis_url: str, tenant: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe(SAVED_CHANNEL)
    state = SessionState(store)
    messages = conversation(3)
    try:
        for upto in (4, 6, len(messages)):  # a snapshot, then journal appends
            await turn(state, tenant, "s", messages[:upto])
        heard: list[tuple[str, str, int]] = []
        with anyio.fail_after(WAIT_S):
            while len(heard) < 3:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                found = announced(message["data"]) if message else None
                if found is not None and found[0] == tenant:
                    heard.append(found)
        assert heard == [(tenant, "s", 1), (tenant, "s", 2), (tenant, "s", 3)]
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_a_cached_table_is_trusted_until_another_writer_saves_past_it(
    workers: Callable[[], Awaitable[Worker]], tenant: str
) -> None:
    mine, other = await workers(), await workers()
    messages = conversation(4)
    table = await turn(mine.sessions, tenant, "s", messages[:4])
    await until(lambda: mine.sessions._newest.get((tenant, "s")) == 1, "its own save is heard")
    assert mine.sessions.trusted(table)  # its own save: current, no round trip needed
    assert await mine.sessions.current(tenant, "s")

    await turn(other.sessions, tenant, "s", messages[:6])  # another worker saves past it
    await until(lambda: not mine.sessions.trusted(table), "the other writer's save is heard")
    mine.sessions.shared = True  # (as after a lost race) `current` now asks, and the copy is dropped
    assert not await mine.sessions.current(tenant, "s")
    fresh = await mine.sessions.load(tenant, "s", "proj")
    assert fresh.version == 2
    assert mine.sessions.trusted(fresh)


async def test_a_table_held_from_before_a_resubscription_is_not_trusted(
    workers: Callable[[], Awaitable[Worker]], redis_url: str, tenant: str
) -> None:
    mine = await workers()
    table = await turn(mine.sessions, tenant, "s", conversation(2))
    await until(lambda: mine.sessions.trusted(table), "its own save is heard")
    epoch = mine.feed.epoch
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await admin.client_kill_filter(_type="pubsub")  # saves may be missed until it resubscribes
    finally:
        await admin.aclose()
    await until(lambda: mine.feed.epoch > epoch and mine.feed.live, "the feed resubscribes")
    assert not mine.sessions.trusted(table)  # it could have missed a save meanwhile
    reloaded = await mine.sessions.load(tenant, "s-new", "proj")
    assert mine.sessions.trusted(reloaded)  # read from the store since: trusted


async def test_without_a_live_feed_nothing_is_trusted(store: RedisStore, tenant: str) -> None:
    state = SessionState(store)  # no feed at all (a store the gateway cannot subscribe to)
    table = await turn(state, tenant, "s", conversation(1))
    assert not state.trusted(table)
    assert not state.trusted(PageTable(tenant, "never", "proj"))


async def test_the_feed_works_on_a_cluster(redis_cluster_url: str, tenant: str) -> None:
    async with Worker(redis_cluster_url) as mine, Worker(redis_cluster_url) as other:
        messages = conversation(3)
        table = await turn(mine.sessions, tenant, "s", messages[:4])
        await until(lambda: mine.sessions.trusted(table), "its own save is heard on the cluster")
        await turn(other.sessions, tenant, "s", messages[:6])
        await until(lambda: not mine.sessions.trusted(table), "the other node's save is heard")


async def test_a_redis_user_without_the_channel_still_saves_and_trusts_nothing(redis_url: str, tenant: str) -> None:
    """Redis 7 gives a new ACL user no channel by default: its saves must not fail on the
    announcement, and its feed, refused, vouches for nothing (the version is read instead)."""
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    user, password = f"u{tenant}", "pw-" + tenant
    await admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", "~*", "+@all", "resetchannels")
    host_port = redis_url.removeprefix("redis://").split("/")[0]
    try:
        mine = Worker(f"redis://{user}:{password}@{host_port}/0")
        mine.feed.start()
        try:
            with anyio.fail_after(WAIT_S):  # refused: the feed gives up instead of asking forever
                while mine.feed.running:
                    await anyio.sleep(0.005)
            assert not mine.feed.live
            table = await turn(mine.sessions, tenant, "s", conversation(2))
            assert table.version == 1  # saved, announcement refused
            assert not mine.sessions.trusted(table)
        finally:
            await mine.__aexit__()
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
