"""Rendering, observed through `plan_turn` and `to_wire`: full messages forwarded as sent,
degraded ones carrying their representation with ids and pairing intact, span stubs and the
retained-state message where the design puts them, and the recall tool named as configured."""

from __future__ import annotations

import json
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings

from gateway.wire.chat_json import parse_messages, to_wire
from policies.budget import TokenBudget, resolve_budget
from policies.pages import Fidelity, PageType
from policies.pagetable import PageTable
from policies.tenant import Budget, TenantPolicy
from policies.tokens import CharCounter
from policies.turn import TurnPlan, plan_turn
from tests.policies.strategies import (
    Session,
    Wire,
    aligned,
    bulk_text,
    content_text,
    is_retained,
    newest_turn_of,
    replay,
    sessions,
    span_ids,
)

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTER = CharCounter()


def exact_budget(usable: int) -> TokenBudget:
    return resolve_budget(Budget(max_prompt_tokens=usable, safety_margin=0.0), 10**9, "model_map", 0)


def plan(request: Sequence[Wire], usable: int, table: PageTable, recall_tool: str = "clawvm_recall") -> TurnPlan:
    budget = exact_budget(usable)
    return plan_turn(table, parse_messages(request), TenantPolicy(), COUNTER, budget, recall_tool=recall_tool)


def call_summary(message: Wire) -> list[tuple[str, str]]:
    return [(c["id"], c["function"]["name"]) for c in message.get("tool_calls") or ()]


# ---------------------------------------------------------------- messages at their level


@PROPERTY
@given(sessions())
def test_each_message_is_sent_as_is_or_as_its_chosen_representation(session: Session) -> None:
    result = replay(session, COUNTER)
    for turn in result.turns:
        levels = turn.plan.assembly.levels
        for index, out in aligned(turn.request, turn.output, turn.order):
            sent, page = turn.request[index], result.table.pages[turn.order[index]]
            if levels[page.id] is Fidelity.FULL:
                assert out is sent, "a full-fidelity message must be the client's own dict"
                continue
            rep = page.reprs.at(levels[page.id])
            assert out["role"] == sent["role"]
            assert (out["content"] or "") == rep.text
            assert out.get("tool_call_id") == sent.get("tool_call_id")
            assert out.get("name") == sent.get("name")
            assert call_summary(out) == call_summary(sent)


@PROPERTY
@given(sessions())
def test_the_retained_state_sits_after_the_last_message_the_gateway_built(session: Session) -> None:
    """After the last stub or degraded page before the newest turn (else after the leading system
    messages): a place appended turns do not move."""
    result = replay(session, COUNTER)
    for turn in result.turns:
        retained = [i for i, m in enumerate(turn.output) if is_retained(m)]
        assert len(retained) <= 1
        if not retained:
            continue
        at, newest = retained[0], len(turn.output) - len(newest_turn_of(turn.request))
        own = [any(out is sent for sent in turn.request) for out in turn.output]
        assert at < newest and all(own[at + 1 : newest])  # only the client's own messages follow it
        assert turn.output[at + 1]["role"] != "tool"  # never inside a block: a result follows its call
        built = [i for i in range(at) if not own[i]]
        if built:  # right after the last built message's block
            assert all(m["role"] == "tool" for m in turn.output[built[-1] + 1 : at])
        else:  # nothing built before it: it follows the leading system messages
            assert all(m["role"] in ("system", "developer") for m in turn.output[:at])
            assert turn.output[at + 1]["role"] not in ("system", "developer")
        facts = {  # whole: a pointer to a rule would not state it
            p.reprs.full.text
            for p in result.table.pages.values()
            if p.type in (PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT)
        }
        lines = content_text(turn.output[retained[0]]).split("\n")[1:]
        assert lines and set(lines) <= facts
        assert len(lines) == len(set(lines))


@PROPERTY
@given(sessions())
def test_nothing_is_added_when_everything_is_at_full(session: Session) -> None:
    result = replay(session, COUNTER)
    for turn in result.turns:
        if all(level is Fidelity.FULL for level in turn.plan.assembly.levels.values()):
            assert turn.output == turn.request
            assert all(out is sent for out, sent in zip(turn.output, turn.request, strict=False))


