from __future__ import annotations

from collections.abc import Sequence

from bench.sim.engine import State, boundary, budget_of, replay
from bench.sim.policies import CLAWVM, COMPACTION_HYBRID, RETRIEVAL, RETRIEVAL_CACHE, without
from bench.sim.workloads import (
    Demand,
    Event,
    SimPage,
    Turn,
    Workload,
    bootstrap_page,
    evidence_page,
    generate,
    plan_page,
    preference_page,
)
from policies.pages import Fidelity

S, F = Fidelity.STRUCTURED, Fidelity.FULL


def make(pages: Sequence[SimPage], turns: Sequence[Turn]) -> Workload:
    return Workload("test", 0, {p.id: p for p in pages}, tuple(turns))


def turn(
    index: int,
    arrivals: tuple[str, ...] = (),
    demands: tuple[Demand, ...] = (),
    event: Event | None = None,
    dirty: tuple[str, ...] = (),
    plan: str | None = "plan:0.1",
) -> Turn:
    return Turn(index, event, arrivals, dirty, demands, plan)


def opening() -> Turn:
    return turn(0, ("boot", "plan:0.1", "pref:0"), (Demand("boot", S),), dirty=("plan:0.1",))


BASE = [bootstrap_page("boot"), plan_page("plan:0.1"), preference_page("pref:0")]


def lifecycle(event: Event) -> Workload:
    return make(BASE, [opening(), turn(1, event=event), turn(2)])


def kinds(workload: Workload, budget: int, policy: object) -> dict[str, int]:
    return dict(replay(workload, budget, policy).tally.faults)  # type: ignore[arg-type]


def test_dirty_pages_are_written_back_or_lost_at_a_reset() -> None:
    workload = lifecycle(Event.RESET)
    assert kinds(workload, 200, CLAWVM).get("flush_miss", 0) == 0
    assert kinds(workload, 200, without(CLAWVM, "writeback_reset"))["flush_miss"] == 1
    assert kinds(workload, 200, COMPACTION_HYBRID)["flush_miss"] == 1


def test_dirty_pages_are_written_back_or_lost_at_a_compaction() -> None:
    workload = lifecycle(Event.COMPACTION)
    assert kinds(workload, 200, CLAWVM) == {}
    assert kinds(workload, 200, without(CLAWVM, "writeback_compaction")) == {"flush_miss": 1}
    assert kinds(workload, 200, COMPACTION_HYBRID).get("flush_miss", 0) == 0


def test_bootstrap_not_reinstalled_after_a_compaction_is_one_fault() -> None:
    demands = (Demand("boot", S),)
    workload = make(BASE, [opening(), turn(1, demands=demands, event=Event.COMPACTION)])
    result = replay(workload, 200, RETRIEVAL)
    events = [e for e in result.records[1].events if e.page_id == "boot"]
    assert [e.kind.value for e in events] == ["post_compaction_bootstrap"]  # the demand is not counted again
    assert "after compaction" in events[0].detail
    assert kinds(workload, 200, CLAWVM) == {}


def reuse(repeat: bool) -> Workload:
    pages = [*BASE, *(evidence_page(f"ev:{k}", 30, 8.0) for k in range(1, 5))]
    turns = [opening()]
    for k in range(1, 5):
        turns.append(turn(k, (f"ev:{k}",), (Demand(f"ev:{k}", F),)))
    turns.append(turn(5, demands=(Demand("ev:1", F, repeat),)))
    return make(pages, turns)


def test_pointer_resolution_serves_an_evicted_result_by_recall() -> None:
    result = replay(reuse(repeat=True), 60, CLAWVM)
    assert result.tally.fault_count == 0
    assert result.records[-1].recalls == 1
    assert result.records[-1].hits == 1


def test_without_pointer_resolution_an_evicted_result_is_re_run_or_refetched() -> None:
    assert kinds(reuse(repeat=True), 60, RETRIEVAL) == {"duplicate_tool": 1}
    assert kinds(reuse(repeat=False), 60, RETRIEVAL) == {"refetch": 1}
    assert kinds(reuse(repeat=True), 60, without(CLAWVM, "pointer_resolution")) == {"duplicate_tool": 1}
    assert kinds(reuse(repeat=True), 60, RETRIEVAL_CACHE) == {}


def test_a_repeated_call_whose_result_is_resident_is_an_alert() -> None:
    result = replay(reuse(repeat=True), 500, CLAWVM)
    tally = result.tally
    assert tally.fault_count == 0
    assert tally.alerts == 1
    last = result.records[-1]
    assert [e.kind.value for e in last.events] == ["duplicate_signature"]
    assert (last.hits, last.recalls) == (1, 0)
    assert tally.thrash == (tally.fault_count + tally.alerts) / (tally.hits + 1)


def test_an_invariant_below_its_floor_is_a_pinned_miss() -> None:
    workload = make(BASE, [opening(), turn(1), turn(2, demands=(Demand("plan:0.1", S),))])
    assert kinds(workload, 200, RETRIEVAL) == {"pinned_invariant_miss": 1}
    assert kinds(workload, 200, CLAWVM) == {}


def test_a_preference_resolves_from_its_pointer_only() -> None:
    workload = make(BASE, [opening(), turn(1), turn(2, demands=(Demand("pref:0", S),))])
    assert kinds(workload, 40, RETRIEVAL_CACHE) == {"refetch": 1}  # absent: nothing to resolve
    assert kinds(workload, 40, COMPACTION_HYBRID) == {}  # a prefetched pointer resolves
    assert kinds(workload, 40, CLAWVM) == {}


def test_insufficiency_is_recorded_never_a_fault() -> None:
    workload = generate("evidence_heavy")
    tally = replay(workload, 10, CLAWVM).tally
    assert tally.insufficient == len(workload.turns)
    assert tally.fault_count == 0


def test_a_reset_drops_session_pages() -> None:
    workload = lifecycle(Event.RESET)
    state = State(live=["boot", "plan:0.1", "pref:0"], dirty={"plan:0.1"}, touched={"plan:0.1": 0, "boot": 0})
    lost = boundary(workload, CLAWVM, Event.RESET, state)
    assert lost == []
    assert state.live == ["boot", "pref:0"]
    assert state.touched == {"boot": 0}
    assert (state.sessions, state.dirty, state.previous) == (1, set(), None)


def test_multisession_budget_scale_applies_after_the_first_session() -> None:
    assert budget_of(RETRIEVAL, 200, State()) == 200
    assert budget_of(RETRIEVAL, 200, State(sessions=1)) == 156
    assert budget_of(CLAWVM, 200, State(sessions=2)) == 200


def test_replay_is_deterministic() -> None:
    workload = generate("churn", 3)
    assert replay(workload, 180, CLAWVM) == replay(workload, 180, CLAWVM)
    assert replay(workload, 180, COMPACTION_HYBRID) == replay(generate("churn", 3), 180, COMPACTION_HYBRID)
