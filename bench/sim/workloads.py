"""Synthetic workloads for the sweep: typed pages with token sizes per level, and turns with
demands, arrivals and lifecycle events. Generated from a seed by `random.Random`, so the same
(family, seed) gives the same workload, byte for byte.

Sizes are simulation-scale tokens, like the paper's page budgets (120 to 500): a bootstrap page
is 24 tokens whole and 8 structured, a tool result 16 to 44 whole and one token as a pointer.

Every workload starts with a bootstrap page (project scope, hard-pinned, floor structured), some
constraints (hard-pinned, floor structured), a plan (hard-pinned while current) and preferences
(project scope, soft, floor pointer). Each turn may bring new pages (tool results as evidence, a
new plan version, a learned rule), marks some pages dirty (state that must be written back
before the context is destroyed), and demands pages at the level its step needs them: rules,
plans and preferences at structured, evidence at full. A tool result is used (demanded) on the
turn it arrives. A reused result is a *repeat* when the agent re-issues the same tool call.
Lifecycle events happen at the start of a turn: a compaction (the transcript is summarised) or a
reset (a new session: session-scoped pages are gone, project-scoped ones stay).

The four families, 40 turns each:

- `evidence_heavy`: a tool result almost every turn and two or three draws of recent results
  to reuse per turn (about two distinct ones), half of them repeated calls. Three compactions,
  no reset. Stresses residency of evidence and pointer resolution.
- `plan_drift`: the plan gets a new version every two to four turns (dirty until written back);
  the old version is stale and must not be used: every plan demand names the current version.
  Two compactions and one reset. Stresses tracking the current plan.
- `preference_reset`: four sessions (resets at turns 10, 20, 30); preferences and one rule are
  project-scoped, updated (dirty) during sessions and demanded in every session; each session
  brings its own plan and session rule, and sometimes learns a new project rule. Two
  compactions. Stresses durability across resets.
- `churn`: one to three new tool results every turn, rarely reused (and then mostly by a
  repeated call), five compactions and a reset. Stresses eviction of many unique pages.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from policies.pages import Fidelity, PageType, Pin, Scope

TURNS = 40


class Event(StrEnum):
    COMPACTION = "compaction"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class SimPage:
    id: str
    type: PageType
    sizes: tuple[int, int, int, int]  # tokens at pointer, structured, compressed, full
    floor: Fidelity
    pin: Pin
    scope: Scope
    base_utility: float
    recompute_cost: float

    def tokens(self, level: Fidelity) -> int:
        return 0 if level is Fidelity.NONE else self.sizes[level - 1]


@dataclass(frozen=True, slots=True)
class Demand:
    page_id: str
    level: Fidelity
    repeat: bool = False  # the agent re-issues the tool call that produced the page


@dataclass(frozen=True, slots=True)
class Turn:
    index: int
    event: Event | None
    arrivals: tuple[str, ...]
    dirty: tuple[str, ...]  # pages written this turn: dirty until a write-back commits them
    demands: tuple[Demand, ...]
    plan: str | None  # the current plan once this turn's arrivals are in


@dataclass(frozen=True, slots=True)
class Workload:
    family: str
    seed: int
    pages: Mapping[str, SimPage]
    turns: tuple[Turn, ...]


def upcoming(workload: Workload, turn: int, horizon: int) -> dict[str, int]:
    """How many times each page is demanded in turns [turn, turn + horizon): the oracle's foresight."""
    counts: dict[str, int] = {}
    for step in workload.turns[turn : turn + horizon]:
        for demand in step.demands:
            counts[demand.page_id] = counts.get(demand.page_id, 0) + 1
    return counts


# ---- page makers -------------------------------------------------------------------------


def bootstrap_page(page_id: str) -> SimPage:
    return SimPage(page_id, PageType.BOOTSTRAP, (1, 8, 14, 24), Fidelity.STRUCTURED, Pin.HARD, Scope.PROJECT, 8.0, 0.0)


def constraint_page(page_id: str, scope: Scope) -> SimPage:
    return SimPage(page_id, PageType.CONSTRAINT, (1, 4, 6, 8), Fidelity.STRUCTURED, Pin.HARD, scope, 7.0, 0.0)


def plan_page(page_id: str) -> SimPage:
    return SimPage(page_id, PageType.PLAN, (1, 6, 10, 16), Fidelity.STRUCTURED, Pin.HARD, Scope.SESSION, 6.0, 0.0)


def preference_page(page_id: str) -> SimPage:
    return SimPage(page_id, PageType.PREFERENCE, (1, 3, 5, 8), Fidelity.POINTER, Pin.SOFT, Scope.PROJECT, 5.0, 0.0)


