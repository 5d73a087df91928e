"""One turn of the policy engine: ingest, then assemble (lay out, select, render). Pure.

The two steps are separate so the caller can time them apart: ingest cost follows the new
content (it represents and counts new messages once); assembly cost is the selector's, the
figure the paper quotes. A turn that only appends and still fits the budget reuses the last
rendering and costs time proportional to the new messages only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

from policies.assembler import Assembly, LevelsNeeded, assemble, low_mark, may_page
from policies.budget import TokenBudget
from policies.layout import Layout, leading_instructions, make_layout, newest_turn
from policies.lifecycle import summary_marker
from policies.pages import Fidelity, PageType
from policies.pagetable import (
    IngestResult,
    PageTable,
    count_pending,
    finish,
    finish_for_plan,
    ingest,
    name_pending,
    named_in,
    paged_out,
    replace_levels,
    set_level,
)
from policies.prefix import Prefix
from policies.render import View, render, stated
from policies.tenant import CachePolicy, TenantPolicy, Weights
from policies.tokens import REPLY_PRIMING, TokenCounter, framed
from policies.transcript import Message

REFERENCE_MESSAGES = 6  # the last messages whose text may bring paged-out evidence back (`_recent_text`)
SUMMARY_WITHIN = 2  # messages after the instructions where a compaction's summary sits (`_continues`)
NO_ENTRY = ("", 0)  # the span entry of a page not finished yet (`_entry`)


@dataclass(frozen=True, slots=True)
class TurnPlan:
    messages: list[Message]
    assembly: Assembly
    ingest: IngestResult
    changed: bool = True  # False when the table is exactly as before (a resent transcript)
    stable: int = 0  # leading messages the next append forwards unchanged (a cache breakpoint goes there)
    appended: bool = False  # the fast path: `assembly.tokens` may hold new pages at their bound (policies.step)


def plan_turn(
    table: PageTable,
    messages: Sequence[Message],
    policy: TenantPolicy,
    counter: TokenCounter,
    budget: TokenBudget,
    *,
    recall_tool: str = "clawvm_recall",
) -> TurnPlan:
    result = ingest_turn(table, messages, policy, counter, recall_tool=recall_tool)
    return assemble_turn(table, messages, result, policy, budget, recall_tool=recall_tool)


def ingest_turn(
    table: PageTable,
    messages: Sequence[Message],
    policy: TenantPolicy,
    counter: TokenCounter,
    *,
    recall_tool: str = "clawvm_recall",
    pruned: Collection[int] = (),
    kept: int | None = None,
    defer: bool = False,
) -> IngestResult:
    """Ingest the transcript (`defer`: its new pages at their full level only, policies.pagetable)."""
    if len(messages) != len(table.order):
        table.turn += 1  # time moves with the transcript: an identical resend (a retry) does not age pages
    return ingest(table, messages, policy, counter, recall_tool=recall_tool, pruned=pruned, kept=kept, defer=defer)


def assemble_turn(
    table: PageTable,
    messages: Sequence[Message],
    result: IngestResult,
    policy: TenantPolicy,
    budget: TokenBudget,
    *,
    recall_tool: str = "clawvm_recall",
) -> TurnPlan:
    """The transcript to forward. The fast path (an append that fits after the kept rendering)
    reads the new pages' full level only; a re-plan reads every level of every page before the
    newest turn, so the pages an ingest with `defer` left there are finished first, and the
    newest turn's wait for `finish` unless one must be paged (policies.pagetable.finish_for_plan,
    policies.assembler.LevelsNeeded)."""
    key = plan_key(policy, budget)
    fast = _first(table, messages, result, key, budget.usable, policy.cache.target) or _append(
        table, messages, result, key, budget.usable
    )
    if fast is not None:
        resent = result.kind == "append" and result.kept == len(messages)
        stable = table.view.stable() if isinstance(table.view, View) else 0
        return TurnPlan(fast, _kept(table), result, changed=not resent, stable=stable, appended=True)
    layout = build_layout(table, finish_for_plan(table, sent_whole(table, budget.usable)))
    previous = table.levels if table.plan_key == key and result.kind == "append" else None
    low_water = policy.cache.target
    plan = partial(assemble, budget=budget.usable, weights=policy.weights, turn=table.turn, born=table.born)
    try:
        assembly = plan(layout, previous=previous, low_water=low_water)
    except LevelsNeeded:  # a newest-turn result too large to send whole is paged: it needs its levels
        finish(table)
        layout = build_layout(table)
        assembly = plan(layout, previous=previous, low_water=low_water)
    replace_levels(table, assembly.levels)
    table.plan_key = key
    table.cost = assembly.tokens
    view = render(layout, assembly.levels, _Entries(table, layout), recall_tool)
    table.view = view
    return TurnPlan(messages=view.messages(messages), assembly=assembly, ingest=result, stable=view.stable())


def sent_whole(table: PageTable, budget: int) -> frozenset[str]:
    """The newest turn's pages a re-plan is sure to send whole: all of them while the turn fits
    the budget whole; else all but the large tool results, which the plan may page
    (policies.assembler.oversize_floor) and so needs their lower levels for. (The turn may be
    over with the rest of the minimum set only: the plan then asks for them, `LevelsNeeded`.)"""
    count_pending(table)  # the turn's tokens exact
    order, pages, names = table.order, table.pages, table.names
    late = order[newest_turn(order, pages) :]
    whole = REPLY_PRIMING + sum(framed(pages[p].tokens(Fidelity.FULL), named=p in names) for p in late)
    return frozenset(p for p in late if whole <= budget or not may_page(pages[p]))


def plan_key(policy: TenantPolicy, budget: TokenBudget) -> str:
    """What the kept decisions depend on: a change re-plans from scratch."""
    return f"{budget.usable}|{_policy_key(policy.name, policy.weights, policy.cache)}"


@lru_cache(maxsize=256)
def _policy_key(name: str, w: Weights, cache: CachePolicy) -> str:
    """The policy's part of `plan_key`, written once per policy (formatting its floats is most
    of what the fast path's key costs)."""
    weights = f"{w.pin_hard},{w.pin_soft},{w.recency},{w.recency_decay},{w.recompute}"
    return f"{name}|{weights}|{cache.mode}:{cache.low_water}"


