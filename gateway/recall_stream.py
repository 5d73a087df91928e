"""Demand paging in a stream: recall calls resolved and the continuation spliced in.

Content deltas pass through at once. Tool-call deltas are held until their tool's name is
known: the agent's own calls are then relayed (held pieces first), the gateway's recall calls
are kept back, assembled, resolved from the store, and the upstream is called again, its
events spliced into the same stream under the first stream's id. The finish and usage chunks
are held to the end: one finish chunk, usage summed over every round, one `[DONE]`. Every
choice of a chunk is filtered, the finish chunk's own delta too (some upstreams send the whole
call in it), so a recall call is never relayed however the upstream cuts its stream. After the
last recall round the model is told recall is exhausted and called once more without the tool
(`gateway.recall.next_round`); its answer is spliced in like any other round's.

A failure (a recall round's upstream answering an error, an event that is not JSON, a dropped
connection) is raised as a `GatewayError`: the caller ends the stream with an error event
(`gateway.sse.ending_cleanly`) and no `[DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway import jsonio
from gateway.errors import UpstreamError, from_status
from gateway.recall import Paging, Send, add_usage, function_of, next_round
from gateway.sse import DONE, encode_data, event_data, iter_events
from gateway.upstream import UpstreamResponse

Slot = tuple[int, int]  # (choice index, tool call index)


@dataclass(slots=True)
class _Round:
    """What one upstream stream held back: recall calls by slot, call kinds, the finish chunk."""

    kinds: dict[Slot, str] = field(default_factory=dict)  # "ours" | "theirs"
    held: dict[Slot, list[dict[str, Any]]] = field(default_factory=dict)
    ours: dict[Slot, dict[str, Any]] = field(default_factory=dict)
    content: list[str] = field(default_factory=list)
    finish: dict[str, Any] | None = None


async def relay(first: UpstreamResponse, send: Send, body: dict[str, Any], paging: Paging) -> AsyncIterator[bytes]:
    usage: dict[str, int] = {}
    head: dict[str, Any] = {}
    room = paging.room
    upstream = first
    try:
        for round_ in range(paging.rounds + 2):
            state = _Round()
            async for out in _events(upstream, state, head, usage, paging.name):
                yield out
            await upstream.aclose()
            if not state.ours or any(k == "theirs" for k in state.kinds.values()) or round_ > paging.rounds:
                break
            calls = [state.ours[i] for i in sorted(state.ours)]
            content = "".join(state.content) or None
            room = await next_round(paging, body, content, calls, room, last=round_ == paging.rounds)
            upstream = await send(jsonio.dumps(body))
            if upstream.status != 200:
                detail = (await upstream.read()).decode("utf-8", "replace")[:300]
                if upstream.status >= 500:  # may quote internal hosts or library text: not for the agent
                    detail = "the request may be retried"
                raise from_status(upstream.status, f"upstream failed during a recall round: {detail}")
        for out in _closing(state, head, usage, body):
            yield out
    finally:
        await upstream.aclose()


async def _events(
    upstream: UpstreamResponse, state: _Round, head: dict[str, Any], usage: dict[str, int], name: str
) -> AsyncIterator[bytes]:
    async for raw in iter_events(upstream.aiter_raw()):
        data = event_data(raw)
        if data is None:
            continue
        if data.strip() == "[DONE]":
            return
        try:
            chunk = jsonio.loads(data)
        except ValueError as exc:  # typically the half event of a connection that closed mid-way
            raise UpstreamError(f"the upstream sent an event that is not JSON: {data[:100]!r}") from exc
        if not isinstance(chunk, dict):
            continue
        head.setdefault("id", chunk.get("id"))
        chunk["id"] = head["id"]
        add_usage(usage, chunk.pop("usage", None))
        out = _filter(chunk, state, name)
        if out is not None:
            yield encode_data(out)


def _filter(chunk: dict[str, Any], state: _Round, name: str) -> dict[str, Any] | None:
    """The chunk as the agent should see it, or None to hold it back."""
    choices = chunk.get("choices") or []
    if not choices:
        return None  # a usage-only chunk: summed, sent once at the end
    if not isinstance(choices, list):
        return chunk  # not a chunk we understand (a broken upstream): relayed as it came
    shown = [c for c in (_choice(choice, chunk, state, name) for choice in choices) if c is not None]
    if not shown:
        return None
    chunk["choices"] = shown
    return chunk


def _choice(choice: Any, chunk: dict[str, Any], state: _Round, name: str) -> Any:
    """One choice as the agent should see it now, or None to hold it back; a finish is held
    (with an empty delta) for the closing chunk, its delta shown now like any other."""
    delta = (choice.get("delta") or {}) if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        return choice  # not a choice we understand (a broken upstream): relayed as it came
    finished = bool(choice.get("finish_reason"))
    if finished:
        state.finish = {**chunk, "choices": [{**choice, "delta": {}}]}
        choice = {**choice, "finish_reason": None}
    if isinstance(delta.get("content"), str):
        state.content.append(delta["content"])
    calls = delta.get("tool_calls")
    if calls and isinstance(calls, list):
        at = choice.get("index", 0)
        at = at if isinstance(at, int) else -1
        passed = [piece for call in calls for piece in _route(call, at, state, name)]
        if passed:
            delta["tool_calls"] = passed
        else:
            delta.pop("tool_calls")
            if not delta.get("content") and "role" not in delta:
                return None
    elif finished and not delta:
        return None
    return choice


def _route(call: Any, at: int, state: _Round, name: str) -> list[dict[str, Any]]:
    if not isinstance(call, dict):
        return [call]  # not a call: the agent's, relayed as it came
    index = call.get("index", 0)
    if not isinstance(index, int):
        index = -1  # a broken upstream's odd index: one slot for all of them
    slot = (at, index)
    called = function_of(call).get("name")
    if slot not in state.kinds and called:
        state.kinds[slot] = "ours" if called == name else "theirs"
    kind = state.kinds.get(slot)
    if kind is None:
        state.held.setdefault(slot, []).append(call)
        return []
    pieces = [*state.held.pop(slot, []), call]
    if kind == "theirs":
        return pieces
    for piece in pieces:
        _merge(
            state.ours.setdefault(slot, {"id": "", "type": "function", "function": {"name": name, "arguments": ""}}),
            piece,
        )
    return []


def _merge(into: dict[str, Any], piece: dict[str, Any]) -> None:
    if piece.get("id") and isinstance(piece["id"], str):
        into["id"] = piece["id"]
    arguments = function_of(piece).get("arguments")
    if isinstance(arguments, str):
        into["function"]["arguments"] += arguments


def _closing(state: _Round, head: dict[str, Any], usage: dict[str, int], body: dict[str, Any]) -> list[bytes]:
    out = []
    finish = state.finish or {
        "id": head.get("id"),
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}}],
    }
    if state.ours and not any(k == "theirs" for k in state.kinds.values()):
        finish["choices"][0]["finish_reason"] = "stop"  # the recall calls were ours: nothing for the agent to run
    out.append(encode_data(finish))
    if usage and (body.get("stream_options") or {}).get("include_usage"):
        out.append(
            encode_data({"id": head.get("id"), "object": "chat.completion.chunk", "choices": [], "usage": usage})
        )
    out.append(DONE)
    return out
