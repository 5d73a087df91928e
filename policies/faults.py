"""The fault observer: the paper's machine-countable faults, the thrash index, and the reasons
behind every change of residency. Pure: the caller gathers the facts of a turn and records
what these functions return.

"Agent faults are silent": unlike an OS page fault nothing traps, so the harness counts them.
The six policy-controllable faults (a correct policy prevents them given the budget):
- refetch: a tool result re-retrieved after eviction. Here: a page recalled again after an
  earlier recall, because it was degraded again in the prompt the model saw.
- duplicate_tool: an equivalent tool call re-executed because its result was evicted
  (equivalence by canonical signature, see policies.duplicates).
- pinned_invariant_miss: a hard-pinned page absent (or below its floor) at assembly although
  the minimum set fits.
- post_compaction_bootstrap: a required bootstrap or policy page missing after a compaction
  or reset.
- silent_recall: a lookup that returns empty without a reason code.
- flush_miss: dirty pages lost because the context was destroyed before they were committed.

Not faults, counted apart:
- duplicate_signature: a repeated tool call whose result is still resident. Logged, not a
  fault (a workload signal), but a paging event all the same: it counts in thrash.
- physical_insufficiency: the minimum-fidelity set exceeds the budget. No policy can prevent
  it, so misses on such a turn are not faults.

Thrash index, after Denning (1968): thrash = F / (H + 1), where F is the paging events (faults
plus duplicate-signature alerts) and H the hits over the run. The caller counts H: pages a
recall served `ok`, and the pages of duplicate-signature alerts found resident.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from policies.assembler import Decision
from policies.duplicates import ALERT, Duplicate
from policies.pages import Fidelity

DETAIL_CHARS = 160
RECALL_REASONS = frozenset({"no_match", "denied", "backend_error"})  # an empty answer with one is not silent
HITS = "hits"  # the key of H in `Tally.counts`


class FaultKind(StrEnum):
    REFETCH = "refetch"
    DUPLICATE_TOOL = "duplicate_tool"
    PINNED_INVARIANT_MISS = "pinned_invariant_miss"
    POST_COMPACTION_BOOTSTRAP = "post_compaction_bootstrap"
    SILENT_RECALL = "silent_recall"
    FLUSH_MISS = "flush_miss"
    DUPLICATE_SIGNATURE = "duplicate_signature"  # an alert, not a fault
    PHYSICAL_INSUFFICIENCY = "physical_insufficiency"  # not policy-controllable


NOT_FAULTS = frozenset({FaultKind.DUPLICATE_SIGNATURE, FaultKind.PHYSICAL_INSUFFICIENCY})
FAULTS = tuple(kind for kind in FaultKind if kind not in NOT_FAULTS)


class Reason(StrEnum):
    """Why a page's level changed, in the decision trace."""

    BUDGET = "budget"  # degraded to fit (or upgraded as the budget allowed)
    FLOOR = "floor"  # held at its floor
    NEWEST_TURN = "newest_turn"
    KEPT = "kept"
    PRUNED_BY_AGENT = "pruned_by_agent"
    COMPACTED_BY_AGENT = "compacted_by_agent"
    RECALLED = "recalled"


class Action(StrEnum):
    DEGRADE = "degrade"
    EVICT = "evict"  # down to a pointer (listed in a span or a stub) or out of the prompt
    UPGRADE = "upgrade"


