"""The two-phase knapsack, observed through `plan_turn`: floors, insufficiency, upgrades by
utility per token, decisions, and stability from turn to turn."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.wire.chat_json import parse_messages, to_wire
from policies.assembler import STUB, Decision, Decisions, _delta, _sent_cost, low_mark, oversize_floor
from policies.budget import TokenBudget, resolve_budget
from policies.layout import PLAN_WHOLE_TOKENS, collapsible, retained_cost, total_cost, uncovered_facts
from policies.ledger import Ledger
from policies.pages import LEVELS, Fidelity, PageType
from policies.pagetable import PageTable
from policies.tenant import Budget, CacheMode, CachePolicy, TenantPolicy
from policies.tokens import CharCounter
from policies.turn import TurnPlan, build_layout, plan_turn
from tests.policies.strategies import (
    Session,
    Wire,
    bulk_text,
    is_retained,
    newest_turn_of,
    replay,
    requests,
    sessions,
    transcripts,
)
from tests.policies.test_ledger import table_of

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTER = CharCounter()


def exact_budget(usable: int) -> TokenBudget:
    """A budget whose usable tokens are exactly `usable` (no margin, no window cap)."""
    return resolve_budget(Budget(max_prompt_tokens=usable, safety_margin=0.0), 10**9, "model_map", 0)


def plan(request: Sequence[Wire], budget: TokenBudget, table: PageTable | None = None) -> TurnPlan:
    target = table if table is not None else PageTable("t", "s", "p")
    return plan_turn(target, parse_messages(request), TenantPolicy(), COUNTER, budget)


def expected_floors(table: PageTable, levels: dict[str, Fidelity], newest: int) -> dict[str, Fidelity]:
    """The design's floors: the newest turn at full, the current plan whole while small (else at
    its floor), other hard pins at their floor (structured), an older plan at pointer, everything
    else at its type's floor."""
    plans = [p for p in table.order if table.pages[p].type is PageType.PLAN]
    floors = {}
    for position, page_id in enumerate(table.order):
        page = table.pages[page_id]
        if position >= newest:  # a tool result too big to send whole may be paged
            floors[page_id] = oversize_floor(page)
        elif page.type is PageType.PLAN and page_id != plans[-1]:
            floors[page_id] = Fidelity.POINTER
        elif page.type is PageType.PLAN:
            floors[page_id] = Fidelity.FULL if page.tokens(Fidelity.FULL) <= PLAN_WHOLE_TOKENS else page.floor
        else:
            floors[page_id] = page.floor
    return floors


def newest_position(request: Sequence[Wire]) -> int:
    for index in range(len(request) - 1, -1, -1):
        if request[index]["role"] == "assistant":
            return index if request[index].get("tool_calls") or index == len(request) - 1 else index + 1
    users = [i for i, m in enumerate(request) if m["role"] == "user"]
    return users[-1] if users else len(request) - 1


def without_retained(output: Sequence[Wire]) -> list[Wire]:
    return [m for m in output if not is_retained(m)]


# ---------------------------------------------------------------- phase 1: floors


@PROPERTY
@given(sessions())
def test_no_page_is_ever_below_its_floor(session: Session) -> None:
    table = PageTable("t", "s", "p")
    for request in requests(session.wire):
        levels = dict(plan(request, session.budget, table).assembly.levels)
        floors = expected_floors(table, levels, newest_position(request))
        assert set(levels) == set(table.order)
        for page_id, floor in floors.items():
            assert levels[page_id] >= floor, f"{page_id} ({table.pages[page_id].type}) below its floor"


@PROPERTY
@given(transcripts(), st.integers(0, 60))
def test_insufficiency_installs_exactly_the_minimum_set(wire: list[Wire], tiny: int) -> None:
    table = PageTable("t", "s", "p")
    request = requests(wire)[-1]
    assembly = plan(request, exact_budget(tiny), table).assembly
    if not assembly.insufficient:
        return
    assert assembly.minimum > tiny
    assert assembly.tokens == assembly.minimum
    assert assembly.replanned
    floors = expected_floors(table, dict(assembly.levels), newest_position(request))
    whole = dict.fromkeys(floors, Fidelity.FULL)
    assert dict(assembly.levels) in (floors, whole)  # whichever costs less: stubs can outweigh tiny messages


