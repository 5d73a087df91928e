"""Turn an assembly back into a transcript: pages at their chosen level, spans, retained state.

Messages kept at full are the client's own messages, untouched (their `raw` is forwarded),
except evidence the agent pruned and the gateway restored, which is rebuilt from the page.
Degraded messages carry the chosen representation; tool-call ids, names and pairing are kept.
The evidence index (tool results the transcript no longer holds, policies.layout) is one user
message right after the leading instructions; its text depends only on its pages and their
levels, so it is the same bytes on every turn until they change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from policies.layout import INDEX_LISTED, SPAN_LISTED, Layout, collapsible, retained_level, uncovered_facts
from policies.pages import Fidelity, Representation
from policies.transcript import Message

SPAN_HEADER = (
    "[clawvm: {n} earlier messages paged out to save context; call {tool}(page_ids=[...]) with an id below"
    " to read it, or pass only a query to search all pages]"
)
INDEX_HEADER = (
    "[clawvm evidence index: {n} tool results no longer in this conversation's history; call"
    " {tool}(page_ids=[...]) with an id below to read one, or pass only a query to search all pages]"
)
RANGE_LINE = "{first}..{last} ({n} older pages: pass this range as a page id, with a query to search them)"
RETAINED_HEADER = (
    "[clawvm retained state: rules, preferences, what the user asked for and plan stated earlier in this"
    " conversation; they still apply]"
)


@dataclass(slots=True)
class View:
    """A rendering kept for the next turn: items before the newest turn (an int is the
    position of a message forwarded as sent; a Message is a degraded page or a span stub),
    where the newest turn started, and the retained-state message if any.

    The retained-state message goes right after the block of the last message the gateway built
    in the prefix (a stub or a degraded page), else after the leading system messages: a place that
    does not move while turns are appended, so every request's prefix is the previous request
    whole (provider prompt caches read it back). It is a function of the items alone, so a
    table reloaded from the store renders the same bytes."""

    prefix: list[int | Message]
    newest: int
    retained: Message | None
    retained_ids: frozenset[str] = frozenset()
    tail: dict[int, Message] = field(default_factory=dict)  # newest-turn positions not sent whole

    def stable(self) -> int:
        """How many leading messages of this rendering the next turn forwards unchanged when it
        only appends: the prefix before the newest turn, with the retained-state message."""
        return len(self.prefix) + (self.retained is not None)

    def messages(self, messages: Sequence[Message]) -> list[Message]:
        out = [messages[x] if type(x) is int else x for x in self.prefix]  # type: ignore[index]
        if self.retained is not None:
            out.insert(self.retained_at(out), self.retained)
        if self.tail:
            out.extend(self.tail.get(i, messages[i]) for i in range(self.newest, len(messages)))
        else:
            out.extend(messages[self.newest :])
        return out

    def retained_at(self, prefix: Sequence[Message]) -> int:
        """Where the retained-state message goes among the prefix's messages (see the class)."""
        for index in range(len(self.prefix) - 1, -1, -1):
            if type(self.prefix[index]) is not int:
                return _block_end(prefix, index + 1)
        index = 0
        while index < len(prefix) and prefix[index].role in ("system", "developer"):
            index += 1
        return index


def _block_end(prefix: Sequence[Message], index: int) -> int:
    """The first position at or after `index` that is not a tool result: the end of a block
    whose call was built (a tool result must follow its call)."""
    while index < len(prefix) and prefix[index].role == "tool":
        index += 1
    return index


