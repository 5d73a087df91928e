"""Lifecycle boundaries (`gateway.turns.boundary.load_start`, then the pure `policies.crossing.cross`) on a real Redis server: session end after idle
time, a reset carrying a live predecessor's state, a start carrying only project memory, nothing
carried between strangers, the agent's hint, and a store failure at the start."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import pytest

from gateway.store import session_state
from gateway.store.embedded import free_port
from gateway.store.journal import WritebackJournal
from gateway.store.memory import MemoryService
from gateway.store.session_state import SessionState
from gateway.store.store import Keys, RedisStore, project_scope, session_scope
from gateway.store.tables import Outline, TableFormatError
from gateway.turns.boundary import hint_of, load_start
from gateway.turns.sessions import FINGERPRINT
from gateway.wire.base import NAMELESS, Names
from gateway.wire.chat_json import parse_messages
from policies import crossing as pure
from policies.crossing import Crossing, may_carry, seed, wants_start
from policies.lifecycle import Event
from policies.pages import Page, PageType, Scope
from policies.pagetable import PageTable, ingest
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.transcript import Message
from tests.factories import make_page
from tests.policies.test_pagetable import PLAN, RULE, Wire, working_session

pytestmark = pytest.mark.anyio

IDLE = 600
T0 = 1_700_000_000
PROJECT = "proj-boundary"
SYSTEM_RULE = "You must always run the linter."


async def cross(
    sessions: SessionState,
    memory: MemoryService,
    table: PageTable,
    messages: Sequence[Message],
    *,
    hint: str | None,
    now: int,
    idle: int,
) -> Crossing:
    """The boundary as the pipeline crosses it: what a start needs loaded, then the pure rule."""
    carries = partial(may_carry, table, now=now, idle=idle)
    start = await load_start(sessions, memory, table, carries) if wants_start(table, messages) else None
    return pure.cross(table, messages, hint=hint, now=now, idle=idle, start=start)


class Edge:
    """The gateway's request path around `cross`, reduced to what a boundary needs."""

    def __init__(self, store: RedisStore) -> None:
        self.sessions = SessionState(store)
        self.journal = WritebackJournal(store.client)
        self.memory = MemoryService(self.journal, store)

    async def request(self, table: PageTable, wire: Sequence[Wire], now: int, hint: str | None = None) -> Crossing:
        """Cross, ingest, write back and commit one request, as the pipeline does."""
        messages = parse_messages(wire)
        crossing = await cross(self.sessions, self.memory, table, messages, hint=hint, now=now, idle=IDLE)
        table.turn += 1
        result = ingest(table, messages, TenantPolicy(), CharCounter())
        await self.memory.write_back(table, result.new_pages)
        table.seen = now
        await self.sessions.commit(table, [*result.new_pages, *crossing.seeded])
        return crossing

    async def cross(self, table: PageTable, wire: Sequence[Wire], now: int) -> Crossing:
        """Only the crossing: the table as the boundary left it, before the ingest."""
        return await cross(self.sessions, self.memory, table, parse_messages(wire), hint=None, now=now, idle=IDLE)


@pytest.fixture
def edge(store: RedisStore) -> Edge:
    return Edge(store)


def session_wire() -> list[Wire]:
    """A working session whose system prompt states a project rule."""
    wire = working_session()
    return [{"role": "system", "content": f"You are a coding agent. {SYSTEM_RULE}"}, *wire[1:]]


def continued() -> list[Wire]:
    summary = "This session is being continued from a previous conversation that ran out of context. Summary: a fix."
    return [session_wire()[0], {"role": "user", "content": summary}]


def restart() -> list[Wire]:
    return [session_wire()[0], {"role": "user", "content": "Let us start over on the parser."}]


def types_of(table: PageTable, ids: Sequence[str]) -> list[PageType]:
    return sorted(table.pages[p].type for p in ids)


def texts_of(table: PageTable, ids: Sequence[str]) -> set[str]:
    return {table.pages[p].reprs.full.text for p in ids}


def lifecycle(crossing: Crossing) -> list[tuple[str, str]]:
    return [(e["event"], e["evidence"]) for e in crossing.events]


async def predecessor(edge: Edge, tenant: str, now: int = T0) -> PageTable:
    table = PageTable(tenant, f"fp-a-{tenant}", PROJECT)
    crossing = await edge.request(table, session_wire(), now)
    assert crossing.event is Event.START and crossing.seeded == []
    return table