def test_a_degraded_tool_call_keeps_its_ids_and_valid_arguments() -> None:
    arguments = json.dumps({"path": "src/app.py", "content": bulk_text(4, 3000)})
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "edit_file", "arguments": arguments}},
        {"id": "call_b", "type": "function", "function": {"name": "Bash", "arguments": "ls -la src"}},
    ]
    request = [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "Edit the app."},
        {
            "role": "assistant",
            "content": "Plan:\n1. Edit the app.\n2. List the files.\n3. Run the tests.",
            "tool_calls": calls,
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "File written."},
        {"role": "tool", "tool_call_id": "call_b", "content": bulk_text(9, 4000)},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "Thanks."},
    ]
    table = PageTable("t", "s", "p")
    output = to_wire(plan(request, 0, table).messages)
    assistant = next(m for m in output if m.get("tool_calls"))
    assert assistant is not request[2]
    assert call_summary(assistant) == [("call_a", "edit_file"), ("call_b", "Bash")]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"])["path"] == "src/app.py"
    assert all(c["type"] == "function" for c in assistant["tool_calls"])
    position = output.index(assistant)
    assert [m.get("tool_call_id") for m in output[position + 1 : position + 3]] == ["call_a", "call_b"]


# ---------------------------------------------------------------- the recall tool


def test_stubs_and_pointers_name_the_configured_recall_tool() -> None:
    request = [
        {"role": "user", "content": bulk_text(1, 3000)},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": bulk_text(2, 3000)},
        {"role": "assistant", "content": "Read it."},
        {"role": "user", "content": "Next."},
    ]
    table = PageTable("t", "s", "p")
    text = "\n".join(content_text(m) for m in to_wire(plan(request, 0, table, recall_tool="fetch_page").messages))
    assert "fetch_page(page_ids=[...])" in text
    assert "clawvm_recall" not in text
    for page_id in table.order[:4]:
        assert page_id in text


def test_span_stub_lists_ids_in_transcript_order_with_tool_origin() -> None:
    request = [
        {"role": "user", "content": bulk_text(1, 2000)},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "grep", "arguments": '{"pattern": "TODO"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": bulk_text(2, 3000)},
        {"role": "assistant", "content": bulk_text(3, 1000)},
        {"role": "user", "content": "Next."},
    ]
    table = PageTable("t", "s", "p")
    output = to_wire(plan(request, 0, table).messages)
    stub = content_text(output[0]).split("\n")
    assert span_ids(output[0], table.order) == table.order[:4]
    assert stub[3] == f"{table.order[2]} grep(TODO)"
    assert stub[0].startswith("[clawvm: 4 earlier messages paged out")


def test_the_users_intents_are_restated_whole_in_the_retained_state_after_a_compaction() -> None:
    system = {"role": "system", "content": "You are a coding agent."}
    wishes = [
        "go on with the list, except the migration — I don't want that.",
        "Before anything else I'd like the docs brought up to date.",
        "My name is Pat Lee and my e-mail is pat@example.com.",
    ]
    table = PageTable("t", "s", "p")
    plan(
        [system, {"role": "user", "content": " ".join(wishes)}, {"role": "assistant", "content": "On it."}], 9000, table
    )
    summary = "This session is being continued from a previous conversation that ran out of context. Summary: docs."
    after = [system, {"role": "user", "content": summary}, {"role": "assistant", "content": "Going on."}]
    output = to_wire(plan([*after, {"role": "user", "content": "Next."}], 9000, table).messages)
    (retained,) = [m for m in output if is_retained(m)]
    lines = content_text(retained).split("\n")
    assert "what the user asked for" in lines[0]
    assert [f"user said: {wish}" for wish in wishes] == [line for line in lines if line.startswith("user said:")]
    assert output.index(retained) == 1  # nothing paged: right after the system prompt, where appends do not move it


BACKGROUND = " ".join(f"The old jacket number {i} lasted many winters in the mountains." for i in range(28))


def test_an_intent_stays_in_every_later_prompt_whole_when_its_message_is_paged_out() -> None:
    wish = "the blue one, size M, no express shipping."
    wire: list[Wire] = [
        {"role": "system", "content": "You are a shopping assistant."},
        {"role": "user", "content": f"I need a new jacket. {BACKGROUND} {wish} {BACKGROUND.upper()}"},
    ]
    table = PageTable("t", "s", "p")
    paged_out = 0
    for turn in range(12):
        call = {"id": f"c{turn}", "type": "function", "function": {"name": "search", "arguments": "{}"}}
        wire += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{turn}", "content": bulk_text(turn, 2500)},
        ]
        output = to_wire(plan(wire, 3000, table).messages)
        texts = [content_text(m) for m in output]
        assert any(wish in text for text in texts)
        paged_out += not any(BACKGROUND in text for text in texts)
    assert paged_out  # the budget did page the user's message out; the intent stayed, whole
