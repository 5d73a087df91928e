"""The layout of a session's transcript as far as it is known, kept from one re-plan to the next.

`policies.layout.make_layout` groups the transcript into blocks, prices every message page at
every level and finds the blocks that may fold into a span stub: a pass over the whole session
on every re-plan, although an agent's transcript only grows at its end. A `Prefix` keeps that
work for the positions it has seen (the blocks, the grouping's state at the end, each page's
per-level costs, the blocks no level can fold, where the plans are) and, given the next
transcript, does it for the new positions only. A transcript that does not begin with the one
it saw (a rewrite) is laid out afresh.

What it keeps depends only on the page ids at those positions, and a page id names one page for
good in a table (its content, its name), so the result is the from-scratch layout's, exactly
(tests/policies/test_prefix.py). It is the table's derived state, not stored: a table loaded
from the store starts without one.

A re-plan may lay out the newest turn's pages before their lower levels exist (they are sent
whole: `policies.pagetable.finish_for_plan`); their costs are then provisional, every level
priced as the full one, and the next `extend` prices them again once they are finished.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping

from policies.layout import extend_blocks, level_costs
from policies.pages import Page, PageType, Pin


class Prefix:
    __slots__ = ("order", "blocks", "calls", "costs", "foldable", "plans", "provisional")

    def __init__(self) -> None:
        self.order: tuple[str, ...] = ()
        self.blocks: list[tuple[int, int]] = []
        self.calls: frozenset[str] = frozenset()  # tool calls of the last block still to be answered
        self.costs: dict[str, tuple[int, ...]] = {}  # message costs per level of the pages in `order`
        self.foldable: list[bool] = []  # per block: holds no page pinned hard nor the system prompt
        self.plans: dict[str, int] = {}  # plan page -> its position, in transcript order
        self.provisional: frozenset[str] = frozenset()  # pages priced before their lower levels existed

    def extend(
        self,
        order: tuple[str, ...],
        pages: Mapping[str, Page],
        names: Mapping[str, str],
        unfinished: frozenset[str] = frozenset(),
    ) -> None:
        """Bring the prefix to `order`: lay out its new positions, or all of it after a rewrite.
        `unfinished`: pages whose lower levels are not made yet, priced again once they are."""
        for page_id in self.provisional - unfinished:
            if page_id in self.costs:
                self.costs[page_id] = level_costs(pages[page_id], page_id in names)
        self.provisional = unfinished
        known = len(self.order)
        if len(order) < known or order[:known] != self.order:  # compared in C
            self.order, self.blocks, self.calls, self.costs, self.foldable, self.plans = (), [], frozenset(), {}, [], {}
            known = 0
        first = len(self.blocks) - 1 if known else 0  # the last block may grow (tool results join it)
        self.calls = extend_blocks(self.blocks, self.calls, order, pages, known)
        del self.foldable[first:]
        self.foldable.extend(not _fixed(order[start:stop], pages) for start, stop in self.blocks[first:])
        for position in range(known, len(order)):
            page_id = order[position]
            page = pages[page_id]
            self.costs[page_id] = level_costs(page, page_id in names)
            if page.type is PageType.PLAN:
                self.plans[page_id] = position
        self.order = order

    def current_plan(self) -> str | None:
        """The last plan the transcript states (the positions are in transcript order)."""
        return next(reversed(self.plans), None)

    def eligible(self, newest: int, current_plan: str | None) -> tuple[bool, ...]:
        """Per block: may fold into a span stub (`policies.layout._eligible`): wholly before the
        newest turn, nothing in it pinned hard (the current plan is) nor the system prompt."""
        eligible = self.foldable.copy()
        at = self.plans.get(current_plan) if current_plan is not None else None
        if at is not None:  # the block that holds it: the last one starting at or before it
            eligible[bisect_right(self.blocks, (at, len(self.order) + 1)) - 1] = False
        late = next((b for b in range(len(self.blocks) - 1, -1, -1) if self.blocks[b][1] <= newest), -1) + 1
        eligible[late:] = [False] * (len(eligible) - late)
        return tuple(eligible)


def _fixed(members: tuple[str, ...], pages: Mapping[str, Page]) -> bool:
    """A block no level folds: it holds the system prompt or a page pinned hard (a plan is
    pinned hard only while current: `Prefix.eligible` looks at that one)."""
    for page_id in members:
        page = pages[page_id]
        if page.type is PageType.BOOTSTRAP or (page.type is not PageType.PLAN and page.pin is Pin.HARD):
            return True
    return False