def _append(
    table: PageTable, messages: Sequence[Message], result: IngestResult, key: str, budget: int
) -> list[Message] | None:
    """The fast path: new messages join at full after the kept rendering, if they fit."""
    view = table.view
    if not isinstance(view, View) or result.kind != "append" or table.plan_key != key or table.cost < 0:
        return None
    order, pages = table.order, table.pages
    newest = newest_turn(order, pages)
    if newest < view.newest or result.kept < view.newest:
        return None
    if view.retained_ids:
        name_pending(table)
        if any(f in view.retained_ids for i in range(result.kept, len(order)) for f in table.facts.get(order[i], ())):
            return None  # a restated rule leaves the retained block: the exact accounting changes
    added = _added(table, result.kept)
    if table.cost + added > budget and count_pending(table):  # over by the bound: count, then judge
        added = _added(table, result.kept)
    if table.cost + added > budget:
        return None
    for position in range(result.kept, len(order)):
        set_level(table, order[position], Fidelity.FULL)
    table.cost += added
    view.prefix.extend(view.tail.pop(i, i) for i in range(view.newest, newest))
    view.newest = newest
    return view.messages(messages)


def _added(table: PageTable, kept: int) -> int:
    """Tokens of the messages after the first `kept`, sent whole (a bounded page at its bound)."""
    order, pages, names = table.order, table.pages, table.names
    return sum(framed(pages[order[i]].tokens(Fidelity.FULL), named=order[i] in names) for i in range(kept, len(order)))


def _first(
    table: PageTable, messages: Sequence[Message], result: IngestResult, key: str, budget: int, low_water: float
) -> list[Message] | None:
    """A table never planned that holds only this turn's pages has rendered nothing yet: its first
    turn is an append to an empty rendering. When it fits under the low-water mark (where a
    re-plan lands, policies.assembler.low_mark) it takes the fast path, the new pages' other
    levels left for `complete`, instead of a re-plan that would keep every page full anyway."""
    fresh = table.view is None and table.cost < 0 and not table.plan_key and not table.carried
    if not fresh or table.restored or result.kind != "append" or result.kept != 0:
        return None
    table.view, table.plan_key, table.cost = View([], 0, None), key, REPLY_PRIMING
    fast = _append(table, messages, result, key, low_mark(budget, 0, low_water))
    if fast is None:
        table.view, table.plan_key, table.cost = None, "", -1
    return fast


