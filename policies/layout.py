"""The shape of an assembled prompt and its exact token accounting.

Messages group into blocks: an assistant message with `tool_calls` together with the tool
results that answer it, or a single message. A block whose pages all sit at pointer level,
none of them pinned hard, is *collapsible*: a run of neighbouring collapsible blocks renders
as one span stub listing the page ids, which costs far less than a stub per message and keeps
tool-call pairing valid (whole groups go or stay). A stub lists its newest SPAN_LISTED pages
and names the older ones as one range (`p:first..p:last`) that the recall tool expands, so a
stub's cost is bounded however long the session grows. Extracted facts (constraints, preferences, intents)
cost nothing while a parent that holds them is resident at a level that contains them;
otherwise they are listed in one retained-state message before the newest turn. State carried
across a compaction or reset (facts, the current plan, a dropped system prompt) is listed there
too: no message in the transcript holds it any more.

Evidence the transcript no longer holds (tool results dropped by a compaction, a reset or an
edit: `policies.pagetable.paged_out`) is listed in one evidence-index message right after the
leading instructions, where a boundary cuts the transcript anyway, so the index disturbs no
cached prefix beyond the one the agent's rewrite already changed. Each dropped result is a page
of the selection like any other: at pointer it is one line of the index (bounded like a span
stub: its newest INDEX_LISTED lines, the older ones as one range), above pointer its line is
followed by its representation at that level, when the budget lets the selector bring it back
(`restorable`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from policies.pages import LEVELS, Fidelity, Page, PageType, Pin
from policies.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, framed

if TYPE_CHECKING:
    from policies.prefix import Prefix

SPAN_HEADER_TOKENS = 48  # upper bound of the span stub's fixed text (checked by tests)
SPAN_LISTED = 32  # a span stub lists its newest pages one by one, at most this many
RANGE_LINE_TOKENS = 64  # upper bound of the line naming the older ones as a range (checked by tests)
RETAINED_HEADER_TOKENS = 40  # upper bound of the retained-state message's fixed text
LINE_TOKENS = 1  # the newline between listed entries
INDEX_HEADER_TOKENS = 56  # upper bound of the evidence index's fixed text (checked by tests)
INDEX_LISTED = 16  # the evidence index lists its newest pointer-level pages one by one, at most this many
INSTRUCTION_ROLES = frozenset({"system", "developer"})
PLAN_WHOLE_TOKENS = 800  # a current plan this small is kept whole


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything about one request's transcript that does not depend on the levels chosen."""

    order: tuple[str, ...]  # message page ids in transcript order
    blocks: tuple[tuple[int, int], ...]  # [start, stop) positions of each block
    newest: int  # position where the newest turn starts
    pages: Mapping[str, Page]
    names: Mapping[str, str]  # the `name` of message pages that carry one
    entries: Mapping[str, int]  # span entry tokens per page
    facts: tuple[tuple[str, tuple[tuple[str, frozenset[Fidelity]], ...]], ...]
    # each live fact: (fact page id, ((parent page id, parent levels that contain it), ...))
    current_plan: str | None
    costs: Mapping[str, tuple[int, ...]]  # whole-message tokens per level, indexed by Fidelity
    eligible: tuple[bool, ...]  # per block: may fold into a span (not newest, nothing hard)
    restored: frozenset[str] = frozenset()  # pages shown from the table at full, not as the client sent them
    index: tuple[str, ...] = ()  # paged-out evidence, oldest first: listed in the evidence index
    anchor: int = 0  # position the evidence index is shown before: after the leading instructions
    referenced: frozenset[str] = frozenset()  # index pages the current plan or the last turns name
    continues: bool = False  # the transcript opens with a summary: it goes on with the dropped work
    unfinished: frozenset[str] = frozenset()  # newest-turn pages whose lower levels are not made yet (sent whole)


