"""Exact accounting kept up to date while the selector changes levels one page at a time.

`policies.layout.total_cost` accounts a whole assembly from scratch: a pass over every block,
linear in the session. The selector's second phase changes one page at a time and needs the
exact figure after a run of changes (`policies.assembler._settle`); recounting it each time made
a re-plan cost a dozen passes over the session. A `Ledger` counts once, then keeps the same
figure as each change comes, at the cost of the change:

- a block that is not folded costs the sum of its members' message costs (kept per block);
- a run of neighbouring collapsible blocks costs one span stub, whose cost depends only on how
  many pages the run holds and on the span entries of its newest SPAN_LISTED ones (prefix sums
  of the entries by position give both in O(1)); the runs are the gaps between the blocks that
  are not collapsible (`breaks`, kept sorted);
- the evidence index is recounted by `policies.layout` itself when one of its pages changes (it
  is as long as the index, not the session);
- the retained-state message lists the facts no page at its level states: each fact's line cost
  (`Shape.line`) is added or taken away as its count of stating pages reaches or leaves zero.

`Ledger.cost == total_cost(layout, levels)` after every change (tests/policies/test_ledger.py).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from itertools import accumulate

from policies.layout import SPAN_LISTED, Layout, index_cost, retained_line, retained_message, stub_cost
from policies.pages import Fidelity
from policies.tokens import REPLY_PRIMING

_POINTER = Fidelity.POINTER


class Shape:
    """What every ledger of one layout shares: each page's block, the blocks' members, the span
    entries' prefix sums by position, the facts each page states, each fact's line in the
    retained-state message. Built once per layout."""

    __slots__ = ("block_of", "members", "entry_sums", "facts_of", "indexed", "layout", "lines")

    def __init__(self, layout: Layout) -> None:
        order, blocks = layout.order, layout.blocks
        self.members = tuple(order[start:stop] for start, stop in blocks)
        self.block_of = {p: b for b, ids in enumerate(self.members) for p in ids}
        self.entry_sums = (0, *accumulate(layout.entries[p] for p in order))
        facts_of: dict[str, list[tuple[int, frozenset[Fidelity]]]] = {}
        for number, (_, parents) in enumerate(layout.facts):
            for parent, holds in parents:
                facts_of.setdefault(parent, []).append((number, holds))
        self.facts_of = facts_of
        self.indexed = frozenset(layout.index)
        self.layout = layout
        self.lines: dict[int, int] = {}  # see `line`

    def line(self, number: int) -> int:
        """The line of fact `number` in the retained-state message, as `policies.layout.retained_cost`
        counts it. Read only for a fact no page states at its level (a fact of a page not finished
        yet has no page of its own, and is stated by that page sent whole)."""
        line = self.lines.get(number)
        if line is None:
            line = self.lines[number] = retained_line(self.layout.pages[self.layout.facts[number][0]])
        return line


class Ledger:
    """The exact cost of `levels` (the caller's dict, changed only through `set`)."""

    __slots__ = (
        "layout",
        "shape",
        "levels",
        "block_cost",
        "raised",
        "breaks",
        "plain",
        "spans",
        "held",
        "uncovered",
        "listing",
        "index",
    )

    def __init__(self, layout: Layout, levels: dict[str, Fidelity], shape: Shape | None = None) -> None:
        self.layout, self.levels = layout, levels
        self.shape = shape = shape or Shape(layout)
        costs, eligible = layout.costs, layout.eligible
        self.block_cost = [sum(costs[p][levels[p]] for p in ids) for ids in shape.members]
        self.raised = [sum(levels[p] != Fidelity.POINTER for p in ids) for ids in shape.members]
        self.breaks = [b for b in range(len(shape.members)) if not (eligible[b] and self.raised[b] == 0)]
        self.plain = sum(self.block_cost[b] for b in self.breaks)
        edges = [-1, *self.breaks, len(shape.members)]
        self.spans = sum(self._run(left + 1, right - 1) for left, right in zip(edges, edges[1:], strict=False))
        self.held = [
            sum(levels.get(parent, Fidelity.NONE) in holds for parent, holds in parents) for _, parents in layout.facts
        ]
        self.uncovered = sum(count == 0 for count in self.held)  # facts the retained-state message lists
        self.listing = sum(shape.line(n) for n, count in enumerate(self.held) if count == 0)  # their lines
        self.index = index_cost(layout, levels)

    @property
    def cost(self) -> int:
        return REPLY_PRIMING + self.plain + self.spans + self.index + self.retained

    @property
    def retained(self) -> int:
        """The retained-state message (`policies.layout.retained_cost` of the uncovered facts)."""
        return retained_message(self.uncovered, self.listing)

    def collapsible(self, block: int) -> bool:
        """`policies.layout.collapsible` for the current levels, in O(1)."""
        return self.layout.eligible[block] and self.raised[block] == 0

    def set(self, page_id: str, level: Fidelity) -> None:
        """Change one page's level; the cost follows."""
        old = self.levels[page_id]
        if old == level:
            return
        shape = self.shape
        self.levels[page_id] = level
        block = shape.block_of.get(page_id, -1)
        if block >= 0:
            self._message(block, page_id, old, level)
        if page_id in shape.indexed or page_id in shape.facts_of:  # facts_of holds pages stating a fact only
            self._extras(page_id, old, level)

    def _message(self, block: int, page_id: str, old: Fidelity, level: Fidelity) -> None:
        cost, raised, eligible = self.layout.costs[page_id], self.raised, self.layout.eligible[block]
        folded = eligible and raised[block] == 0  # `collapsible` before the change
        before = self.block_cost[block]
        self.block_cost[block] = before + cost[level] - cost[old]
        raised[block] += (level != _POINTER) - (old != _POINTER)
        folds = eligible and raised[block] == 0
        if folds == folded:
            if not folds:
                self.plain += self.block_cost[block] - before
            return
        at = bisect_left(self.breaks, block)
        left = self.breaks[at - 1] if at > 0 else -1
        if folds:  # the block joins the runs beside it
            right = self.breaks[at + 1] if at + 1 < len(self.breaks) else len(self.block_cost)
            del self.breaks[at]
            self.plain -= before
        else:  # the block splits the run it was in
            right = self.breaks[at] if at < len(self.breaks) else len(self.block_cost)
            insort(self.breaks, block)
            self.plain += self.block_cost[block]
        joined = self._run(left + 1, right - 1)
        apart = self._run(left + 1, block - 1) + self._run(block + 1, right - 1)
        self.spans += joined - apart if folds else apart - joined

    def _run(self, first: int, last: int) -> int:
        """The span stub of blocks first..last (nothing when empty), as `span_cost` counts it."""
        if first > last:
            return 0
        blocks, sums = self.layout.blocks, self.shape.entry_sums
        start, stop = blocks[first][0], blocks[last][1]
        return stub_cost(stop - start, sums[stop] - sums[max(start, stop - SPAN_LISTED)])

    def _extras(self, page_id: str, old: Fidelity, level: Fidelity) -> None:
        held = self.held
        for number, holds in self.shape.facts_of.get(page_id, ()):
            before = held[number]
            held[number] = after = before + (level in holds) - (old in holds)
            if (before == 0) != (after == 0):  # the fact joins the retained-state message, or leaves it
                sign = 1 if after == 0 else -1
                self.uncovered += sign
                self.listing += sign * self.shape.line(number)
        if page_id in self.shape.indexed:
            self.index = index_cost(self.layout, self.levels)
