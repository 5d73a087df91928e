"""The stream splicer fed what a broken upstream may send: chunks it does not understand are
relayed as they came, never a crash mid-stream (found by tests/e2e/test_fuzz.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.errors import UpstreamError
from gateway.recall import Paging
from gateway.recall_stream import relay
from gateway.store import RedisStore
from gateway.upstream import UpstreamResponse
from policies.tokens import CharCounter

pytestmark = pytest.mark.anyio
SSE = [("content-type", "text/event-stream")]


def stream(*chunks: Any) -> UpstreamResponse:
    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return UpstreamResponse(200, SSE, events())


def chunk(choice: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [choice]}


async def never(body: bytes) -> UpstreamResponse:
    raise AssertionError("no recall round was expected")


@pytest.mark.parametrize(
    "odd",
    [
        chunk(True),
        chunk({"index": 0, "delta": ["not", "a", "delta"]}),
        chunk({"index": 0, "delta": {"tool_calls": 7}}),
        chunk({"index": 0, "delta": {"tool_calls": ["not a call"]}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": [1], "function": "read_file"}]}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": 5, "function": {"name": "clawvm_recall"}}]}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 12}}]}}),
        {"id": "c1", "choices": "not a list"},
    ],
    ids=[
        "choice_not_object",
        "delta_not_object",
        "tool_calls_not_list",
        "call_not_object",
        "odd_index_and_function",
        "recall_with_numeric_id",
        "numeric_arguments",
        "choices_not_list",
    ],
)
async def test_an_odd_chunk_is_relayed_or_held_never_a_crash(redis_url: str, odd: dict[str, Any]) -> None:
    async with RedisStore.from_url(redis_url) as store:
        paging = Paging(store, "t-odd", "s1", "p1", CharCounter(), 1000, rounds=0)
        first = chunk({"index": 0, "delta": {"role": "assistant", "content": "hi"}})
        out = [piece async for piece in relay(stream(first, odd), never, {"messages": []}, paging)]
    text = b"".join(out).decode()
    assert text.endswith("data: [DONE]\n\n") and text.count("data: [DONE]") == 1
    assert '"content":"hi"' in text.replace(" ", "")


async def test_an_upstream_5xx_in_a_recall_round_does_not_quote_its_body(redis_url: str) -> None:
    async def failing(body: bytes) -> UpstreamResponse:
        async def page() -> AsyncIterator[bytes]:
            yield b"psycopg2.OperationalError: could not connect to 10.9.9.9:5432"

        return UpstreamResponse(500, [("content-type", "text/plain")], page())

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "clawvm_recall", "arguments": "{}"}}
    recall = chunk({"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}})
    finish = chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"})
    async with RedisStore.from_url(redis_url) as store:
        paging = Paging(store, "t-5xx", "s1", "p1", CharCounter(), 1000, rounds=1)
        with pytest.raises(UpstreamError) as caught:
            _ = [piece async for piece in relay(stream(recall, finish), failing, {"messages": []}, paging)]
    assert caught.value.status_code == 500
    assert "10.9.9.9" not in caught.value.message and "psycopg2" not in caught.value.message
