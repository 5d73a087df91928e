from __future__ import annotations

import pytest

from bench.sim.workloads import FAMILIES, Event, Workload, evidence_page, generate, upcoming
from policies.pages import Fidelity, PageType, Scope


def live_replay(workload: Workload) -> list[set[str]]:
    """The set of live pages at each turn, after the turn's event and arrivals."""
    live: list[str] = []
    out = []
    for turn in workload.turns:
        if turn.event is Event.RESET:
            live = [p for p in live if workload.pages[p].scope is Scope.PROJECT]
        live.extend(turn.arrivals)
        out.append(set(live))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_workload(family: str) -> None:
    assert generate(family, 7) == generate(family, 7)


@pytest.mark.parametrize("family", FAMILIES)
def test_other_seed_other_workload(family: str) -> None:
    assert generate(family, 0).turns != generate(family, 1).turns


@pytest.mark.parametrize("family", FAMILIES)
def test_demands_name_live_pages_and_the_current_plan(family: str) -> None:
    workload = generate(family)
    for turn, live in zip(workload.turns, live_replay(workload), strict=True):
        for demand in turn.demands:
            assert demand.page_id in live
            if workload.pages[demand.page_id].type is PageType.PLAN:
                assert demand.page_id == turn.plan
        assert turn.plan is None or turn.plan in live


@pytest.mark.parametrize("family", FAMILIES)
def test_new_evidence_is_used_at_full_on_arrival(family: str) -> None:
    workload = generate(family)
    for turn in workload.turns:
        levels = {d.page_id: d.level for d in turn.demands}
        for page_id in turn.arrivals:
            if workload.pages[page_id].type is PageType.EVIDENCE:
                assert levels[page_id] is Fidelity.FULL


def reuses(workload: Workload) -> int:
    return sum(
        1 for t in workload.turns for d in t.demands if d.page_id.startswith("ev:") and d.page_id not in t.arrivals
    )


def test_evidence_heavy_reuses_results_and_compacts() -> None:
    workload = generate("evidence_heavy")
    assert reuses(workload) >= 1.5 * len(workload.turns)
    assert any(d.repeat for t in workload.turns for d in t.demands)
    events = [t.event for t in workload.turns if t.event]
    assert events and all(e is Event.COMPACTION for e in events)


def test_plan_drift_changes_plan_versions_often() -> None:
    workload = generate("plan_drift")
    plans = {t.plan for t in workload.turns}
    assert len(plans) >= 10
    assert all(workload.pages[p].type is PageType.PLAN for p in plans if p)
    new_plans = [p for t in workload.turns for p in t.arrivals if p.startswith("plan:")]
    assert all(p in t.dirty for t in workload.turns for p in t.arrivals if p in new_plans)


def test_preference_reset_keeps_preferences_across_resets() -> None:
    workload = generate("preference_reset")
    resets = [t.index for t in workload.turns if t.event is Event.RESET]
    assert len(resets) == 3
    prefs = [p for p in workload.pages.values() if p.type is PageType.PREFERENCE]
    assert prefs and all(p.scope is Scope.PROJECT for p in prefs)
    demanded_after_last_reset = {d.page_id for t in workload.turns[resets[-1] :] for d in t.demands}
    assert demanded_after_last_reset & {p.id for p in prefs}
    assert any(workload.pages[p].type is PageType.PREFERENCE for t in workload.turns for p in t.dirty)


def test_churn_brings_many_unique_results_little_reused() -> None:
    workload = generate("churn")
    evidence = [p for p in workload.pages.values() if p.type is PageType.EVIDENCE]
    assert len(evidence) >= 2 * len(workload.turns) - 10
    assert reuses(workload) < len(evidence) // 4


def test_upcoming_counts_demands_in_the_horizon() -> None:
    workload = generate("evidence_heavy")
    counts = upcoming(workload, 5, 3)
    expected: dict[str, int] = {}
    for turn in workload.turns[5:8]:
        for demand in turn.demands:
            expected[demand.page_id] = expected.get(demand.page_id, 0) + 1
    assert counts == expected
    assert upcoming(workload, len(workload.turns), 3) == {}


def test_page_tokens_per_level() -> None:
    page = evidence_page("ev:1", 30, 8.0)
    assert [page.tokens(level) for level in Fidelity] == [0, 1, 5, 10, 30]


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match="unknown workload family"):
        generate("nope")
