"""The prompt's shape, observed through `plan_turn`: the newest turn, tool-call groups that go
or stay whole, span stubs that fold runs of pointer-level messages, facts and their parents."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings

from gateway.wire.chat_json import parse_messages, to_wire
from policies.budget import TokenBudget, resolve_budget
from policies.layout import (
    INDEX_HEADER_TOKENS,
    INDEX_LISTED,
    LINE_TOKENS,
    RANGE_LINE_TOKENS,
    RETAINED_HEADER_TOKENS,
    SPAN_HEADER_TOKENS,
    SPAN_LISTED,
    index_cost,
    make_layout,
    newest_turn,
    span_cost,
)
from policies.pages import Fidelity, PageType
from policies.pagetable import PageTable
from policies.render import INDEX_HEADER, RANGE_LINE, RETAINED_HEADER, SPAN_HEADER
from policies.tenant import Budget, TenantPolicy
from policies.tokens import MESSAGE_OVERHEAD, CharCounter, TokenCounter
from policies.turn import TurnPlan, plan_turn
from tests.factories import make_page
from tests.policies.strategies import (
    Session,
    Wire,
    aligned,
    bulk_text,
    content_text,
    replay,
    sessions,
    span_ids,
    tiktoken_counter,
)

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTER = CharCounter()


def exact_budget(usable: int) -> TokenBudget:
    return resolve_budget(Budget(max_prompt_tokens=usable, safety_margin=0.0), 10**9, "model_map", 0)


def plan(request: Sequence[Wire], usable: int, table: PageTable | None = None) -> TurnPlan:
    target = table if table is not None else PageTable("t", "s", "p")
    return plan_turn(target, parse_messages(request), TenantPolicy(), COUNTER, exact_budget(usable))


def call(call_id: str, name: str = "read_file") -> Wire:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": '{"path": "src/a.py"}'}}


def full_positions(request: Sequence[Wire]) -> list[int]:
    """Positions pinned at full whatever the budget: the newest turn, nothing else."""
    table = PageTable("t", "s", "p")
    plan(request, 0, table)
    return list(range(newest_turn(table.order, table.pages), len(table.order)))


# ---------------------------------------------------------------- the newest turn


@pytest.mark.parametrize(
    ("request_", "newest"),
    [
        ([{"role": "user", "content": "hello there"}], [0]),
        ([{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "hi"}], [1]),
        (
            [
                {"role": "system", "content": "You are an agent."},
                {"role": "user", "content": "Fix it."},
                {"role": "assistant", "content": "Fixed."},
                {"role": "user", "content": "Thanks."},
            ],
            [3],
        ),
        (
            [
                {"role": "user", "content": "Fix it."},
                {"role": "assistant", "content": None, "tool_calls": [call("c1"), call("c2")]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "tool", "tool_call_id": "c2", "content": "two"},
            ],
            [1, 2, 3],
        ),
        (
            [
                {"role": "user", "content": "Fix it."},
                {"role": "assistant", "content": None, "tool_calls": [call("c1")]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "user", "content": "And also this."},
            ],
            [1, 2, 3],
        ),
        ([{"role": "user", "content": "Fix it."}, {"role": "assistant", "content": "Sure, here"}], [1]),
    ],
    ids=["lone-user", "system-then-user", "after-a-reply", "parallel-calls", "user-after-results", "prefill"],
)
def test_the_newest_turn_is_what_follows_the_models_last_message(request_: list[Wire], newest: list[int]) -> None:
    assert full_positions(request_) == newest


# ---------------------------------------------------------------- span stubs


@PROPERTY
@given(sessions())
def test_every_message_is_rendered_once_or_folded_once(session: Session) -> None:
    result = replay(session, COUNTER)
    for turn in result.turns:
        folded = [page_id for m in turn.output for page_id in span_ids(m, turn.order) or ()]
        assert len(folded) == len(set(folded))
        pairs = aligned(turn.request, turn.output, turn.order)
        assert [i for i, _ in pairs] == sorted(i for i, _ in pairs)


@PROPERTY
@given(sessions())
def test_span_stubs_fold_whole_runs_of_pointer_pages(session: Session) -> None:
    result = replay(session, COUNTER)
    for turn in result.turns:
        levels = turn.plan.assembly.levels
        plans = [p for p in turn.order if result.table.pages[p].type is PageType.PLAN]
        stubs = [span_ids(m, turn.order) for m in turn.output]
        for first, second in zip(stubs, stubs[1:], strict=False):
            assert first is None or second is None, "neighbouring span stubs were not merged"
        for ids in filter(None, stubs):
            positions = [turn.order.index(p) for p in ids]
            assert positions == list(range(positions[0], positions[0] + len(ids))), "a stub folds a non-contiguous run"
            for page_id in ids:
                page = result.table.pages[page_id]
                assert levels[page_id] is Fidelity.POINTER
                assert page.type is not PageType.BOOTSTRAP
                assert not plans or page_id != plans[-1], "the current plan was folded away"


@PROPERTY
@given(sessions())
def test_tool_call_groups_go_or_stay_whole(session: Session) -> None:
    result = replay(session, COUNTER)
    for turn in result.turns:
        folded = {page_id for m in turn.output for page_id in span_ids(m, turn.order) or ()}
        for start, message in enumerate(turn.request):
            if not message.get("tool_calls"):
                continue
            group = turn.order[start : start + 1 + len(message["tool_calls"])]
            assert len({page_id in folded for page_id in group}) == 1, f"group {group} split by a span stub"


@PROPERTY
@given(sessions())
def test_span_entries_name_the_tool_that_made_the_page(session: Session) -> None:
    result = replay(session, COUNTER)
    for turn in result.turns:
        calls = {c["id"]: c["function"]["name"] for m in turn.request for c in m.get("tool_calls") or ()}
        for message in turn.output:
            for line in content_text(message).split("\n")[1:] if span_ids(message, turn.order) else ():
                if ".." in line.split(" ", 1)[0]:
                    continue  # the range of older pages
                page = result.table.pages[line.split(" ", 1)[0]]
                if page.provenance.role == "tool":
                    assert line.split(" ", 1)[1].startswith(calls[page.provenance.tool_call_id] + "(")


def test_neighbouring_pointer_pages_share_one_stub() -> None:
    request = [
        {"role": "system", "content": "You are an agent. You must never push to main."},
        {"role": "user", "content": bulk_text(1, 2000)},
        {"role": "assistant", "content": bulk_text(2, 2000)},
        {"role": "user", "content": bulk_text(3, 2000)},
        {"role": "assistant", "content": bulk_text(4, 2000)},
        {"role": "user", "content": "Next?"},
    ]
    table = PageTable("t", "s", "p")
    output = to_wire(plan(request, 0, table).messages)
    assert [span_ids(m, table.order) for m in output][1] == table.order[1:5]
    assert output[0]["role"] == "system"
    assert output[-1] is request[-1]
    assert len(output) == 3


def test_a_group_with_a_detailed_member_is_not_folded() -> None:
    """A tool-call group whose hard-pinned plan stays at structured keeps its results as messages."""
    todo = {
        "id": "c1",
        "type": "function",
        "function": {
            "name": "TodoWrite",
            "arguments": (
                '{"todos": [{"content": "Read the code", "status": "in_progress"}, '
                '{"content": "Fix the bug", "status": "pending"}, {"content": "Run tests", "status": "pending"}]}'
            ),
        },
    }
    request = [
        {"role": "user", "content": "The bug is back."},
        {"role": "assistant", "content": None, "tool_calls": [todo]},
        {"role": "tool", "tool_call_id": "c1", "content": bulk_text(5, 3000)},
        {"role": "assistant", "content": "Working on it."},
        {"role": "user", "content": "Go on."},
    ]
    table = PageTable("t", "s", "p")
    output = to_wire(plan(request, 0, table).messages)
    assert [m["role"] for m in output] == ["user", "assistant", "tool", "user", "user"]
    assert [span_ids(m, table.order) for m in output] == [[table.order[0]], None, None, [table.order[3]], None]
    assert output[1]["tool_calls"][0]["id"] == "c1"
    assert output[2]["tool_call_id"] == "c1"


def test_a_rule_of_a_message_folded_into_a_span_is_restated() -> None:
    rule = "Never use tabs for indentation in this project."
    request = [
        {"role": "user", "content": f"{rule} Log: " + "alpha beta gamma " * 100},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Now fix the parser."},
    ]
    result = plan(request, 160)
    assert not result.assembly.insufficient
    assert rule in "\n".join(content_text(m) for m in to_wire(result.messages))


# ---------------------------------------------------------------- fixed text bounds


@pytest.fixture(scope="module")
def tiktoken() -> TokenCounter:
    return tiktoken_counter()


@pytest.mark.parametrize("counter_name", ["chars", "tiktoken"])
def test_header_bounds_cover_the_header_texts(counter_name: str, tiktoken: TokenCounter) -> None:
    counter = COUNTER if counter_name == "chars" else tiktoken
    span = SPAN_HEADER.format(n=10**6, tool="clawvm_recall")
    assert counter.count(span) <= SPAN_HEADER_TOKENS
    assert counter.count(RETAINED_HEADER) <= RETAINED_HEADER_TOKENS
    worst = "p:" + "f" * 12 + "~999999999"
    assert counter.count(RANGE_LINE.format(first=worst, last=worst, n=10**9)) <= RANGE_LINE_TOKENS
    assert counter.count(INDEX_HEADER.format(n=10**6, tool="clawvm_recall")) <= INDEX_HEADER_TOKENS


def test_the_span_stub_and_the_index_say_a_query_alone_searches() -> None:
    for header in (SPAN_HEADER, INDEX_HEADER):
        assert "pass only a query to search all pages" in header.format(n=3, tool="clawvm_recall")


def test_the_evidence_index_costs_the_same_however_many_older_pages_it_names() -> None:
    """The index lists its newest INDEX_LISTED pointer-level pages: older ones cost one range line."""
    entry = 9
    page = make_page(text="one two three four five six seven eight")
    sizes = {}
    for count in (INDEX_LISTED, INDEX_LISTED + 1, 10 * INDEX_LISTED):
        ids = tuple(f"p:{n:012x}" for n in range(count))
        pages = {p: page for p in ids}
        layout = make_layout((), pages, {}, dict.fromkeys(ids, entry), (), None, index=ids)
        sizes[count] = index_cost(layout, dict.fromkeys(ids, Fidelity.POINTER))
        shown = index_cost(layout, {**dict.fromkeys(ids, Fidelity.POINTER), ids[0]: Fidelity.FULL})
        text = page.tokens(Fidelity.FULL) + LINE_TOKENS
        assert shown - sizes[count] == text if count == INDEX_LISTED else shown - sizes[count] <= text + entry + 1
        if count > INDEX_LISTED + 1:  # the range still names the older ones: the page's line stays, its text joins
            assert shown - sizes[count] == text + entry + LINE_TOKENS
    base = MESSAGE_OVERHEAD + INDEX_HEADER_TOKENS + INDEX_LISTED * (entry + LINE_TOKENS)
    assert sizes[INDEX_LISTED] == base
    assert sizes[INDEX_LISTED + 1] == sizes[10 * INDEX_LISTED] == base + RANGE_LINE_TOKENS + LINE_TOKENS
    assert index_cost(make_layout((), {}, {}, {}, (), None), {}) == 0


def test_a_span_stub_costs_the_same_however_many_older_pages_it_names() -> None:
    entries = [9] * SPAN_LISTED
    assert span_cost([5] * 10_000 + entries) == span_cost([5] * (SPAN_LISTED + 1) + entries)
    assert span_cost(entries) < span_cost([1, *entries]) <= span_cost(entries) + RANGE_LINE_TOKENS + 1