@PROPERTY
@given(transcripts())
def test_insufficient_exactly_when_the_minimum_set_exceeds_the_budget(wire: list[Wire]) -> None:
    """Any budget at or above the minimum is sufficient; one token less is not."""
    request = requests(wire)[-1]
    minimum = plan(request, exact_budget(0)).assembly.minimum
    assert not plan(request, exact_budget(minimum)).assembly.insufficient
    assert plan(request, exact_budget(minimum - 1)).assembly.insufficient


# ---------------------------------------------------------------- phase 2: upgrades


@PROPERTY
@given(transcripts(), st.integers(0, 2000))
def test_a_transcript_well_under_budget_is_forwarded_unchanged(wire: list[Wire], slack: int) -> None:
    request = requests(wire)[-1]
    everything = plan(request, exact_budget(10**8)).assembly.tokens
    minimum = plan(request, exact_budget(0)).assembly.minimum
    result = plan(request, exact_budget(2 * max(everything, minimum) + slack))
    assert to_wire(result.messages) == request
    assert all(level is Fidelity.FULL for level in result.assembly.levels.values())
    assert result.assembly.tokens == everything


SHORT_HISTORY = [
    {"role": "user", "content": "Fix the parser."},
    {"role": "assistant", "content": "Done."},
    {"role": "user", "content": "Go on."},
]


@PROPERTY
@example(SHORT_HISTORY, 0)
@given(transcripts(), st.integers(0, 200))
def test_a_budget_that_holds_the_whole_transcript_is_never_insufficient(wire: list[Wire], slack: int) -> None:
    request = requests(wire)[-1]
    everything = plan(request, exact_budget(10**8)).assembly.tokens
    result = plan(request, exact_budget(everything + slack)).assembly
    assert not result.insufficient
    assert result.tokens <= everything + slack


@PROPERTY
@given(sessions())
def test_decisions_list_every_page_below_full(session: Session) -> None:
    table = PageTable("t", "s", "p")
    for request in requests(session.wire):
        assembly = plan(request, session.budget, table).assembly
        if not assembly.replanned:
            assert assembly.decisions == ()
            continue
        floors = expected_floors(table, dict(assembly.levels), newest_position(request))
        degraded = [p for p in table.order if assembly.levels[p] is not Fidelity.FULL]
        assert [d.page_id for d in assembly.decisions] == degraded
        for decision in assembly.decisions:
            assert decision.level is assembly.levels[decision.page_id]
            assert decision.reason == ("floor" if decision.level == floors[decision.page_id] else "budget")


def test_the_page_worth_more_per_token_is_upgraded_first() -> None:
    """Two results of the same size: redoing an edit costs more than a lookup (recompute cost
    12 vs 6), so at any budget the edit's result is at least as detailed, at some strictly more."""
    body = bulk_text(7, 4000)
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "lookup_xx", "arguments": '{"path": "a.py"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "edit_file", "arguments": '{"path": "a.py"}'}},
    ]
    request = [
        {"role": "user", "content": "Go."},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": body},
        {"role": "tool", "tool_call_id": "call_2", "content": body},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Go on."},
    ]
    minimum = plan(request, exact_budget(0)).assembly.minimum
    ahead = []
    for extra in range(0, 3000, 50):
        table = PageTable("t", "s", "p")
        levels = plan(request, exact_budget(minimum + extra), table).assembly.levels
        lookup, edit = table.order[2], table.order[3]
        assert table.pages[lookup].recompute_cost < table.pages[edit].recompute_cost
        assert levels[edit] >= levels[lookup]
        ahead.append(levels[edit] > levels[lookup])
    assert any(ahead)