# ---------------------------------------------------------------- session end


async def test_a_session_unused_for_longer_than_idle_has_ended(edge: Edge, tenant: str) -> None:
    table = await predecessor(edge, tenant)
    wire = [*session_wire(), {"role": "user", "content": "Go on."}]
    crossing = await cross(
        edge.sessions, edge.memory, table, parse_messages(wire), hint=None, now=T0 + IDLE + 5, idle=IDLE
    )
    assert crossing.event is Event.APPEND
    assert lifecycle(crossing) == [("session_end", f"idle for {IDLE + 5} s (limit {IDLE} s)")]
    assert crossing.events[0]["kind"] == "lifecycle" and crossing.events[0]["turn"] == table.turn


async def test_a_session_used_within_idle_time_goes_on_quietly(edge: Edge, tenant: str) -> None:
    table = await predecessor(edge, tenant)
    wire = [*session_wire(), {"role": "user", "content": "Go on."}]
    crossing = await cross(edge.sessions, edge.memory, table, parse_messages(wire), hint=None, now=T0 + IDLE, idle=IDLE)
    assert crossing.event is Event.APPEND and crossing.events == [] and crossing.seeded == []


# ---------------------------------------------------------------- start and reset


async def test_a_new_session_after_a_live_one_is_a_reset_carrying_its_state(edge: Edge, tenant: str) -> None:
    before = await predecessor(edge, tenant)
    table = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    crossing = await edge.cross(table, restart(), T0 + 100)
    assert crossing.event is Event.RESET
    assert crossing.boundary.harness == "session" and f"fp-a-{tenant}" in crossing.boundary.evidence
    assert [e for e, _ in lifecycle(crossing)] == ["reset"]
    carried = table.carried
    assert types_of(table, carried) == [
        PageType.CONSTRAINT,
        PageType.CONSTRAINT,
        PageType.INTENT,
        PageType.PLAN,
        PageType.PREFERENCE,
    ]
    assert texts_of(table, carried) == {
        f"rule: {RULE}",
        f"rule: {SYSTEM_RULE}",
        "preference: I prefer small commits.",
        "user said: Fix the parser bug.",
        PLAN,
    }
    assert [p.id for p in crossing.seeded] == carried  # none of them was in the new table
    assert all(before.pages[p] == table.pages[p] for p in carried)


async def test_carried_state_the_new_transcript_states_again_is_no_longer_carried(edge: Edge, tenant: str) -> None:
    await predecessor(edge, tenant)
    table = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    await edge.request(table, restart(), T0 + 100)  # its system prompt states the project rule
    assert texts_of(table, table.carried) == {
        f"rule: {RULE}",
        "preference: I prefer small commits.",
        "user said: Fix the parser bug.",
        PLAN,
    }


async def test_a_new_session_after_an_idle_one_starts_with_project_memory_only(edge: Edge, tenant: str) -> None:
    await predecessor(edge, tenant)
    table = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    crossing = await edge.cross(table, restart(), T0 + IDLE + 1)
    assert crossing.event is Event.START
    assert [e for e, _ in lifecycle(crossing)] == ["start"]
    assert texts_of(table, table.carried) == {f"rule: {SYSTEM_RULE}", "preference: I prefer small commits."}
    assert {table.pages[p].scope for p in table.carried} == {Scope.PROJECT}  # session rules and plans ended


async def test_a_reset_carries_the_users_intents_a_fresh_session_only_who_the_user_is(edge: Edge, tenant: str) -> None:
    request = "Before anything else I'd like the docs brought up to date."
    identity = "My name is Pat Lee and my e-mail is pat@example.com."
    wire = [*session_wire(), {"role": "user", "content": f"{request} {identity}"}]
    await edge.request(PageTable(tenant, f"fp-a-{tenant}", PROJECT), wire, T0)
    reset = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    assert (await edge.cross(reset, restart(), T0 + 100)).event is Event.RESET
    assert {f"user said: {request}", f"user said: {identity}"} <= texts_of(reset, reset.carried)
    fresh = PageTable(tenant, f"fp-c-{tenant}", PROJECT)
    assert (await edge.cross(fresh, restart(), T0 + 100 + IDLE + 1)).event is Event.START
    carried = texts_of(fresh, fresh.carried)
    assert f"user said: {identity}" in carried  # who the user is outlives the session
    assert f"user said: {request}" not in carried and "user said: Fix the parser bug." not in carried


