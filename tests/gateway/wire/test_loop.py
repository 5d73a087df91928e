"""The one recall loop (`gateway.wire.loop.answered`): what a later request may name is kept before
the answer's end reaches the client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bench.fake_responses import FakeResponses, stream_events
from gateway.store.store import RedisStore
from gateway.upstream.client import UpstreamResponse
from gateway.wire.loop import answered
from gateway.wire.recall import Paging
from gateway.wire.responses import RESPONSES
from policies.tokens import CharCounter

pytestmark = pytest.mark.anyio


def streamed(events: list[bytes]) -> UpstreamResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    return UpstreamResponse(200, [("content-type", "text/event-stream")], chunks())


async def never(body: bytes) -> UpstreamResponse:
    raise AssertionError("an answer without recall calls is one round")


async def test_the_answer_is_kept_before_its_closing_event_is_relayed(store: RedisStore, tenant: str) -> None:
    """A client that sends `previous_response_id` as soon as it reads `response.completed` must
    find the response: the gateway keeps it before relaying that event, not after."""
    answer = RESPONSES.answer(True, "clawvm_recall", {})
    first = streamed(stream_events(FakeResponses().response({"input": "q"}, 1)))
    relayed: list[bytes] = []
    relayed_when_kept: list[bytes] = []

    async def kept() -> None:
        assert answer.final["id"] == "resp_fake_1"  # the whole answer is known by then
        relayed_when_kept.append(b"".join(relayed))

    paging = Paging(store, tenant, "s", "p", CharCounter(), 1_000)
    async for out in answered(first, never, {}, paging, RESPONSES, answer, kept=kept):
        relayed.append(out)
    assert len(relayed_when_kept) == 1
    assert b"response.output_text.delta" in relayed_when_kept[0]
    assert b"response.completed" not in relayed_when_kept[0] and b"response.completed" in relayed[-1]


async def test_an_answer_that_fails_a_recall_round_keeps_nothing(store: RedisStore, tenant: str) -> None:
    answer = RESPONSES.answer(True, "clawvm_recall", {})
    fake = FakeResponses()
    tools = [{"type": "function", "name": "clawvm_recall"}]
    fake.responder = lambda body: {"tool_calls": [{"call_id": "r1", "name": "clawvm_recall", "arguments": "{}"}]}
    first = streamed(stream_events(fake.response({"input": "q", "tools": tools}, 1)))
    kept: list[bool] = []

    async def refused(body: bytes) -> UpstreamResponse:
        async def once() -> AsyncIterator[bytes]:
            yield b'{"error": {"message": "busy"}}'

        return UpstreamResponse(429, [("content-type", "application/json")], once())

    async def keep() -> None:
        kept.append(True)

    paging = Paging(store, tenant, "s", "p", CharCounter(), 1_000)
    with pytest.raises(Exception, match="recall round"):
        async for _ in answered(
            first,
            refused,
            {"input": [{"role": "user", "content": "q"}], "tools": tools},
            paging,
            RESPONSES,
            answer,
            kept=keep,
        ):
            pass
    assert kept == []