def test_free_budget_is_spent_on_upgrades() -> None:
    request = [
        {"role": "system", "content": "You are a coding agent. You must never push to main."},
        {"role": "user", "content": bulk_text(1, 3000)},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Next."},
    ]
    minimum = plan(request, exact_budget(0)).assembly.minimum
    result = plan(request, exact_budget(minimum + 600))
    assert result.assembly.tokens > minimum
    assert any(level in (Fidelity.STRUCTURED, Fidelity.COMPRESSED) for level in result.assembly.levels.values())


# ---------------------------------------------------------------- stability


@PROPERTY
@given(sessions())
def test_a_kept_turn_keeps_the_forwarded_prefix(session: Session) -> None:
    """A turn that does not re-plan keeps every earlier decision: the previous prompt (less the
    retained-state message, which moves to just before the newest turn) is a prefix of the new one."""
    turns = replay(session, COUNTER).turns
    for previous, current in zip(turns, turns[1:], strict=False):
        if current.plan.assembly.replanned:
            continue
        before = previous.plan.assembly.levels
        assert all(current.plan.assembly.levels[p] == level for p, level in before.items())
        old, new = without_retained(previous.output), without_retained(current.output)
        assert new[: len(old)] == old


@PROPERTY
@given(sessions(max_rounds=8))
def test_an_append_forwards_the_previous_prompt_byte_for_byte_as_its_prefix(session: Session) -> None:
    """Between re-plans the prompt only grows at its end: the previous upstream request, the
    retained-state message included, is the head of the next one, byte for byte (what a
    provider's prompt cache reads back). The exceptions are the design's: a turn that restates a
    retained rule (the rule leaves the retained message) or whose previous newest turn was
    forwarded with a page degraded (that page moves into the prefix)."""
    turns = replay(session, COUNTER).turns
    for previous, current in zip(turns, turns[1:], strict=False):
        appended = current.request[: len(previous.request)] == previous.request
        if current.plan.assembly.replanned or not appended:
            continue
        newest = previous.output[len(previous.output) - len(newest_turn_of(previous.request)) :]
        if not all(any(out is sent for sent in previous.request) for out in newest):
            continue
        if [m for m in previous.output if is_retained(m)] == [m for m in current.output if is_retained(m)]:
            assert json.dumps(current.output[: len(previous.output)]) == json.dumps(previous.output)
        else:  # a restated rule left the retained message
            kept = without_retained(previous.output)
            assert without_retained(current.output)[: len(kept)] == kept


def test_appending_under_a_generous_budget_does_not_replan() -> None:
    wire = [{"role": "system", "content": "You are a careful agent. Always run the tests."}]
    table = PageTable("t", "s", "p")
    budget = exact_budget(100_000)
    replanned = []
    for number in range(8):
        wire += [{"role": "user", "content": f"Step {number}: {bulk_text(number, 500)}"}]
        replanned.append(plan(wire, budget, table).assembly.replanned)
        wire += [{"role": "assistant", "content": f"Done with step {number}."}]
    assert not any(replanned)  # the first turn too: it appends to an empty rendering


def test_a_first_turn_over_the_low_water_mark_replans() -> None:
    wire = [{"role": "system", "content": "Run the tests."}, {"role": "user", "content": bulk_text(1, 3000)}]
    budget = exact_budget(1_000)  # about 770 tokens: under the budget, over its low-water mark
    assert plan(wire, budget, PageTable("t", "s", "p")).assembly.replanned  # lands at the mark, not the budget


def test_a_first_turn_under_the_mark_is_sent_as_a_re_plan_would_send_it() -> None:
    wire = [{"role": "system", "content": "Always run the tests."}, {"role": "user", "content": bulk_text(2, 400)}]
    budget = exact_budget(100_000)
    first = PageTable("t", "s", "p")
    fast = plan(wire, budget, first)
    assert not fast.assembly.replanned
    replanned = PageTable("t", "s", "p")
    replanned.plan_key = "planned before"  # not fresh: its first turn re-plans
    again = plan(wire, budget, replanned)
    assert again.assembly.replanned
    assert [m.text for m in fast.messages] == [m.text for m in again.messages]
    assert fast.assembly.tokens == again.assembly.tokens


