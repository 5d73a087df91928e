"""The Responses adapter alone: items to the neutral transcript and back, the model's runs kept
whole, compaction items as a prefix forwarded as it came, recall events held out of a stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from bench.fake_responses import FakeResponses, stream_events
from gateway.api.errors import InvalidRequest
from gateway.upstream.client import UpstreamResponse
from gateway.wire.responses import COMPACTION, GROUP, RESPONSES, compacted, parse_request, to_wire
from policies.transcript import Message, ToolCall

REASONING = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA+/=="}
CALL = {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": '{"cmd":"ls"}'}
OUTPUT = {"type": "function_call_output", "call_id": "c1", "output": "a.txt"}


def request(items: object, **extra: object) -> bytes:
    return json.dumps({"model": "gpt-5-codex", "input": items, **extra}).encode()


def test_items_become_the_transcript_and_render_back_as_they_came() -> None:
    items = [{"role": "user", "content": "ls"}, REASONING, CALL, OUTPUT, {"role": "user", "content": "thanks"}]
    parsed = parse_request(request(items, instructions="Be brief."))
    assert [m.role for m in parsed.messages] == ["system", "user", "assistant", "tool", "user"]
    run = parsed.messages[2]
    assert run.tool_calls == (ToolCall("c1", "shell", '{"cmd":"ls"}'),) and run.raw["type"] == GROUP
    instructions, rendered = to_wire(parsed.messages)
    assert instructions == "Be brief." and rendered == items


def test_a_string_input_is_one_user_message() -> None:
    parsed = parse_request(request("hello"))
    assert [(m.role, m.text) for m in parsed.messages] == [("user", "hello")]


def test_degraded_messages_are_rebuilt_as_items() -> None:
    built = [
        Message("assistant", "ran it", (ToolCall("c1", "shell", "{}"),)),
        Message("tool", "[paged]", tool_call_id="c1"),
    ]
    _, items = to_wire(built)
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output"]


def test_the_input_up_to_the_newest_compaction_is_a_prefix_forwarded_as_it_came() -> None:
    sealed = {"type": COMPACTION, "encrypted_content": "enc-1"}
    items = [{"role": "user", "content": "old"}, sealed, {"role": "user", "content": "new"}]
    parsed = parse_request(request(items))
    assert [m.text for m in parsed.messages] == ["new"]
    assert compacted(parsed.body) == items[:2] and RESPONSES.names(parsed).event == COMPACTION


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([OUTPUT], "input[0].call_id"),
        ([CALL, {"role": "user", "content": "x"}], "input[0]"),
        ([{"type": "item_reference", "id": "msg_1"}], "input[0]"),
        ([{"role": "robot", "content": "x"}], "input[0].role"),
        ([{**CALL, "arguments": {"cmd": "ls"}}], "input[0]"),
    ],
)
def test_bad_items_are_refused_naming_the_field(items: list, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_request(request(items))
    assert refused.value.param == param


def upstream(events: list[bytes]) -> UpstreamResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    return UpstreamResponse(200, [("content-type", "text/event-stream")], chunks())


@pytest.mark.anyio
async def test_a_stream_holds_the_recall_call_and_renumbers_the_rest() -> None:
    fake = FakeResponses()
    tools = [{"type": "function", "name": "clawvm_recall"}]
    recall = {"content": "Looking.", "tool_calls": [{"call_id": "r1", "name": "clawvm_recall", "arguments": "{}"}]}
    fake.responder = lambda body: recall
    answer = RESPONSES.answer(True, "clawvm_recall", {})
    first = fake.response({"input": "q", "tools": tools}, 1)
    shown = b"".join([out async for out in answer.read(upstream(stream_events(first)))])
    assert b"clawvm_recall" not in shown and b"response.completed" not in shown
    assert answer.found.ours == (ToolCall("r1", "clawvm_recall", "{}"),) and not answer.found.theirs
    fake.responder = lambda body: {"content": "Done."}
    second = b"".join([out async for out in answer.read(upstream(stream_events(fake.response({"input": "q"}, 2))))])
    assert b"response.created" not in second and b'"output_index":1' in second
    (closing,) = answer.closing()
    completed = json.loads(closing.split(b"data: ", 1)[1])
    assert [i["content"][0]["text"] for i in completed["response"]["output"]] == ["Looking.", "Done."]
    assert completed["response"]["id"] == "resp_fake_1" and completed["response"]["tools"] == []
    numbers = [
        json.loads(e.split(b"data: ", 1)[1])["sequence_number"] for e in (shown + second + closing).split(b"\n\n") if e
    ]
    assert numbers == list(range(len(numbers)))


@pytest.mark.anyio
async def test_a_failed_response_is_the_streams_last_event() -> None:
    answer = RESPONSES.answer(True, "clawvm_recall", {})
    events = stream_events(FakeResponses().response({"input": "q"}, 1))[:3]
    events.append(
        b'event: response.failed\ndata: {"type":"response.failed","response":{"id":"r","status":"failed"}}\n\n'
    )
    shown = b"".join([out async for out in answer.read(upstream(events))])
    assert b"response.failed" in shown and answer.closing() == []


def test_a_system_prompt_the_assembly_built_goes_back_to_the_instructions() -> None:
    built = [Message("system", "Be brief."), Message("system", "[retained] never push"), Message("user", "go")]
    instructions, items = to_wire(built)
    assert instructions == "Be brief.\n\n[retained] never push" and [i["role"] for i in items] == ["user"]
    own = [
        Message("developer", "from input", raw={"role": "developer", "content": "from input"}),
        Message("user", "go"),
    ]
    assert to_wire(own) == (
        None,
        [
            {"role": "developer", "content": "from input"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
        ],
    )
