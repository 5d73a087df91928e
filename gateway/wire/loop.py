"""The one recall loop: every wire format, streaming or not (DESIGN §4).

`answered` reads the first upstream answer through the format's `Answer`, relaying what the
agent may see; while a round's answer holds only recall calls, they are resolved from the store
(`gateway.wire.recall.resolve_all`), the format appends the continuation (`Wire.continue_after`), and
the upstream is called again, its answer read into the same one. After `paging.rounds` rounds
the model is told recall is exhausted and called once more without the tool, so the agent gets
its own answer. A round whose upstream answers an error raises `RoundFailed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from gateway import jsonio
from gateway.api.errors import GatewayError, from_status
from gateway.upstream.client import UpstreamResponse
from gateway.wire.base import Answer, Body, Found, Wire
from gateway.wire.recall import EXHAUSTED, Paging, Recalled, framing, resolve_all

Send = Callable[[bytes], Awaitable[UpstreamResponse]]
DETAIL = 300  # characters of a failed round's 4xx body quoted in the stream's error


class RoundFailed(Exception):
    """A recall round's upstream call answered an error (not 200)."""

    def __init__(self, upstream: UpstreamResponse) -> None:
        super().__init__(f"upstream answered {upstream.status} during a recall round")
        self.upstream = upstream


async def answered(
    first: UpstreamResponse,
    send: Send,
    body: Body,
    paging: Paging,
    wire: Wire,
    answer: Answer,
    kept: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[bytes]:
    """The whole answer: rounds relayed as they come, then the answer's closing. `kept` (what a
    later request may name, such as a response id for `previous_response_id`) is awaited once the
    answer is complete and before its closing is relayed: a client that names the answer as soon as
    it has read its end finds it kept."""
    room = paging.room
    upstream = first
    try:
        for round_ in range(paging.rounds + 2):
            async for out in answer.read(upstream):
                yield out
            await upstream.aclose()
            found = answer.found
            if not found.ours or found.theirs or round_ > paging.rounds:
                break
            room = await next_round(paging, wire, body, found, room, last=round_ == paging.rounds)
            upstream = await send(jsonio.dumps(body))
            if upstream.status != 200:
                raise RoundFailed(upstream)
        closing = answer.closing()
        if kept is not None:
            await kept()
        for out in closing:
            yield out
    finally:
        await upstream.aclose()


async def next_round(paging: Paging, wire: Wire, body: Body, found: Found, room: int, *, last: bool) -> int:
    """Append a round's recall calls and their answers to `body`; returns the room left. After
    the last round (`last`) nothing is recalled: each call is told recall is exhausted and the
    tool is withdrawn, so the next call gets the model's own answer."""
    room -= framing(found.text, found.ours, paging.counter)
    if last:
        wire.withdraw(body, paging.name)
        replies = [f"[recall: exhausted]\n{EXHAUSTED}" for _ in found.ours]
    else:
        answers = await resolve_all(paging, found.ours, room)
        room -= sum(a.tokens for a in answers)
        replies = [reply(a) for a in answers]
    wire.continue_after(body, found, replies)
    return room


def reply(recalled: Recalled) -> str:
    """What the model reads as a recall call's result: its reason code, then the text."""
    return f"[recall: {recalled.code}]\n{recalled.text}"


async def streamed(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A streamed answer whose failed recall round is a `GatewayError` (the stream's last event)."""
    try:
        async for out in events:
            yield out
    except RoundFailed as exc:
        raise await round_error(exc.upstream) from None


async def round_error(upstream: UpstreamResponse) -> GatewayError:
    """The error a failed round ends a stream with: a 4xx quoted, a 5xx (which may quote internal
    hosts or library text) not."""
    detail = (await upstream.read()).decode("utf-8", "replace")[:DETAIL]
    if upstream.status >= 500:
        detail = "the request may be retried"
    return from_status(upstream.status, f"upstream failed during a recall round: {detail}")


async def whole(events: AsyncIterator[bytes]) -> tuple[UpstreamResponse | None, bytes]:
    """A non-streamed answer: (the failed round's upstream response, b"") or (None, the body)."""
    try:
        return None, b"".join([out async for out in events])
    except RoundFailed as exc:
        return exc.upstream, b""
