"""Two-phase knapsack assembly (DESIGN §3, the paper's selector).

Phase 1 installs every page at its floor: hard-pinned pages (bootstrap, constraints, the
current plan) at structured, everything else at pointer, the newest turn at full. If that
minimum set does not fit, that is physical insufficiency, reported, not a fault.
Phase 2 upgrades one level at a time in order of utility gained per token, ties broken by
(page id, level), until the budget is spent.

Stability: decisions are kept from turn to turn. A turn whose new pages fit beside the kept
decisions costs only the accounting; a turn that overflows re-plans everything down to a
low-water mark, so the next turns append without touching the prefix (provider prompt caches
stay warm, and most turns do no planning at all).

Evidence the transcript no longer holds (the evidence index, policies.layout) sits at pointer,
listed, and comes back through the same utility, but only beside a transcript sent whole, within
EVIDENCE_SHARE of the budget, and only what `restorable` allows: what the agent itself still sends
goes first, and the room left for appending turns stays large enough that they do not re-plan
(and rewrite the index) soon.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from policies.layout import (
    SPAN_HEADER_TOKENS,
    Layout,
    pinned_hard,
    plan_floor,
    restorable,
    total_cost,
)
from policies.ledger import Ledger
from policies.pages import Fidelity, Page, PageType, Pin
from policies.tenant import Weights
from policies.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING

LOW_WATER = 0.75  # the re-plan target when the caller names none (the synthetic sweep); tenants name theirs
EVIDENCE_SHARE = 0.25  # of the budget, at most, for paged-out evidence brought back beside the whole transcript
OVERSIZE_TOKENS = 1024  # a newest-turn tool result larger than this may be paged when it does not fit
LADDER = tuple(Fidelity)
STUB = MESSAGE_OVERHEAD + SPAN_HEADER_TOKENS  # a span stub's fixed cost: what one fold more or less changes


class LevelsNeeded(Exception):
    """A re-plan would page a newest-turn tool result too large to send whole, and that page was
    laid out before its lower levels were made (`Layout.unfinished`): make them, then plan again."""


@dataclass(frozen=True, slots=True)
class Decision:
    page_id: str
    level: Fidelity
    reason: str  # "floor" | "budget" | "newest_turn" | "kept"


class Decisions(Sequence[Decision]):
    """A re-plan's decisions: every page below full, in layout order (then the evidence index),
    with why. Made when first read, from the levels as the plan chose them: only the audit
    reads them, after the request is on its way (policies.step.complete)."""

    __slots__ = ("_pages", "_floors", "_levels", "_made")

    def __init__(self, pages: Sequence[str], floors: Mapping[str, Fidelity], levels: Mapping[str, Fidelity]) -> None:
        self._pages, self._floors, self._levels = pages, floors, dict(levels)  # the plan's levels, as chosen
        self._made: tuple[Decision, ...] | None = None

    def _all(self) -> tuple[Decision, ...]:
        if self._made is None:
            floors, levels = self._floors, self._levels
            self._made = tuple(
                Decision(p, level, "floor" if level == floors[p] else "budget")
                for p in self._pages
                if (level := levels[p]) is not Fidelity.FULL
            )
        return self._made

    def __getitem__(self, index: int | slice) -> Decision | tuple[Decision, ...]:  # type: ignore[override]
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self) -> Iterator[Decision]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


@dataclass(frozen=True, slots=True)
class Assembly:
    levels: Mapping[str, Fidelity]
    tokens: int  # accounted tokens of the messages (tools excluded)
    minimum: int  # tokens of the minimum set
    insufficient: bool  # the minimum set exceeds the budget
    replanned: bool
    decisions: Sequence[Decision]  # a tuple, or a re-plan's `Decisions`


def floor_of(layout: Layout, position: int) -> Fidelity:
    page = layout.pages[layout.order[position]]
    if position >= layout.newest:
        return Fidelity.FULL
    if page.type is PageType.PLAN:
        return plan_floor(page) if pinned_hard(layout, page) else Fidelity.POINTER
    return page.floor


def assemble(
    layout: Layout,
    budget: int,
    weights: Weights,
    turn: int,
    born: Mapping[str, int],
    previous: Mapping[str, Fidelity] | None,
    low_water: float = LOW_WATER,
) -> Assembly:
    """Keep the previous decisions while they fit the budget; else re-plan down to `low_water`
    (a share of the budget: 1.0 fills it)."""
    floors = {layout.order[i]: floor_of(layout, i) for i in range(len(layout.order))}
    floors.update(dict.fromkeys(layout.index, Fidelity.POINTER))  # paged-out evidence: listed in the index
    if previous is not None:
        kept = {p: max(previous.get(p, Fidelity.FULL), f) for p, f in floors.items()}
        cost = total_cost(layout, kept)
        if cost <= budget:
            return Assembly(kept, cost, -1, False, False, ())
    return replan(layout, floors, budget, weights, turn, born, low_water)


def replan(
    layout: Layout,
    floors: dict[str, Fidelity],
    budget: int,
    weights: Weights,
    turn: int,
    born: Mapping[str, int],
    low_water: float = LOW_WATER,
) -> Assembly:
    whole = {**dict.fromkeys(floors, Fidelity.FULL), **dict.fromkeys(layout.index, Fidelity.POINTER)}
    whole_cost = total_cost(layout, whole) if _sent_cost(layout) <= budget * low_water else None
    if whole_cost is not None and whole_cost <= budget * low_water:
        if not layout.index:
            return Assembly(whole, whole_cost, whole_cost, False, True, ())
        target = int(min(budget * low_water, whole_cost + budget * EVIDENCE_SHARE))
        held = frozenset(layout.index) - restorable(layout)
        cost = _upgrade(Ledger(layout, whole), target, weights, turn, born, held)
        return Assembly(whole, cost, whole_cost, False, True, _decisions(layout, floors, whole))
    levels = dict(floors)
    ledger = Ledger(layout, levels)
    minimum = ledger.cost
    paged: frozenset[str] = frozenset()
    if minimum > budget:  # a tool result of the newest turn too big to send whole: page it too
        floors = _relaxed(layout, floors)
        paged = frozenset(p for p in layout.order[layout.newest :] if floors[p] < Fidelity.FULL)
        levels = dict(floors)
        ledger = Ledger(layout, levels, ledger.shape)
        minimum = ledger.cost
    if minimum > budget:
        whole_cost = total_cost(layout, whole) if whole_cost is None else whole_cost
        if whole_cost < minimum:  # stubs can cost more than tiny messages sent whole
            levels, minimum = whole, whole_cost
        insufficient = minimum > budget
        return Assembly(levels, minimum, minimum, insufficient, True, _decisions(layout, floors, levels))
    target = low_mark(budget, minimum, low_water)
    cost = _upgrade(ledger, target, weights, turn, born, paged | frozenset(layout.index))
    return Assembly(levels, cost, minimum, False, True, _decisions(layout, floors, levels))


def _sent_cost(layout: Layout) -> int:
    """The messages' cost sent whole, without the evidence index and retained state: a lower
    bound of `total_cost` at full (no block folds there), in one pass over the pages."""
    costs, full = layout.costs, Fidelity.FULL
    return REPLY_PRIMING + sum([costs[p][full] for p in layout.order])


def low_mark(budget: int, minimum: int, low_water: float) -> int:
    """Where a re-plan lands: `low_water` of the budget (1.0 fills it); when the minimum set is
    already above that, the minimum set itself. (Filling the budget there instead left no room
    to append into: at 4,000 tokens, where the pinned pages and a large newest turn often pass the
    mark, nearly every turn re-planned and rewrote the prompt after its first stub. On the 12
    real traces landing at the minimum costs less with a prompt cache and had no more faults:
    `python -m bench cache-gap`.)"""
    mark = int(budget * low_water)
    return mark if minimum <= mark else minimum


def _relaxed(layout: Layout, floors: dict[str, Fidelity]) -> dict[str, Fidelity]:
    """Floors with the newest turn's large tool results paged (`oversize_floor`) instead of
    whole: the agent's own words stay whole, a tool's large output may not."""
    relaxed = dict(floors)
    for page_id in layout.order[layout.newest :]:
        relaxed[page_id] = min(relaxed[page_id], oversize_floor(layout.pages[page_id], layout.unfinished))
    return relaxed


def oversize_floor(page: Page, unfinished: frozenset[str] = frozenset()) -> Fidelity:
    """A newest-turn tool result over OVERSIZE_TOKENS may go down to the highest level below full
    that names the page (so the model can recall the rest); anything else stays whole. Such a
    result among the `unfinished` pages has no lower level yet: `LevelsNeeded`."""
    if not may_page(page):
        return Fidelity.FULL
    if page.id in unfinished:
        raise LevelsNeeded(page.id)
    for level in (Fidelity.STRUCTURED, Fidelity.POINTER):
        if page.id in page.reprs.at(level).text:
            return level
    return Fidelity.FULL


def may_page(page: Page) -> bool:
    """A tool result over OVERSIZE_TOKENS: of the newest turn, it may be paged (`oversize_floor`)."""
    return page.provenance.role == "tool" and page.tokens(Fidelity.FULL) > OVERSIZE_TOKENS


def score(layout: Layout, page_id: str, weights: Weights, turn: int, born: Mapping[str, int]) -> float:
    page = layout.pages[page_id]
    pin = Pin.HARD if pinned_hard(layout, page) else page.pin
    boost = weights.pin_hard if pin is Pin.HARD else weights.pin_soft if pin is Pin.SOFT else 0.0
    age = 0 if page_id in layout.referenced else max(turn - born.get(page_id, turn), 0)
    recency = weights.recency_decay**age  # paged-out evidence the plan or the last turns name is as if new
    return page.base_utility + boost + weights.recency * recency + weights.recompute * page.recompute_cost


def _upgrade(
    ledger: Ledger,
    target: int,
    weights: Weights,
    turn: int,
    born: Mapping[str, int],
    paged: frozenset[str] = frozenset(),
) -> int:
    """Phase 2, on the ledger's levels. Pages in `paged` (oversized newest-turn results, the
    evidence index when the transcript itself does not fit whole) keep their level."""
    layout, levels, block_of = ledger.layout, ledger.levels, ledger.shape.block_of
    scores = {
        p: score(layout, p, weights, turn, born)
        for p, level in levels.items()
        if level < Fidelity.FULL and p not in paged
    }
    heap = [_step(layout, p, levels[p], value) for p, value in scores.items()]
    heapq.heapify(heap)
    applied: list[tuple[str, Fidelity]] = []
    cost = ledger.cost  # the running estimate the upgrades are chosen by
    pop, push, costs_of, full = heapq.heappop, heapq.heappush, layout.costs, Fidelity.FULL  # the loop's names, local
    while heap:
        _, page_id, step = pop(heap)
        current = levels[page_id]
        if current + 1 != step:
            continue
        costs = costs_of[page_id]
        if cost + costs[step] - max(STUB, costs[current]) > target:
            continue  # `_delta` is at least this (a fold saves one stub at most): it would not fit
        level = LADDER[step]
        delta = _delta(ledger, block_of.get(page_id, -1), page_id, level)
        if cost + delta > target:
            continue
        applied.append((page_id, current))
        ledger.set(page_id, level)
        cost += delta
        if step < full:
            push(heap, _step(layout, page_id, level, scores[page_id]))
    return _settle(ledger, target, applied)


def _step(layout: Layout, page_id: str, level: int, value: float) -> tuple[float, str, int]:
    """The heap entry for a page's next upgrade: best utility per token first, then (id, level)."""
    costs = layout.costs[page_id]
    gain = costs[level + 1] - costs[level]
    return (-(value / gain) if gain > 0 else float("-inf"), page_id, level + 1)