@dataclass(frozen=True, slots=True)
class FaultEvent:
    kind: FaultKind
    page_id: str  # "" when no page is concerned (physical insufficiency)
    detail: str  # a short printable reason

    @property
    def is_fault(self) -> bool:
        return self.kind not in NOT_FAULTS

    def record(self) -> dict[str, str]:
        """The event as a flat JSON-ready record for the session's event stream."""
        category = "fault" if self.is_fault else "alert" if self.kind is FaultKind.DUPLICATE_SIGNATURE else "limit"
        return {"type": category, "kind": self.kind.value, "page_id": self.page_id, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class TraceRecord:
    page_id: str
    action: Action
    before: Fidelity
    after: Fidelity
    reason: str  # a `Reason` value, or the assembler's own code as it gave it

    def record(self) -> dict[str, str]:
        """The decision as a flat JSON-ready record for the session's decision trace."""
        return {
            "page_id": self.page_id,
            "action": self.action.value,
            "from": self.before.label,
            "to": self.after.label,
            "reason": str(self.reason),
        }


@dataclass(frozen=True, slots=True)
class Tally:
    """A session's counts: faults per kind, alerts, hits, turns that were insufficient."""

    faults: Mapping[str, int] = field(default_factory=dict)
    alerts: int = 0
    hits: int = 0
    insufficient: int = 0

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())

    @property
    def thrash(self) -> float:
        """F / (H + 1), F = faults + duplicate-signature alerts."""
        return (self.fault_count + self.alerts) / (self.hits + 1)

    def counts(self) -> dict[str, int]:
        """One flat map (the form `PageTable.tally` stores), keys sorted, zeros left out."""
        flat = {
            **self.faults,
            FaultKind.DUPLICATE_SIGNATURE.value: self.alerts,
            FaultKind.PHYSICAL_INSUFFICIENCY.value: self.insufficient,
            HITS: self.hits,
        }
        return {key: flat[key] for key in sorted(flat) if flat[key]}

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> Tally:
        """The inverse of `counts`; unknown keys are ignored."""
        faults = {kind.value: counts[kind.value] for kind in FAULTS if counts.get(kind.value)}
        return cls(
            faults=faults,
            alerts=counts.get(FaultKind.DUPLICATE_SIGNATURE.value, 0),
            hits=counts.get(HITS, 0),
            insufficient=counts.get(FaultKind.PHYSICAL_INSUFFICIENCY.value, 0),
        )


def add(tally: Tally, events: Sequence[FaultEvent], hits: int = 0) -> Tally:
    """The tally after one turn's events and hits."""
    faults = dict(tally.faults)
    for event in events:
        if event.is_fault:
            faults[event.kind.value] = faults.get(event.kind.value, 0) + 1
    return Tally(
        faults={kind: faults[kind] for kind in sorted(faults)},
        alerts=tally.alerts + _count(events, FaultKind.DUPLICATE_SIGNATURE),
        hits=tally.hits + hits,
        insufficient=tally.insufficient + _count(events, FaultKind.PHYSICAL_INSUFFICIENCY),
    )


def _count(events: Sequence[FaultEvent], kind: FaultKind) -> int:
    return sum(1 for event in events if event.kind is kind)


def insufficiency(minimum: int, budget: int) -> FaultEvent:
    """A turn whose minimum set did not fit: recorded, never a fault."""
    return FaultEvent(FaultKind.PHYSICAL_INSUFFICIENCY, "", f"minimum set {minimum} tokens exceeds budget {budget}")


def pinned_misses(
    required: Mapping[str, Fidelity], shown: Mapping[str, Fidelity], insufficient: bool
) -> list[FaultEvent]:
    """Required pages (id -> floor) absent from the forwarded prompt or shown below their floor.
    None when the minimum set did not fit: that is physical insufficiency, not a policy fault."""
    return _misses(FaultKind.PINNED_INVARIANT_MISS, "", required, shown, insufficient)


def post_boundary_misses(
    event: str, required: Mapping[str, Fidelity], shown: Mapping[str, Fidelity], insufficient: bool
) -> list[FaultEvent]:
    """After a compaction or reset (`event`): required bootstrap and policy pages not re-installed."""
    return _misses(FaultKind.POST_COMPACTION_BOOTSTRAP, f"after {event}: ", required, shown, insufficient)


def _misses(
    kind: FaultKind, prefix: str, required: Mapping[str, Fidelity], shown: Mapping[str, Fidelity], insufficient: bool
) -> list[FaultEvent]:
    if insufficient:
        return []
    out = []
    for page_id, floor in required.items():
        level = shown.get(page_id, Fidelity.NONE)
        if level < floor:
            seen = "absent" if level is Fidelity.NONE else f"shown at {level.label}"
            out.append(FaultEvent(kind, page_id, printable(f"{prefix}{seen}, floor {floor.label}")))
    return out