async def test_the_carried_state_survives_the_commit(edge: Edge, tenant: str) -> None:
    await predecessor(edge, tenant)
    table = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    await edge.request(table, [session_wire()[0], {"role": "user", "content": "Again."}], T0 + 10)
    edge.sessions.forget(tenant, table.session)
    loaded = await edge.sessions.load(tenant, table.session, PROJECT)
    assert loaded.carried == table.carried
    assert all(loaded.pages[p] == table.pages[p] for p in table.carried)


async def test_a_first_request_after_a_summary_stays_a_compaction_and_carries(edge: Edge, tenant: str) -> None:
    await predecessor(edge, tenant)
    table = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    crossing = await edge.cross(table, continued(), T0 + 30)
    assert crossing.event is Event.COMPACTION and crossing.boundary.harness == "claude_code"
    assert PLAN in texts_of(table, table.carried)


async def test_strangers_carry_nothing_without_a_system_prompt_or_a_named_project(edge: Edge, tenant: str) -> None:
    project = f"{FINGERPRINT}0123456789ab"
    first = PageTable(tenant, f"fp-a-{tenant}", project)
    wire = [{"role": "user", "content": f"Fix the bug. {RULE} I prefer small commits."}]
    await edge.request(first, wire, T0)
    second = PageTable(tenant, f"fp-b-{tenant}", project)
    crossing = await edge.request(second, [{"role": "user", "content": "What is the capital of France?"}], T0 + 5)
    assert crossing.event is Event.START and crossing.seeded == [] and second.carried == []


async def test_a_named_project_carries_even_without_a_system_prompt(edge: Edge, tenant: str) -> None:
    first = PageTable(tenant, f"fp-a-{tenant}", PROJECT)
    await edge.request(first, [{"role": "user", "content": f"Fix the bug. {RULE}"}], T0)
    second = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    crossing = await edge.request(second, [{"role": "user", "content": "Start again."}], T0 + 5)
    assert crossing.event is Event.RESET
    assert texts_of(second, second.carried) == {f"rule: {RULE}", "user said: Fix the bug."}


async def test_a_store_failure_at_the_start_is_a_start_without_carried_state(tenant: str) -> None:
    dead = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        table = PageTable(tenant, f"fp-a-{tenant}", PROJECT)
        messages = parse_messages(session_wire())
        crossing = await cross(
            SessionState(dead),
            MemoryService(WritebackJournal(dead.client), dead),
            table,
            messages,
            hint=None,
            now=T0,
            idle=IDLE,
        )
    finally:
        await dead.aclose()
    assert crossing.event is Event.START and crossing.seeded == [] and table.carried == []
    assert lifecycle(crossing)[0] == ("start", "carried state unavailable: StoreUnavailable")
    assert [e for e, _ in lifecycle(crossing)] == ["start", "start"]


# ---------------------------------------------------------------- seed, project pages, hints


def test_seed_carries_only_the_current_plan_and_returns_what_was_new() -> None:
    table = PageTable("t", "s", "p")
    table.turn = 3
    old, rule, current = (
        make_page("p:old", PageType.PLAN, "Plan: a"),
        make_page("p:rule", PageType.CONSTRAINT, "rule: b"),
        make_page("p:new", PageType.PLAN, "Plan: c"),
    )
    added = seed(table, [old, rule, current])
    assert added == [rule, current]
    assert table.carried == ["p:rule", "p:new"] and "p:old" not in table.pages
    assert table.born == {"p:rule": 3, "p:new": 3}
    assert {"p:rule", "p:new"} <= table.changes.pages
    assert seed(table, [rule, current]) == [] and table.carried == ["p:rule", "p:new"]


def test_seed_carries_a_page_the_table_already_holds_without_storing_it_again() -> None:
    table = PageTable("t", "s", "p")
    rule = make_page("p:rule", PageType.CONSTRAINT, "rule: b")
    table.pages[rule.id] = rule
    assert seed(table, [rule]) == [] and table.carried == ["p:rule"]


def test_hint_of_reads_the_header_first_then_what_the_body_names() -> None:
    named = Names(event="compaction")
    assert hint_of({"x-clawvm-event": "reset"}, named) == "reset"
    assert hint_of({}, named) == "compaction"
    assert hint_of({}, NAMELESS) is None


