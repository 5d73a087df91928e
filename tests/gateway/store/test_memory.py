"""Validated write-back on a real Redis server: per-scope commits, rejections by code, project
pages kept in project scope, a stale cache reloaded, and the committed page ids."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from gateway.store.journal import WritebackJournal
from gateway.store.memory import MemoryService, user_scope
from gateway.store.session_state import SessionState
from gateway.store.store import Keys, MemoryConflict, RedisStore, project_scope, session_scope
from gateway.store.tables import dump_table
from policies.pages import Page, PageType, Scope
from policies.pagetable import PageTable
from policies.writeback import PLAN_SLOT
from policies.writes import plan_writes
from tests.policies.test_pagetable import Wire, feed, tool_pair

pytestmark = pytest.mark.anyio

PROJECT = "proj-mem"
SYSTEM = {"role": "system", "content": "You are a coding agent. You must never push to main."}
RULE = "Never delete the fixtures."
PLAN = "Plan:\n1. Reproduce the bug.\n2. Fix the parser.\n3. Run the tests."


@pytest.fixture
def service(store: RedisStore) -> MemoryService:
    return MemoryService(WritebackJournal(store.client), store)


def opening() -> list[Wire]:
    return [
        SYSTEM,
        {"role": "user", "content": f"Fix the parser bug. {RULE} I prefer small commits."},
        {"role": "assistant", "content": PLAN},
        *tool_pair("c1", "read_file", '{"path": "parser.py"}', "def parse(x):\n    return x\n" * 20),
    ]


def memory_write(call_id: str, content: str) -> list[Wire]:
    arguments = json.dumps({"file_path": "MEMORY.md", "content": content})
    return tool_pair(call_id, "Write", arguments, "File written.")


def turn(table: PageTable, wire: Sequence[Wire]) -> list[Page]:
    return list(feed(table, wire).new_pages)


def new_table(tenant: str, session: str = "s1") -> PageTable:
    return PageTable(tenant, session, PROJECT)


def ids_of(table: PageTable, *kinds: PageType) -> set[str]:
    return {p for p, page in table.pages.items() if page.type in kinds}


async def test_write_back_commits_facts_plan_and_evidence_each_in_its_scope(
    service: MemoryService, tenant: str
) -> None:
    table = new_table(tenant)
    report = await service.write_back(table, turn(table, opening()))
    assert report.staged == 6 and report.rejected == {}
    assert len(report.committed) == 6
    session = await service.journal.load(tenant, session_scope("s1"))
    project = await service.journal.load(tenant, project_scope(PROJECT))
    assert session.version == project.version == 1
    assert sorted(str(e.page_type) for e in session.entries.values()) == ["constraint", "evidence", "plan"]
    assert sorted(str(e.page_type) for e in project.entries.values()) == ["constraint", "intent", "preference"]
    assert session.entries[PLAN_SLOT].value == PLAN
    assert {e.scope for e in project.entries.values()} == {Scope.PROJECT}
    records = await service.journal.read(tenant, session_scope("s1"))
    assert [r["status"] for r in records] == ["committed"] * 3
    assert len({r["batch"] for r in records}) == 1


async def test_rejections_are_reported_by_code_and_journaled(service: MemoryService, tenant: str) -> None:
    table = new_table(tenant)
    wire = [*opening(), *memory_write("m1", "   ")]
    report = await service.write_back(table, turn(table, wire))
    assert report.rejected == {"SCHEMA_INVALID": 1}
    wire += memory_write("m2", "Project notes: use pytest.")
    report = await service.write_back(table, turn(table, wire))
    assert report.rejected == {} and "file:MEMORY.md" in {u.slot for u in report.committed}
    wire += memory_write("m3", "Something else entirely.")
    report = await service.write_back(table, turn(table, wire))
    assert report.rejected == {"DESTRUCTIVE_OP": 1}
    assert {u.page_type for u in report.committed} == {PageType.EVIDENCE}  # the tool's "File written."
    records = await service.journal.read(tenant, project_scope(PROJECT))
    rejected = [(r["slot"], r["reason"]) for r in records if r["status"] == "rejected"]
    assert rejected == [("file:MEMORY.md", "SCHEMA_INVALID"), ("file:MEMORY.md", "DESTRUCTIVE_OP")]
    project = await service.journal.load(tenant, project_scope(PROJECT))
    assert project.entries["file:MEMORY.md"].value == "Project notes: use pytest."


async def test_project_pages_are_stored_in_project_scope(
    service: MemoryService, store: RedisStore, tenant: str
) -> None:
    table = new_table(tenant)
    await service.write_back(table, turn(table, opening()))
    project_facts = {p for p, page in table.pages.items() if page.extracted and page.scope is Scope.PROJECT}
    assert {table.pages[p].type for p in project_facts} == {PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT}
    stored = await store.get_pages(tenant, project_scope(PROJECT), sorted(table.pages))
    assert set(stored) == project_facts
    assert all(stored[p] == table.pages[p] for p in project_facts)
    other = await store.get_pages(tenant, project_scope("another-project"), sorted(table.pages))
    assert other == {}


async def test_a_stale_cache_is_reloaded_and_the_batch_still_commits(store: RedisStore, tenant: str) -> None:
    first = MemoryService(WritebackJournal(store.client), store)
    second = MemoryService(WritebackJournal(store.client), store)
    table = new_table(tenant)
    wire = opening()
    await first.write_back(table, turn(table, wire))
    elsewhere = new_table(tenant)  # another replica, same session, a turn further on
    wire_elsewhere = [*wire, *tool_pair("c2", "read_file", '{"path": "a.py"}', "alpha " * 30)]
    turn(elsewhere, wire)
    await second.write_back(elsewhere, turn(elsewhere, wire_elsewhere))
    wire += tool_pair("c3", "read_file", '{"path": "b.py"}', "beta " * 30)
    report = await first.write_back(table, turn(table, wire))  # its cached session memory is v1; the store's v2
    assert report.rejected == {} and len(report.committed) == 1
    session = await first.journal.load(tenant, session_scope("s1"))
    assert session.version == 3
    evidence = {e.page_id for e in session.entries.values() if e.page_type is PageType.EVIDENCE}
    assert evidence == ids_of(table, PageType.EVIDENCE) | ids_of(elsewhere, PageType.EVIDENCE)
    assert (await first.memory(tenant, session_scope("s1"))).version == 3  # the cache follows the store


async def test_a_plan_staged_on_a_stale_version_is_rejected(store: RedisStore, tenant: str) -> None:
    first = MemoryService(WritebackJournal(store.client), store)
    second = MemoryService(WritebackJournal(store.client), store)
    table, elsewhere = new_table(tenant), new_table(tenant)
    await first.write_back(table, turn(table, opening()))
    turn(elsewhere, opening())
    newer = [*opening(), {"role": "assistant", "content": "Plan:\n1. Bisect.\n2. Patch.\n3. Ship."}]
    assert (await second.write_back(elsewhere, turn(elsewhere, newer))).rejected == {}
    mine = [*opening(), {"role": "assistant", "content": "Plan:\n1. Read.\n2. Think.\n3. Write."}]
    report = await first.write_back(table, turn(table, mine))
    assert report.rejected == {"STALE_VERSION": 1}
    session = await first.journal.load(tenant, session_scope("s1"))
    assert session.entries[PLAN_SLOT].value.startswith("Plan:\n1. Bisect.")


async def test_writing_back_the_same_pages_again_changes_nothing(service: MemoryService, tenant: str) -> None:
    table = new_table(tenant)
    pages = turn(table, opening())
    await service.write_back(table, pages)
    before = await service.journal.load(tenant, session_scope("s1"))
    again = await service.write_back(table, pages)
    assert again.rejected == {}
    assert await service.journal.load(tenant, session_scope("s1")) == before
    assert before.version == 1


async def test_committed_lists_the_pages_of_both_scopes(service: MemoryService, tenant: str) -> None:
    table = new_table(tenant)
    assert await service.committed(table) == frozenset()
    await service.write_back(table, turn(table, opening()))
    held = await service.committed(table)
    facts = {f for ids in table.facts.values() for f in ids}
    assert held == facts | ids_of(table, PageType.PLAN, PageType.EVIDENCE)
    other_session = PageTable(tenant, "s2", PROJECT)
    assert await service.committed(other_session) == frozenset(
        p for p in facts if table.pages[p].scope is Scope.PROJECT
    )


async def test_a_small_cache_still_commits_every_scope(store: RedisStore, tenant: str) -> None:
    service = MemoryService(WritebackJournal(store.client), store, capacity=1)
    table = new_table(tenant)
    wire = opening()
    await service.write_back(table, turn(table, wire))
    wire += tool_pair("c9", "read_file", '{"path": "c.py"}', "gamma " * 30)
    report = await service.write_back(table, turn(table, wire))
    assert report.rejected == {} and len(report.committed) == 1
    assert (await service.journal.load(tenant, session_scope("s1"))).version == 2


async def test_what_a_named_user_stated_is_committed_to_their_part_of_the_project(
    service: MemoryService, store: RedisStore, tenant: str
) -> None:
    """The user's preference goes to the user's part; the system prompt's rule to the project."""
    table = PageTable(tenant, "s1", PROJECT, user="u-alice")
    await service.write_back(table, turn(table, opening()))
    project = await service.journal.load(tenant, project_scope(PROJECT))
    mine = await service.journal.load(tenant, user_scope(table))
    assert user_scope(table) != project_scope(PROJECT)
    assert [e.value for e in project.entries.values()] == ["rule: You must never push to main."]
    assert sorted((e.page_type.value, e.value) for e in mine.entries.values()) == [
        ("intent", "user said: Fix the parser bug."),  # what the user asked for is theirs too
        ("preference", "preference: I prefer small commits."),
    ]
    preference = next(p for p, page in table.pages.items() if page.type is PageType.PREFERENCE)
    assert preference in await store.get_pages(tenant, user_scope(table), [preference])
    assert await store.get_pages(tenant, project_scope(PROJECT), [preference]) == {}
    assert preference in await service.committed(table)
    bob = PageTable(tenant, "s2", PROJECT, user="u-bob")
    assert (await service.journal.load(tenant, user_scope(bob))).entries == {}


