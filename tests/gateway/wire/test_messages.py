"""The Messages adapter alone: parse and render, whole messages forwarded as they came, degraded
ones rebuilt into alternating turns the API accepts, recall calls held out of a stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from bench.fake_anthropic import answer_blocks, stream_events
from gateway.api.errors import InvalidRequest
from gateway.upstream.client import UpstreamResponse
from gateway.wire.messages import MESSAGES, PLACEHOLDER, parse_request, to_wire
from policies.transcript import Message, ToolCall

THINKING = {"type": "thinking", "thinking": "hmm", "signature": "c2lnbmF0dXJl+/=="}
SYSTEM = [{"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}}]


def request(messages: list, **extra: object) -> bytes:
    return json.dumps({"model": "claude", "max_tokens": 8, "messages": messages, **extra}).encode()


def loop() -> list[dict]:
    return [
        {"role": "user", "content": "Read a.txt"},
        {
            "role": "assistant",
            "content": [THINKING, {"type": "tool_use", "id": "t1", "name": "read", "input": {"p": "a"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "hello"},
                {"type": "text", "text": "and then?", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ]


def test_a_whole_transcript_renders_back_exactly_as_it_came() -> None:
    parsed = parse_request(request(loop(), system=SYSTEM))
    assert [m.role for m in parsed.messages] == ["system", "user", "assistant", "tool", "user"]
    assert parsed.messages[2].tool_calls == (ToolCall("t1", "read", '{"p":"a"}'),)
    system, messages = to_wire(parsed.messages)
    assert system == SYSTEM and messages == loop()


def test_a_system_message_in_the_conversation_stays_where_it_came() -> None:
    """Newer models take `system` messages mid-conversation (Claude Code sends them)."""
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "<reminder>"}]},
        {"role": "system", "content": "Be terse from now on."},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go"},
    ]
    parsed = parse_request(request(conversation))
    assert [m.role for m in parsed.messages] == ["user", "user", "system", "assistant", "user"]
    assert to_wire(parsed.messages) == (None, conversation)


def test_degraded_messages_become_alternating_turns_with_tool_results_first() -> None:
    degraded = [
        Message("assistant", "I read it.", (ToolCall("t1", "read", "{bad json"),)),
        Message("tool", "", tool_call_id="t1"),
        Message("user", "[clawvm: 3 earlier messages paged out]"),
        Message("system", "[clawvm retained state] never push to main"),
        Message("assistant", ""),  # nothing to say: left out, never an empty message
        Message("user", "go on"),
    ]
    system, messages = to_wire(degraded)
    assert system is None
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == PLACEHOLDER  # the API wants a user turn first
    assert messages[1]["content"][1] == {"type": "tool_use", "id": "t1", "name": "read", "input": {}}
    kinds = [b["type"] for b in messages[2]["content"]]
    assert kinds == ["tool_result", "text", "text", "text"]
    assert messages[2]["content"][0]["content"] == "(empty)"


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "r"}]}], "tool_use_id"),
        (
            [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}],
            "tool_result",
        ),
        ([{"role": "user", "content": [{"type": "thinking", "thinking": "x"}]}], "signature"),
        ([{"role": "user", "content": 5}], "content"),
        ([{"role": "user", "content": [{"text": "no type"}]}], "content block"),
    ],
)
def test_bad_transcripts_are_refused_naming_the_field(messages: list, where: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_request(request(messages))
    assert where in refused.value.message


def test_system_must_be_text() -> None:
    with pytest.raises(InvalidRequest):
        parse_request(request([{"role": "user", "content": "hi"}], system=[{"type": "image"}]))


def upstream(events: list[bytes]) -> UpstreamResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for event in events:
            yield event[: len(event) // 2]  # cut anywhere: events are whole again before they are read
            yield event[len(event) // 2 :]

    return UpstreamResponse(200, [("content-type", "text/event-stream")], chunks())


def message(reply: dict) -> dict:
    blocks = answer_blocks(reply, 1)
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return {
        "id": "m1",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "content": blocks,
        "stop_reason": stop,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


@pytest.mark.anyio
async def test_a_stream_holds_the_recall_call_and_relays_the_rest() -> None:
    answer = MESSAGES.answer(True, "clawvm_recall", {})
    reply = {
        "thinking": "look it up",
        "content": "Checking.",
        "tool_calls": [{"id": "r1", "name": "clawvm_recall", "input": {"query": "x"}}],
    }
    shown = b"".join([out async for out in answer.read(upstream(stream_events(message(reply))))])
    assert b"clawvm_recall" not in shown and b"message_stop" not in shown and b"signature_delta" in shown
    found = answer.found
    assert found.ours == (ToolCall("r1", "clawvm_recall", '{"query": "x"}'),) and not found.theirs
    assert [b["type"] for b in found.turn] == ["thinking", "text", "tool_use"]
    assert found.turn[0]["signature"] == answer_blocks(reply, 1)[0]["signature"]  # replayed as it came
    second = b"".join([out async for out in answer.read(upstream(stream_events(message({"content": "Done."}))))])
    assert b"message_start" not in second and b'"index":2' in second  # one message, blocks numbered on
    closing = b"".join(answer.closing()).decode()
    assert (
        '"stop_reason":"end_turn"' in closing
        and '"input_tokens":20' in closing
        and closing.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')
    )


@pytest.mark.anyio
async def test_an_upstream_error_event_ends_the_stream() -> None:
    answer = MESSAGES.answer(True, "clawvm_recall", {})
    events = stream_events(message({"content": "Partial."}))[:4]
    events.append(
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    shown = b"".join([out async for out in answer.read(upstream(events))])
    assert shown.endswith(b'"Overloaded"}}\n\n') and answer.closing() == []
