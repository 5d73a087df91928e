"""Deterministic turn-by-turn replay of a workload under a budget and a policy.

Each turn, in order:
1. The turn's lifecycle event, if any. Dirty pages are committed when the policy writes back at
   this kind of boundary, else each is a flush-miss fault. The last prompt and the retrieval
   working set are gone (the transcript was rewritten); a reset also drops session-scoped pages.
2. The turn's new pages arrive; pages written this turn become dirty.
3. The policy chooses a level for every live page (`bench.sim.policies.select`, the real
   selector). A minimum set over the budget is physical insufficiency: recorded, never a fault.
4. After a boundary, each live bootstrap page and constraint shown below its floor is a
   post-compaction bootstrap fault (it was not re-installed).
5. The turn's demands are judged against the prompt the model saw:
   - shown at or above the level needed: a hit; a repeated tool call whose result is resident
     is also a duplicate-signature alert (a paging event in thrash, not a fault);
   - a bootstrap page, constraint or the current plan below it: a pinned-invariant miss (an
     invariant must be in the prompt: the model cannot know to recall what it does not see);
   - else, with pointer resolution, a stored tool result, or any page shown as a pointer,
     resolves by recall: a hit (refetch-free, and with a reason code whatever the answer, so a
     recall is never silent);
   - else a tool result re-run by a repeated call is a duplicate-tool fault, and any other page
     re-retrieved after eviction a refetch fault.

Hits H count the demands served by resident pages or by a recall; thrash = (F + alerts) / (H + 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from bench.sim.policies import TOKEN_SCALE, SimPolicy, Upgrade, View, select
from bench.sim.workloads import Demand, Event, Turn, Workload, upcoming
from policies.faults import (
    FaultEvent,
    FaultKind,
    Tally,
    add,
    flush_misses,
    insufficiency,
    post_boundary_misses,
)
from policies.pages import Fidelity, PageType, Scope

DEFAULT_HORIZON = 3
POLICY_PAGES = frozenset({PageType.BOOTSTRAP, PageType.CONSTRAINT})  # re-installed after a boundary


class Served(StrEnum):
    RESIDENT = "resident"
    RECALL = "recall"
    MISSED = "missed"


@dataclass(frozen=True, slots=True)
class TurnRecord:
    turn: int
    events: tuple[FaultEvent, ...]
    hits: int
    recalls: int  # of the hits, those served by a recall (pointer resolution)
    cost: int  # layout tokens of the prompt
    insufficient: bool


@dataclass(frozen=True, slots=True)
class RunResult:
    family: str
    budget: int
    policy: str
    tally: Tally
    records: tuple[TurnRecord, ...]

    @property
    def recalls(self) -> int:
        return sum(record.recalls for record in self.records)


@dataclass(slots=True)
class State:
    """What persists from turn to turn: the page table's view of the session."""

    live: list[str] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)
    plan: str | None = None
    previous: dict[str, Fidelity] | None = None
    retrieved: dict[str, Fidelity] = field(default_factory=dict)
    touched: dict[str, int] = field(default_factory=dict)
    sessions: int = 0


def replay(workload: Workload, budget: int, policy: SimPolicy, horizon: int = DEFAULT_HORIZON) -> RunResult:
    state = State()
    tally = Tally()
    records = []
    for turn in workload.turns:
        record = play_turn(workload, turn, budget, policy, horizon, state)
        tally = add(tally, record.events, record.hits)
        records.append(record)
    return RunResult(workload.family, budget, policy.name, tally, tuple(records))