async def test_a_joined_save_commits_the_session_batch_with_the_table_or_nothing(
    store: RedisStore, tenant: str
) -> None:
    service, state = MemoryService(WritebackJournal(store.client), store), SessionState(store)
    table = new_table(tenant)
    pages = turn(table, opening())
    plan = plan_writes(table, pages, await service.memories(table))
    report, held = await service.execute_apart(table, plan, pages)
    assert held is not None and held.scope_id == session_scope("s1")
    rival = MemoryService(WritebackJournal(store.client), store)  # another replica moves the session memory
    other = new_table(tenant)
    await rival.write_back(other, turn(other, [*opening(), *tool_pair("c9", "read_file", '{"path": "z.py"}', "zeta")]))
    with pytest.raises(MemoryConflict):
        await state.commit(table, pages, service.joined_args(held))
    assert await store.load_table(tenant, session_scope("s1")) is None  # nothing of the table was written
    fresh = PageTable(tenant, "s2", PROJECT)
    pages = turn(fresh, opening())
    plan = plan_writes(fresh, pages, await service.memories(fresh))
    report, held = await service.execute_apart(fresh, plan, pages)
    assert held is not None
    args = service.joined_args(held)
    await state.commit(fresh, pages, args)
    service.settle(tenant, held, report)
    assert fresh.version == 1 and report.committed
    again = await store.save(tenant, session_scope("s2"), dump_table(fresh), pages, {}, 0, args)  # a retry
    assert again == 1
    stored = await service.journal.load(tenant, session_scope("s2"))
    assert stored == held.outcome.memory and (await service.memory(tenant, session_scope("s2"))) == stored


