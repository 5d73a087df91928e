"""Any JSON at all, in the shape of a Messages or Responses request: the adapter accepts it or
refuses it with `InvalidRequest`, never another exception, and what it accepts renders back."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import encode, json_values, raw_bodies, text
from gateway.api.errors import InvalidRequest
from gateway.settings import Tenant, UpstreamSettings
from gateway.wire.messages import MESSAGES
from gateway.wire.responses import RESPONSES
from policies.tenant import TenantPolicy

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TENANT = Tenant("t", ("k",), TenantPolicy(), UpstreamSettings())
value = json_values(8)


def blocks() -> st.SearchStrategy[Any]:
    kinds = st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "x", 5])
    fields = st.fixed_dictionaries(
        {"type": kinds},
        optional={
            "text": value,
            "id": value,
            "name": value,
            "input": value,
            "tool_use_id": value,
            "content": value,
            "signature": value,
            "thinking": value,
        },
    )
    return st.one_of(fields, value)


def anthropic_bodies() -> st.SearchStrategy[Any]:
    message = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", 3]),
            "content": st.one_of(text(), st.lists(blocks(), max_size=4), value),
        }
    )
    return st.fixed_dictionaries(
        {
            "model": st.one_of(st.just("claude"), value),
            "max_tokens": st.one_of(st.just(64), value),
            "messages": st.one_of(st.lists(message, max_size=6), value),
        },
        optional={
            "system": st.one_of(text(), st.lists(blocks(), max_size=2), value),
            "tools": value,
            "stream": value,
            "tool_choice": value,
            "metadata": value,
        },
    )


def items() -> st.SearchStrategy[Any]:
    kinds = st.sampled_from(
        [
            "message",
            "function_call",
            "function_call_output",
            "reasoning",
            "compaction",
            "custom_tool_call",
            "item_reference",
            "y",
        ]
    )
    item = st.fixed_dictionaries(
        {"type": kinds},
        optional={
            "role": st.sampled_from(["user", "assistant", "developer", "x"]),
            "content": st.one_of(text(), st.lists(value, max_size=3), value),
            "call_id": value,
            "name": value,
            "arguments": value,
            "output": value,
            "input": value,
        },
    )
    return st.one_of(item, value)


def response_bodies() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {"model": st.one_of(st.just("gpt"), value), "input": st.one_of(text(), st.lists(items(), max_size=6), value)},
        optional={
            "instructions": value,
            "tools": value,
            "stream": value,
            "store": value,
            "previous_response_id": value,
            "tool_choice": value,
        },
    )


def accepted_or_refused(wire: Any, raw: bytes) -> None:
    try:
        request = wire.parse(raw)
    except InvalidRequest:
        return
    wire.render(request, request.messages, TENANT)
    wire.offers_recall(request.body)


@FUZZ
@given(body=st.one_of(anthropic_bodies(), raw_bodies().map(lambda raw: raw)))
def test_any_messages_body_is_accepted_or_refused_cleanly(body: Any) -> None:
    accepted_or_refused(MESSAGES, body if isinstance(body, bytes) else encode(body))


@FUZZ
@given(body=st.one_of(response_bodies(), raw_bodies().map(lambda raw: raw)))
def test_any_responses_body_is_accepted_or_refused_cleanly(body: Any) -> None:
    accepted_or_refused(RESPONSES, body if isinstance(body, bytes) else encode(body))


def test_odd_nested_content_is_refused_or_read_never_a_crash() -> None:
    use = {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}
    odd = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [1, "x"]}]}
    accepted_or_refused(MESSAGES, encode({"model": "m", "max_tokens": 5, "messages": [use, odd]}))
    call = {"type": "function_call", "call_id": "c", "name": "n", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c", "output": [1, {"type": "input_text", "text": "ok"}]}
    accepted_or_refused(RESPONSES, encode({"model": "m", "input": [call, output]}))


def events() -> st.SearchStrategy[list[bytes]]:
    kinds = st.sampled_from(
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "ping",
            "error",
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.output_item.done",
            "response.output_text.delta",
            "response.completed",
            "response.incomplete",
        ]
    )
    payload = st.fixed_dictionaries(
        {"type": kinds},
        optional={
            "index": st.one_of(st.integers(0, 3), value),
            "output_index": st.one_of(st.integers(0, 3), value),
            "content_block": st.one_of(blocks(), value),
            "delta": value,
            "item": st.one_of(items(), value),
            "response": value,
            "message": value,
            "usage": value,
        },
    )
    event = st.one_of(payload.map(lambda p: b"data: " + encode(p) + b"\n\n"), st.binary(max_size=30))
    return st.lists(event, max_size=12)


@FUZZ
@given(
    rounds=st.lists(st.tuples(events(), st.booleans()), min_size=1, max_size=3),
    which=st.sampled_from([MESSAGES, RESPONSES]),
)
def test_any_upstream_answer_is_read_or_refused_never_a_crash(rounds: list, which: Any) -> None:
    import asyncio

    from gateway.api.errors import UpstreamError
    from gateway.upstream.client import UpstreamResponse

    async def run() -> None:
        for stream in (True, False):
            answer = which.answer(stream, "clawvm_recall", {})
            for chunks, _ in rounds:

                async def body(parts: list[bytes] = chunks) -> Any:
                    for part in parts:
                        yield part

                upstream = UpstreamResponse(200, [("content-type", "text/event-stream")], body())
                try:
                    _ = [out async for out in answer.read(upstream)]
                except UpstreamError:
                    return
                found = answer.found
                if found.ours:
                    which.continue_after({"messages": [], "input": []}, found, ["r"] * len(found.ours))
            answer.closing()

    asyncio.run(run())