def make_layout(
    order: tuple[str, ...],
    pages: Mapping[str, Page],
    names: Mapping[str, str],
    entries: Mapping[str, int],
    facts: tuple[tuple[str, tuple[tuple[str, frozenset[Fidelity]], ...]], ...],
    current_plan: str | None,
    restored: frozenset[str] = frozenset(),
    index: tuple[str, ...] = (),
    referenced: frozenset[str] = frozenset(),
    continues: bool = False,
    known: Prefix | None = None,
    unfinished: frozenset[str] = frozenset(),
) -> Layout:
    """Lay out a transcript once per planning pass: blocks, the newest turn, per-level costs.
    `index`: the paged-out evidence (its pages' `entries` are their index lines); `referenced`:
    those of them the current plan or the last turns name (policies.pagetable); `continues`: the
    transcript goes on from a summary of what was dropped (a compaction, not a fresh start).
    `unfinished`: newest-turn pages laid out before their lower levels exist; every level of
    theirs is priced as the full one, which is the level they are sent at (their span entries
    are never read: a block of the newest turn does not fold). `known`: the layout of the
    transcript so far (policies.prefix), brought up to `order` and used instead of a pass over
    the whole transcript; the same layout either way."""
    newest = newest_turn(order, pages)
    if known is not None:
        known.extend(order, pages, names, unfinished)
        blocks, costs = tuple(known.blocks), dict(known.costs)
    else:
        blocks = group_blocks(order, pages)
        costs = {p: level_costs(pages[p], p in names) for p in order}
    costs.update((p, _index_costs(pages[p], entries[p])) for p in index)
    anchor = leading_instructions(order, pages)
    layout = Layout(order, blocks, newest, pages, names, entries, facts, current_plan, costs, (), restored)
    layout = replace(
        layout,
        index=index,
        anchor=anchor,
        referenced=referenced & frozenset(index),
        continues=continues,
        unfinished=unfinished,
    )
    if known is not None:
        return replace(layout, eligible=known.eligible(newest, current_plan))
    return replace(layout, eligible=tuple(_eligible(layout, start, stop) for start, stop in blocks))


def level_costs(page: Page, named: bool) -> tuple[int, ...]:
    """A message page's whole-message tokens per level, indexed by Fidelity."""
    return (0, *(framed(page.tokens(level), named=named) for level in LEVELS))


def _index_costs(page: Page, entry: int) -> tuple[int, ...]:
    """An index page's share of the index message per level: its line, then the text below it.
    (At pointer, a page among the older ones is named by the range line instead: `index_cost`.)"""
    line = entry + LINE_TOKENS
    return (0, line, *(line + page.tokens(level) + LINE_TOKENS for level in LEVELS[1:]))


def restorable(layout: Layout) -> frozenset[str]:
    """The index pages the selector may bring back above pointer: any of them when the transcript
    continues from a summary (the same work goes on: the newest evidence is likely needed), else
    (a reset, an edit: the agent started over) only those the plan or the last turns name, so a
    fresh start is not handed old tool output nobody asked for."""
    return frozenset(layout.index) if layout.continues else layout.referenced


def leading_instructions(order: Sequence[str], pages: Mapping[str, Page]) -> int:
    """How many messages the transcript opens with that are instructions (system, developer)."""
    count = 0
    for page_id in order:
        if pages[page_id].provenance.role not in INSTRUCTION_ROLES:
            break
        count += 1
    return count


def _eligible(layout: Layout, start: int, stop: int) -> bool:
    if stop > layout.newest:
        return False
    for page_id in layout.order[start:stop]:
        page = layout.pages[page_id]
        if pinned_hard(layout, page) or page.type is PageType.BOOTSTRAP:
            return False
    return True


def message_cost(layout: Layout, page_id: str, level: Fidelity) -> int:
    return layout.costs[page_id][level]


def pinned_hard(layout: Layout, page: Page) -> bool:
    if page.type is PageType.PLAN:
        return page.id == layout.current_plan
    return page.pin is Pin.HARD


def collapsible(layout: Layout, block: int, levels: Mapping[str, Fidelity]) -> bool:
    if not layout.eligible[block]:
        return False
    start, stop = layout.blocks[block]
    return all(levels[p] == Fidelity.POINTER for p in layout.order[start:stop])


def uncovered_facts(layout: Layout, levels: Mapping[str, Fidelity]) -> list[str]:
    missing = []
    for fact_id, parents in layout.facts:
        if not any(levels.get(parent, Fidelity.NONE) in holds for parent, holds in parents):
            missing.append(fact_id)
    return missing


def total_cost(layout: Layout, levels: Mapping[str, Fidelity]) -> int:
    """Exact accounting (an upper bound where text is joined) of the rendered prompt's messages."""
    cost = REPLY_PRIMING
    span: list[int] = []  # entry costs of the open span run
    order, costs, entries, eligible = layout.order, layout.costs, layout.entries, layout.eligible
    for block, (start, stop) in enumerate(layout.blocks):
        members = order[start:stop]
        if eligible[block] and all(levels[p] == Fidelity.POINTER for p in members):  # `collapsible`, inline
            span.extend(entries[p] for p in members)
            continue
        if span:
            cost, span = cost + span_cost(span), []
        cost += sum(costs[p][levels[p]] for p in members)
    if span:
        cost += span_cost(span)
    return cost + index_cost(layout, levels) + retained_cost(layout, uncovered_facts(layout, levels))


