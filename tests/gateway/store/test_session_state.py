from __future__ import annotations

import json
import os
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from bench.traces import load_traces, traces_dir
from gateway.store import session_state
from gateway.store.board import VersionBoard
from gateway.store.session_state import Journal, SessionState
from gateway.store.store import (
    CorruptData,
    Keys,
    RedisStore,
    StoreUnavailable,
    VersionConflict,
    body_digest,
    session_scope,
)
from gateway.store.tables import dump_table
from gateway.upstream.tokens import Tokenizers, prepare_offline
from gateway.wire.chat_json import parse_messages, to_wire
from policies.budget import TokenBudget, resolve_budget
from policies.pages import PageType
from policies.pagetable import PageTable
from policies.tenant import Budget, TenantPolicy
from policies.tokens import CharCounter
from policies.transcript import Message
from policies.turn import TurnPlan, plan_turn

pytestmark = pytest.mark.anyio

BUDGET = TokenBudget(cap=100_000, usable=100_000, hard_limit=100_000, source="config")


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


async def test_a_table_another_writer_saved_past_has_moved(store: RedisStore, redis_url: str, tenant: str) -> None:
    mine, theirs = SessionState(store), SessionState(RedisStore.from_url(redis_url))
    try:
        assert not await mine.moved(await mine.load(tenant, "s", "proj"))  # no table stored, none loaded
        table = await turn(mine, tenant, "s", conversation(1))
        assert not await mine.moved(table)
        await turn(theirs, tenant, "s", conversation(3))  # another replica moves the table on
        assert await mine.current(tenant, "s")  # no other writer seen yet: the cached copy is trusted
        assert await mine.moved(table)  # but asked, the store says it is stale
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


# -- the journal: a commit writes what the turn changed ----------------------------------


async def journal_length(redis_url: str, tenant: str, session: str) -> int:
    async with aioredis.Redis.from_url(redis_url) as raw:
        return int(await raw.llen(Keys.of(tenant, session_scope(session)).journal))


async def test_a_turn_after_the_first_is_appended_as_a_delta(store: RedisStore, redis_url: str, tenant: str) -> None:
    state = SessionState(store)
    first = await turn(state, tenant, "s", conversation(1))
    assert await journal_length(redis_url, tenant, "s") == 0  # a new table is written whole
    second = await turn(state, tenant, "s", conversation(2))
    assert second is first and second.version == 2
    assert await journal_length(redis_url, tenant, "s") == 1
    loaded = await SessionState(store).load(tenant, "s", "proj")
    assert dump_table(loaded) == dump_table(second) and loaded.version == 2
    assert isinstance(loaded.journal, Journal) and loaded.journal.records == 1


async def test_a_long_journal_is_compacted_into_a_snapshot(
    store: RedisStore, redis_url: str, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_state, "COMPACT_EVERY", 3)
    state = SessionState(store)
    lengths = []
    for n in range(10, 17):  # small turns on a larger table: only the count bounds the journal
        table = await turn(state, tenant, "s", conversation(n))
        lengths.append(await journal_length(redis_url, tenant, "s"))
        loaded = await SessionState(store).load(tenant, "s", "proj")
        assert dump_table(loaded) == dump_table(table) and loaded.version == n - 9
    assert lengths == [0, 1, 2, 3, 0, 1, 2]


async def test_a_journal_never_outgrows_its_snapshot(store: RedisStore, redis_url: str, tenant: str) -> None:
    state = SessionState(store)
    await turn(state, tenant, "s", conversation(1))
    for n in range(2, 12):  # each turn adds a big tool result: its delta is large next to a small table
        table = await turn(state, tenant, "s", conversation(n))
        journal = table.journal
        assert isinstance(journal, Journal) and journal.size <= journal.base
        assert journal.records == await journal_length(redis_url, tenant, "s")
    assert journal.records < n - 1  # some turns were compacted


async def test_a_failed_commit_keeps_the_changes_for_the_reload_to_redo(store: RedisStore, tenant: str) -> None:
    state = SessionState(store)
    await turn(state, tenant, "s", conversation(1))
    table = await state.load(tenant, "s", "proj")
    result = plan(table, conversation(2))
    pending = (table.changes.dirty_from, set(table.changes.pages))
    dead = SessionState(RedisStore.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5))
    with pytest.raises(StoreUnavailable):
        await dead.commit(table, result.ingest.new_pages)
    await dead.store.aclose()
    assert table.version == 1 and (table.changes.dirty_from, table.changes.pages) == pending
    await state.commit(table, result.ingest.new_pages)  # the same changes, now saved
    loaded = await SessionState(store).load(tenant, "s", "proj")
    assert loaded.version == 2 and dump_table(loaded) == dump_table(table)


async def test_a_rewritten_transcript_is_stored_as_a_delta_too(store: RedisStore, redis_url: str, tenant: str) -> None:
    state = SessionState(store)
    await turn(state, tenant, "s", conversation(3))
    rewritten = conversation(1, opening="Start over: read the README.")
    table = await state.load(tenant, "s", "proj")
    result = plan(table, rewritten)
    assert result.ingest.kind == "rewrite"
    await state.commit(table, result.ingest.new_pages)
    assert await journal_length(redis_url, tenant, "s") == 1
    loaded = await SessionState(store).load(tenant, "s", "proj")
    assert dump_table(loaded) == dump_table(table) and len(loaded.order) == len(rewritten)


async def test_an_evicted_journal_reads_as_corrupt_not_as_an_older_table(
    store: RedisStore, redis_url: str, tenant: str
) -> None:
    state = SessionState(store)
    await turn(state, tenant, "s", conversation(1))
    await turn(state, tenant, "s", conversation(2))
    async with aioredis.Redis.from_url(redis_url) as raw:
        await raw.delete(Keys.of(tenant, session_scope("s")).journal)
    with pytest.raises(CorruptData):
        await SessionState(store).load(tenant, "s", "proj")


