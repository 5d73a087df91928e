"""The ledger keeps `total_cost`'s exact figure through any run of level changes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire.chat_json import parse_messages
from policies.layout import collapsible, total_cost
from policies.ledger import Ledger
from policies.pages import LEVELS, Fidelity
from policies.pagetable import PageTable, ingest
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.turn import build_layout
from tests.policies.strategies import Wire, requests, transcripts

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTER = CharCounter()


def table_of(wire: list[Wire], kept: int) -> PageTable:
    """A table that saw `wire`, then (`kept` > 0) one of its earlier requests: what the rest held
    is paged out (the evidence index), and its facts may be carried."""
    table = PageTable("t", "s", "p")
    ingest(table, parse_messages(wire), TenantPolicy(), COUNTER)
    shorter = [r for r in requests(wire) if len(r) < len(wire)]
    if shorter and kept:
        ingest(table, parse_messages(shorter[kept % len(shorter)]), TenantPolicy(), COUNTER)
    return table


@PROPERTY
@given(transcripts(max_rounds=6), st.integers(0, 40), st.data())
def test_the_ledger_counts_what_total_cost_counts_after_every_change(
    wire: list[Wire], kept: int, data: st.DataObject
) -> None:
    layout = build_layout(table_of(wire, kept))
    ids = [*layout.order, *layout.index]
    levels = {p: data.draw(st.sampled_from(LEVELS)) for p in ids}
    ledger = Ledger(layout, levels)
    assert ledger.cost == total_cost(layout, levels)
    for _ in range(data.draw(st.integers(0, 30))):
        page_id = data.draw(st.sampled_from(ids))
        ledger.set(page_id, data.draw(st.sampled_from(LEVELS)))
        assert ledger.levels is levels
        assert ledger.cost == total_cost(layout, levels)
        assert all(ledger.collapsible(b) == collapsible(layout, b, levels) for b in range(len(layout.blocks)))


def test_a_long_run_of_pointer_blocks_is_one_bounded_stub_whichever_block_leaves_it() -> None:
    wire: list[Wire] = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Go."}]
    for step in range(80):
        call = {
            "id": f"c{step}",
            "type": "function",
            "function": {"name": "read_file", "arguments": f'{{"n": {step}}}'},
        }
        wire += [{"role": "assistant", "content": None, "tool_calls": [call]}]
        wire += [{"role": "tool", "tool_call_id": f"c{step}", "content": f"line {step}\n" * 20}]
    layout = build_layout(table_of(wire, 0))
    levels = {p: Fidelity.POINTER for p in layout.order}
    ledger = Ledger(layout, levels)
    for position in (40, 2, 150, 41, 3, 40, 150, 2, 41, 3):  # split, split again, then join back
        page_id = layout.order[position]
        ledger.set(page_id, Fidelity.FULL if levels[page_id] == Fidelity.POINTER else Fidelity.POINTER)
        assert ledger.cost == total_cost(layout, levels)