def span_cost(entries: Sequence[int]) -> int:
    """One span stub: its header, its newest SPAN_LISTED entries one per line, and one range line
    for the older ones (recall expands a range). Bounded, however long the session grows."""
    return stub_cost(len(entries), sum(entries[-SPAN_LISTED:]))


def stub_cost(count: int, listed: int) -> int:
    """A span stub over `count` pages whose newest SPAN_LISTED entries cost `listed` tokens."""
    older = RANGE_LINE_TOKENS + LINE_TOKENS if count > SPAN_LISTED else 0
    return MESSAGE_OVERHEAD + SPAN_HEADER_TOKENS + listed + LINE_TOKENS * min(count, SPAN_LISTED) + older


def index_cost(layout: Layout, levels: Mapping[str, Fidelity]) -> int:
    """The evidence index message: its header, the pointer-level pages as a span stub lists its
    pages (the newest INDEX_LISTED one per line, the older as one range line), and each page
    above pointer as its line and its text at that level. Nothing when the index is empty."""
    if not layout.index:
        return 0
    listed = [layout.entries[p] for p in layout.index if levels.get(p, Fidelity.POINTER) <= Fidelity.POINTER]
    shown = sum(layout.costs[p][levels[p]] for p in layout.index if levels.get(p, Fidelity.POINTER) > Fidelity.POINTER)
    older = RANGE_LINE_TOKENS + LINE_TOKENS if len(listed) > INDEX_LISTED else 0
    body = sum(listed[-INDEX_LISTED:]) + LINE_TOKENS * len(listed[-INDEX_LISTED:]) + older
    return MESSAGE_OVERHEAD + INDEX_HEADER_TOKENS + body + shown


def retained_cost(layout: Layout, fact_ids: Sequence[str]) -> int:
    return retained_message(len(fact_ids), sum(retained_line(layout.pages[f]) for f in fact_ids))


def retained_message(count: int, listing: int) -> int:
    """The retained-state message listing `count` facts whose lines cost `listing` (nothing for none)."""
    return MESSAGE_OVERHEAD + RETAINED_HEADER_TOKENS + listing if count else 0


def retained_line(page: Page) -> int:
    """One fact's line in the retained-state message: its text at `retained_level`, then a newline."""
    return page.tokens(retained_level(page)) + LINE_TOKENS


def retained_level(page: Page) -> Fidelity:
    """The level a page takes in the retained-state block: a rule, preference or intent whole (it
    is one sentence: a pointer to it would not state it), a plan as `plan_floor` says, anything else (a
    system prompt) at its floor."""
    if page.extracted:
        return Fidelity.FULL
    return plan_floor(page) if page.type is PageType.PLAN else page.floor


def plan_floor(page: Page) -> Fidelity:
    """The current plan's floor: whole while it is small (the steps as the agent wrote them, not a
    digest of them), else the configured floor."""
    return Fidelity.FULL if page.tokens(Fidelity.FULL) <= PLAN_WHOLE_TOKENS else page.floor


def newest_turn(order: Sequence[str], pages: Mapping[str, Page]) -> int:
    """Where the newest turn starts: after the model last spoke, or at its last tool call."""
    for position in range(len(order) - 1, -1, -1):
        page = pages[order[position]]
        if page.provenance.role == "assistant":
            if page.reprs.full.tool_calls or position == len(order) - 1:
                return position
            return position + 1
    for position in range(len(order) - 1, -1, -1):
        if pages[order[position]].provenance.role == "user":
            return position
    return max(len(order) - 1, 0)


def group_blocks(order: Sequence[str], pages: Mapping[str, Page]) -> tuple[tuple[int, int], ...]:
    blocks: list[tuple[int, int]] = []
    extend_blocks(blocks, frozenset(), order, pages, 0)
    return tuple(blocks)


def extend_blocks(
    blocks: list[tuple[int, int]],
    open_calls: frozenset[str],
    order: Sequence[str],
    pages: Mapping[str, Page],
    start: int,
) -> frozenset[str]:
    """Group positions `start` on into `blocks` (those before `start`, with `open_calls` the
    calls of the last block still unanswered); returns the calls left open after them."""
    for position in range(start, len(order)):
        page = pages[order[position]]
        if page.provenance.role == "tool" and page.provenance.tool_call_id in open_calls and blocks:
            blocks[-1] = (blocks[-1][0], position + 1)
            continue
        blocks.append((position, position + 1))
        open_calls = frozenset(c.id for c in page.reprs.full.tool_calls)
    return open_calls
