"""A layout built on the last re-plan's (`policies.prefix.Prefix`, kept on the table) is the layout
built from scratch, through appends and rewrites alike."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire.chat_json import parse_messages
from policies.layout import Layout, make_layout
from policies.pages import PageType
from policies.pagetable import PageTable, finish, finish_for_plan, ingest
from policies.prefix import Prefix
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.turn import build_layout
from tests.policies.strategies import Wire, requests, transcripts

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTER = CharCounter()


def from_scratch(layout: Layout) -> Layout:
    """`layout`'s transcript laid out without a prefix."""
    return make_layout(
        layout.order,
        layout.pages,
        layout.names,
        layout.entries,
        layout.facts,
        layout.current_plan,
        layout.restored,
        layout.index,
        layout.referenced,
        layout.continues,
    )


@PROPERTY
@given(transcripts(max_rounds=8), st.lists(st.integers(0, 99), max_size=12))
def test_the_kept_prefix_lays_out_what_a_fresh_layout_does(wire: list[Wire], picks: list[int]) -> None:
    sent = requests(wire)
    table = PageTable("t", "s", "p")
    for pick in [*picks, len(sent) - 1]:  # any request order: appends, resends, rewrites to an earlier one
        ingest(table, parse_messages(sent[pick % len(sent)]), TenantPolicy(), COUNTER)
        layout = build_layout(table)
        assert isinstance(table.prefix, Prefix)
        assert layout == from_scratch(layout)
        plans = [p for p in table.order if table.pages[p].type is PageType.PLAN]
        assert layout.current_plan == (plans[-1] if plans else None)


def test_an_append_lays_out_only_the_new_positions() -> None:
    wire: list[Wire] = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Go."}]
    table = PageTable("t", "s", "p")
    for step in range(6):
        call = {"id": f"c{step}", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
        wire += [{"role": "assistant", "content": None, "tool_calls": [call]}]
        wire += [{"role": "tool", "tool_call_id": f"c{step}", "content": f"result {step}"}]
        ingest(table, parse_messages(wire), TenantPolicy(), COUNTER)
        before = dict(table.prefix.costs) if isinstance(table.prefix, Prefix) else {}
        layout = build_layout(table)
        assert layout == from_scratch(layout)
        assert isinstance(table.prefix, Prefix)
        kept = {p: c for p, c in table.prefix.costs.items() if p in before}
        assert all(kept[p] is before[p] for p in before)  # priced once, when first laid out


def test_pages_laid_out_before_they_are_finished_are_priced_again_once_they_are() -> None:
    """A re-plan lays out the newest turn before its lower levels exist (policies.pagetable
    `finish_for_plan`): priced at full then, at every level once made."""
    result = "\n".join(f"line {n}: value = compute({n}) # a long result the lower levels cut" for n in range(60))
    call = {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}
    wire: list[Wire] = [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "Go."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": result},
    ]
    table = PageTable("t", "s", "p")
    ingest(table, parse_messages(wire), TenantPolicy(), COUNTER, defer=True)
    unfinished = finish_for_plan(table, set(table.order[2:]))
    tool = table.order[-1]
    assert tool in unfinished
    early = build_layout(table, unfinished)
    assert early.unfinished == unfinished and len(set(early.costs[tool][1:])) == 1  # every level at full
    finish(table)
    later = build_layout(table)
    assert later == from_scratch(later) and len(set(later.costs[tool][1:])) > 1
