"""The pure turn step (policies.step): the same assembly as the engine's two steps, the same
decision from the same table and input, the write-back as commands (or deferred), and a start
decided from what the gateway loaded."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest

from gateway.wire.chat_json import parse_messages
from policies.assembler import OVERSIZE_TOKENS
from policies.budget import TokenBudget
from policies.crossing import Live, Start
from policies.layout import newest_turn
from policies.lifecycle import Event
from policies.pages import Fidelity, PageType, Scope
from policies.pagetable import PageTable, ingest
from policies.prefix import Prefix
from policies.step import Decision, TurnInput, complete, forward, step
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.transcript import Message
from policies.turn import build_layout, plan_turn, sent_whole
from policies.writeback import Memory
from policies.writes import Memories
from tests.policies.test_pagetable import RULE, Wire, tool_pair, working_session
from tests.policies.test_prefix import from_scratch

NOW = 1_700_000_000
BUDGET = TokenBudget(cap=100_000, usable=100_000, hard_limit=100_000, source="config")
TIGHT = TokenBudget(cap=300, usable=300, hard_limit=100_000, source="config")


def memories(user: bool = False) -> Memories:
    empty = Memory.empty()
    return Memories(("s:s", empty), ("p:p", empty), ("p:u" if user else "p:p", empty))


def turn(messages: Sequence[Message], budget: TokenBudget = BUDGET, **kw: object) -> TurnInput:
    return TurnInput(messages, TenantPolicy(), CharCounter(), budget, NOW, idle=600, **kw)  # type: ignore[arg-type]


def requests(wire: Sequence[Wire]) -> list[int]:
    """The lengths of the requests an agent sends: none ends with an unanswered tool call."""
    return [n for n in range(2, len(wire) + 1) if "tool_calls" not in wire[n - 1]]


def replay(wire: Sequence[Wire], budget: TokenBudget, **kw: object) -> tuple[PageTable, list[Decision]]:
    table = PageTable("t", "s", "p")
    decisions = [step(table, turn(parse_messages(wire[:n]), budget, **kw)) for n in requests(wire)]
    return table, decisions


def test_the_step_assembles_what_plan_turn_assembles() -> None:
    wire = working_session()
    for budget in (BUDGET, TIGHT):
        table, decisions = replay(wire, budget)
        planned = PageTable("t", "s", "p")
        plans = [
            plan_turn(planned, parse_messages(wire[:n]), TenantPolicy(), CharCounter(), budget) for n in requests(wire)
        ]
        assert [d.messages for d in decisions] == [p.messages for p in plans]
        assert table.levels == planned.levels


def test_the_same_table_and_input_give_the_same_decision() -> None:
    wire = working_session()
    table, _ = replay(wire[:-1], TIGHT, memories=memories())
    twin = copy.deepcopy(table)
    messages = parse_messages(wire)
    first, second = (
        step(table, turn(messages, TIGHT, memories=memories())),
        step(twin, turn(messages, TIGHT, memories=memories())),
    )
    assert first.messages == second.messages and first.pages == second.pages
    assert first.writes == second.writes and first.observation == second.observation
    assert first.ingest_ns == first.assembly_ns == 0  # no clock given: nothing timed


def test_the_write_back_is_a_command_per_scope_planned_on_the_loaded_memory() -> None:
    table = PageTable("t", "s", "p", user="u")
    decision = step(table, turn(parse_messages(working_session()[:2]), memories=memories(user=True)))
    assert decision.writes is not None
    batches = {b.scope_id: b for b in decision.writes.batches}
    assert set(batches) <= {"s:s", "p:p", "p:u"} and "p:u" in batches  # the user's preference is theirs
    assert all(b.scope is Scope.PROJECT for sid, b in batches.items() if sid != "s:s")
    committed = {u.page_id for b in batches.values() for u in b.outcome.committed}
    assert any(table.pages[p].type is PageType.CONSTRAINT for p in committed if p in table.pages)
    assert all(b.expected == 0 for b in batches.values())


def test_without_memory_the_write_back_is_deferred_with_the_new_pages() -> None:
    table = PageTable("t", "s", "p")
    decision = step(table, turn(parse_messages(working_session()[:2])))
    assert decision.writes is None
    assert decision.new_pages and set(decision.new_pages) <= set(decision.pages)


def test_a_start_after_a_live_session_is_a_reset_that_seeds_its_state() -> None:
    before, _ = replay(working_session(), BUDGET)
    before.seen, before.user = NOW - 60, "u-pat"
    table = PageTable("t", "s2", "p", user="u-pat")
    restart = [working_session()[0], {"role": "user", "content": "Let us start over."}]
    decision = step(table, turn(parse_messages(restart), start=Start(previous=Live.of(before))))
    assert decision.crossing.event is Event.RESET and decision.observation.event == "reset"
    assert f"rule: {RULE}" in {table.pages[p].reprs.full.text for p in table.carried}
    assert set(decision.crossing.seeded) <= set(decision.pages)
    stale = PageTable("t", "s3", "p", user="u-pat")
    before.seen = NOW - 601
    assert (
        step(stale, turn(parse_messages(restart), start=Start(previous=Live.of(before)))).crossing.event is Event.START
    )
    assert stale.carried == []


def test_a_new_named_session_of_an_unnamed_user_is_a_new_conversation_not_a_reset() -> None:
    """Under a tenant key that names no user, a client's new session name may be another person's
    conversation: nothing of the live predecessor's session carries; the gateway's own
    fingerprint sessions (the client names nothing) still carry as a reset."""
    before, _ = replay(working_session(), BUDGET)
    before.seen = NOW - 60
    restart = [working_session()[0], {"role": "user", "content": "Let us start over."}]
    named = PageTable("t", "customer-2", "p")
    decision = step(named, turn(parse_messages(restart), start=Start(previous=Live.of(before))))
    assert decision.crossing.event is Event.START and named.carried == []
    before.session = "fp-one"
    derived = PageTable("t", "fp-two", "p")
    assert (
        step(derived, turn(parse_messages(restart), start=Start(previous=Live.of(before)))).crossing.event
        is Event.RESET
    )
    assert f"rule: {RULE}" in {derived.pages[p].reprs.full.text for p in derived.carried}


def test_a_start_whose_state_could_not_be_read_says_so() -> None:
    table = PageTable("t", "s", "p")
    decision = step(table, turn(parse_messages(working_session()[:2]), start=Start(failed="StoreUnavailable")))
    assert ("start", "carried state unavailable: StoreUnavailable") in {
        (e["event"], e["evidence"]) for e in decision.observation.events
    }


def _whole(table: PageTable) -> tuple[object, ...]:
    """The table's stored state, order aside (a deferred page's facts join `pages` later)."""
    fields = (table.pages, table.entries, table.covering, table.born, table.facts, table.levels, table.calls)
    return (*(sorted(f.items()) for f in fields), table.order, table.carried, table.restored, table.cost, table.sent)


def test_forward_then_complete_is_the_step_and_the_eager_ingest() -> None:
    wire = working_session()
    for budget in (BUDGET, TIGHT):
        table, decisions = replay(wire, budget, memories=memories())
        eager, halves = PageTable("t", "s", "p"), PageTable("t", "s", "p")
        for n, decision in zip(requests(wire), decisions, strict=True):
            messages = parse_messages(wire[:n])
            plan = plan_turn(eager, messages, TenantPolicy(), CharCounter(), budget)
            sent = forward(halves, turn(messages, budget, memories=memories()))
            assert sent.messages == plan.messages == decision.messages
            done = complete(halves, turn(messages, budget, memories=memories()), sent)
            assert done.pages == decision.pages and done.writes == decision.writes
            assert done.observation == decision.observation
            assert not halves.pending.waiting and not halves.pending.finished
        assert _whole(halves) == _whole(table) == _whole(eager)


def test_the_fast_path_leaves_the_new_pages_to_complete() -> None:
    wire = working_session()
    n = requests(wire)
    table, _ = replay(wire[: n[-2]], BUDGET)
    messages = parse_messages(wire[: n[-1]])
    sent = forward(table, turn(messages))
    assert not sent.plan.assembly.decisions  # the append fits: no re-plan
    waiting = [d.page_id for d in table.pending.waiting]
    assert waiting == [p.id for p in sent.plan.ingest.new_pages] and waiting
    assert all(p not in table.entries for p in waiting)
    decision = complete(table, turn(messages), sent)
    assert not table.pending.waiting and all(p in table.entries for p in waiting)
    assert [p.id for p in decision.plan.ingest.new_pages][: len(waiting)] == waiting[:1]


def _two_reads(second: str) -> list[Wire]:
    """The working session, then a second read whose result is `second`, and an answer."""
    read = tool_pair("c2", "read_file", '{"path": "lexer.py"}', second)
    return [*working_session(), *read, {"role": "assistant", "content": "Done."}]


def test_a_re_plan_leaves_the_newest_turn_to_complete() -> None:
    """A re-plan sends the newest turn whole, so its pages' other levels, span entries and fact
    pages wait for `complete`, as on the fast path; the prompt is the eager ingest's, and so is
    every later turn's (their costs are priced again once made: policies.prefix)."""
    wire = _two_reads("def lex(x):\n    return x\n" * 30)
    eager, table, deferred = PageTable("t", "s", "p"), PageTable("t", "s", "p"), 0
    for n in requests(wire):
        messages = parse_messages(wire[:n])
        sent = forward(table, turn(messages, TIGHT))
        assert sent.messages == plan_turn(eager, messages, TenantPolicy(), CharCounter(), TIGHT).messages
        waiting = {d.page_id for d in table.pending.waiting}
        if not sent.plan.appended and waiting:
            deferred += 1
            assert waiting == set(table.order[newest_turn(table.order, table.pages) :])
            assert all(table.levels[p] is Fidelity.FULL and p not in table.entries for p in waiting)
        complete(table, turn(messages, TIGHT), sent)
        assert not table.pending.waiting
    assert deferred >= 2
    assert _whole(table) == _whole(eager)