def flush_misses(dirty: Collection[str], committed: Collection[str]) -> list[FaultEvent]:
    """Pages that carried state (dirty) dropped at a boundary without being committed."""
    lost = sorted(set(dirty) - set(committed))
    return [FaultEvent(FaultKind.FLUSH_MISS, page_id, "dirty page dropped before commit") for page_id in lost]


def silent_recalls(outcomes: Sequence[tuple[str, str, str]]) -> list[FaultEvent]:
    """(page id or call id, code, text) per recall: an empty answer whose code is not a known
    reason (`no_match`, `denied`, `backend_error`) is silent, `ok` included."""
    out = []
    for ref, code, text in outcomes:
        if not text.strip() and code not in RECALL_REASONS:
            out.append(FaultEvent(FaultKind.SILENT_RECALL, ref, printable(f"empty answer, code {code or 'none'}")))
    return out


def refetches(
    recalled: Sequence[str], earlier_recalled: Collection[str], levels: Mapping[str, Fidelity]
) -> list[FaultEvent]:
    """Pages recalled this turn that an earlier recall had served and the prompt the model saw
    (`levels`) showed below full again: re-retrieved after eviction. Each page once."""
    out = []
    for page_id in dict.fromkeys(recalled):
        level = levels.get(page_id, Fidelity.NONE)
        if page_id in earlier_recalled and level < Fidelity.FULL:
            out.append(FaultEvent(FaultKind.REFETCH, page_id, f"recalled again, shown at {level.label}"))
    return out


def from_duplicates(found: Sequence[Duplicate]) -> list[FaultEvent]:
    """Repeated tool calls: duplicate_tool faults and duplicate_signature alerts, in order."""
    out = []
    for dup in found:
        kind = FaultKind.DUPLICATE_SIGNATURE if dup.kind == ALERT else FaultKind.DUPLICATE_TOOL
        detail = printable(f"call {dup.call_id} repeats it, result shown at {dup.level.label}")
        out.append(FaultEvent(kind, dup.earlier, detail))
    return out


def decision_reasons(
    previous: Mapping[str, Fidelity],
    levels: Mapping[str, Fidelity],
    decisions: Sequence[Decision],
    causes: Mapping[str, str] | None = None,
) -> list[TraceRecord]:
    """Every change of level from the last prompt (`previous`) to this one (`levels`), with a
    reason. A page new to the session counts as coming in at full (the agent sent it whole).
    `causes` (page id -> reason) names what the agent or a recall did; it wins over the
    assembler's decisions. Order: pages of `levels` as given, then the pages that left."""
    reasons = {d.page_id: d.reason for d in decisions if levels.get(d.page_id) == d.level}
    given = causes or {}
    out = []
    for page_id, level in levels.items():
        before = previous.get(page_id, Fidelity.FULL)
        if level != before:
            reason = given.get(page_id) or reasons.get(page_id) or Reason.BUDGET
            out.append(TraceRecord(page_id, _action(before, level), before, level, reason))
    for page_id, before in previous.items():
        if page_id not in levels and before is not Fidelity.NONE:
            reason = given.get(page_id, Reason.COMPACTED_BY_AGENT)
            out.append(TraceRecord(page_id, Action.EVICT, before, Fidelity.NONE, reason))
    return out


def _action(before: Fidelity, after: Fidelity) -> Action:
    if after > before:
        return Action.UPGRADE
    return Action.EVICT if after <= Fidelity.POINTER else Action.DEGRADE


def printable(text: str) -> str:
    """One short line of printable ASCII (non-printable characters become '?')."""
    cleaned = "".join(c if c.isascii() and c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= DETAIL_CHARS else cleaned[: DETAIL_CHARS - 3] + "..."
