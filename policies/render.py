"""Turn an assembly back into a transcript: pages at their chosen level, spans, retained state.

Messages kept at full are the client's own messages, untouched (their `raw` is forwarded).
Degraded messages carry the chosen representation; tool-call ids, names and pairing are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from policies.layout import Layout, collapsible, uncovered_facts
from policies.pages import Fidelity
from policies.transcript import Message

SPAN_HEADER = "[clawvm: {n} earlier messages paged out to save context; call {tool}(page_ids=[...]) with an id below to read it]"
RETAINED_HEADER = "[clawvm retained state: rules, preferences and plan stated earlier in this conversation; they still apply]"


@dataclass(slots=True)
class _Renderer:
    layout: Layout
    levels: Mapping[str, Fidelity]
    entries: Mapping[str, str]
    recall_tool: str
    out: list[Message] = field(default_factory=list)
    span: list[str] = field(default_factory=list)

    def flush(self) -> None:
        if self.span:
            self.out.append(Message(role="user", text=span_text(self.span, self.entries, self.recall_tool)))
            self.span = []

    def retained(self) -> None:
        facts = uncovered_facts(self.layout, self.levels)
        if facts:
            self.out.append(Message(role="system", text=retained_text(self.layout, facts)))


def render(
    layout: Layout,
    messages: Sequence[Message],
    levels: Mapping[str, Fidelity],
    entries: Mapping[str, str],
    recall_tool: str,
) -> list[Message]:
    r = _Renderer(layout, levels, entries, recall_tool)
    for block, (start, stop) in enumerate(layout.blocks):
        if start == layout.newest:
            r.flush()
            r.retained()
        if collapsible(layout, block, levels):
            r.span.extend(layout.order[start:stop])
            continue
        r.flush()
        r.out.extend(at_level(layout, messages[i], layout.order[i], levels[layout.order[i]]) for i in range(start, stop))
    r.flush()
    return r.out


def at_level(layout: Layout, message: Message, page_id: str, level: Fidelity) -> Message:
    if level is Fidelity.FULL:
        return message
    rep = layout.pages[page_id].reprs.at(level)
    return Message(
        role=message.role,
        text=rep.text,
        tool_calls=rep.tool_calls if message.tool_calls else (),
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def span_text(page_ids: Sequence[str], entries: Mapping[str, str], recall_tool: str) -> str:
    header = SPAN_HEADER.format(n=len(page_ids), tool=recall_tool)
    return "\n".join([header, *(entries[p] for p in page_ids)])


def retained_text(layout: Layout, fact_ids: Sequence[str]) -> str:
    lines = [layout.pages[f].reprs.at(layout.pages[f].floor).text for f in fact_ids]
    return "\n".join([RETAINED_HEADER, *lines])
