"""gateway.observability.inspector against the real Redis: per-turn records, kept prompts, the sessions index,
each within its `ui.*` retention; and the glimpse a turn takes of its page table."""

from __future__ import annotations

import base64
import itertools
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway import jsonio
from gateway.observability.inspector import (
    KEYFRAME_EVERY,
    Glimpse,
    InspectorKeys,
    Shot,
    TurnLog,
    glimpse,
    recorded,
    reused_prefix,
    sessions_key,
)
from gateway.observability.prompt_store import CHUNK, CHUNK_MARK, SWEEP_SLACK, digest_of, stored
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
    assert appended["prefix"]["bytes"] == sum(digest_of(m).size for m in chat(3))
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
    assert await client.exists(keys.turns, keys.prompts, keys.messages, keys.summary, sessions_key(tenant)) == 0
    await TurnLog(client, UISettings(prompts=0, sessions=0)).record(tenant, session, shot(1, chat(1)))
    [record] = await TurnLog(client, UISettings()).turns(tenant, session)
    assert record["prompt"] == "" and await client.exists(keys.prompts, keys.messages, sessions_key(tenant)) == 0


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


class Recording:
    """The client, with the arguments of each call of its scripts recorded: what a prompt writes."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self.calls: list[list[Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def register_script(self, text: str) -> Callable[..., Awaitable[Any]]:
        script = self._client.register_script(text)

        async def call(keys: Sequence[str], args: Sequence[Any]) -> Any:
            self.calls.append(list(args))
            return await script(keys=keys, args=args)

        return call


def written(call: list[Any]) -> dict[str, str]:
    """The (digest, message) pairs one prompt write sent."""
    pairs = call[6:]
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


def turn_of(session: list[dict], turn: int) -> tuple[list[dict], list[dict]]:
    """An agent's session grown by a question and an answer (the same objects kept, as the
    appended-body reader keeps them); forwarded: a stub built anew, then the newest messages."""
    session.append({"role": "user", "content": f"question {turn}: " + "words " * 30})
    session.append({"role": "assistant", "content": f"answer {turn} é: " + "more " * 30})
    stub = {"role": "user", "content": f"[{len(session) - 10} earlier messages paged out]"}
    return list(session), [session[0], stub, *session[-9:]]


async def test_each_message_is_written_once_and_every_prompt_reads_back_as_sent(client: aioredis.Redis) -> None:
    recording, tenant, session = Recording(client), fresh("t"), fresh()
    log = TurnLog(recording, UISettings(prompts=5))  # type: ignore[arg-type]
    agent: list[dict] = [{"role": "system", "content": "You are terse."}]
    sent: list[tuple[list[dict], list[dict]]] = []
    for turn in range(1, 201):
        received, forwarded = turn_of(agent, turn)
        await log.record(tenant, session, shot_of(turn, received, forwarded))
        sent.append((received, forwarded))
        if turn > 1:  # the new question and answer, the stub that changed, a chunk now and then; nothing else
            call, new = recording.calls[-1], [received[-2], received[-1], forwarded[1]]
            messages = {k: v for k, v in written(call).items() if not k.startswith(CHUNK_MARK)}
            assert messages == {digest_of(m).key: stored(jsonio.dumps(m)) for m in new}
            assert len(written(call)) - len(messages) == (len(received) // CHUNK > (len(received) - 2) // CHUNK)
            listed = len(received) // CHUNK + len(received) % CHUNK + len(forwarded)
            assert len(call[2]) + len(call[3]) <= 18 * listed  # a digest, or a chunk (one mark more), and a space
    assert len(recording.calls) == 1 + 200  # one call a turn, and a question first on the first (no base yet)
    records = await log.turns(tenant, session)
    for record, (received, forwarded) in zip(records[-5:], sent[-5:], strict=True):
        assert await log.prompt(tenant, session, record["prompt"]) == {"received": received, "forwarded": forwarded}
    assert await log.prompt(tenant, session, records[-6]["prompt"]) is None  # trimmed (ui.prompts)


def shot_of(turn: int, received: list[dict], forwarded: list[dict]) -> Shot:
    return Shot(seen(turn), received, forwarded, 100 * turn, 50, 4000)


async def test_workers_sharing_a_session_write_what_the_store_lacks(client: aioredis.Redis) -> None:
    """A session's turns on any worker: one that did not write the last entry, or whose last entry
    is trimmed, asks the store which messages it lacks."""
    recording, tenant, session = Recording(client), fresh("t"), fresh()
    workers = [TurnLog(recording, UISettings(prompts=2)) for _ in range(2)]  # type: ignore[arg-type]
    agent: list[dict] = [{"role": "system", "content": "You are terse."}, *chat(CHUNK * 2)]  # chunks too
    order = [0, 1, 1, 0, 0, 1, 1, 1, 1, 0]  # the last: worker 0's base (turn 5) trimmed long ago
    last_seen: dict[int, int] = {}  # worker -> the transcript's length at its last turn
    for turn, worker in enumerate(order, start=1):
        received, forwarded = turn_of(agent, turn)
        before = len(recording.calls)
        await workers[worker].record(tenant, session, shot_of(turn, received, forwarded))
        [record] = (await workers[1 - worker].turns(tenant, session))[-1:]
        prompt = await workers[1 - worker].prompt(tenant, session, record["prompt"])
        assert prompt == {"received": received, "forwarded": forwarded}
        calls, new = recording.calls[before:], {digest_of(m).key for m in (received[-2], received[-1], forwarded[1])}
        sent = [{k for k in written(call) if not k.startswith(CHUNK_MARK)} for call in calls]
        if worker not in last_seen and turn > 1:  # no base: asked first, then sent only what was missing
            assert len(calls) == 2 and written(calls[0]) == {} and sent[1] == new
        elif turn > 1:  # one call: what this worker had not seen (a trimmed base: the store checks the rest)
            unseen = {digest_of(m).key for m in received[last_seen[worker] :]} | {digest_of(forwarded[1]).key}
            assert len(calls) == 1 and sent[0] == (new if order[turn - 2] == worker else unseen)
        last_seen[worker] = len(received)


async def test_a_messages_hash_lost_as_a_whole_is_written_again_on_the_next_turn(client: aioredis.Redis) -> None:
    log, tenant, session = TurnLog(client, UISettings()), fresh("t"), fresh()
    agent: list[dict] = [{"role": "system", "content": "You are terse."}]
    await log.record(tenant, session, shot_of(1, *turn_of(agent, 1)))
    await client.delete(InspectorKeys.of(tenant, session).messages)  # as an eviction would
    received, forwarded = turn_of(agent, 2)
    await log.record(tenant, session, shot_of(2, received, forwarded))
    record = (await log.turns(tenant, session))[-1]
    assert await log.prompt(tenant, session, record["prompt"]) == {"received": received, "forwarded": forwarded}


async def test_messages_no_kept_prompt_names_are_swept(client: aioredis.Redis) -> None:
    tenant, session = fresh("t"), fresh()
    log = TurnLog(client, UISettings(prompts=2))
    keys = InspectorKeys.of(tenant, session)
    system = {"role": "system", "content": "You are terse."}
    sizes = []
    for turn in range(1, 301):  # a short conversation, a new question each turn: the old ones go
        received = [system, {"role": "user", "content": f"question {turn}"}]
        await log.record(tenant, session, shot_of(turn, received, [*received, {"role": "user", "content": f"t{turn}"}]))
        sizes.append(await client.hlen(keys.messages) - 1)  # less the sweep's own field
    live = 1 + 2 * 2  # the system prompt, and each kept prompt's question and stub
    assert max(sizes) <= 2 * live + SWEEP_SLACK + 2  # twice the size after a sweep, the slack, a turn's new
    assert min(sizes[100:]) < max(sizes)  # swept, again and again
    first = digest_of({"role": "user", "content": "question 1"}).key
    assert not await client.hexists(keys.messages, first)
    for record in (await log.turns(tenant, session))[-2:]:
        assert await log.prompt(tenant, session, record["prompt"]) is not None


async def test_a_prompt_of_the_earlier_format_reads_and_a_lost_message_reads_as_none(client: aioredis.Redis) -> None:
    log, tenant, session = TurnLog(client, UISettings()), fresh("t"), fresh()
    keys = InspectorKeys.of(tenant, session)
    whole = {"received": chat(3), "forwarded": chat(2)}
    packed = base64.b64encode(zlib.compress(jsonio.dumps(whole), 1)).decode("ascii")
    earlier = await client.xadd(keys.prompts, {"r": packed})
    assert await log.prompt(tenant, session, earlier) == whole
    broken = await client.xadd(keys.prompts, {"r": "not zlib"})
    assert await log.prompt(tenant, session, broken) is None
    await log.record(tenant, session, shot_of(1, chat(1), chat(2)))
    [record] = await log.turns(tenant, session)
    assert await log.prompt(tenant, session, record["prompt"]) == {"received": chat(1), "forwarded": chat(2)}
    await client.hdel(keys.messages, digest_of(chat(2)[1]).key)
    assert await log.prompt(tenant, session, record["prompt"]) is None
    session = fresh()
    await log.record(tenant, session, shot_of(1, chat(CHUNK), chat(2)))
    [record] = await log.turns(tenant, session)
    assert await log.prompt(tenant, session, record["prompt"]) == {"received": chat(CHUNK), "forwarded": chat(2)}
    messages = InspectorKeys.of(tenant, session).messages
    [chunk] = [k for k in await client.hkeys(messages) if k.startswith(CHUNK_MARK)]
    await client.hdel(messages, chunk)
    assert await log.prompt(tenant, session, record["prompt"]) is None
