"""The pure fault observer: one turn's faults, decision trace and events (DESIGN §6).

Given the facts of a planned turn (the boundary the agent made, what was dropped and what was
committed, the assembly, repeated tool calls) it says what they amount to, with
`policies.faults` and `policies.observer`, and updates the session's tally. A recall's outcome
is observed after the response, by `recall_events`. `gateway.observability.observe` writes the results to
the audit streams and the metrics.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policies import faults
from policies.assembler import Assembly
from policies.duplicates import Duplicate
from policies.faults import FaultEvent, Reason, Tally
from policies.lifecycle import Event
from policies.observer import prompt_text, required_state, shown_by_levels, shown_in_text
from policies.pages import Fidelity, PageType
from policies.pagetable import PageTable
from policies.recall import Recalled
from policies.transcript import Message

BOUNDARIES = frozenset({Event.COMPACTION, Event.RESET, Event.PRUNE})
QUIET = frozenset({Event.APPEND, Event.RESEND})  # no boundary: nothing to report


@dataclass(slots=True)
class Observation:
    faults: list[FaultEvent] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    event: str = ""  # the lifecycle event of the turn, when it was a boundary or a start
    residency: dict[tuple[str, str], int] | None = None  # (type, level) -> pages, when the turn re-planned

    def header(self) -> str:
        """`0`, or `N; kind=count ...` for this turn's faults."""
        counts: dict[str, int] = {}
        for event in self.faults:
            if event.is_fault:
                counts[event.kind.value] = counts.get(event.kind.value, 0) + 1
        total = sum(counts.values())
        return str(total) if not total else f"{total}; " + " ".join(f"{k}={n}" for k, n in sorted(counts.items()))


@dataclass(frozen=True, slots=True)
class TurnFacts:
    """What the pipeline knows about a planned turn."""

    event: Event
    messages: Sequence[Message]  # the forwarded prompt
    assembly: Assembly
    before: Mapping[str, Fidelity]  # levels of the previous prompt
    dirty: Sequence[str]  # state pages the agent's rewrite dropped
    committed: frozenset[str]  # pages the write-back memory holds
    duplicates: Sequence[Duplicate]


def observe(table: PageTable, facts: TurnFacts) -> Observation:
    """The turn's faults, decision records and events; the table's tally is updated."""
    found = _faults(table, facts)
    table.tally = faults.add(Tally.from_counts(table.tally), found).counts()
    out = Observation(faults=found, events=[e.record() for e in found])
    if facts.assembly.replanned or facts.event in BOUNDARIES:
        causes = {p: Reason.PRUNED_BY_AGENT.value for p in table.restored}
        trace = faults.decision_reasons(facts.before, table.levels, facts.assembly.decisions, causes)
        out.decisions = [{**r.record(), "turn": table.turn} for r in trace]
        out.residency = residency(table)
    return out


def residency(table: PageTable) -> dict[tuple[str, str], int]:
    """How many pages of each type the prompt shows at each level."""
    counts: dict[tuple[str, str], int] = {}
    for page_id, level in table.levels.items():
        key = (table.pages[page_id].type.value, level.label)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _faults(table: PageTable, facts: TurnFacts) -> list[FaultEvent]:
    insufficient = facts.assembly.insufficient
    found = faults.from_duplicates(facts.duplicates)
    if facts.event in BOUNDARIES:
        required = required_state(table)
        shown = shown_in_text(table, required, prompt_text(facts.messages))
        found += faults.post_boundary_misses(facts.event.value, required, shown, insufficient)
        found += faults.flush_misses(_unsettled(table, facts.dirty, required), facts.committed | _held(table))
    elif facts.assembly.replanned:  # re-planning is O(n) already; appending turns pay nothing here
        pinned = {p: f for p, f in required_state(table).items() if p in table.levels}
        found += faults.pinned_misses(pinned, shown_by_levels(table, pinned), insufficient)
    if insufficient:
        found.append(faults.insufficiency(facts.assembly.minimum, table.cost))
    return found


def _unsettled(table: PageTable, dirty: Sequence[str], required: Mapping[str, Fidelity]) -> list[str]:
    """Dropped state that nothing supersedes: a dropped plan is settled when a newer one is current."""
    pages = table.pages
    current_plan = any(pages[p].type is PageType.PLAN for p in required)
    return [p for p in dirty if not (current_plan and pages[p].type is PageType.PLAN)]


def _held(table: PageTable) -> set[str]:
    """State the transcript itself still holds: not lost, whatever the write-back did."""
    return {*table.in_order, *table.carried, *(f for p in table.order for f in table.facts.get(p, ()))}


def recall_events(outcomes: Sequence[Recalled], earlier: Collection[str] = frozenset()) -> Observation:
    """After the response: every recall's reason code in the decision trace; silent recalls and
    refetches (a page a recall had served before, degraded again since) as faults."""
    out = Observation()
    out.faults = faults.silent_recalls([(",".join(r.pages), r.code, r.text) for r in outcomes])
    out.faults += faults.refetches(served_pages(outcomes), earlier, {})
    out.decisions = [{"kind": "recall", "code": r.code, "pages": list(r.pages), "tokens": r.tokens} for r in outcomes]
    out.events = [e.record() for e in out.faults]
    return out


def served_pages(outcomes: Sequence[Recalled]) -> list[str]:
    """The pages recalls served (answered `ok`), in order."""
    return [p for r in outcomes if r.code == "ok" for p in r.pages]


def recall_hits(outcomes: Sequence[Recalled]) -> int:
    """H of the thrash index: one hit per page a recall served."""
    return len(served_pages(outcomes))