def test_a_changed_budget_replans() -> None:
    wire = [{"role": "user", "content": bulk_text(3, 8000)}, {"role": "assistant", "content": "ok"}]
    table = PageTable("t", "s", "p")
    plan([*wire, {"role": "user", "content": "one"}], exact_budget(100_000), table)
    result = plan(
        [
            *wire,
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "two"},
        ],
        exact_budget(500),
        table,
    )
    assert result.assembly.replanned
    assert result.assembly.tokens <= 500


def test_an_overflow_replans_with_head_room_for_the_next_turns() -> None:
    """A re-plan leaves head room (a low-water mark) so the next small turn appends without one."""
    table = PageTable("t", "s", "p")
    wire: list[Wire] = []
    budget = exact_budget(3000)
    replanned = []
    for number in range(12):
        wire += [{"role": "user", "content": bulk_text(number, 1600)}]
        assembly = plan(wire, budget, table).assembly
        assert not assembly.insufficient
        assert assembly.tokens <= budget.usable
        replanned.append(assembly.replanned)
        wire += [{"role": "assistant", "content": "ok"}]
    assert sum(replanned[1:]) >= 2
    assert not any(a and b for a, b in zip(replanned[1:], replanned[2:], strict=False))


def _steps(cache: CachePolicy, turns: int = 40) -> list[tuple[bool, int]]:
    """(re-planned, tokens) per turn of a session of 300-token user turns at a 6,000 budget."""
    table, policy, budget = PageTable("t", "s", "p"), TenantPolicy(cache=cache), exact_budget(6000)
    wire: list[Wire] = [{"role": "system", "content": "You are a careful agent. Always run the tests."}]
    steps = []
    for number in range(turns):
        wire += [{"role": "user", "content": bulk_text(number, 1200)}]
        assembly = plan_turn(table, parse_messages(wire), policy, COUNTER, budget).assembly
        assert not assembly.insufficient and assembly.tokens <= budget.usable
        steps.append((assembly.replanned, assembly.tokens))
        wire += [{"role": "assistant", "content": f"Done with step {number}."}]
    return steps


@pytest.mark.parametrize("low_water", [0.5, 0.7, 0.9])
def test_stable_steps_down_to_the_low_water_mark_then_only_appends(low_water: float) -> None:
    """Over the budget, a stable tenant pages out down to its low-water mark; the turns after it
    append (no re-plan) until the budget is reached again."""
    steps = _steps(CachePolicy(CacheMode.STABLE, low_water))
    overflows = [n for n, (replanned, _) in enumerate(steps) if replanned and n > 0]
    assert len(overflows) >= 2
    for n in overflows:
        assert steps[n][1] <= int(6000 * low_water)  # the step lands at or under the mark
        assert steps[n - 1][1] + 313 > 6000  # and only when the turn would go over the budget
    gaps = [b - a for a, b in zip(overflows, overflows[1:], strict=False)]
    assert min(gaps) >= int(6000 * (1 - low_water) / 320)  # appends fill the head room between steps


def test_a_lower_mark_steps_more_rarely_and_tight_fills_the_budget() -> None:
    replans = {w: sum(r for r, _ in _steps(CachePolicy(CacheMode.STABLE, w))) for w in (0.5, 0.7, 0.9)}
    assert replans[0.5] < replans[0.7] < replans[0.9]
    tight = _steps(CachePolicy(CacheMode.TIGHT))
    assert sum(r for r, _ in tight) > replans[0.9]
    assert all(tokens > 6000 * 0.85 for _, tokens in tight[-8:])  # every turn near the budget


def test_a_step_whose_minimum_is_above_the_mark_lands_at_the_minimum() -> None:
    assert low_mark(6000, 1000, 0.5) == 3000  # the mark, when the minimum set is under it
    assert low_mark(6000, 4000, 0.5) == 4000  # else the minimum set itself, not the budget
    assert low_mark(6000, 4000, 1.0) == 6000  # tight fills the budget