# ---------------------------------------------------------------- users of one tenant


async def test_a_new_named_session_of_an_unnamed_user_starts_with_project_memory_only(edge: Edge, tenant: str) -> None:
    """A client that names its sessions under a key that names no user: a new name is a new
    conversation (maybe another person's), so nothing of the live one's session state carries."""
    await edge.request(PageTable(tenant, f"customer-1-{tenant}", PROJECT), session_wire(), T0)
    table = PageTable(tenant, f"customer-2-{tenant}", PROJECT)
    crossing = await edge.cross(table, restart(), T0 + 100)
    assert crossing.event is Event.START
    assert texts_of(table, table.carried) == {f"rule: {SYSTEM_RULE}", "preference: I prefer small commits."}


async def test_a_reset_never_picks_a_live_session_of_another_user(edge: Edge, tenant: str) -> None:
    """Two users naming one project: Bob's first session is a start, not a reset of Alice's
    live session, and carries none of what Alice stated (her rule, plan, preference)."""
    alice = PageTable(tenant, f"a-{tenant}", PROJECT, user="u-alice")
    await edge.request(alice, session_wire(), T0)
    bob = PageTable(tenant, f"b-{tenant}", PROJECT, user="u-bob")
    crossing = await edge.cross(bob, restart(), T0 + 100)
    assert crossing.event is Event.START
    assert texts_of(bob, bob.carried) == {f"rule: {SYSTEM_RULE}"}  # the agent's own rule only
    again = PageTable(tenant, f"c-{tenant}", PROJECT, user="u-alice")
    assert (await edge.cross(again, restart(), T0 + 200)).event is Event.RESET  # Alice's own
    assert "preference: I prefer small commits." in texts_of(again, again.carried)


async def test_the_start_reads_the_project_memory_the_write_back_then_plans_on(
    edge: Edge, store: RedisStore, tenant: str
) -> None:
    await predecessor(edge, tenant)  # commits the system prompt's rule to the project's memory
    rival = MemoryService(WritebackJournal(store.client), store)  # another process: nothing cached
    table = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    start = await load_start(edge.sessions, rival, table, partial(may_carry, table, now=T0 + 5, idle=IDLE))
    project = project_scope(PROJECT)
    committed = await rival.journal.load(tenant, project)
    assert committed.version == 1 and start.project and start.previous is not None
    await store.client.delete(Keys.of(tenant, project).memory)  # a second read would find nothing
    memories = await rival.memories(table)
    assert memories.project == (project, committed)


async def test_a_predecessor_that_cannot_carry_is_not_read_whole(edge: Edge, store: RedisStore, tenant: str) -> None:
    before = await predecessor(edge, tenant)
    edge.sessions.forget(tenant, before.session)  # another process: only the store holds it
    pages = Keys.of(tenant, session_scope(before.session))
    await store.client.delete(*(pages.page(p) for p in before.order))  # a whole read would fail now
    table = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    later = T0 + IDLE + 1  # no longer live: nothing of it carries

    start = await load_start(edge.sessions, edge.memory, table, partial(may_carry, table, now=later, idle=IDLE))
    assert start.failed == "" and start.previous is None and start.project
    crossing = pure.cross(table, parse_messages(restart()), hint=None, now=later, idle=IDLE, start=start)
    assert crossing.event is Event.START


def _needed(table: PageTable) -> set[str]:
    """The pages a live read of `table` must find: what it carries, and its newest pages back to
    its current plan."""
    plan = max(i for i, p in enumerate(table.order) if table.pages[p].type is PageType.PLAN)
    return {*table.carried, *(f for p in table.order for f in table.facts.get(p, ())), *table.order[plan:]}


async def test_a_live_predecessor_is_read_for_the_state_it_carries_not_whole(
    edge: Edge, store: RedisStore, tenant: str
) -> None:
    before = await predecessor(edge, tenant)
    whole = pure.Live.of(before)  # what reading it whole would carry
    assert {p.type for p in whole.state} >= {PageType.PLAN, PageType.CONSTRAINT}
    edge.sessions.forget(tenant, before.session)  # another process: only the store holds it
    unneeded = set(before.order) - _needed(before)
    assert unneeded  # the session's pages before its current plan
    pages = Keys.of(tenant, session_scope(before.session))
    await store.client.delete(*(pages.page(p) for p in unneeded))  # a whole read would fail now
    table = PageTable(tenant, f"fp-b-{tenant}", PROJECT)
    start = await load_start(edge.sessions, edge.memory, table, partial(may_carry, table, now=T0 + 5, idle=IDLE))
    assert start.failed == "" and start.previous == whole
    crossing = pure.cross(table, parse_messages(restart()), hint=None, now=T0 + 5, idle=IDLE, start=start)
    assert crossing.event is Event.RESET
    assert {p.id for p in crossing.seeded} >= {p.id for p in whole.state}


