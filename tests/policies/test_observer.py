"""The fault observer's facts on real tables: the state a prompt must hold, the level at which
a prompt's text holds it, and the state a rewrite drops."""

from __future__ import annotations

from collections.abc import Iterable

from policies.observer import prompt_text, required_state, shown_by_levels, shown_in_text, state_of
from policies.pages import Fidelity, PageType
from policies.pagetable import PageTable, set_level
from policies.render import stated
from policies.transcript import Message
from tests.policies.test_pagetable import PLAN, RULE, Wire, after_compaction, feed, tool_pair, working_session

NEW_PLAN = "Plan:\n1. Write a failing test.\n2. Fix the parser.\n3. Run the suite."
TODOS = (
    '{"todos": [{"content": "Reproduce the bug", "status": "in_progress"}, {"content": "Fix it", "status": "pending"}]}'
)


def working() -> PageTable:
    table = PageTable("t", "s", "p")
    feed(table, working_session())
    return table


def compacted() -> PageTable:
    table = working()
    feed(table, after_compaction())
    return table


def of_type(table: PageTable, ids: Iterable[str], kind: PageType) -> list[str]:
    return [p for p in ids if table.pages[p].type is kind]


def todo_session() -> list[Wire]:
    return [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Fix the parser bug."},
        *tool_pair("t1", "TodoWrite", TODOS, "Todos updated."),
        {"role": "assistant", "content": "Working on it."},
    ]


# ---------------------------------------------------------------- required_state


def test_required_state_is_the_system_prompt_the_facts_and_the_plan_at_their_floors() -> None:
    table = working()
    required = required_state(table)
    bootstrap, _, plan = table.order[:3]
    facts = list(table.facts[table.order[1]])
    assert list(required) == [bootstrap, *facts, plan]
    assert {table.pages[p].type for p in facts} == {PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT}
    assert all(level is table.pages[p].floor for p, level in required.items())
    assert not {p for p in table.order if table.pages[p].type in (PageType.EVIDENCE, PageType.CONVERSATION)} & set(
        required
    )


def test_required_state_after_a_compaction_holds_the_carried_pages() -> None:
    table = compacted()
    required = required_state(table)
    assert set(table.carried) <= set(required)
    assert {table.pages[p].type for p in required} == {
        PageType.BOOTSTRAP,
        PageType.CONSTRAINT,
        PageType.PREFERENCE,
        PageType.INTENT,
        PageType.PLAN,
    }
    assert of_type(table, required, PageType.BOOTSTRAP) == [table.order[0]]


def test_only_the_current_plan_is_required() -> None:
    table = working()
    old_plan = table.order[2]
    feed(table, [*working_session(), {"role": "assistant", "content": NEW_PLAN}])
    new_plan = table.order[-1]
    assert table.pages[new_plan].type is PageType.PLAN
    assert of_type(table, required_state(table), PageType.PLAN) == [new_plan]
    assert old_plan not in required_state(table)


def test_a_carried_plan_is_not_required_once_the_transcript_holds_a_plan() -> None:
    table = compacted()
    carried_plan = of_type(table, table.carried, PageType.PLAN)
    assert len(carried_plan) == 1 and carried_plan[0] in required_state(table)
    feed(table, [*after_compaction(), {"role": "assistant", "content": NEW_PLAN}])
    table.carried.extend(carried_plan)  # as if the new plan had not displaced it
    required = required_state(table)
    assert of_type(table, required, PageType.PLAN) == [table.order[-1]]
    assert carried_plan[0] not in required


# ---------------------------------------------------------------- shown_in_text


def test_message_pages_are_shown_at_their_rendered_level_whatever_the_text() -> None:
    table = compacted()
    bootstrap = table.order[0]
    required = required_state(table)
    assert shown_in_text(table, required, "You are a coding agent.")[bootstrap] is Fidelity.NONE
    set_level(table, bootstrap, Fidelity.COMPRESSED)
    assert shown_in_text(table, required, "")[bootstrap] is Fidelity.COMPRESSED