def render(layout: Layout, levels: Mapping[str, Fidelity], entries: Mapping[str, str], recall_tool: str) -> View:
    prefix: list[int | Message] = []
    span: list[str] = []
    index = Message(role="user", text=index_text(layout, levels, entries, recall_tool)) if layout.index else None
    for block, (start, stop) in enumerate(layout.blocks):
        if start >= layout.newest:
            break
        if index is not None and start >= layout.anchor:
            _flush(prefix, span, entries, recall_tool)
            prefix.append(index)
            index = None
        if collapsible(layout, block, levels):
            span.extend(layout.order[start:stop])
            continue
        _flush(prefix, span, entries, recall_tool)
        prefix.extend(_item(layout, i, levels[layout.order[i]]) for i in range(start, stop))
    _flush(prefix, span, entries, recall_tool)
    if index is not None:
        prefix.append(index)
    facts = uncovered_facts(layout, levels)
    retained = Message(role="system", text=retained_text(layout, facts)) if facts else None
    tail = {
        i: item
        for i in range(layout.newest, len(layout.order))
        if type(item := _item(layout, i, levels[layout.order[i]])) is not int
    }
    return View(prefix, layout.newest, retained, frozenset(facts), tail)


def _flush(prefix: list[int | Message], span: list[str], entries: Mapping[str, str], recall_tool: str) -> None:
    if span:
        prefix.append(Message(role="user", text=span_text(span, entries, recall_tool)))
        span.clear()


def _item(layout: Layout, position: int, level: Fidelity) -> int | Message:
    page_id = layout.order[position]
    if level is Fidelity.FULL and page_id not in layout.restored:
        return position
    page = layout.pages[page_id]
    rep = page.reprs.at(level)
    return Message(
        role=page.provenance.role,
        text=rep.text,
        tool_calls=rep.tool_calls,
        tool_call_id=page.provenance.tool_call_id,
        name=layout.names.get(page.id),
    )


def span_text(page_ids: Sequence[str], entries: Mapping[str, str], recall_tool: str) -> str:
    header = SPAN_HEADER.format(n=len(page_ids), tool=recall_tool)
    listed = page_ids[-SPAN_LISTED:]
    older = page_ids[:-SPAN_LISTED] if len(page_ids) > SPAN_LISTED else ()
    lines = [RANGE_LINE.format(first=older[0], last=older[-1], n=len(older))] if older else []
    return "\n".join([header, *lines, *(entries[p] for p in listed)])


def index_text(layout: Layout, levels: Mapping[str, Fidelity], entries: Mapping[str, str], recall_tool: str) -> str:
    """The evidence index: its header, the range of older pointer-level pages (when there are more
    than INDEX_LISTED), then every other page in order: its line, and below it its text when the
    selector brought it back above pointer."""
    header = INDEX_HEADER.format(n=len(layout.index), tool=recall_tool)
    listed = [p for p in layout.index if levels.get(p, Fidelity.POINTER) <= Fidelity.POINTER]
    older = frozenset(listed[:-INDEX_LISTED]) if len(listed) > INDEX_LISTED else frozenset()
    lines = []
    if older:  # the range expands to every index page from its first to its last
        first, last = listed[0], listed[-INDEX_LISTED - 1]
        n = layout.index.index(last) - layout.index.index(first) + 1
        lines.append(RANGE_LINE.format(first=first, last=last, n=n))
    for page_id in layout.index:
        if page_id in older:
            continue
        level = levels.get(page_id, Fidelity.POINTER)
        lines.append(entries[page_id])
        if level > Fidelity.POINTER:
            lines.append(layout.pages[page_id].reprs.at(level).text)
    return "\n".join([header, *lines])


def retained_text(layout: Layout, fact_ids: Sequence[str]) -> str:
    lines = [stated(layout.pages[f].reprs.at(retained_level(layout.pages[f]))) for f in fact_ids]
    return "\n".join([RETAINED_HEADER, *lines])


def stated(rep: Representation) -> str:
    """A representation as plain text: its text, then its tool calls as `name(arguments)` (a
    plan written through a TodoWrite call is stated by the call)."""
    calls = [f"{c.name}({c.arguments})" for c in rep.tool_calls]
    return "\n".join(part for part in (rep.text, *calls) if part)
