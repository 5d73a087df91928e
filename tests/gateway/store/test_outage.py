"""The outage queue over a real Redis server that the tests kill (SIGKILL) and restart on the
same port and data directory: deferred turns commit in order when it returns, nothing committed
before the outage changes, and newer stored state is never overwritten."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.api.errors import ServiceUnavailable
from gateway.observability.audit import AuditLog
from gateway.observability.metrics import Metrics
from gateway.store.embedded import EmbeddedRedis
from gateway.store.journal import WritebackJournal
from gateway.store.memory import MemoryService
from gateway.store.outage import DEFAULT_BYTES, STORE_UNAVAILABLE, Drainer, OutageQueue, store_event, turn_bytes
from gateway.store.session_state import SessionState
from gateway.store.store import RedisStore, StoreUnavailable, session_scope
from policies.budget import TokenBudget
from policies.pages import Page, PageType
from policies.pagetable import PageTable
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.turn import plan_turn
from tests.gateway.store.test_session_state import conversation

pytestmark = pytest.mark.anyio

BUDGET = TokenBudget(cap=100_000, usable=100_000, hard_limit=100_000, source="config")
WAIT_S = 20.0  # a generous bound on "eventually": never a timing assertion


@pytest.fixture
async def store(killable: EmbeddedRedis) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(killable.url, socket_connect_timeout=1.0, socket_timeout=2.0)
    yield store
    await store.aclose()


@dataclass
class Parts:
    store: RedisStore
    sessions: SessionState
    memory: MemoryService
    audit: AuditLog
    queue: OutageQueue


def parts(store: RedisStore, capacity: int = 100, byte_capacity: int = DEFAULT_BYTES) -> Parts:
    sessions, audit = SessionState(store), AuditLog(store.client)
    memory = MemoryService(WritebackJournal(store.client), store)
    queue = OutageQueue(sessions, memory, audit, Metrics(), capacity, byte_capacity)
    return Parts(store, sessions, memory, audit, queue)


async def planned(p: Parts, table: PageTable, turns: int) -> list[Page]:
    """Plan one turn on `table`; returns its new pages (nothing is written)."""
    return plan_turn(
        table, conversation(turns), TenantPolicy(name=table.tenant), CharCounter(), BUDGET
    ).ingest.new_pages


async def committed_turn(p: Parts, tenant: str, session: str, turns: int) -> PageTable:
    """A turn as the pipeline makes it with the store up: write-back, then the table's save."""
    table = await p.sessions.load(tenant, session, "proj")
    new = await planned(p, table, turns)
    await p.memory.write_back(table, new)
    await p.sessions.commit(table, new)
    return table


async def deferred_turn(p: Parts, table: PageTable, turns: int) -> list[Page]:
    new = await planned(p, table, turns)
    p.queue.defer(table, new, new, ([], [store_event("commit: test", table.turn)]))
    return new


async def stored(store: RedisStore, tenant: str, session: str) -> PageTable:
    return await SessionState(store).load(tenant, session, "proj")


def evidence(table: PageTable) -> set[str]:
    return {p for p, page in table.pages.items() if page.type is PageType.EVIDENCE}


async def test_deferred_turns_commit_in_order_when_the_store_returns(
    killable: EmbeddedRedis, store: RedisStore, tenant: str
) -> None:
    p = parts(store)
    table = await committed_turn(p, tenant, "s", 1)
    before = await stored(store, tenant, "s")
    killable.kill()
    with pytest.raises(StoreUnavailable):
        await p.sessions.commit(table, await deferred_turn(p, table, 2))
    await deferred_turn(p, table, 3)
    assert p.queue.queued == 2 and p.queue.table(tenant, "s") is table
    with pytest.raises(StoreUnavailable):
        await p.queue.drain()
    assert p.queue.queued == 2  # nothing dropped by a failed attempt

    killable.start()
    assert await p.queue.drain() == 2
    assert p.queue.queued == 0 and not p.queue.holds(tenant, "s")
    after = await stored(store, tenant, "s")
    assert after.order == table.order and after.pages.keys() == table.pages.keys()
    assert after.order[: len(before.order)] == before.order  # what was committed before is unchanged
    assert all(after.pages[i] == page for i, page in before.pages.items())
    uninterrupted = await committed_turn(p, tenant, "u", 1)
    for turns in (2, 3):
        await committed_turn(p, tenant, "u", turns)
        uninterrupted = await stored(store, tenant, "u")
    assert len(after.order) == len(uninterrupted.order) and len(evidence(after)) == len(evidence(uninterrupted)) == 3
    memory = await WritebackJournal(store.client).load(tenant, session_scope("s"))
    assert evidence(table) <= {e.page_id for e in memory.entries.values()}  # every turn's write-back landed
    events = await p.audit.events(tenant, "s")
    assert [e["event"] for e in events] == [STORE_UNAVAILABLE, STORE_UNAVAILABLE]


async def test_a_table_moved_on_by_another_writer_is_never_overwritten(
    killable: EmbeddedRedis, store: RedisStore, tenant: str
) -> None:
    p = parts(store)
    table = await committed_turn(p, tenant, "s", 1)
    new = await deferred_turn(p, table, 2)  # planned at v1, deferred
    rival = await committed_turn(parts(store), tenant, "s", 3)  # another replica moves the table to v2
    assert await p.queue.drain() == 1
    after = await stored(store, tenant, "s")
    assert after.version == rival.version == 2 and after.order == rival.order  # the newer state stands
    held = await store.get_pages(tenant, session_scope("s"), [page.id for page in new])
    assert held.keys() == {page.id for page in new}  # the deferred pages were stored all the same
    assert (await p.sessions.read(tenant, "s")) is not table  # the stale copy was dropped: next turn reloads