def test_facts_are_found_by_their_sentence_whitespace_aside() -> None:
    table = compacted()
    required = required_state(table)
    rule = of_type(table, required, PageType.CONSTRAINT)[0]
    preference = of_type(table, required, PageType.PREFERENCE)[0]
    prompt = "Summary of the work.\nUser said: Never push  to main\nwithout a review. Also: I prefer small commits."
    shown = shown_in_text(table, required, prompt)
    assert shown[rule] is Fidelity.FULL
    assert shown[preference] is Fidelity.FULL


def test_absent_state_is_shown_at_none() -> None:
    table = compacted()
    required = required_state(table)
    shown = shown_in_text(table, required, "Summary: the parser is fixed.")
    assert {shown[p] for p in table.carried} == {Fidelity.NONE}
    assert set(shown) == set(required)


def test_a_carried_plan_is_found_at_the_level_whose_text_the_prompt_holds() -> None:
    table = compacted()
    plan = of_type(table, table.carried, PageType.PLAN)[0]
    required = required_state(table)
    assert shown_in_text(table, required, f"Retained state:\n{PLAN}")[plan] is Fidelity.FULL
    pointer = stated(table.pages[plan].reprs.pointer)
    assert shown_in_text(table, required, f"Retained state:\n{pointer}")[plan] is Fidelity.POINTER


def test_a_plan_stated_through_a_todowrite_call_is_found_by_the_call() -> None:
    table = PageTable("t", "s", "p")
    feed(table, todo_session())
    feed(table, after_compaction())
    plan = of_type(table, table.carried, PageType.PLAN)[0]
    assert table.pages[plan].reprs.full.text == ""  # the call is the plan
    required = required_state(table)
    assert shown_in_text(table, required, f"Retained state:\nTodoWrite({TODOS})")[plan] is Fidelity.FULL
    elided = stated(table.pages[plan].reprs.structured)
    assert elided.startswith("TodoWrite(") and elided != f"TodoWrite({TODOS})"
    assert shown_in_text(table, required, f"Retained state:\n{elided}")[plan] is Fidelity.STRUCTURED
    assert shown_in_text(table, required, "Retained state: none")[plan] is Fidelity.NONE


def test_shown_by_levels_gives_assembled_levels_and_floors_for_the_rest() -> None:
    table = working()
    required = required_state(table)
    bootstrap = table.order[0]
    set_level(table, bootstrap, Fidelity.FULL)
    shown = shown_by_levels(table, required)
    assert shown[bootstrap] is Fidelity.FULL
    assert all(shown[p] is required[p] for p in required if p != bootstrap)


def test_prompt_text_joins_the_messages_texts() -> None:
    messages = [Message(role="system", text="a b"), Message(role="user", text=RULE)]
    assert prompt_text(messages) == f"a b\n{RULE}"


# ---------------------------------------------------------------- state_of


def test_state_of_the_whole_transcript_is_its_system_prompt_facts_and_plan() -> None:
    table = working()
    bootstrap, user, plan = table.order[:3]
    assert state_of(table, range(len(table.order))) == [bootstrap, *table.facts[user], plan]


def test_state_of_positions_holding_no_state_is_empty() -> None:
    table = working()
    assert state_of(table, range(3, len(table.order))) == []
    assert state_of(table, range(0, 0)) == []


def test_an_older_plan_is_not_dirty_state() -> None:
    table = working()
    feed(table, [*working_session(), {"role": "assistant", "content": NEW_PLAN}])
    old_plan, new_plan = table.order[2], table.order[-1]
    assert table.pages[old_plan].type is table.pages[new_plan].type is PageType.PLAN
    assert old_plan not in state_of(table, range(len(table.order)))
    assert state_of(table, range(2, 3)) == []
    assert state_of(table, range(len(table.order) - 1, len(table.order))) == [new_plan]


def test_state_of_lists_a_fact_once_when_two_messages_state_it() -> None:
    wire = [*working_session(), {"role": "user", "content": f"Good. {RULE}"}]
    table = PageTable("t", "s", "p")
    feed(table, wire)
    held = state_of(table, range(len(table.order)))
    assert len(held) == len(set(held))
    rules = of_type(table, held, PageType.CONSTRAINT)
    assert len(rules) == 1 and table.facts[table.order[-1]] == (rules[0],)
