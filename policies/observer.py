"""What one turn's forwarded prompt must hold, and what it does hold (the fault observer's facts).

`required_state` names the pages that must survive every boundary, each with its floor: the
system prompt (bootstrap), the rules, preferences and intents stated anywhere in the session (in the
transcript or carried across a compaction or reset) and the current plan.

`shown_in_text` checks the forwarded prompt itself for the state no message of the transcript
carries as such (rules and preferences, carried pages): such a page counts as shown at the
highest level whose text the prompt contains (whitespace aside). It reads the whole prompt, so
the gateway runs it on boundary turns, where the agent has just rewritten its history; other
turns are checked from the assembly's levels (`shown_by_levels`), exact for message pages.

`state_of` lists the state pages held by given positions of the transcript: before a rewrite,
those are the pages the agent is about to drop, which must be committed or carried (else
that is a flush miss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policies.pages import LEVELS, Fidelity, Page, PageType
from policies.pagetable import PageTable
from policies.render import stated
from policies.transcript import Message

STATE_TYPES = frozenset({PageType.BOOTSTRAP, PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT, PageType.PLAN})


def required_state(table: PageTable) -> dict[str, Fidelity]:
    """Page id -> floor for the state the forwarded prompt must hold."""
    pages = table.pages
    required: dict[str, Fidelity] = {}
    plans = [p for p in table.order if pages[p].type is PageType.PLAN]
    for page_id in table.order:
        if pages[page_id].type is PageType.BOOTSTRAP:
            required[page_id] = pages[page_id].floor
        for fact_id in table.facts.get(page_id, ()):
            required[fact_id] = pages[fact_id].floor
    for page_id in table.carried:
        if not (plans and pages[page_id].type is PageType.PLAN):
            required[page_id] = pages[page_id].floor
    if plans:
        required[plans[-1]] = pages[plans[-1]].floor
    return required


def shown_in_text(table: PageTable, required: Mapping[str, Fidelity], prompt: str) -> dict[str, Fidelity]:
    """The level at which the prompt shows each required page (NONE when it does not): a message
    page at the level it was rendered at; a fact or carried page at the highest level whose text
    the prompt holds."""
    text = _flat(prompt)
    levels, in_order = table.levels, table.in_order
    return {p: levels.get(p, Fidelity.NONE) if p in in_order else _shown(table.pages[p], text) for p in required}


def shown_by_levels(table: PageTable, required: Mapping[str, Fidelity]) -> dict[str, Fidelity]:
    """Levels from the last assembly: message pages as chosen, facts and carried state as the
    retained-state block or a holding parent shows them (at their floor at least)."""
    levels = table.levels
    return {p: levels[p] if p in levels else required[p] for p in required}


def prompt_text(messages: Sequence[Message]) -> str:
    return "\n".join(m.text for m in messages)


def state_of(table: PageTable, positions: range) -> list[str]:
    """The state pages held by these positions of the transcript: their facts, their system text,
    and the current plan if they hold it (an older plan was superseded, not lost)."""
    pages, held = table.pages, []
    plans = [p for p in table.order if pages[p].type is PageType.PLAN]
    for page_id in table.order[positions.start : positions.stop]:
        kind = pages[page_id].type
        if kind is PageType.BOOTSTRAP or (kind is PageType.PLAN and page_id == plans[-1]):
            held.append(page_id)
        held.extend(table.facts.get(page_id, ()))
    return list(dict.fromkeys(held))


def _shown(page: Page, text: str) -> Fidelity:
    if page.extracted:  # "rule: <sentence>": a parent states the sentence, the retained block the whole
        sentence = _flat(page.reprs.full.text.partition(": ")[2].rstrip("…"))
        if sentence and sentence in text:
            return Fidelity.FULL
    for level in reversed(LEVELS):
        needle = _flat(stated(page.reprs.at(level)))
        if needle and needle in text:
            return level
    return Fidelity.NONE


def _flat(text: str) -> str:
    return " ".join(text.split())