async def test_memories_reads_the_scopes_it_has_not_cached_and_keeps_them(
    service: MemoryService, store: RedisStore, tenant: str
) -> None:
    writer = MemoryService(WritebackJournal(store.client), store)  # another replica commits
    table = new_table(tenant)
    await writer.write_back(table, turn(table, opening()))
    mine = new_table(tenant, "s2")
    mine.user = "ada"
    memories = await service.memories(mine)
    assert memories.project[1] == await service.journal.load(tenant, project_scope(PROJECT))
    assert memories.session[1].version == memories.user[1].version == 0 and memories.project[1].version == 1
    await store.client.delete(Keys.of(tenant, project_scope(PROJECT)).memory)  # behind its back
    again = await service.memories(mine)
    assert again.project[1] == memories.project[1]  # cached: not read again


async def test_a_fresh_read_is_cached_unless_the_cache_holds_a_later_version(
    service: MemoryService, store: RedisStore, tenant: str
) -> None:
    table = new_table(tenant)
    await service.write_back(table, turn(table, opening()))  # caches the project's memory at v1
    project = project_scope(PROJECT)
    committed = await service.memory(tenant, project)
    assert committed.version == 1
    await store.client.delete(Keys.of(tenant, project).memory)  # as if read before that commit
    older = await service.fresh(tenant, project)
    assert older.version == 0 and await service.memory(tenant, project) == committed
    service.forget(tenant, project)
    assert await service.fresh(tenant, project) == older and await service.memory(tenant, project) == older
