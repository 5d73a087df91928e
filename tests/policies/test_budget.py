"""Budget resolution: the tenant's budget, a fraction of the window, or the window itself;
a known window caps, a guessed one does not; the safety margin and tool schemas come off."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.budget import TokenBudget, resolve_budget
from policies.tenant import Budget


def test_a_tenant_budget_under_the_window_is_the_cap() -> None:
    budget = resolve_budget(Budget(max_prompt_tokens=50_000), 128_000, "model_map", 0)
    assert budget == TokenBudget(cap=50_000, usable=49_000, hard_limit=123_904, source="tenant_budget", tools=0)


def test_a_known_window_caps_a_larger_tenant_budget() -> None:
    budget = resolve_budget(Budget(max_prompt_tokens=1_000_000), 128_000, "model_map", 0)
    assert budget.cap == budget.hard_limit == 128_000 - 4096
    assert budget.source == "tenant_budget"


def test_a_configured_window_caps_too() -> None:
    budget = resolve_budget(Budget(max_prompt_tokens=1_000_000), 32_000, "config", 0)
    assert budget.cap == 32_000 - 4096


def test_an_unknown_model_does_not_cap_an_explicit_tenant_budget() -> None:
    budget = resolve_budget(Budget(max_prompt_tokens=500_000), 128_000, "default", 0)
    assert budget.cap == 500_000
    assert budget.usable == 490_000
    assert budget.hard_limit == 123_904
    assert budget.source == "tenant_budget"


def test_without_a_tenant_budget_the_window_less_the_reserve_is_the_cap() -> None:
    for source in ("model_map", "config", "default"):
        budget = resolve_budget(Budget(), 200_000, source, 0)
        assert budget.cap == 200_000 - 4096
        assert budget.source == source


def test_a_window_fraction_is_taken_of_the_whole_window() -> None:
    budget = resolve_budget(Budget(window_fraction=0.5), 128_000, "model_map", 0)
    assert budget.cap == 64_000
    assert budget.source == "window_fraction:model_map"


def test_a_full_window_fraction_is_still_capped_by_the_output_reserve() -> None:
    budget = resolve_budget(Budget(window_fraction=1.0), 128_000, "model_map", 0)
    assert budget.cap == 128_000 - 4096


def test_the_tenant_budget_wins_over_a_window_fraction() -> None:
    budget = resolve_budget(Budget(max_prompt_tokens=10_000, window_fraction=0.5), 128_000, "model_map", 0)
    assert (budget.cap, budget.source) == (10_000, "tenant_budget")


def test_tool_schemas_and_the_safety_margin_come_off_the_cap() -> None:
    budget = resolve_budget(Budget(max_prompt_tokens=10_000, safety_margin=0.05), 128_000, "model_map", 1_200)
    assert budget.cap == 10_000
    assert budget.usable == 9_500 - 1_200
    assert budget.tools == 1_200


def test_usable_is_never_negative() -> None:
    assert resolve_budget(Budget(max_prompt_tokens=100), 128_000, "model_map", 5_000).usable == 0
    assert resolve_budget(Budget(), 1_000, "model_map", 0) == TokenBudget(0, 0, 0, "model_map", 0)


@pytest.mark.parametrize("reserve", [0, 1, 4096, 200_000])
def test_the_output_reserve_sets_the_hard_limit(reserve: int) -> None:
    budget = resolve_budget(Budget(output_reserve=reserve), 128_000, "model_map", 0)
    assert budget.hard_limit == max(128_000 - reserve, 0)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.none(), st.integers(0, 2_000_000)),
    st.one_of(st.none(), st.floats(0.01, 1.0)),
    st.integers(0, 2_000_000),
    st.sampled_from(("model_map", "config", "default")),
    st.integers(0, 50_000),
    st.integers(0, 20_000),
    st.floats(0.0, 0.5),
)
def test_resolution_invariants(
    tokens: int | None, fraction: float | None, window: int, source: str, tools: int, reserve: int, margin: float
) -> None:
    budget = Budget(max_prompt_tokens=tokens, window_fraction=fraction, output_reserve=reserve, safety_margin=margin)
    resolved = resolve_budget(budget, window, source, tools)
    assert resolved.hard_limit == max(window - reserve, 0)
    assert resolved.tools == tools
    assert 0 <= resolved.usable <= resolved.cap
    assert resolved.usable == max(math.floor(resolved.cap * (1 - margin)) - tools, 0)
    if source != "default":
        assert resolved.cap <= resolved.hard_limit
    if tokens is not None:
        assert resolved.source == "tenant_budget"
        assert resolved.cap == (tokens if source == "default" else min(tokens, resolved.hard_limit))
    elif fraction is not None:
        assert resolved.source == f"window_fraction:{source}"
    else:
        assert (resolved.cap, resolved.source) == (resolved.hard_limit, source)