def test_a_large_newest_turn_does_not_make_every_following_turn_replan() -> None:
    """Each large turn's minimum set (it, whole) is above the mark: the step lands there, so the
    small turns after it append instead of re-planning one by one (as filling the budget did)."""
    table, budget = PageTable("t", "s", "p"), exact_budget(6000)
    policy = TenantPolicy(cache=CachePolicy(CacheMode.STABLE, 0.5))
    wire: list[Wire] = [{"role": "system", "content": "You are a careful agent. Always run the tests."}]
    steps = []
    for number in range(24):
        size = 13000 if number % 4 == 0 else 3000  # about 3,250 tokens, then three turns of 750
        wire += [{"role": "user", "content": bulk_text(number, size)}]
        assembly = plan_turn(table, parse_messages(wire), policy, COUNTER, budget).assembly
        assert not assembly.insufficient and assembly.tokens <= budget.usable
        steps.append(assembly.replanned)
        wire += [{"role": "assistant", "content": f"Done with step {number}."}]
    small = [replanned for number, replanned in enumerate(steps) if number % 4 and number > 4]
    assert not any(small)
    assert sum(steps[4:]) >= 4  # each large turn steps


# ---------------------------------------------------------------- the selector's accounting


@PROPERTY
@given(transcripts(max_rounds=6), st.integers(0, 40), st.data())
def test_an_upgrades_estimate_is_its_blocks_members_recounted(wire: list[Wire], kept: int, data: st.DataObject) -> None:
    """`_delta` reads a folded block's cost from the ledger: the same figure as recounting the
    block's members with the one page raised, a stub more or less as its neighbours fold."""
    layout = build_layout(table_of(wire, kept))
    ids = [*layout.order, *layout.index]
    levels = {p: data.draw(st.sampled_from(LEVELS)) for p in ids}
    ledger = Ledger(layout, levels)
    for _ in range(data.draw(st.integers(1, 20))):
        page_id = data.draw(st.sampled_from(ids))
        level = data.draw(st.sampled_from(LEVELS))
        block = ledger.shape.block_of.get(page_id, -1)
        costs = layout.costs[page_id]
        expected = costs[level] - costs[levels[page_id]]
        if block >= 0 and collapsible(layout, block, levels):
            members = ledger.shape.members[block]
            after = sum(layout.costs[p][level if p == page_id else levels[p]] for p in members)
            left = block > 0 and collapsible(layout, block - 1, levels)
            right = block + 1 < len(layout.blocks) and collapsible(layout, block + 1, levels)
            expected = after + (STUB if left and right else -STUB if not (left or right) else 0)
        assert _delta(ledger, block, page_id, level) == expected
        ledger.set(page_id, data.draw(st.sampled_from(LEVELS)))


@PROPERTY
@given(transcripts(max_rounds=6), st.integers(0, 40))
def test_the_messages_sent_whole_never_cost_more_than_the_whole_prompt(wire: list[Wire], kept: int) -> None:
    """`_sent_cost`, which lets a re-plan skip counting the whole prompt, is a lower bound of it."""
    layout = build_layout(table_of(wire, kept))
    whole = {**dict.fromkeys(layout.order, Fidelity.FULL), **dict.fromkeys(layout.index, Fidelity.POINTER)}
    assert _sent_cost(layout) <= total_cost(layout, whole)
    if not layout.index:
        assert _sent_cost(layout) + retained_cost(layout, uncovered_facts(layout, whole)) == total_cost(layout, whole)


def test_decisions_are_made_from_the_levels_as_planned_when_first_read() -> None:
    floors = {"a": Fidelity.POINTER, "b": Fidelity.STRUCTURED, "c": Fidelity.FULL}
    levels = {"a": Fidelity.POINTER, "b": Fidelity.COMPRESSED, "c": Fidelity.FULL}
    decisions = Decisions(("a", "b", "c"), floors, levels)
    levels["b"] = Fidelity.FULL  # a later turn raises a page: the plan's decisions stay as made
    expected = (Decision("a", Fidelity.POINTER, "floor"), Decision("b", Fidelity.COMPRESSED, "budget"))
    assert decisions == expected
    assert tuple(decisions) == expected and len(decisions) == 2
    assert decisions[1] == expected[1] and decisions[:1] == expected[:1]
    assert Decisions((), {}, {}) == ()
    assert decisions != expected[:1]
