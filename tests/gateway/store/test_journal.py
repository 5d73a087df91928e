"""The write-back journal on a real Redis server: round trips, idempotent retries, version
conflicts, journaled rejections, corrupt data, and atomicity when the connection or the server
dies in the middle of a commit."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.store.embedded import EmbeddedRedis, free_port
from gateway.store.journal import APPLIED_KEEP, WritebackJournal, dump_entry, pack_record
from gateway.store.store import (
    CorruptData,
    Keys,
    RedisStore,
    StoreError,
    StoreUnavailable,
    VersionConflict,
    session_scope,
)
from policies.pages import PageType, Scope
from policies.writeback import Context, Memory, Op, Outcome, Reason, Update, apply, batch_id

pytestmark = pytest.mark.anyio

NO_RETRY = Retry(NoBackoff(), 0)
S1 = session_scope("wb-1")
PLAN_PAGE = "p:fff000000001"


@pytest.fixture
def journal(store: RedisStore) -> WritebackJournal:
    return WritebackJournal(store.client)


def evidence(batch: int, index: int, value: str = "") -> Update:
    page_id = f"p:{batch:06x}{index:06x}"
    text = value or f"{page_id} sha256:{'0' * 64}"
    return Update(page_id, page_id, PageType.EVIDENCE, "body", Op.APPEND, text, Scope.SESSION, "tool", f"call_{index}")


def plan(value: str, base: int | None) -> Update:
    return Update("plan", PLAN_PAGE, PageType.PLAN, "body", Op.SET, value, Scope.SESSION, "assistant", PLAN_PAGE, base)


def batch_of(batch: int, size: int) -> list[Update]:
    return [evidence(batch, i) for i in range(size)]


def context() -> Context:
    refs = {PLAN_PAGE} | {f"call_{i}" for i in range(1000)}
    return Context(Scope.SESSION, frozenset(Scope), frozenset(refs))


async def commit(journal: WritebackJournal, tenant: str, updates: Sequence[Update]) -> tuple[Outcome, str, int]:
    """Load, apply and commit one batch, as the gateway does."""
    memory = await journal.load(tenant, S1)
    outcome = apply(memory, updates, context())
    bid = batch_id(tenant, S1, updates)
    return outcome, bid, await journal.commit(tenant, S1, outcome, updates, bid, memory.version)


async def records_per_batch(client: aioredis.Redis, tenant: str) -> Counter[str]:
    rows = await client.xrange(Keys.of(tenant, S1).writeback)
    return Counter(fields["batch"] for _, fields in rows)


# ---------------------------------------------------------------- round trips


async def test_empty_scope_loads_as_empty_memory(journal: WritebackJournal, tenant: str) -> None:
    assert await journal.load(tenant, S1) == Memory.empty()
    assert await journal.read(tenant, S1) == []


async def test_commit_then_load_round_trip(journal: WritebackJournal, tenant: str) -> None:
    outcome, _, version = await commit(journal, tenant, [plan("plan A", 0), evidence(1, 0)])
    assert version == 1 and outcome.memory.version == 1
    assert await journal.load(tenant, S1) == outcome.memory
    outcome, _, version = await commit(journal, tenant, [plan("plan B \ud83d lone surrogate", 1)])
    loaded = await journal.load(tenant, S1)
    assert version == 2 and loaded == outcome.memory
    assert loaded.entries["plan"].history == ("plan A",) and loaded.entries["plan"].version == 2
    assert list(loaded.entries) == sorted(loaded.entries)


async def test_project_scope_and_removal(journal: WritebackJournal, tenant: str) -> None:
    project = "project:acme"
    rule = Update(
        "p:eee000000001",
        "p:eee000000001",
        PageType.CONSTRAINT,
        "body",
        Op.APPEND,
        "rule: x",
        Scope.PROJECT,
        "user",
        "p:eee000000002",
    )
    ctx = Context(Scope.PROJECT, frozenset(Scope), frozenset({"p:eee000000002"}))
    added = apply(Memory.empty(), [rule], ctx)
    assert await journal.commit(tenant, project, added, [rule], batch_id(tenant, project, [rule]), 0) == 1
    removal = Update(
        rule.slot, rule.page_id, rule.page_type, "body", Op.REMOVE, "", Scope.PROJECT, "user", rule.source_ref
    )
    removed = apply(added.memory, [removal], ctx)
    assert await journal.commit(tenant, project, removed, [removal], batch_id(tenant, project, [removal]), 1) == 2
    assert await journal.load(tenant, project) == Memory({}, 2)


# ---------------------------------------------------------------- idempotence and conflicts


async def test_retry_of_a_committed_batch_writes_nothing(
    journal: WritebackJournal, store: RedisStore, tenant: str
) -> None:
    updates = [plan("plan A", 0), *batch_of(1, 3)]
    outcome, bid, version = await commit(journal, tenant, updates)
    stream = Keys.of(tenant, S1).writeback
    length = await store.client.xlen(stream)
    assert length == 4
    assert await journal.commit(tenant, S1, outcome, updates, bid, 0) == version  # the same call again
    fresh = await journal.load(tenant, S1)  # a retry that reloaded first
    again = apply(fresh, updates, context())
    assert await journal.commit(tenant, S1, again, updates, bid, fresh.version) == version
    assert await store.client.xlen(stream) == length
    assert await journal.load(tenant, S1) == outcome.memory


async def test_the_same_batch_on_a_later_base_is_not_a_retry(journal: WritebackJournal, tenant: str) -> None:
    """A batch id seen at another base version is new work: a preference stated again in a
    later session commits again, since the memory moved in between."""
    project = "project:acme"
    ctx = Context(Scope.PROJECT, frozenset(Scope), frozenset({"p:ddd000000000"}))

    def pref(value: str) -> Update:
        return Update(
            "pref:indentation",
            "p:ddd000000001",
            PageType.PREFERENCE,
            "body",
            Op.MERGE,
            value,
            Scope.PROJECT,
            "user",
            "p:ddd000000000",
        )

    for expected, value in enumerate(["I prefer tabs.", "I prefer spaces.", "I prefer tabs."]):
        memory = await journal.load(tenant, project)
        outcome = apply(memory, [pref(value)], ctx)
        bid = batch_id(tenant, project, [pref(value)])
        assert await journal.commit(tenant, project, outcome, [pref(value)], bid, expected) == expected + 1
    entry = (await journal.load(tenant, project)).entries["pref:indentation"]
    assert (entry.value, entry.history, entry.version) == ("I prefer tabs.", ("I prefer tabs.", "I prefer spaces."), 3)
    assert len(await journal.read(tenant, project)) == 3


async def test_version_conflict(journal: WritebackJournal, store: RedisStore, tenant: str) -> None:
    stale = await journal.load(tenant, S1)
    await commit(journal, tenant, [plan("plan A", 0)])
    updates = [evidence(2, 0)]
    outcome = apply(stale, updates, context())
    with pytest.raises(VersionConflict) as info:
        await journal.commit(tenant, S1, outcome, updates, batch_id(tenant, S1, updates), stale.version)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert await store.client.xlen(Keys.of(tenant, S1).writeback) == 1  # nothing of the lost batch


async def test_outcome_must_match_the_staged_batch(journal: WritebackJournal, tenant: str) -> None:
    updates = [evidence(1, 0)]
    outcome = apply(Memory.empty(), updates, context())
    with pytest.raises(ValueError, match="one commit after"):
        await journal.commit(tenant, S1, outcome, updates, "wb:x", 5)
    with pytest.raises(ValueError, match="not in the outcome"):
        await journal.commit(tenant, S1, outcome, [evidence(1, 1)], "wb:x", 0)


# ---------------------------------------------------------------- the journal


async def test_rejected_updates_are_journaled_with_reasons(journal: WritebackJournal, tenant: str) -> None:
    await commit(journal, tenant, [evidence(1, 0, "ref-1")])
    dangling = Update(
        "p:000001000009", "p:000001000009", PageType.EVIDENCE, "body", Op.APPEND, "r", Scope.SESSION, "tool", "nowhere"
    )
    updates = [evidence(1, 0, "ref-2"), plan("plan", 3), dangling, evidence(1, 1)]
    outcome, bid, version = await commit(journal, tenant, updates)
    assert version == 2
    records = (await journal.read(tenant, S1))[1:]
    assert [(r["slot"], r["status"], r["reason"]) for r in records] == [
        ("p:000001000000", "rejected", str(Reason.DESTRUCTIVE_OP)),
        ("plan", "rejected", str(Reason.STALE_VERSION)),
        ("p:000001000009", "rejected", str(Reason.PROVENANCE_DANGLING)),
        ("p:000001000001", "committed", ""),
    ]
    first = records[0]
    assert first["batch"] == bid and first["op"] == "append" and first["type"] == "evidence"
    assert first["scope"] == "session" and first["source_role"] == "tool" and first["source_ref"] == "call_0"
    assert first["detail"] == "committed evidence slot is immutable" and first["version"] == 2
    assert all(r["id"] > first["id"] for r in records[1:])


async def test_record_values_round_trip_whatever_they_hold(journal: WritebackJournal, tenant: str) -> None:
    """A record travels as one argument, each value after its length: colons, digits, empty
    values, non-ASCII text and lone surrogates come back as they went."""
    odd = "12:3:\u00e9\u4e2d:\ud83d:"
    update = Update(odd, "p:000002000001", PageType.EVIDENCE, "body", Op.APPEND, "v", Scope.SESSION, "", odd)
    _, bid, version = await commit(journal, tenant, [update, evidence(2, 2)])
    records = await journal.read(tenant, S1)
    assert [(r["slot"], r["source_role"], r["source_ref"], r["status"]) for r in records] == [
        (odd, "", odd, "rejected"),
        ("p:000002000002", "tool", "call_2", "committed"),
    ]
    assert records[0]["detail"] and records[0]["batch"] == bid and records[0]["version"] == version == 1


def test_a_record_has_every_field() -> None:
    assert pack_record(["b", "append", "", "evidence", "session", "committed", "", "", "tool", "r", 7]) == (
        b"1:b6:append0:8:evidence7:session9:committed0:0:4:tool1:r1:7"
    )
    with pytest.raises(ValueError, match="11 values"):
        pack_record(["b", "append"])


async def test_a_batch_of_rejections_is_still_journaled(journal: WritebackJournal, tenant: str) -> None:
    await commit(journal, tenant, [plan("plan A", 0)])
    outcome, _, version = await commit(journal, tenant, [plan("plan B", 0)])
    assert version == 1 and not outcome.committed
    records = await journal.read(tenant, S1)
    assert [(r["status"], r["reason"], r["version"]) for r in records] == [
        ("committed", "", 1),
        ("rejected", "STALE_VERSION", 1),
    ]
    assert (await journal.load(tenant, S1)).entries["plan"].value == "plan A"


async def test_read_pages_after_a_stream_id(journal: WritebackJournal, tenant: str) -> None:
    for n in range(3):
        await commit(journal, tenant, batch_of(n, 2))
    first = await journal.read(tenant, S1, count=4)
    rest = await journal.read(tenant, S1, after=first[-1]["id"])
    assert len(first) == 4 and len(rest) == 2
    assert [r["slot"] for r in first + rest] == [f"p:{n:06x}{i:06x}" for n in range(3) for i in range(2)]
    assert await journal.read(tenant, S1, after=rest[-1]["id"]) == []


async def test_applied_set_is_capped(journal: WritebackJournal, store: RedisStore, tenant: str) -> None:
    applied = Keys.of(tenant, S1).applied
    await store.client.zadd(applied, {f"wb:old{n}": -n for n in range(APPLIED_KEEP + 5)})
    await commit(journal, tenant, [plan("plan A", 0)])
    assert await store.client.zcard(applied) == APPLIED_KEEP
    assert await store.client.zscore(applied, batch_id(tenant, S1, [plan("plan A", 0)])) == 1


# ---------------------------------------------------------------- errors


async def test_corrupt_entries_raise_corrupt_data(journal: WritebackJournal, store: RedisStore, tenant: str) -> None:
    outcome, _, _ = await commit(journal, tenant, [plan("plan A", 0)])
    key = Keys.of(tenant, S1).memory
    good = dump_entry(outcome.memory.entries["plan"])
    for bad in ("{not json", "[]", good.replace('"version":1', '"version":"1"'), good.replace('"plan"', '"nope"', 1)):
        await store.client.hset(key, "plan", bad)
        with pytest.raises(CorruptData):
            await journal.load(tenant, S1)
    await store.client.hset(key, "plan", good.replace('"slot":"plan"', '"slot":"other"'))
    with pytest.raises(CorruptData, match="holds slot"):
        await journal.load(tenant, S1)


async def test_corrupt_version_raises_corrupt_data(journal: WritebackJournal, store: RedisStore, tenant: str) -> None:
    await store.client.hset(Keys.of(tenant, S1).memory, "v", "seven")
    with pytest.raises(CorruptData):
        await journal.load(tenant, S1)
    updates = [plan("plan A", 0)]
    outcome = apply(Memory.empty(), updates, context())
    with pytest.raises(CorruptData, match="not a number"):
        await journal.commit(tenant, S1, outcome, updates, batch_id(tenant, S1, updates), 0)


async def test_wrong_key_type_is_a_store_error(journal: WritebackJournal, store: RedisStore, tenant: str) -> None:
    await store.client.set(Keys.of(tenant, S1).memory, "a string, not a hash")
    with pytest.raises(StoreError) as info:
        await journal.load(tenant, S1)
    assert not isinstance(info.value, StoreUnavailable)


async def test_dead_server_raises_store_unavailable(tenant: str) -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, retry=NO_RETRY)
    journal = WritebackJournal(store.client)
    try:
        with pytest.raises(StoreUnavailable):
            await journal.load(tenant, S1)
        with pytest.raises(StoreUnavailable):
            await commit(journal, tenant, [plan("x", 0)])
        with pytest.raises(StoreUnavailable):
            await journal.read(tenant, S1)
    finally:
        await store.aclose()


# ---------------------------------------------------------------- atomicity under failure


def assert_whole_or_none(counts: Counter[str], sizes: dict[str, int]) -> None:
    for bid, size in sizes.items():
        assert counts.get(bid, 0) in (0, size), f"batch {bid}: {counts.get(bid, 0)} of {size} records"


async def assert_consistent(client: aioredis.Redis, tenant: str, sizes: dict[str, int]) -> Counter[str]:
    """Every batch whole or absent; the memory, the journal and the applied set agree."""
    keys = Keys.of(tenant, S1)
    counts = await records_per_batch(client, tenant)
    assert_whole_or_none(counts, sizes)
    applied = dict(await client.zrange(keys.applied, 0, -1, withscores=True))
    assert set(applied) == set(counts)
    version = int(await client.hget(keys.memory, "v") or 0)
    assert sorted(applied.values()) == list(range(1, version + 1))  # each batch made one version
    assert await client.hlen(keys.memory) == (sum(sizes[b] for b in counts) + (1 if version else 0))
    return counts


async def test_killing_the_connection_mid_commit_leaves_whole_batches(redis_url: str, tenant: str) -> None:
    """A second client kills the journal's connection while each commit is on the wire (a
    batch of about 1 MB, which the server reads in pieces): the batch lands whole or not at
    all. Even batches are retried with the same id (which must not write twice), odd ones
    are abandoned."""
    name = f"wbkill-{tenant}"
    store = RedisStore.from_url(redis_url, client_name=name, retry=NO_RETRY)
    killer = aioredis.Redis.from_url(redis_url, decode_responses=True)
    journal = WritebackJournal(store.client)
    sizes: dict[str, int] = {}
    acknowledged: list[str] = []
    interrupted: list[str] = []
    send, receive = anyio.create_memory_object_stream[int](16)

    async def kill_loop() -> None:
        async with receive:
            async for n in receive:
                for _ in range(n % 3):
                    await anyio.sleep(0)
                for client in await killer.client_list():
                    if client.get("name") == name:
                        await killer.client_kill_filter(_id=client["id"])

    async def attempt(n: int, updates: list[Update]) -> bool:
        try:
            memory = await journal.load(tenant, S1)
        except StoreUnavailable:
            return False  # killed between commits: nothing was sent
        bid = batch_id(tenant, S1, updates)
        await send.send(n)
        try:
            await journal.commit(tenant, S1, apply(memory, updates, context()), updates, bid, memory.version)
        except StoreUnavailable:
            interrupted.append(bid)
            return False
        acknowledged.append(bid)
        return True

    async def write_loop() -> None:
        async with send:
            for n in range(300):
                updates = [evidence(n, i, f"{i:04d}" + "x" * 10_000) for i in range(100)]
                sizes[batch_id(tenant, S1, updates)] = len(updates)
                for _ in range(1 if n % 2 else 50):
                    if await attempt(n, updates):
                        break
                if len(interrupted) >= 6 and n >= 20:
                    return

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_loop)
            tg.start_soon(write_loop)
        assert interrupted
        counts = await assert_consistent(killer, tenant, sizes)
        assert all(counts[bid] == sizes[bid] for bid in acknowledged)
        assert (await WritebackJournal(killer).load(tenant, S1)).version == len(counts)
    finally:
        await killer.aclose()
        await store.aclose()


async def wait_for_aof_rewrite(client: aioredis.Redis) -> None:
    """BGREWRITEAOF and wait until the rewritten, fsynced AOF is in place."""
    await client.bgrewriteaof()
    while True:
        info = await client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        await anyio.sleep(0.01)


async def test_sigkill_of_the_server_leaves_whole_batches(tmp_path: Path, tenant: str) -> None:
    """SIGKILL redis-server while commits run, restart it on the same AOF: every batch is whole
    or absent. The embedded server fsyncs every second (`appendfsync everysec`), so batches
    acknowledged in the last second may be gone after a crash of the machine; batches made
    durable by an AOF rewrite before the kill must survive."""
    data = tmp_path / "redis"
    server = EmbeddedRedis(data)
    sizes: dict[str, int] = {}
    durable: list[str] = []
    try:
        store = RedisStore.from_url(server.start(), retry=NO_RETRY)
        journal = WritebackJournal(store.client)
        pid = int((await store.client.info("server"))["process_id"])
        for n in range(3):
            updates = batch_of(n, 50)
            sizes[batch_id(tenant, S1, updates)] = len(updates)
            durable.append((await commit(journal, tenant, updates))[1])
        await wait_for_aof_rewrite(store.client)
        await _commit_until_killed(journal, tenant, sizes, pid)
        await store.aclose()
    finally:
        server.stop()
    restarted = EmbeddedRedis(data)
    client = aioredis.Redis.from_url(restarted.start(), decode_responses=True)
    try:
        counts = await assert_consistent(client, tenant, sizes)
        assert all(counts[bid] == sizes[bid] for bid in durable)
        memory = await WritebackJournal(client).load(tenant, S1)
        assert memory.version == len(counts) and len(memory.entries) == sum(sizes[b] for b in counts)
    finally:
        await client.aclose()
        restarted.stop()


async def _commit_until_killed(journal: WritebackJournal, tenant: str, sizes: dict[str, int], pid: int) -> None:
    """Commit batches; after the tenth, SIGKILL the server while the next ones are in flight."""
    killed = anyio.Event()

    async def killer() -> None:
        await killed.wait()
        os.kill(pid, signal.SIGKILL)

    async def writer() -> None:
        for n in range(3, 10_000):
            updates = batch_of(n, 200)
            sizes[batch_id(tenant, S1, updates)] = len(updates)
            if n == 12:
                killed.set()
            try:
                await commit(journal, tenant, updates)
            except StoreUnavailable:
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(killer)
        tg.start_soon(writer)