def _recording(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The page ids of every `get_pages` call from now on."""
    asked: list[list[str]] = []
    read = store.get_pages

    async def get_pages(tenant: str, scope_id: str, page_ids: Sequence[str]) -> dict[str, Page]:
        asked.append(list(page_ids))
        return await read(tenant, scope_id, page_ids)

    monkeypatch.setattr(store, "get_pages", get_pages)
    return asked


async def test_a_live_predecessor_is_read_in_one_go_the_record_naming_its_plan(
    edge: Edge, store: RedisStore, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await predecessor(edge, tenant)
    edge.sessions.forget(tenant, before.session)
    asked = _recording(store, monkeypatch)
    assert await edge.sessions.live(tenant, before.session, lambda who: True) == pure.Live.of(before)
    assert len(asked) == 1 and before.plan in asked[0]
    assert set(asked[0]) == {p.id for p in pure.Live.of(before).state} | set(before.carried)


async def test_a_live_predecessor_without_a_plan_is_read_for_its_facts_alone(
    edge: Edge, store: RedisStore, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = PageTable(tenant, f"fp-a-{tenant}", PROJECT)
    await edge.request(table, [session_wire()[0], {"role": "user", "content": f"Hello. {RULE}"}], T0)
    assert table.plan == "" and table.facts
    edge.sessions.forget(tenant, table.session)
    asked = _recording(store, monkeypatch)
    live = await edge.sessions.live(tenant, table.session, lambda who: True)
    assert live == pure.Live.of(table) and live.state
    assert len(asked) == 1 and not set(asked[0]) & set(table.order)  # no message page: their facts' pages


async def test_a_record_stored_before_it_named_its_plan_is_read_back_as_far_as_the_plan(
    edge: Edge, store: RedisStore, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_state, "LIVE_TAIL", 1)  # the plan lies further back: read twice as far, and again
    unnamed = session_state.outline

    def outline(data: str) -> Outline:
        return replace(unnamed(data), plan=None)  # as the record of a gateway before this one

    monkeypatch.setattr(session_state, "outline", outline)
    before = await predecessor(edge, tenant)
    edge.sessions.forget(tenant, before.session)
    asked = _recording(store, monkeypatch)
    live = await edge.sessions.live(tenant, before.session, lambda who: True)
    assert live == pure.Live.of(before)
    plan = before.order.index(before.plan)
    assert len(asked) == (len(before.order) - plan - 1).bit_length() + 1  # 1, 2, 4, ... pages back
    assert set(before.order[:plan]) - _needed(before) - {p for ids in asked for p in ids}


async def test_a_live_predecessor_missing_a_page_it_carries_is_unreadable_and_the_new_session_starts_anyway(
    edge: Edge, store: RedisStore, tenant: str
) -> None:
    before = await predecessor(edge, tenant)
    edge.sessions.forget(tenant, before.session)
    rule = next(p.id for p in pure.Live.of(before).state if p.type is PageType.CONSTRAINT)
    await store.client.delete(Keys.of(tenant, session_scope(before.session)).page(rule))
    with pytest.raises(TableFormatError, match="names pages the store does not hold"):
        await edge.sessions.live(tenant, before.session, lambda who: True)
    table = PageTable(tenant, f"fp-b-{tenant}", PROJECT)  # the same user's next session: not a 503
    start = await load_start(edge.sessions, edge.memory, table, partial(may_carry, table, now=T0 + 5, idle=IDLE))
    assert start == pure.Start(failed="TableFormatError")
    crossing = pure.cross(table, parse_messages(restart()), hint=None, now=T0 + 5, idle=IDLE, start=start)
    assert crossing.event is Event.START and crossing.seeded == []
    assert lifecycle(crossing)[0] == ("start", "carried state unavailable: TableFormatError")
