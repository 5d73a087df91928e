from __future__ import annotations

from typing import Any

import pytest

from bench.cache_gap import Gap, attribute, cause_of, format_gap, gateway_kind
from bench.peers.compare import Exchange, Turn, _counter, prompt_tokens, reused_tokens
from bench.peers.model import OK
from bench.pricing import openai_cost
from gateway.upstream.tokens import compact_json
from policies.render import RETAINED_HEADER, SPAN_HEADER
from policies.tokens import TokenCounter

Json = dict[str, Any]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
RECALL = {"type": "function", "function": {"name": "clawvm_recall", "parameters": {"type": "object"}}}
STUB = SPAN_HEADER.format(n=3, tool="clawvm_recall") + "\np:0 user: first\np:1 tool: rows"


@pytest.fixture
def counter(offline: None) -> TokenCounter:
    return _counter()


def message(role: str, n: int) -> Json:
    return {"role": role, "content": f"message {n}: " + " ".join(f"order {n}-{k} shipped" for k in range(120))}


def body(messages: list[Json], tools: list[Json] = TOOLS) -> Json:
    return {"messages": messages, "tools": tools}


def turn(counter: TokenCounter, number: int, sent: list[Json], before: list[Json] | None) -> Turn:
    everything = prompt_tokens(counter, body(sent))
    fresh = everything - reused_tokens(counter, body(before) if before is not None else None, body(sent))
    return Turn("t", number, b"", sent, TOOLS, OK, "", everything, fresh)


def test_a_gateway_written_message_is_known_by_its_head() -> None:
    assert gateway_kind({"role": "user", "content": STUB}) == "span stub"
    assert gateway_kind({"role": "system", "content": RETAINED_HEADER + "\n- rule"}) == "retained state"
    assert gateway_kind({"role": "user", "content": "[clawvm is a word here]"}) is None


def test_the_first_difference_names_the_cause() -> None:
    system, old, kept = {"role": "system", "content": "rules"}, message("user", 1), message("user", 2)
    before = body([system, old, kept])
    stubbed = body([system, {"role": "user", "content": STUB}, kept])
    whole = {compact_json(m) for m in (system, old, kept)}
    assert cause_of(before, stubbed, whole, shrank=True) == "low-water step"
    assert cause_of(before, stubbed, whole, shrank=False) == "span stub"
    degraded = body([system, {"role": "user", "content": "message 1: (compressed)"}, kept])
    assert cause_of(before, degraded, whole, shrank=False) == "degraded page"
    assert cause_of(before, body([system, old, old]), whole, shrank=False) == "newest turn"  # from the last user
    assert cause_of(before, body([system, kept, kept]), whole, shrank=False) == "client message"


def test_appends_cost_the_floor_and_a_step_costs_what_it_rewrote(counter: TokenCounter) -> None:
    system = {"role": "system", "content": "rules"}
    first = [system, *(message("user" if n % 2 else "assistant", n) for n in range(1, 7))]
    second = [*first, message("user", 7)]
    third = [*second, message("assistant", 8), message("user", 9)]
    stepped = [system, {"role": "user", "content": STUB}, *third[4:]]
    turns = [turn(counter, 0, first, None), turn(counter, 1, second, first), turn(counter, 2, third, second)]
    seen = [
        (turns[0], Exchange(200, 0, (body(first),), {})),
        (turns[1], Exchange(200, 0, (body(second),), {})),  # an append: at the floor
        (turns[2], Exchange(200, 0, (body(stepped, [*TOOLS, RECALL]),), {})),  # a step, the recall tool offered
    ]
    gap = attribute(counter, 4000, seen)
    assert gap.causes["at floor"].requests == 1
    assert gap.shrinks == 1
    tools, step = gap.causes["tools block"], gap.causes["low-water step"]
    assert tools.requests == step.requests == 1
    now = body(stepped, [*TOOLS, RECALL])
    tokens = prompt_tokens(counter, now)
    prefix = reused_tokens(counter, body(second), now)
    new = min(turns[2].fresh, tokens)
    assert tools.lost + step.lost == tokens - new - prefix
    expected = openai_cost(prefix, tokens) - openai_cost(tokens - new, tokens)
    assert tools.cost + step.cost == pytest.approx(expected)


def test_the_breakdown_sums_to_the_gap() -> None:
    gap = Gap(4000)
    gap.add("low-water step", 900, 810.0, "t#3")
    gap.add("span stub", 100, 90.0, "t#4")
    mine = {
        "tokens_forwarded": 50,
        "prefix_reuse": 0.8,
        "openai_cost": 1900.0,
        "anthropic_cost": 2100.0,
        "openai_floor": 1000.0,
        "rule_faults": 0,
        "plan_faults": 0,
        "intent_faults": 0,
        "answer_faults": 0,
        "evidence_faults": 1,
        "invalid": 0,
        "over_budget": 0,
    }
    direct = {**mine, "tokens_forwarded": 100, "openai_cost": 3000.0, "anthropic_cost": 3000.0}
    text = "\n".join(format_gap([(mine, direct, gap)]))
    assert "floor 0.333 (gap 0.300)" in text
    assert "sum" in text and "0.300" in text.split("sum", 1)[1]


def test_a_follow_up_that_withdrew_the_recall_tool_is_its_own_cause(counter: TokenCounter) -> None:
    system = {"role": "system", "content": "rules"}
    first = [system, *(message("user" if n % 2 else "assistant", n) for n in range(1, 7))]
    second = [*first, message("user", 7)]
    offered = [*TOOLS, RECALL]
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "r1", "type": "function"}]}
    follow_up = body([*first, call, {"role": "tool", "tool_call_id": "r1", "content": "page"}], TOOLS)  # withdrawn
    turns = [turn(counter, 0, first, None), turn(counter, 1, second, first)]
    seen = [
        (turns[0], Exchange(200, 0, (body(first, offered), follow_up), {})),
        (turns[1], Exchange(200, 0, (body(second, offered),), {})),
    ]
    gap = attribute(counter, 4000, seen)
    assert gap.follow_ups == 1 and gap.follow_up_cost > 0
    assert gap.causes["recall follow-up"].requests == 1
    assert gap.causes["tools block"].requests == 0
