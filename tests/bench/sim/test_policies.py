from __future__ import annotations

from dataclasses import fields, replace

import pytest

from bench.sim.policies import (
    CLAWVM,
    COMPACTION_HYBRID,
    FEATURES,
    LRU,
    ORACLE,
    ORACLE_BONUS,
    POLICIES,
    RETRIEVAL,
    RETRIEVAL_CACHE,
    TOKEN_SCALE,
    Upgrade,
    View,
    build_layout,
    by_name,
    real_page,
    select,
    without,
)
from bench.sim.workloads import SimPage, bootstrap_page, constraint_page, evidence_page, plan_page, preference_page
from policies.layout import total_cost
from policies.pages import Fidelity, Pin, Scope


def pages() -> dict[str, SimPage]:
    out = [
        bootstrap_page("boot"),
        constraint_page("rule:0", Scope.SESSION),
        plan_page("plan:0.1"),
        preference_page("pref:0"),
        *(evidence_page(f"ev:{k}", 30, 8.0) for k in range(1, 6)),
    ]
    return {p.id: p for p in out}


def view(budget: int, **changes: object) -> View:
    base = View(
        turn=5,
        pages=pages(),
        older=("boot", "rule:0", "plan:0.1", "pref:0", "ev:1", "ev:2", "ev:3", "ev:4"),
        arrivals=("ev:5",),
        plan="plan:0.1",
        retrieved={},
        touched={"ev:1": 1, "ev:2": 2, "ev:3": 3, "ev:4": 4, "ev:5": 5},
        previous=None,
        budget=budget,
        upcoming={},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def switches(policy: object) -> tuple[object, ...]:
    return tuple(getattr(policy, f.name) for f in fields(policy) if f.name != "name")  # type: ignore[arg-type]


def test_the_paper_table() -> None:
    assert [p.name for p in POLICIES] == [
        "Retrieval",
        "Retrieval+Cache",
        "Compaction-Hybrid",
        "LRU",
        "ClawVM",
        "Oracle",
    ]
    # auto_pin, prefetch, wb@compaction, wb@reset, upgrade, pointer resolution, budget scale, retrieves
    assert switches(RETRIEVAL) == (False, False, False, False, Upgrade.NONE, False, 0.78, True)
    assert switches(RETRIEVAL_CACHE) == (False, False, False, False, Upgrade.NONE, True, 0.78, True)
    assert switches(COMPACTION_HYBRID) == (False, True, True, False, Upgrade.RECENCY, True, 0.85, True)
    assert switches(LRU) == (True, True, True, True, Upgrade.LRU, True, 1.0, False)
    assert switches(CLAWVM) == (True, True, True, True, Upgrade.UTILITY, True, 1.0, False)
    assert switches(ORACLE) == (True, True, True, True, Upgrade.ORACLE, True, 1.0, False)
    assert by_name("ClawVM") is CLAWVM


@pytest.mark.parametrize("feature", FEATURES)
def test_without_switches_off_exactly_one_feature(feature: str) -> None:
    ablated = without(CLAWVM, feature)
    changed = [f.name for f in fields(CLAWVM) if getattr(ablated, f.name) != getattr(CLAWVM, f.name)]
    assert changed == ["name", feature]
    assert getattr(ablated, feature) in (False, Upgrade.NONE)


def test_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown feature"):
        without(CLAWVM, "magic")
    with pytest.raises(ValueError, match="unknown policy"):
        by_name("MemGPT")


def test_clawvm_keeps_invariants_and_fits_the_budget() -> None:
    v = view(80)
    selection = select(CLAWVM, v)
    assert not selection.insufficient
    assert selection.cost <= 80 * TOKEN_SCALE
    assert Fidelity.POINTER in selection.levels.values()  # tight: something was degraded
    for page_id in ("boot", "rule:0", "plan:0.1"):
        assert selection.levels[page_id] >= Fidelity.STRUCTURED
    assert selection.levels["ev:5"] is Fidelity.FULL
    assert all(level >= Fidelity.POINTER for level in selection.levels.values())
    assert set(selection.levels) == set(v.older) | set(v.arrivals)


def test_clawvm_shows_everything_whole_when_it_fits() -> None:
    selection = select(CLAWVM, view(500))
    assert set(selection.levels.values()) == {Fidelity.FULL}


def test_an_insufficient_minimum_is_reported_and_still_shown() -> None:
    selection = select(CLAWVM, view(20))
    assert selection.insufficient
    assert selection.levels["boot"] >= Fidelity.STRUCTURED
    assert selection.levels["ev:5"] is Fidelity.FULL


def test_retrieval_holds_what_the_last_step_used_and_the_newest_turn() -> None:
    retrieved = {"ev:2": Fidelity.FULL, "plan:0.1": Fidelity.STRUCTURED}
    selection = select(RETRIEVAL, view(500, retrieved=retrieved))
    assert selection.levels["ev:2"] is Fidelity.FULL
    assert selection.levels["plan:0.1"] >= Fidelity.STRUCTURED  # a small current plan is kept whole
    assert selection.levels["ev:5"] is Fidelity.FULL
    for page_id in ("boot", "rule:0", "pref:0", "ev:1", "ev:3", "ev:4"):
        assert selection.levels[page_id] is Fidelity.NONE


def test_without_auto_pin_hard_pages_lose_their_pin_and_floor() -> None:
    policy = without(CLAWVM, "auto_pin_hard")
    page = real_page(policy, view(100), pages()["boot"], 0)
    assert (page.pin, page.floor) == (Pin.NONE, Fidelity.POINTER)
    assert build_layout(policy, view(100)).current_plan is None
    assert build_layout(CLAWVM, view(100)).current_plan == "plan:0.1"


def test_without_prefetch_pages_may_be_absent() -> None:
    page = real_page(without(CLAWVM, "prefetch_pointer"), view(100), pages()["ev:1"], 4)
    assert page.floor is Fidelity.NONE


def test_lru_scores_recency_only_and_oracle_adds_the_bonus() -> None:
    v = view(100, upcoming={"ev:1": 2})
    assert real_page(LRU, v, pages()["ev:1"], 4).base_utility == 0.0
    assert real_page(ORACLE, v, pages()["ev:1"], 4).base_utility == pytest.approx(5.0 + 2 * ORACLE_BONUS)
    assert real_page(CLAWVM, v, pages()["ev:1"], 4).base_utility == 5.0


def test_the_oracle_upgrades_what_is_about_to_be_used() -> None:
    budget = 120
    online = select(CLAWVM, view(budget))
    foresight = select(ORACLE, view(budget, upcoming={"ev:1": 3}))
    assert foresight.levels["ev:1"] > online.levels["ev:1"]
    assert foresight.cost <= budget * TOKEN_SCALE


def test_selection_is_deterministic() -> None:
    first = select(CLAWVM, view(80))
    assert all(select(CLAWVM, view(80)) == first for _ in range(3))


def test_turn_marker_starts_the_newest_turn() -> None:
    layout = build_layout(CLAWVM, view(100))
    assert layout.order[layout.newest] == "turn:5"
    assert layout.order[layout.newest + 1 :] == ("ev:5",)
    assert total_cost(layout, dict.fromkeys(layout.order, Fidelity.FULL)) > 0
