"""A tenant's policy: the design's defaults, and what a tenant's settings change in a turn."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from gateway.wire.chat_json import parse_messages, to_wire
from policies.budget import TokenBudget, resolve_budget
from policies.pages import Fidelity, PageType, Pin, Scope
from policies.pagetable import PageTable
from policies.tenant import DEFAULT_TYPES, Budget, ClassifierRule, TenantPolicy, TypePolicy, Weights
from policies.tokens import CharCounter
from policies.turn import TurnPlan, plan_turn
from tests.policies.strategies import Wire, bulk_text, content_text

COUNTER = CharCounter()


def exact_budget(usable: int) -> TokenBudget:
    return resolve_budget(Budget(max_prompt_tokens=usable, safety_margin=0.0), 10**9, "model_map", 0)


def plan(request: Sequence[Wire], policy: TenantPolicy, usable: int, table: PageTable | None = None) -> TurnPlan:
    target = table if table is not None else PageTable("t", "s", "p")
    return plan_turn(target, parse_messages(request), policy, COUNTER, exact_budget(usable))


@pytest.mark.parametrize(
    ("page_type", "floor", "pin", "scope"),
    [
        (PageType.BOOTSTRAP, Fidelity.STRUCTURED, Pin.HARD, Scope.PROJECT),
        (PageType.CONSTRAINT, Fidelity.STRUCTURED, Pin.HARD, Scope.SESSION),
        (PageType.PLAN, Fidelity.STRUCTURED, Pin.HARD, Scope.SESSION),
        (PageType.PREFERENCE, Fidelity.POINTER, Pin.SOFT, Scope.PROJECT),
        (PageType.EVIDENCE, Fidelity.POINTER, Pin.SOFT, Scope.SESSION),
        (PageType.CONVERSATION, Fidelity.POINTER, Pin.NONE, Scope.SESSION),
    ],
)
def test_default_type_policies_follow_the_design(page_type: PageType, floor: Fidelity, pin: Pin, scope: Scope) -> None:
    rule = TenantPolicy().type_policy(page_type)
    assert (rule.floor, rule.pin, rule.scope) == (floor, pin, scope)


def test_defaults_cover_every_type_and_cannot_be_changed_in_place() -> None:
    assert set(DEFAULT_TYPES) == set(PageType)
    with pytest.raises(TypeError):
        DEFAULT_TYPES[PageType.EVIDENCE] = TypePolicy(Fidelity.FULL, Pin.HARD, 1.0, Scope.SESSION)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TenantPolicy().name = "x"  # type: ignore[misc]


def test_default_weights_are_the_papers() -> None:
    assert Weights() == Weights(pin_hard=2.0, pin_soft=0.6, recency=0.6, recency_decay=0.88, recompute=0.4)


def test_default_budget_and_rule_roles() -> None:
    assert Budget() == Budget(max_prompt_tokens=None, window_fraction=None, output_reserve=4096, safety_margin=0.02)
    assert ClassifierRule(r"x", PageType.CONSTRAINT).roles == frozenset({"system", "developer", "user"})


# ---------------------------------------------------------------- effects in a turn


def test_a_tenant_rule_makes_a_constraint_that_survives_degradation() -> None:
    policy = TenantPolicy(name="acme", rules=(ClassifierRule(r"\bticket ACME-\d+", PageType.CONSTRAINT),))
    statement = "This work is tracked as ticket ACME-1234 in the tracker."
    request = [
        {"role": "user", "content": f"Look into the logs. {statement} {bulk_text(3, 3000)}"},
        {"role": "assistant", "content": "Looked."},
        {"role": "user", "content": "Next."},
    ]
    table = PageTable("t", "s", "p")
    result = plan(request, policy, 0, table)
    constraints = [p for p in table.pages.values() if p.type is PageType.CONSTRAINT]
    assert [p.reprs.full.text for p in constraints] == [f"rule: {statement}"]
    assert result.assembly.levels[table.order[0]] < Fidelity.FULL
    assert statement in "\n".join(content_text(m) for m in to_wire(result.messages))
    default = PageTable("t", "s", "p")
    plan(request, TenantPolicy(), 0, default)
    assert not [p for p in default.pages.values() if p.type is PageType.CONSTRAINT]


def test_a_tenant_rule_for_other_roles_does_not_apply() -> None:
    rule = ClassifierRule(r"\bticket ACME-\d+", PageType.CONSTRAINT, roles=frozenset({"system"}))
    table = PageTable("t", "s", "p")
    plan(
        [{"role": "user", "content": "This is ticket ACME-1 for the team."}], TenantPolicy(rules=(rule,)), 10_000, table
    )
    assert not [p for p in table.pages.values() if p.type is PageType.CONSTRAINT]


def test_a_raised_evidence_floor_keeps_every_result_at_structured() -> None:
    types = dict(DEFAULT_TYPES)
    types[PageType.EVIDENCE] = dataclasses.replace(types[PageType.EVIDENCE], floor=Fidelity.STRUCTURED)
    policy = TenantPolicy(name="careful", types=types)
    call = {"id": "c1", "type": "function", "function": {"name": "Read", "arguments": '{"path": "a.py"}'}}
    request = [
        {"role": "user", "content": "Read a.py."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": bulk_text(1, 5000)},
        {"role": "assistant", "content": "Read."},
        {"role": "user", "content": "Next."},
    ]
    table = PageTable("t", "s", "p")
    levels = plan(request, policy, 0, table).assembly.levels
    assert levels[table.order[2]] is Fidelity.STRUCTURED
    assert levels[table.order[0]] is Fidelity.POINTER


def test_a_changed_policy_replans_even_when_the_turn_would_fit() -> None:
    request = [{"role": "user", "content": "Fix it."}, {"role": "assistant", "content": "Done."}]
    table = PageTable("t", "s", "p")
    plan([*request, {"role": "user", "content": "one"}], TenantPolicy(name="a"), 10_000, table)
    longer = [*request, {"role": "user", "content": "one"}, {"role": "assistant", "content": "ok"}]
    same = plan([*longer, {"role": "user", "content": "two"}], TenantPolicy(name="a"), 10_000, table)
    assert not same.assembly.replanned
    longer += [{"role": "user", "content": "two"}, {"role": "assistant", "content": "ok"}]
    changed = plan([*longer, {"role": "user", "content": "three"}], TenantPolicy(name="b"), 10_000, table)
    assert changed.assembly.replanned
