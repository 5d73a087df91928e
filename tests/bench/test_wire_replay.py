"""The real traces through the gateway as chat, Anthropic Messages and Responses: every request
valid and within budget in each format, and the same faults as chat (one model, one judge)."""

from __future__ import annotations

from bench.traces import Trace
from bench.wire_bodies import chat_of_messages, chat_of_responses, to_messages, to_responses
from bench.wire_replay import run


def test_every_format_is_served_validly_with_chats_faults(traces: list[Trace]) -> None:
    rows = {row.peer: row for row in run(traces[:4], budget=4000, turns=6)}
    assert set(rows) == {"chat", "messages", "responses"}
    for row in rows.values():
        assert row.requests == rows["chat"].requests > 0
        assert row.errors == row.invalid == row.over_budget == 0, row.examples
        assert row.faults == rows["chat"].faults, (row.peer, row.examples)


def test_a_transcript_survives_the_round_trip_through_each_format(traces: list[Trace]) -> None:
    for trace in traces:
        messages = list(trace.turns())[min(5, len(list(trace.turns())) - 1)]
        speaking = [m for m in messages if m["role"] in ("assistant", "tool")]
        for back in (
            chat_of_messages(
                {"system": to_messages(messages, trace.tools)[0], "messages": to_messages(messages, trace.tools)[1]}
            ),
            chat_of_responses(
                {
                    "instructions": to_responses(messages, trace.tools)[0],
                    "input": to_responses(messages, trace.tools)[1],
                }
            ),
        ):
            calls = [c["id"] for m in back["messages"] for c in m.get("tool_calls") or []]
            assert calls == [c["id"] for m in speaking for c in m.get("tool_calls") or []]
            results = [m["tool_call_id"] for m in back["messages"] if m["role"] == "tool"]
            assert results == [m["tool_call_id"] for m in speaking if m["role"] == "tool"]
