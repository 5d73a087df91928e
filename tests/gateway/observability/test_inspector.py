"""gateway.observability.inspector against the real Redis: per-turn records, kept prompts, the sessions index,
each within its `ui.*` retention; and the glimpse a turn takes of its page table."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.observability.inspector import (
    KEYFRAME_EVERY,
    Glimpse,
    InspectorKeys,
    Shot,
    TurnLog,
    glimpse,
    message_sizes,
    recorded,
    reused_prefix,
    sessions_key,
)
from gateway.settings import UISettings
from gateway.store.embedded import free_port
from gateway.store.memory import WriteReport
from gateway.store.store import InvalidKeyError, RedisStore
from policies.assembler import Assembly
from policies.pages import Fidelity
from policies.pagetable import PageTable, checkpoint, set_level
from tests.factories import make_page

pytestmark = pytest.mark.anyio
_ids = itertools.count()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    store = RedisStore.from_url(redis_url)
    yield store.client
    await store.aclose()


def fresh(what: str = "s") -> str:
    return f"insp-{what}-{next(_ids)}"


def seen(turn: int, *, at: int | None = None, levels: dict[str, str] | None = None, events: tuple = ()) -> Glimpse:
    return Glimpse(turn, at or 1_000 + turn, levels or {}, turn == 1, events, 0, 0, False, False)


def shot(turn: int, forwarded: list[dict], **kw: object) -> Shot:
    received = [{"role": "user", "content": f"agent message {i}"} for i in range(turn)]
    return Shot(seen(turn, **kw), received, forwarded, 100 * turn, 50 * turn, 4000)  # type: ignore[arg-type]


def chat(n: int) -> list[dict]:
    return [{"role": "user", "content": f"message {i}"} for i in range(n)]


async def test_a_turns_record_holds_its_tokens_levels_events_and_prompt(client: aioredis.Redis) -> None:
    log, tenant, session = TurnLog(client, UISettings()), fresh("t"), fresh()
    event = {
        "kind": "lifecycle",
        "event": "compaction",
        "harness": "claude_code",
        "evidence": "message 1 ...",
        "turn": 1,
    }
    written = WriteReport(staged=2, rejected={"DESTRUCTIVE_OP": 1})
    turn = Shot(seen(1, levels={"p:1": "F"}, events=(event,)), chat(1), chat(2), 100, 50, 4000, written)
    await log.record(tenant, session, turn)
    [record] = await log.turns(tenant, session)
    assert record["turn"] == 1 and record["event"] == "compaction" and record["events"] == [event]
    assert (record["received"], record["forwarded"], record["budget"]) == (100, 50, 4000)
    assert record["messages"] == {"received": 1, "forwarded": 2}
    assert record["levels"] == {"p:1": "F"} and record["key"] is True
    assert record["writeback"] == {"staged": 2, "committed": [], "rejected": {"DESTRUCTIVE_OP": 1}}
    assert await log.prompt(tenant, session, record["prompt"]) == {"received": chat(1), "forwarded": chat(2)}
    [row] = await log.sessions(tenant, 0, 10)
    assert row["id"] == session and row["turns"] == 1 and row["lifecycle_events"] == 1
    assert (row["tokens_received"], row["tokens_forwarded"], row["last_event"]) == (100, 50, "compaction")


async def test_the_prefix_reused_is_measured_against_the_previous_request(client: aioredis.Redis) -> None:
    log, tenant, session = TurnLog(client, UISettings()), fresh("t"), fresh()
    await log.record(tenant, session, shot(1, chat(3)))
    await log.record(tenant, session, shot(2, [*chat(3), {"role": "user", "content": "new"}]))
    changed = [{"role": "system", "content": "retained"}, *chat(3)]
    await log.record(tenant, session, shot(3, changed))
    first, appended, rewritten = await log.turns(tenant, session)
    assert first["prefix"]["messages"] == 0
    assert appended["prefix"]["messages"] == 3 and 0 < appended["prefix"]["tokens"] < appended["forwarded"]
    assert appended["prefix"]["bytes"] == sum(n for _, n in message_sizes(chat(3)))
    assert rewritten["prefix"] == {"messages": 0, "bytes": 0, "of_bytes": rewritten["prefix"]["of_bytes"], "tokens": 0}


def test_reused_prefix_shares_tokens_by_bytes() -> None:
    sizes = [("a", 10), ("b", 30)]
    assert reused_prefix([("a", 10)], sizes, 80) == {"messages": 1, "bytes": 10, "of_bytes": 40, "tokens": 20}
    assert reused_prefix([], [], 0) == {"messages": 0, "bytes": 0, "of_bytes": 0, "tokens": 0}


async def test_records_prompts_and_sessions_stay_within_their_retention(client: aioredis.Redis) -> None:
    tenant = fresh("t")
    log = TurnLog(client, UISettings(turns=5, prompts=2, sessions=3))
    session = fresh()
    for turn in range(1, 301):
        await log.record(tenant, session, shot(turn, chat(2)))
    keys = InspectorKeys.of(tenant, session)
    kept = await client.xlen(keys.turns)
    assert 5 <= kept < 300  # capped near ui.turns (MAXLEN ~ trims whole radix-tree nodes)
    assert await client.xlen(keys.prompts) == 2  # exactly ui.prompts
    records = await log.turns(tenant, session)
    assert records[-1]["turn"] == 300
    assert await log.prompt(tenant, session, records[-1]["prompt"]) is not None
    assert await log.prompt(tenant, session, records[-3]["prompt"]) is None  # trimmed
    for n in range(4):
        await log.record(tenant, f"{session}-{n}", shot(1, chat(1), at=10_000 + n))
    rows = await log.sessions(tenant, 0, 10)
    assert [r["id"] for r in rows] == [f"{session}-{n}" for n in (3, 2, 1)]  # newest first, 3 kept
    assert [r["id"] for r in await log.sessions(tenant, 1, 1)] == [f"{session}-2"]


async def test_zero_retention_writes_nothing(client: aioredis.Redis) -> None:
    tenant, session = fresh("t"), fresh()
    await TurnLog(client, UISettings(turns=0)).record(tenant, session, shot(1, chat(1)))
    keys = InspectorKeys.of(tenant, session)
    assert await client.exists(keys.turns, keys.prompts, keys.summary, sessions_key(tenant)) == 0
    await TurnLog(client, UISettings(prompts=0, sessions=0)).record(tenant, session, shot(1, chat(1)))
    [record] = await TurnLog(client, UISettings()).turns(tenant, session)
    assert record["prompt"] == "" and await client.exists(keys.prompts, sessions_key(tenant)) == 0


async def test_an_unreachable_store_loses_the_record_not_the_request() -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    try:
        await TurnLog(store.client, UISettings()).record("t", fresh(), shot(1, chat(1)))  # logged, not raised
    finally:
        await store.aclose()


async def test_unknown_prompt_ids_are_none_and_bad_tenants_are_refused(client: aioredis.Redis) -> None:
    log = TurnLog(client, UISettings())
    assert await log.prompt("t", fresh(), "not-an-id") is None
    assert await log.prompt("t", fresh(), "1-0") is None
    with pytest.raises(InvalidKeyError):
        sessions_key("a}b")


async def test_recorded_runs_the_audit_first_then_the_record(client: aioredis.Redis) -> None:
    order: list[str] = []

    async def audit() -> None:
        order.append("audit")

    tenant, session = fresh("t"), fresh()
    log = TurnLog(client, UISettings())
    await recorded(log, tenant, session, audit, shot(1, chat(1)))()
    assert order == ["audit"] and len(await log.turns(tenant, session)) == 1
    assert recorded(None, tenant, session, audit, shot(1, chat(1))) is audit
    blind = Shot(None, [], [], 0, 0, 0)
    assert recorded(log, tenant, session, audit, blind) is audit


def table_with(levels: dict[str, Fidelity], version: int, turn: int) -> PageTable:
    table = PageTable(tenant="t", session="s", project="p", version=version, turn=turn)
    for page_id in levels:
        table.pages[page_id] = make_page(page_id)
        table.order.append(page_id)
    for page_id, level in levels.items():
        set_level(table, page_id, level)
    return table


def test_a_glimpse_holds_the_levels_changed_since_the_last_save() -> None:
    kept = Assembly({}, 0, 0, False, True, ())
    table = table_with({page: Fidelity.FULL for page in "abcdef"}, version=3, turn=2)
    checkpoint(table)
    set_level(table, "b", Fidelity.POINTER)
    del table.levels["c"]
    table.changes.levels.add("c")
    g = glimpse(table, [{"page_id": "b"}], [{"kind": "lifecycle"}], kept)
    assert g.levels == {"b": "P", "c": "-"} and not g.key
    assert (g.turn, g.decisions, g.events, g.replanned) == (2, 1, ({"kind": "lifecycle"},), True)


def test_a_glimpse_is_a_keyframe_on_the_first_save_every_few_turns_and_after_a_big_change() -> None:
    kept = Assembly({}, 0, 0, False, False, ())
    levels = {"a": Fidelity.FULL, "b": Fidelity.NONE, "c": Fidelity.COMPRESSED}
    assert glimpse(table_with(levels, version=0, turn=1), [], [], kept).levels == {"a": "F", "c": "C"}
    assert glimpse(table_with(levels, version=5, turn=KEYFRAME_EVERY + 1), [], [], kept).key
    table = table_with(levels, version=5, turn=2)
    checkpoint(table)
    set_level(table, "a", Fidelity.POINTER)
    set_level(table, "c", Fidelity.POINTER)  # 2 of 3 changed: a keyframe
    g = glimpse(table, [], [], kept)
    assert g.key and g.levels == {"a": "P", "c": "P"}


async def test_on_a_redis_cluster_each_sessions_records_stay_in_its_slot(redis_cluster_url: str) -> None:
    store = RedisStore.from_url(redis_cluster_url)
    try:
        log, tenant = TurnLog(store.client, UISettings()), fresh("t")
        sessions = [fresh() for _ in range(4)]  # spread over the cluster's slots
        for n, session in enumerate(sessions):
            await log.record(tenant, session, shot(1, chat(2), at=20_000 + n))
        assert [r["id"] for r in await log.sessions(tenant, 0, 10)] == sessions[::-1]
        [record] = await log.turns(tenant, sessions[0])
        assert (await log.prompt(tenant, sessions[0], record["prompt"]) or {}).get("forwarded") == chat(2)
    finally:
        await store.aclose()
