"""policies.crossing: what a live predecessor carries, from all of its pages or some."""

from __future__ import annotations

from gateway.wire.chat_json import parse_messages
from policies.crossing import Live, live_state, live_state_of
from policies.pages import PageType
from policies.pagetable import PageTable, ingest
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.transcript import Message
from tests.policies.test_pagetable import working_session


def _session() -> PageTable:
    table = PageTable("t", "s", "p")
    ingest(table, parse_messages(working_session()), TenantPolicy(), CharCounter())
    return table


def _plan_at(table: PageTable) -> int:
    return max(i for i, p in enumerate(table.order) if table.pages[p].type is PageType.PLAN)


def test_the_live_state_is_the_carried_pages_the_stated_facts_and_the_current_plan() -> None:
    table = _session()
    state = live_state(table)
    assert {p.type for p in state} >= {PageType.PLAN, PageType.CONSTRAINT}
    assert [p.id for p in state if p.type is PageType.PLAN] == [table.order[_plan_at(table)]]
    assert Live.of(table).state == tuple(state) and Live.of(table).who.session == "s"


def test_pages_before_the_current_plan_are_not_needed() -> None:
    table = _session()
    plan = _plan_at(table)
    stated = {f for p in table.order for f in table.facts.get(p, ())}
    kept = {p: page for p, page in table.pages.items() if p in stated or p in table.order[plan:]}
    assert len(kept) < len(table.pages)
    assert live_state_of(table.order, table.facts, table.carried, kept) == live_state(table)


def test_a_missing_page_that_decides_the_state_asks_for_more() -> None:
    table = _session()
    plan = table.order[_plan_at(table)]
    without_plan = {p: page for p, page in table.pages.items() if p != plan}
    assert live_state_of(table.order, table.facts, table.carried, without_plan) is None
    fact = next(f for p in table.order for f in table.facts.get(p, ()))
    without_fact = {p: page for p, page in table.pages.items() if p != fact}
    assert live_state_of(table.order, table.facts, table.carried, without_fact) is None


def test_a_session_without_a_plan_is_read_to_its_start() -> None:
    table = PageTable("t", "s", "p")
    ingest(table, [Message(role="user", text="Hello there.")], TenantPolicy(), CharCounter())
    assert live_state_of(table.order, table.facts, table.carried, {}) is None
    assert live_state_of(table.order, table.facts, table.carried, table.pages) == live_state(table)