def play_turn(workload: Workload, turn: Turn, budget: int, policy: SimPolicy, horizon: int, state: State) -> TurnRecord:
    events = boundary(workload, policy, turn.event, state) if turn.event else []
    older = tuple(state.live)
    admit(turn, state)
    view = make_view(workload, turn, older, budget_of(policy, budget, state), policy, horizon, state)
    selection = select(policy, view)
    if selection.insufficient:
        events.append(insufficiency(selection.cost // TOKEN_SCALE, view.budget))
    faulted: set[str] = set()
    if turn.event:
        missed = reinstall_misses(workload, turn.event, selection.levels, state)
        faulted = {event.page_id for event in missed}
        events.extend(missed)
    judged, hits, recalls = judge_all(workload, policy, turn.demands, selection.levels, state.plan, faulted)
    events.extend(judged)
    remember(turn, selection.levels, state)
    return TurnRecord(turn.index, tuple(events), hits, recalls, selection.cost, selection.insufficient)


def boundary(workload: Workload, policy: SimPolicy, event: Event, state: State) -> list[FaultEvent]:
    """A compaction or reset at the start of a turn: write back or lose the dirty pages."""
    writes_back = policy.writeback_compaction if event is Event.COMPACTION else policy.writeback_reset
    lost = [] if writes_back else flush_misses(state.dirty, ())
    state.dirty.clear()
    state.previous = None
    state.retrieved = {}
    if event is Event.RESET:
        state.live = [p for p in state.live if workload.pages[p].scope is Scope.PROJECT]
        state.touched = {p: t for p, t in state.touched.items() if p in state.live}
        state.sessions += 1
    return lost


def admit(turn: Turn, state: State) -> None:
    state.live.extend(turn.arrivals)
    state.dirty.update(turn.dirty)
    state.plan = turn.plan
    for page_id in turn.arrivals:
        state.touched[page_id] = turn.index


def budget_of(policy: SimPolicy, budget: int, state: State) -> int:
    """The paper's multisession budget scale, applied to every session after the first."""
    return budget if state.sessions == 0 else int(budget * policy.budget_scale)


def make_view(
    workload: Workload,
    turn: Turn,
    older: tuple[str, ...],
    budget: int,
    policy: SimPolicy,
    horizon: int,
    state: State,
) -> View:
    foresight = upcoming(workload, turn.index, horizon) if policy.upgrade is Upgrade.ORACLE else {}
    return View(
        turn=turn.index,
        pages=workload.pages,
        older=older,
        arrivals=turn.arrivals,
        plan=state.plan,
        retrieved=dict(state.retrieved),
        touched=dict(state.touched),
        previous=None if state.previous is None else dict(state.previous),
        budget=budget,
        upcoming=foresight,
    )


def reinstall_misses(
    workload: Workload, event: Event, levels: Mapping[str, Fidelity], state: State
) -> list[FaultEvent]:
    """Bootstrap pages and constraints below their floor in the first prompt after a boundary.
    They are either in the policy's minimum set (and then always shown) or left to its choice,
    so a miss is never physical insufficiency."""
    required = {p: workload.pages[p].floor for p in state.live if workload.pages[p].type in POLICY_PAGES}
    return post_boundary_misses(event.value, required, levels, False)


def judge_all(
    workload: Workload,
    policy: SimPolicy,
    demands: tuple[Demand, ...],
    levels: Mapping[str, Fidelity],
    plan: str | None,
    faulted: set[str],
) -> tuple[list[FaultEvent], int, int]:
    """The turn's demands judged: (events, hits, of which served by a recall)."""
    events: list[FaultEvent] = []
    served: list[Served] = []
    for demand in demands:
        if demand.page_id in faulted:
            continue
        event, how = judge(workload, policy, demand, levels.get(demand.page_id, Fidelity.NONE), plan)
        served.append(how)
        if event is not None:
            events.append(event)
    return events, sum(1 for how in served if how is not Served.MISSED), served.count(Served.RECALL)


def judge(
    workload: Workload, policy: SimPolicy, demand: Demand, shown: Fidelity, plan: str | None
) -> tuple[FaultEvent | None, Served]:
    """One demand against the level the page was shown at: the event if any, and how it was served."""
    page = workload.pages[demand.page_id]
    if shown >= demand.level:
        return (_event(FaultKind.DUPLICATE_SIGNATURE, demand, shown) if demand.repeat else None), Served.RESIDENT
    if page.type in POLICY_PAGES or page.id == plan:
        return _event(FaultKind.PINNED_INVARIANT_MISS, demand, shown), Served.MISSED
    if policy.pointer_resolution and (page.type is PageType.EVIDENCE or shown >= Fidelity.POINTER):
        return None, Served.RECALL
    if page.type is PageType.EVIDENCE and demand.repeat:
        return _event(FaultKind.DUPLICATE_TOOL, demand, shown), Served.MISSED
    return _event(FaultKind.REFETCH, demand, shown), Served.MISSED


def _event(kind: FaultKind, demand: Demand, shown: Fidelity) -> FaultEvent:
    seen = "absent" if shown is Fidelity.NONE else f"shown at {shown.label}"
    return FaultEvent(kind, demand.page_id, f"{seen}, needed at {demand.level.label}")


def remember(turn: Turn, levels: Mapping[str, Fidelity], state: State) -> None:
    state.previous = dict(levels)
    state.retrieved = {d.page_id: d.level for d in turn.demands}
    for demand in turn.demands:
        state.touched[demand.page_id] = turn.index