def _delta(ledger: Ledger, block: int, page_id: str, level: Fidelity) -> int:
    """Token change of one upgrade. Taking a block out of a span run splits the run (one more
    stub) or ends it (one stub less). The block's span entries are not credited (a long span
    does not list its older pages, so leaving it may save nothing), nor are facts it newly
    covers: an over-estimate, which the exact accounting at the end corrects. Block -1: a page of
    the evidence index, whose line stays when its text is shown."""
    costs = ledger.layout.costs[page_id]
    change = costs[level] - costs[ledger.levels[page_id]]
    if block < 0 or not ledger.collapsible(block):
        return change
    after = ledger.block_cost[block] + change  # the block's members at their levels, this page's changed
    left = block > 0 and ledger.collapsible(block - 1)
    right = block + 1 < len(ledger.block_cost) and ledger.collapsible(block + 1)
    return after + (STUB if left and right else -STUB if not (left or right) else 0)


def _settle(ledger: Ledger, target: int, applied: list[tuple[str, Fidelity]]) -> int:
    """Keep the longest run of the upgrades, in the order they were applied, whose exact
    accounting fits the target, found by bisection over the ledger (undoing and redoing upgrades
    costs what they change, not the session). Keeping none fits: the floors do."""
    if ledger.cost <= target:
        return ledger.cost
    kept, over = 0, len(applied)  # keeping `kept` upgrades fits; keeping `over` does not
    held = len(applied)  # upgrades the ledger holds
    while over - kept > 1:
        middle = (kept + over) // 2
        held = _hold(ledger, applied, held, middle)
        if ledger.cost <= target:
            kept = middle
        else:
            over = middle
    _hold(ledger, applied, held, kept)
    del applied[kept:]
    return ledger.cost


def _hold(ledger: Ledger, applied: list[tuple[str, Fidelity]], held: int, count: int) -> int:
    """Bring the ledger from holding the first `held` upgrades to holding the first `count`
    (each upgrade is one step up from the level it records)."""
    for page_id, level in reversed(applied[count:held]):
        ledger.set(page_id, level)
    for page_id, level in applied[held:count]:
        ledger.set(page_id, LADDER[level + 1])
    return count


def _decisions(layout: Layout, floors: Mapping[str, Fidelity], levels: Mapping[str, Fidelity]) -> Decisions:
    return Decisions((*layout.order, *layout.index), floors, levels)