def evidence_page(page_id: str, full: int, recompute: float) -> SimPage:
    sizes = (1, max(full // 6, 2), max(full // 3, 3), full)
    return SimPage(page_id, PageType.EVIDENCE, sizes, Fidelity.POINTER, Pin.SOFT, Scope.SESSION, 5.0, recompute)


# ---- the draft a generator fills ---------------------------------------------------------


@dataclass(slots=True)
class Draft:
    rng: random.Random
    pages: dict[str, SimPage] = field(default_factory=dict)
    live: list[str] = field(default_factory=list)
    plan: str | None = None
    session: int = 0
    versions: int = 0
    evidence: int = 0
    arrivals: list[str] = field(default_factory=list)
    dirty: list[str] = field(default_factory=list)
    demands: dict[str, Demand] = field(default_factory=dict)
    turns: list[Turn] = field(default_factory=list)


def arrive(draft: Draft, page: SimPage, *, dirty: bool = False) -> str:
    draft.pages[page.id] = page
    draft.live.append(page.id)
    draft.arrivals.append(page.id)
    if dirty:
        draft.dirty.append(page.id)
    return page.id


def demand(draft: Draft, page_id: str, level: Fidelity, repeat: bool = False) -> None:
    """Demand a live page; a second demand of the same page in a turn keeps the higher level."""
    if page_id not in draft.live:
        raise ValueError(f"demand of a page that is not live: {page_id}")
    earlier = draft.demands.get(page_id)
    if earlier is None or earlier.level < level:
        draft.demands[page_id] = Demand(page_id, level, repeat or (earlier is not None and earlier.repeat))


def new_plan(draft: Draft) -> str:
    draft.versions += 1
    draft.plan = arrive(draft, plan_page(f"plan:{draft.session}.{draft.versions}"), dirty=True)
    return draft.plan


def new_evidence(draft: Draft, low: int, high: int) -> str:
    draft.evidence += 1
    full = draft.rng.randint(low, high)
    page = evidence_page(f"ev:{draft.evidence}", full, draft.rng.choice((6.0, 8.0, 12.0)))
    page_id = arrive(draft, page)
    demand(draft, page_id, Fidelity.FULL)
    return page_id


def reset(draft: Draft) -> None:
    """A new session: session-scoped pages are gone, and with them the plan."""
    draft.live = [p for p in draft.live if draft.pages[p].scope is Scope.PROJECT]
    draft.session += 1
    draft.versions = 0
    draft.plan = None


def finish(draft: Draft, event: Event | None) -> None:
    index = len(draft.turns)
    demands = tuple(draft.demands[p] for p in sorted(draft.demands))
    draft.turns.append(Turn(index, event, tuple(draft.arrivals), tuple(draft.dirty), demands, draft.plan))
    draft.arrivals, draft.dirty, draft.demands = [], [], {}


def live_of(draft: Draft, page_type: PageType) -> list[str]:
    return [p for p in draft.live if draft.pages[p].type is page_type]


def maybe(draft: Draft, probability: float) -> bool:
    return draft.rng.random() < probability


def demand_some(draft: Draft, page_type: PageType, probability: float) -> None:
    """With `probability`, demand one live page of a type (a rule, a preference) at structured."""
    candidates = live_of(draft, page_type)
    if candidates and maybe(draft, probability):
        demand(draft, draft.rng.choice(candidates), Fidelity.STRUCTURED)


def demand_plan(draft: Draft, probability: float) -> None:
    if draft.plan is not None and maybe(draft, probability):
        demand(draft, draft.plan, Fidelity.STRUCTURED)


def reuse(draft: Draft, window: int, repeat: float) -> None:
    """Reuse one of the `window` most recent earlier tool results (not this turn's)."""
    earlier = [p for p in live_of(draft, PageType.EVIDENCE) if p not in draft.arrivals][-window:]
    if earlier:
        demand(draft, draft.rng.choice(earlier), Fidelity.FULL, maybe(draft, repeat))


def update(draft: Draft, page_type: PageType) -> None:
    """A live page of a type (a preference) is updated: dirty until written back."""
    candidates = live_of(draft, page_type)
    if candidates:
        draft.dirty.append(draft.rng.choice(candidates))


def open_workload(draft: Draft, constraints: int, preferences: int, rule_scope: Scope) -> None:
    """Turn 0: the bootstrap page, the rules, the preferences and the first plan."""
    arrive(draft, bootstrap_page("boot"))
    for k in range(constraints):
        arrive(draft, constraint_page(f"rule:{k}", rule_scope))
    for k in range(preferences):
        arrive(draft, preference_page(f"pref:{k}"))
    new_plan(draft)
    demand(draft, "boot", Fidelity.STRUCTURED)
    demand(draft, draft.plan or "", Fidelity.STRUCTURED)
    finish(draft, None)


def everyday(draft: Draft, boot: float, rule: float, plan: float, pref: float) -> None:
    """The demands every family makes on its standing state."""
    demand_some(draft, PageType.BOOTSTRAP, boot)
    demand_some(draft, PageType.CONSTRAINT, rule)
    demand_plan(draft, plan)
    demand_some(draft, PageType.PREFERENCE, pref)


def run_turns(draft: Draft, events: Mapping[int, Event], step: Callable[[Draft, int], None]) -> None:
    """Turns 1..TURNS-1: the turn's event first, then the family's step."""
    for index in range(1, TURNS):
        event = events.get(index)
        if event is Event.RESET:
            reset(draft)
            new_plan(draft)
        step(draft, index)
        finish(draft, event)


def seal(draft: Draft, family: str, seed: int) -> Workload:
    return Workload(family, seed, dict(draft.pages), tuple(draft.turns))


# ---- the four families -------------------------------------------------------------------


def evidence_heavy(seed: int) -> Workload:
    draft = Draft(random.Random(seed * 4 + 0))
    open_workload(draft, constraints=2, preferences=1, rule_scope=Scope.SESSION)

    def step(d: Draft, index: int) -> None:
        if maybe(d, 0.85):
            new_evidence(d, 16, 36)
        for _ in range(d.rng.choice((2, 2, 3))):
            reuse(d, window=10, repeat=0.5)
        if index % 10 == 5:
            new_plan(d)
        everyday(d, boot=0.3, rule=0.25, plan=0.3, pref=0.15)

    run_turns(draft, {10: Event.COMPACTION, 20: Event.COMPACTION, 30: Event.COMPACTION}, step)
    return seal(draft, "evidence_heavy", seed)


def plan_drift(seed: int) -> Workload:
    draft = Draft(random.Random(seed * 4 + 1))
    open_workload(draft, constraints=2, preferences=1, rule_scope=Scope.SESSION)
    due = [3]

    def step(d: Draft, index: int) -> None:
        if index >= due[0]:
            new_plan(d)
            due[0] = index + d.rng.randint(2, 4)
        if maybe(d, 0.6):
            new_evidence(d, 16, 32)
        if maybe(d, 0.5):
            reuse(d, window=4, repeat=0.3)
        everyday(d, boot=0.3, rule=0.3, plan=0.8, pref=0.1)

    run_turns(draft, {13: Event.COMPACTION, 20: Event.RESET, 27: Event.COMPACTION}, step)
    return seal(draft, "plan_drift", seed)


def preference_reset(seed: int) -> Workload:
    draft = Draft(random.Random(seed * 4 + 2))
    open_workload(draft, constraints=1, preferences=3, rule_scope=Scope.PROJECT)
    events = {10: Event.RESET, 15: Event.COMPACTION, 20: Event.RESET, 30: Event.RESET, 35: Event.COMPACTION}

    def step(d: Draft, index: int) -> None:
        if index in events and events[index] is Event.RESET:
            arrive(d, constraint_page(f"rule:s{d.session}", Scope.SESSION))
        if maybe(d, 0.08):
            arrive(d, constraint_page(f"rule:p{index}", Scope.PROJECT), dirty=True)
        if maybe(d, 0.5):
            new_evidence(d, 16, 30)
        if maybe(d, 0.2):
            update(d, PageType.PREFERENCE)
        if maybe(d, 0.3):
            reuse(d, window=5, repeat=0.3)
        everyday(d, boot=0.3, rule=0.35, plan=0.3, pref=0.6)

    run_turns(draft, events, step)
    return seal(draft, "preference_reset", seed)


def churn(seed: int) -> Workload:
    draft = Draft(random.Random(seed * 4 + 3))
    open_workload(draft, constraints=2, preferences=1, rule_scope=Scope.SESSION)
    events = {8: Event.COMPACTION, 16: Event.COMPACTION, 24: Event.RESET, 30: Event.COMPACTION}
    events[36] = Event.COMPACTION

    def step(d: Draft, index: int) -> None:
        for _ in range(d.rng.choice((1, 2, 2, 3))):
            new_evidence(d, 12, 28)
        if maybe(d, 0.15):
            reuse(d, window=40, repeat=0.7)
        if index % 12 == 6:
            new_plan(d)
        everyday(d, boot=0.3, rule=0.2, plan=0.3, pref=0.1)

    run_turns(draft, events, step)
    return seal(draft, "churn", seed)


GENERATORS: Mapping[str, Callable[[int], Workload]] = MappingProxyType(
    {
        "evidence_heavy": evidence_heavy,
        "plan_drift": plan_drift,
        "preference_reset": preference_reset,
        "churn": churn,
    }
)
FAMILIES: tuple[str, ...] = tuple(GENERATORS)


def generate(family: str, seed: int = 0) -> Workload:
    generator = GENERATORS.get(family)
    if generator is None:
        raise ValueError(f"unknown workload family {family!r}; known: {', '.join(FAMILIES)}")
    return generator(seed)