@pytest.mark.parametrize("cap", [900, 1600])
def test_a_re_plan_that_pages_a_large_newest_result_makes_its_levels_first(cap: int) -> None:
    """A newest-turn tool result too large for the budget is paged, which needs its lower
    levels: made before planning when the turn alone is over the budget (900), else when the plan
    finds the minimum set over it (1600: `LevelsNeeded`); paged as the eager ingest pages it."""
    wire = _two_reads("def lex(x):\n    return x  # the lexer, unchanged since the first commit\n" * 80)[:-1]
    budget = TokenBudget(cap=cap, usable=cap, hard_limit=100_000, source="config")
    eager, table = PageTable("t", "s", "p"), PageTable("t", "s", "p")
    for n in requests(wire)[:-1]:
        messages = parse_messages(wire[:n])
        plan_turn(eager, messages, TenantPolicy(), CharCounter(), budget)
        complete(table, turn(messages, budget), forward(table, turn(messages, budget)))
    messages = parse_messages(wire)  # the request that ends with the large result
    assert messages[-1].role == "tool" and CharCounter().count(messages[-1].text) > OVERSIZE_TOKENS
    sent = forward(table, turn(messages, budget))
    plan = plan_turn(eager, messages, TenantPolicy(), CharCounter(), budget)
    paged = table.order[-1]
    assert not sent.plan.appended and table.levels[paged] < Fidelity.FULL
    assert paged in table.entries and not table.pending.waiting  # made before the plan read them
    assert sent.messages == plan.messages


