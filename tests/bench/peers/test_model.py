from __future__ import annotations

import json

import pytest

from bench.peers.model import (
    CALL_PREFIX,
    HEADROOM_RETRIEVE,
    OK,
    PERFECT,
    Expected,
    TraceModel,
    expected_for,
    holders,
    page_requests,
)
from bench.recall_replay import RECALL
from gateway.wire.chat_json import parse_messages
from gateway.wire.recall import MAX_IDS_PER_CALL
from policies.pagetable import content_digest, make_page_id, tenant_tag

TRANSCRIPT = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "Where is order #W4967593?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "find", "arguments": '{"order": "#W4967593"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "order #W4967593: parcel 1234567 left /depot/north.txt"},
]
ANSWER = {"role": "assistant", "content": "Order #W4967593 left as parcel 1234567; invoice 99887766 follows."}
RECALL_TOOL = {"type": "function", "function": {"name": RECALL, "parameters": {"type": "object"}}}


def page_of(index: int) -> str:
    parsed = parse_messages(TRANSCRIPT)[index]
    return make_page_id(tenant_tag("default"), content_digest(parsed))


def test_the_answer_is_the_real_next_message_and_needs_what_earlier_messages_hold() -> None:
    expected = expected_for(TRANSCRIPT, ANSWER)
    assert expected.answer == {"content": ANSWER["content"]}
    assert expected.needs == {"#W4967593": page_of(3), "1234567": page_of(3)}


def test_tool_call_arguments_of_the_answer_count_as_needs() -> None:
    call = {"id": "c2", "type": "function", "function": {"name": "ship", "arguments": '{"parcel": "1234567"}'}}
    expected = expected_for(TRANSCRIPT, {"role": "assistant", "content": None, "tool_calls": [call]})
    assert expected.answer == {"content": None, "tool_calls": [call]}
    assert list(expected.needs) == ["1234567"]


def test_the_latest_holder_wins() -> None:
    assert holders(TRANSCRIPT, ["#W4967593", "nowhere-42"]) == {"#W4967593": page_of(3)}


def test_without_a_recall_tool_the_model_just_answers() -> None:
    model = TraceModel()
    assert model({"messages": TRANSCRIPT}) == OK.answer
    model.expect(expected_for(TRANSCRIPT, ANSWER))
    assert model({"messages": TRANSCRIPT[:2]}) == {"content": ANSWER["content"]}


def test_with_perfect_knowledge_the_model_recalls_each_holding_page_once_then_answers() -> None:
    model = TraceModel(PERFECT)
    model.expect(expected_for(TRANSCRIPT, ANSWER))
    reply = model({"messages": TRANSCRIPT[:2], "tools": [RECALL_TOOL]})
    (call,) = reply["tool_calls"]
    assert call["id"].startswith(CALL_PREFIX)
    assert call["function"]["name"] == RECALL
    assert json.loads(call["function"]["arguments"]) == {
        "page_ids": [page_of(3)],
        "query": "1234567",
    }  # the order id is in view
    results = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    results.append({"role": "tool", "tool_call_id": call["id"], "content": "[recall: ok] ..."})
    assert model({"messages": [*TRANSCRIPT[:2], *results], "tools": [RECALL_TOOL]}) == {"content": ANSWER["content"]}


def test_nothing_missing_means_no_recall() -> None:
    model = TraceModel()
    model.expect(expected_for(TRANSCRIPT, ANSWER))
    assert model({"messages": TRANSCRIPT, "tools": [RECALL_TOOL]}) == {"content": ANSWER["content"]}


def test_the_pages_missing_identifiers_are_asked_for_together_with_them_as_the_query() -> None:
    assert page_requests({"a1": "p:1", "b2": "p:2", "c3": "p:1"}) == [
        {"page_ids": ["p:1", "p:2"], "query": "a1|c3|b2"},
    ]


def test_more_pages_than_one_call_takes_are_split() -> None:
    gaps = {f"id{n}": f"p:{n}" for n in range(MAX_IDS_PER_CALL + 1)}
    calls = page_requests(gaps)
    assert [len(c["page_ids"]) for c in calls] == [MAX_IDS_PER_CALL, 1]
    assert calls[1] == {"page_ids": [f"p:{MAX_IDS_PER_CALL}"], "query": f"id{MAX_IDS_PER_CALL}"}


def test_with_headrooms_retrieve_the_model_asks_for_each_marker() -> None:
    model = TraceModel()
    model.expect(Expected({"content": "done"}, {"1234567": "p:x"}))
    marker = "[40 items compressed to 5. Retrieve more: hash=abc123] [again hash=abc123] [hash=def456]"
    tool = {"type": "function", "function": {"name": HEADROOM_RETRIEVE}}
    reply = model({"messages": [{"role": "user", "content": marker}], "tools": [tool]})
    assert [json.loads(c["function"]["arguments"]) for c in reply["tool_calls"]] == [
        {"hash": "abc123"},
        {"hash": "def456"},
    ]


def test_the_honest_model_does_not_recall_a_page_its_prompt_does_not_show() -> None:
    model = TraceModel()
    model.expect(expected_for(TRANSCRIPT, ANSWER))
    assert model({"messages": TRANSCRIPT[:2], "tools": [RECALL_TOOL]}) == {"content": ANSWER["content"]}


def test_an_unknown_knowledge_is_refused() -> None:
    with pytest.raises(ValueError, match="knowledge"):
        TraceModel("psychic")