def _kept(table: PageTable) -> Assembly:
    return Assembly(
        levels=table.levels, tokens=table.cost, minimum=-1, insufficient=False, replanned=False, decisions=()
    )


def build_layout(table: PageTable, unfinished: frozenset[str] = frozenset()) -> Layout:
    """The table's layout, built on the part of it already laid out (`table.prefix`, `lay_out`).
    `unfinished`: the newest turn's pages still waiting for `finish` (`finish_for_plan`)."""
    order = tuple(table.order)
    known = lay_out(table, order, unfinished)
    plans = [plan] if (plan := known.current_plan()) is not None else []
    index = tuple(paged_out(table))
    return make_layout(
        order,
        table.pages,
        table.names,
        {p: _entry(table, unfinished, p)[1] for p in (*order, *index)},
        _live_facts(table, order),
        plans[-1] if plans else None,
        frozenset(table.restored),
        index,
        named_in(table, index, _recent_text(table, plans)) if index else frozenset(),
        bool(index) and _continues(table),
        known,
        unfinished,
    )


def lay_out(table: PageTable, order: tuple[str, ...] | None = None, unfinished: frozenset[str] = frozenset()) -> Prefix:
    """The table's laid-out prefix (`policies.prefix`) brought to its whole `order`: a re-plan's
    first step, and the end of every turn once its pages are finished (`policies.step.complete`),
    so that a re-plan lays out only what came since, however long the session ran without one."""
    known = table.prefix if isinstance(table.prefix, Prefix) else Prefix()
    known.extend(tuple(table.order) if order is None else order, table.pages, table.names, unfinished)
    table.prefix = known
    return known


def _entry(table: PageTable, waiting: Collection[str], page_id: str) -> tuple[str, int]:
    """A page's span entry and its tokens; none yet for a page still `waiting` to be finished,
    whose entry is never shown (a block of the newest turn does not fold)."""
    return NO_ENTRY if page_id in waiting else table.entries[page_id]


class _Entries(Mapping[str, str]):
    """The span entries of a layout's pages (`_entry`), looked up as `render` reads them: a span
    stub lists only its newest pages, so most are never read."""

    __slots__ = ("_table", "_layout")

    def __init__(self, table: PageTable, layout: Layout) -> None:
        self._table, self._layout = table, layout

    def __getitem__(self, page_id: str) -> str:
        return _entry(self._table, self._layout.unfinished, page_id)[0]

    def __iter__(self) -> Iterator[str]:
        return iter((*self._layout.order, *self._layout.index))

    def __len__(self) -> int:
        return len(self._layout.order) + len(self._layout.index)


def _continues(table: PageTable) -> bool:
    """Whether one of the transcript's first messages (not a tool result) opens a summary of
    earlier work (policies.lifecycle's markers): the agent compacted and goes on, not over."""
    pages = table.pages
    head = table.order[: leading_instructions(table.order, pages) + SUMMARY_WITHIN]
    return any(pages[p].provenance.role != "tool" and summary_marker(pages[p].reprs.full.text) for p in head)


def _recent_text(table: PageTable, plans: Sequence[str]) -> str:
    """What the evidence index's pages may be referred to by: the last REFERENCE_MESSAGES
    messages of the transcript and the current plan (stated or carried), tool calls included."""
    carried = [p for p in table.carried if table.pages[p].type is PageType.PLAN]
    ids = dict.fromkeys([*table.order[-REFERENCE_MESSAGES:], *plans, *carried])
    return "\n".join(stated(table.pages[p].reprs.full) for p in ids)


def _live_facts(
    table: PageTable, order: Sequence[str]
) -> tuple[tuple[str, tuple[tuple[str, frozenset[Fidelity]], ...]], ...]:
    """Each fact with the messages that state it; carried state, stated by no message the
    transcript still holds, has none and so always goes to the retained-state block."""
    parents: dict[str, list[tuple[str, frozenset[Fidelity]]]] = {}
    for page_id in order:
        for fact_id in table.facts.get(page_id, ()):
            parents.setdefault(fact_id, []).append((page_id, table.covering.get(f"{page_id}|{fact_id}", frozenset())))
    for page_id in table.carried:
        parents.setdefault(page_id, [])
    return tuple((fact_id, tuple(holders)) for fact_id, holders in parents.items())