TRACES = load_traces(traces_dir()) if traces_dir().is_dir() else []


def content(table: PageTable) -> dict[str, Any]:
    """The stored form of a table but for the session id it is stored under."""
    data: dict[str, Any] = json.loads(dump_table(table))
    del data["session"]
    return data


@pytest.mark.skipif(not TRACES, reason="shared/traces/real not found (set CLAWVM_TRACES)")
@pytest.mark.parametrize(("budget", "compact_every"), [(4000, 64), (16000, 3)])
async def test_reloading_through_the_store_every_turn_changes_nothing(
    store: RedisStore, tenant: str, budget: int, compact_every: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like tests/e2e/test_replica_determinism.py, through Redis: one replica keeps its table in
    memory and commits every turn (snapshots and deltas from its own bookkeeping); another
    loads the table from the store every turn (a cache miss each time) and commits it. Both
    hold the same table, field for field, and assemble the same messages."""
    env: dict[str, str] = {}
    prepare_offline(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(session_state, "COMPACT_EVERY", compact_every)
    counter = Tokenizers.from_env(os.environ).for_model("gpt-4o")
    policy, tokens = TenantPolicy(), resolve_budget(Budget(max_prompt_tokens=budget), 128000, "model_map", 0)
    writer, journals = SessionState(store), set()
    for trace in TRACES:
        for number, raw in enumerate(trace.turns()):
            messages = parse_messages(raw)
            kept = await writer.load(tenant, trace.name, "proj")
            moving = await SessionState(store).load(tenant, trace.name + ".r", "proj")
            assert content(moving) == content(kept), f"{trace.name} turn {number}"
            journals.add(moving.journal.records if isinstance(moving.journal, Journal) else -1)
            planned = plan_turn(kept, messages, policy, counter, tokens)
            other = plan_turn(moving, messages, policy, counter, tokens)
            assert json.dumps(to_wire(planned.messages)) == json.dumps(to_wire(other.messages)), (
                f"{trace.name} turn {number}"
            )
            await writer.commit(kept, planned.ingest.new_pages)
            await SessionState(store).commit(moving, other.ingest.new_pages)
    assert 0 in journals and max(journals) > 1  # both snapshots and journals were read back


async def test_read_peeks_at_the_cache_and_leaves_the_table_there(store: RedisStore, tenant: str) -> None:
    state = SessionState(store)
    committed = await turn(state, tenant, "s", conversation(1))
    assert await state.read(tenant, "s") is committed
    assert await state.load(tenant, "s", "proj") is committed  # still cached for the next turn


async def test_read_decodes_from_the_store_and_knows_unknown_sessions(store: RedisStore, tenant: str) -> None:
    committed = await turn(SessionState(store), tenant, "s", conversation(2))
    other = SessionState(store)
    read = await other.read(tenant, "s")
    assert read is not None and dump_table(read) == dump_table(committed) and read.version == committed.version
    assert await other.read(tenant, "never") is None


async def _hgets(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


async def test_a_version_the_board_confirms_is_not_asked_of_the_store(
    store: RedisStore, redis_url: str, tenant: str
) -> None:
    """Two workers of one gateway share a versions board: a cached table the board confirms is
    current without a round trip; one another worker saved past is found moved (the board
    disagrees, so the store is asked)."""
    board = VersionBoard.private()
    mine, theirs = SessionState(store, board=board), SessionState(RedisStore.from_url(redis_url), board=board)
    try:
        table = await turn(mine, tenant, "s", conversation(1))
        assert board.get(tenant, "s") == table.version == 1
        before = await _hgets(store.client)
        assert not await mine.moved(table)
        assert await _hgets(store.client) == before  # no round trip
        await turn(theirs, tenant, "s", conversation(3))  # another worker moves the table on
        assert board.get(tenant, "s") == 2
        before = await _hgets(store.client)
        assert await mine.moved(table)
        assert await _hgets(store.client) == before + 1  # asked, since the board disagrees
        assert mine.stale(tenant, "s")  # the board says so: the copy is dropped before planning
        assert not mine.stale(tenant, "s")  # (once)
        loaded = await mine.load(tenant, "s", "proj")  # the stored table is read instead
        assert loaded is not table and loaded.version == 2
        assert not await mine.moved(loaded) and await _hgets(store.client) == before + 1
    finally:
        await theirs.store.aclose()
        board.close()


async def test_a_board_the_store_contradicts_costs_one_replan_never_the_session(store: RedisStore, tenant: str) -> None:
    """The store lost the session's writes (a restart without them, say) while the board still
    holds their version: the table the board confirms loses its save once, and the session goes
    on from the stored state, recorded on the board again."""
    board = VersionBoard.private()
    mine = SessionState(store, board=board)
    try:
        table = await turn(mine, tenant, "s", conversation(1))
        keys = Keys.of(tenant, session_scope("s"))
        await store.client.delete(keys.table, keys.journal)  # the writes the store lost
        cached = await mine.load(tenant, "s", "proj")
        assert not await mine.moved(cached)  # the board confirms it: planned on
        result = plan(cached, conversation(2))
        with pytest.raises(VersionConflict):  # the optimistic save still guards the store
            await mine.commit(cached, result.ingest.new_pages)
        mine.forget(tenant, "s")
        fresh = await mine.load(tenant, "s", "proj")
        assert fresh.version == 0 and not await mine.moved(fresh)  # the store, not the board, says so
        await mine.commit(fresh, plan(fresh, conversation(2)).ingest.new_pages)
        assert fresh.version == board.get(tenant, "s") == 1
        assert table.version == 1
    finally:
        board.close()