def test_a_newest_turn_over_the_budget_is_sent_whole_but_for_its_large_results() -> None:
    wire = _two_reads("def lex(x):\n    return x  # the lexer, unchanged since the first commit\n" * 80)[:-1]
    table = PageTable("t", "s", "p")
    ingest(table, parse_messages(wire), TenantPolicy(), CharCounter())
    call, result = table.order[-2:]
    assert sent_whole(table, 900) == {call}  # the turn is over: its large result may be paged
    assert sent_whole(table, 1600) == {call, result}  # it fits whole: the plan sends it whole


def test_an_append_that_fits_by_its_bytes_is_sent_before_it_is_counted() -> None:
    """Under a counter `at_most_bytes` the fast path judges the new messages by their bytes and
    `complete` counts them: the table's cost and sent tokens, and the decision's, are exact."""
    wire = working_session()
    n = requests(wire)
    table, _ = replay(wire[: n[-2]], BUDGET)
    counted, _ = replay(wire[: n[-1]], BUDGET)
    messages = parse_messages(wire[: n[-1]])
    sent = forward(table, turn(messages))
    assert sent.plan.appended and [d for d in table.pending.waiting if d.full is None]
    assert table.cost > counted.cost and table.sent > counted.sent  # at the bound
    decision = complete(table, turn(messages), sent)
    assert table.cost == counted.cost == decision.plan.assembly.tokens
    assert table.sent == counted.sent == decision.sent
    assert not table.pending.waiting  # nothing left at its bound