async def test_a_fresh_table_built_during_the_outage_does_not_replace_the_stored_one(
    killable: EmbeddedRedis, store: RedisStore, tenant: str
) -> None:
    p = parts(store)
    await committed_turn(p, tenant, "s", 2)
    before = await stored(store, tenant, "s")
    fresh = PageTable(tenant=tenant, session="s", project="proj")  # what the pipeline plans on when load fails
    await deferred_turn(p, fresh, 3)
    await p.queue.drain()
    after = await stored(store, tenant, "s")
    assert after.version == before.version and after.order == before.order


async def test_the_drain_task_commits_when_the_store_comes_back(
    killable: EmbeddedRedis, store: RedisStore, tenant: str
) -> None:
    p = parts(store)
    table = await committed_turn(p, tenant, "s", 1)
    killable.kill()
    drainer = Drainer(p.queue, first=0.01, most=0.05)
    drainer.start()
    try:
        await deferred_turn(p, table, 2)
        await asyncio.sleep(0.1)  # let it fail a few times against the dead server
        assert p.queue.queued == 1
        killable.start()
        deadline = time.monotonic() + WAIT_S
        while p.queue.queued and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert p.queue.queued == 0
    finally:
        await drainer.stop()
    assert (await stored(store, tenant, "s")).order == table.order


async def test_stop_flushes_what_is_deferred_when_the_store_answers(
    killable: EmbeddedRedis, store: RedisStore, tenant: str
) -> None:
    p = parts(store)
    table = await committed_turn(p, tenant, "s", 1)
    await deferred_turn(p, table, 2)
    await Drainer(p.queue).stop()  # never started: stop alone flushes
    assert p.queue.queued == 0 and (await stored(store, tenant, "s")).order == table.order


async def test_stop_says_what_is_lost_when_the_store_is_still_down(
    killable: EmbeddedRedis, store: RedisStore, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    p = parts(store)
    table = await committed_turn(p, tenant, "s", 1)
    killable.kill()
    await deferred_turn(p, table, 2)
    with caplog.at_level(logging.ERROR, logger="clawvm.gateway"):
        await Drainer(p.queue).stop(timeout=2.0)
    assert "1 deferred turns not committed" in caplog.text


async def test_a_full_queue_refuses_and_keeps_what_it_holds(store: RedisStore, tenant: str) -> None:
    p = parts(store, capacity=2)
    table = PageTable(tenant=tenant, session="s", project="proj")
    await deferred_turn(p, table, 1)
    p.queue.admit()
    await deferred_turn(p, table, 2)
    assert p.queue.full
    with pytest.raises(Exception, match="store.outage_queue") as caught:
        p.queue.admit()
    assert getattr(caught.value, "code", None) == "store_unavailable"
    assert await p.queue.drain() == 2 and not p.queue.full
    assert (await stored(store, tenant, "s")).order == table.order


async def test_the_queue_counts_a_deferred_turns_text_and_each_page_once(store: RedisStore, tenant: str) -> None:
    p = parts(store)
    table = PageTable(tenant=tenant, session="s", project="proj")
    new = await deferred_turn(p, table, 1)
    texts = sum(len(shown.text.encode()) for page in new for shown in vars_of(page))
    first = p.queue.queued_bytes
    assert first >= texts > 0  # every representation's text, and more (ids, tool calls, records)
    p.queue.defer(table, new, new, ([], []))  # the same pages again: nothing more to hold
    assert p.queue.queued_bytes == first
    assert turn_bytes(new, ([], []), set()) > turn_bytes(new, ([], []), {p.id for p in new}) == 0
    assert await p.queue.drain() == 2 and p.queue.queued_bytes == 0


def vars_of(page: Page) -> tuple:
    reprs = page.reprs
    return (reprs.full, reprs.compressed, reprs.structured, reprs.pointer)


async def test_a_queue_at_its_byte_bound_refuses_new_turns_and_keeps_what_it_holds(
    store: RedisStore, tenant: str
) -> None:
    probe = parts(store)
    await deferred_turn(probe, PageTable(tenant=tenant, session="probe", project="proj"), 1)
    first = probe.queue.queued_bytes
    p = parts(store, capacity=100, byte_capacity=3 * first)
    table = PageTable(tenant=tenant, session="s", project="proj")
    turns = 0
    while not p.queue.full:
        p.queue.admit()
        turns += 1
        await deferred_turn(p, table, turns)
    assert 2 <= turns < 100  # the byte bound, not the turn bound, filled it
    assert p.queue.queued_bytes <= 3 * first + first
    with pytest.raises(ServiceUnavailable, match="store.outage_queue_bytes") as caught:
        p.queue.admit()
    assert caught.value.code == "store_unavailable" and caught.value.status_code == 503
    assert p.queue.queued == turns  # nothing dropped
    assert await p.queue.drain() == turns and not p.queue.full and p.queue.queued_bytes == 0
    p.queue.admit()
    assert (await stored(store, tenant, "s")).order == table.order
