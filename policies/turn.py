"""One turn of the policy engine: ingest, lay out, assemble, render. Pure and synchronous.

The gateway times this call: it is the figure the paper quotes (policy time per turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.assembler import Assembly, assemble
from policies.budget import TokenBudget
from policies.layout import Layout, group_blocks, newest_turn
from policies.pages import Fidelity, PageType
from policies.pagetable import IngestResult, PageTable, ingest
from policies.render import render
from policies.tenant import TenantPolicy
from policies.tokens import TokenCounter
from policies.transcript import Message


@dataclass(frozen=True, slots=True)
class TurnPlan:
    messages: list[Message]
    assembly: Assembly
    ingest: IngestResult
    layout: Layout


def plan_turn(
    table: PageTable,
    messages: Sequence[Message],
    policy: TenantPolicy,
    counter: TokenCounter,
    budget: TokenBudget,
    *,
    recall_tool: str = "clawvm_recall",
) -> TurnPlan:
    table.turn += 1
    result = ingest(table, messages, policy, counter, recall_tool=recall_tool)
    layout = build_layout(table, messages)
    key = f"{budget.usable}|{policy.name}|{policy.weights}"
    previous = table.levels if table.plan_key == key and result.kind == "append" else None
    assembly = assemble(layout, budget.usable, policy.weights, table.turn, table.born, previous)
    table.levels = dict(assembly.levels)
    table.plan_key = key
    entries = {p: table.entries[p][0] for p in layout.order}
    rendered = render(layout, messages, assembly.levels, entries, recall_tool)
    return TurnPlan(messages=rendered, assembly=assembly, ingest=result, layout=layout)


def build_layout(table: PageTable, messages: Sequence[Message]) -> Layout:
    order = tuple(table.order)
    pages = table.pages
    plans = [p for p in order if pages[p].type is PageType.PLAN]
    return Layout(
        order=order,
        blocks=group_blocks(order, pages),
        newest=newest_turn(order, pages),
        pages=pages,
        named=frozenset(p for p, m in zip(order, messages, strict=True) if m.name),
        entries={p: table.entries[p][1] for p in order},
        facts=_live_facts(table, order),
        current_plan=plans[-1] if plans else None,
    )


def _live_facts(table: PageTable, order: Sequence[str]) -> tuple[tuple[str, tuple[tuple[str, frozenset[Fidelity]], ...]], ...]:
    parents: dict[str, list[tuple[str, frozenset[Fidelity]]]] = {}
    for page_id in order:
        for fact_id in table.facts.get(page_id, ()):
            parents.setdefault(fact_id, []).append((page_id, table.covering.get(f"{page_id}|{fact_id}", frozenset())))
    return tuple((fact_id, tuple(holders)) for fact_id, holders in parents.items())