def test_an_append_over_by_its_bound_is_counted_before_it_is_judged() -> None:
    """A budget the new messages fit exactly but not by their bytes: counted in `forward`, and
    still an append (no re-plan), as a counter that gives no bound would have it."""
    wire = working_session()
    n = requests(wire)
    counted, _ = replay(wire[: n[-1]], BUDGET)
    exact = TokenBudget(cap=counted.cost, usable=counted.cost, hard_limit=100_000, source="config")
    table, _ = replay(wire[: n[-2]], exact)
    messages = parse_messages(wire[: n[-1]])
    sent = forward(table, turn(messages, exact))
    assert sent.plan.appended and table.pending.waiting
    assert all(d.full is not None for d in table.pending.waiting)  # counted before forwarding
    assert table.cost == counted.cost
    assert complete(table, turn(messages, exact), sent).plan.assembly.tokens == counted.cost


def test_a_turn_whose_completion_did_not_run_is_finished_by_the_next() -> None:
    """No later turn sees a page unfinished: the next forward finishes it first, and its pages
    are written back with that turn (none is lost); the assembly is the same either way."""
    wire = working_session()
    for budget in (BUDGET, TIGHT):
        table, decisions = replay(wire, budget, memories=memories())
        skipped, created = PageTable("t", "s", "p"), []
        for index, n in enumerate(requests(wire)):
            messages = parse_messages(wire[:n])
            sent = forward(skipped, turn(messages, budget, memories=memories()))
            assert sent.messages == decisions[index].messages
            if index % 2 == 0:  # every other turn fails after forwarding: `complete` never runs
                continue
            created += complete(skipped, turn(messages, budget, memories=memories()), sent).plan.ingest.new_pages
        if skipped.pending.waiting:  # the last turn's completion did not run either
            created += complete(skipped, turn(messages, budget, memories=memories()), sent).plan.ingest.new_pages
        assert _whole(skipped) == _whole(table)
        assert sorted(p.id for p in created) == sorted(p.id for d in decisions for p in d.plan.ingest.new_pages)


def test_every_turn_leaves_its_transcript_laid_out_for_the_next_re_plan() -> None:
    """`complete` brings the table's layout prefix to the whole transcript (fast-path turns
    included), so a re-plan prices only what came since; the layout stays the one from scratch."""
    wire = working_session()
    table = PageTable("t", "s", "p")
    for n in requests(wire):
        step(table, turn(parse_messages(wire[:n])))  # a generous budget: appends, no re-plan
        assert isinstance(table.prefix, Prefix) and table.prefix.order == tuple(table.order)
    priced = dict(table.prefix.costs)
    layout = build_layout(table)
    assert layout == from_scratch(layout)
    assert all(table.prefix.costs[p] is priced[p] for p in priced)  # nothing priced again
