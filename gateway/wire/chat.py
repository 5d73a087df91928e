"""The Chat Completions adapter (`POST /v1/chat/completions`).

Parsing and rendering are `gateway.wire.chat_json`'s; here are the recall tool in the chat shape, its
calls found in `choices[0].message.tool_calls` (whole answers) or in `delta.tool_calls`
(streams), and the continuation: the assistant's recall calls, then one `tool` message each.

A stream: content deltas pass through at once. Tool-call deltas are held until their tool's
name is known: the agent's own calls are then relayed (held pieces first), the gateway's recall
calls are kept back and assembled. The finish and usage chunks are held to the end: one finish
chunk, usage summed over every round, one `[DONE]`. Every choice of a chunk is filtered, the
finish chunk's own delta too (some upstreams send the whole call in it), so a recall call is
never relayed however the upstream cuts its stream. Later rounds' chunks carry the first
stream's id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway import jsonio
from gateway.api.errors import GatewayError, error_body
from gateway.settings import Tenant
from gateway.upstream.client import UpstreamResponse, UpstreamTarget
from gateway.upstream.sse import DONE, encode_data, error_event
from gateway.upstream.targets import upstream_target
from gateway.wire import chat_json
from gateway.wire.base import (
    END,
    Body,
    Found,
    Names,
    Owner,
    Parse,
    Stateless,
    ToolList,
    WholeAnswer,
    WireRequest,
    add_usage,
    json_events,
    metadata_names,
    passed,
)
from gateway.wire.cache_hints import add_breakpoints, add_cache_key, caches_explicitly
from gateway.wire.loop import Send, answered, streamed, whole
from gateway.wire.recall import DESCRIPTION, Paging, parameters
from policies.transcript import Message, ToolCall

USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")
Slot = tuple[int, int]  # (choice index, tool call index)


def tool_schema(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": DESCRIPTION, "parameters": parameters()}}


def function_of(call: Any) -> dict[str, Any]:
    """A tool call's `function` object, or {} when a broken upstream sent something else."""
    function = call.get("function") if isinstance(call, dict) else None
    return function if isinstance(function, dict) else {}


def split_calls(message: dict[str, Any], name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(recall calls, the agent's own calls) of an assistant message."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):  # not calls at all: nothing of ours, relayed as it came
        return [], []
    ours = [c for c in calls if isinstance(c, dict) and function_of(c).get("name") == name]
    return ours, [c for c in calls if c not in ours]


def neutral(call: dict[str, Any]) -> ToolCall:
    arguments = function_of(call).get("arguments")
    call_id = call.get("id")
    return ToolCall(
        call_id if isinstance(call_id, str) else "",
        str(function_of(call).get("name") or ""),
        arguments if isinstance(arguments, str) else "",
    )


class ChatWire(Stateless, ToolList):
    name = "chat"
    transcript_field = "messages"
    path = "/chat/completions"
    litellm = True

    def target(self, tenant: Tenant, headers: Mapping[str, str]) -> UpstreamTarget:
        return upstream_target(tenant, headers)

    def forwarded(self, headers: Mapping[str, str]) -> dict[str, str]:
        return passed(headers, ("accept",))

    def owns_account(self, tenant: Tenant) -> bool:
        return tenant.upstream.owns_account

    def parse(self, raw: bytes, parse: Parse | None = None) -> WireRequest:
        return chat_json.parse_request(raw, parse)

    def names(self, request: WireRequest) -> Names:
        """`metadata`'s names; the user else OpenAI's `user` field."""
        return metadata_names(request.body, "user")

    def render(self, request: WireRequest, messages: Sequence[Message], tenant: Tenant) -> Body:
        body = dict(request.body)
        body["messages"] = chat_json.to_wire(messages)
        body["model"] = tenant.upstream.upstream_model(request.model)
        return body

    def cache_hints(
        self, body: Body, model: str, built: Sequence[Message], stable: int, owner: Owner, litellm: bool
    ) -> None:
        """OpenAI's `prompt_cache_key`; through litellm, Anthropic's breakpoints when the model caches
        only at breakpoints."""
        if not litellm:
            add_cache_key(body, *owner)
        elif caches_explicitly(model):
            add_breakpoints(body, stable)

    def shown(self, request: WireRequest, built: Sequence[Message], body: Body) -> tuple[list[Any], list[Any]]:
        return request.body.get("messages") or [], body["messages"]

    def offers_recall(self, body: Mapping[str, Any]) -> bool:
        return body.get("tool_choice") != "none" and body.get("n", 1) in (1, None)

    def schema(self, name: str) -> dict[str, Any]:
        return tool_schema(name)

    def tool_name(self, tool: Any) -> Any:
        return function_of(tool).get("name")

    def continue_after(self, body: Body, found: Found, replies: Sequence[str]) -> None:
        calls = list(found.turn)
        results = [
            {"role": "tool", "tool_call_id": c.get("id", ""), "content": text}
            for c, text in zip(calls, replies, strict=True)
        ]
        call = {"role": "assistant", "content": found.text or None, "tool_calls": calls}
        body["messages"] = [*body["messages"], call, *results]

    def answer(self, stream: bool, name: str, body: Mapping[str, Any]) -> ChatWhole | ChatStream:
        return (
            ChatStream(name, bool((body.get("stream_options") or {}).get("include_usage")))
            if stream
            else ChatWhole(name)
        )

    def error_body(self, exc: GatewayError) -> Any:
        return error_body(exc)

    def error_event(self, exc: GatewayError) -> bytes:
        return error_event(exc)


CHAT = ChatWire()


class ChatWhole(WholeAnswer):
    """Whole answers: the last round's completion, its recall calls stripped, usage summed."""

    usage_keys = USAGE

    def inspect(self, data: Any) -> Found | None:
        message = _first_message(data)
        if message is None:  # not a chat completion we understand
            return None
        ours, theirs = split_calls(message, self.name)
        content = message.get("content")
        return Found(tuple(map(neutral, ours)), bool(theirs), content if isinstance(content, str) else "", ours)

    def finish(self, data: dict[str, Any]) -> None:
        if self.found.ours:  # past the bound, or mixed with the agent's own calls
            message = data["choices"][0]["message"]
            rest = [c for c in message.get("tool_calls") or [] if c not in self.found.turn]
            if rest:
                message["tool_calls"] = rest
            else:
                message.pop("tool_calls", None)
            if not self.found.theirs:  # a clean stop, never a call the agent cannot run
                data["choices"][0]["finish_reason"] = "stop"
                message["content"] = message.get("content") or ""
        if self.usage:
            data["usage"] = self.usage


def _first_message(data: Any) -> dict[str, Any] | None:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    return message if isinstance(message, dict) else None


@dataclass(slots=True)
class _Round:
    """What one upstream stream held back: recall calls by slot, call kinds, the finish chunk."""

    kinds: dict[Slot, str] = field(default_factory=dict)  # "ours" | "theirs"
    held: dict[Slot, list[dict[str, Any]]] = field(default_factory=dict)
    ours: dict[Slot, dict[str, Any]] = field(default_factory=dict)
    content: list[str] = field(default_factory=list)
    finish: dict[str, Any] | None = None


class ChatStream:
    """Streams (see the module docstring)."""

    def __init__(self, name: str, include_usage: bool) -> None:
        self.name = name
        self.include_usage = include_usage
        self._usage: dict[str, Any] = {}
        self._head: dict[str, Any] = {}
        self._state = _Round()

    @property
    def found(self) -> Found:
        state = self._state
        calls = [state.ours[slot] for slot in sorted(state.ours)]
        theirs = any(kind == "theirs" for kind in state.kinds.values())
        return Found(tuple(map(neutral, calls)), theirs, "".join(state.content), calls)

    async def read(self, upstream: UpstreamResponse) -> AsyncIterator[bytes]:
        self._state = state = _Round()
        async for _, chunk in json_events(upstream):
            if chunk == END:
                return
            if not isinstance(chunk, dict):
                continue
            self._head.setdefault("id", chunk.get("id"))
            chunk["id"] = self._head["id"]
            add_usage(self._usage, chunk.pop("usage", None), USAGE)
            out = self._filter(chunk, state)
            if out is not None:
                yield encode_data(out)

    def _filter(self, chunk: dict[str, Any], state: _Round) -> dict[str, Any] | None:
        """The chunk as the agent should see it, or None to hold it back."""
        choices = chunk.get("choices") or []
        if not choices:
            return None  # a usage-only chunk: summed, sent once at the end
        if not isinstance(choices, list):
            return chunk  # not a chunk we understand (a broken upstream): relayed as it came
        shown = [c for c in (self._choice(choice, chunk, state) for choice in choices) if c is not None]
        if not shown:
            return None
        chunk["choices"] = shown
        return chunk

    def _choice(self, choice: Any, chunk: dict[str, Any], state: _Round) -> Any:
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
            passed = [piece for call in calls for piece in self._route(call, at, state)]
            if passed:
                delta["tool_calls"] = passed
            else:
                delta.pop("tool_calls")
                if not delta.get("content") and "role" not in delta:
                    return None
        elif finished and not delta:
            return None
        return choice

    def _route(self, call: Any, at: int, state: _Round) -> list[dict[str, Any]]:
        if not isinstance(call, dict):
            return [call]  # not a call: the agent's, relayed as it came
        index = call.get("index", 0)
        if not isinstance(index, int):
            index = -1  # a broken upstream's odd index: one slot for all of them
        slot = (at, index)
        called = function_of(call).get("name")
        if slot not in state.kinds and called:
            state.kinds[slot] = "ours" if called == self.name else "theirs"
        kind = state.kinds.get(slot)
        if kind is None:
            state.held.setdefault(slot, []).append(call)
            return []
        pieces = [*state.held.pop(slot, []), call]
        if kind == "theirs":
            return pieces
        into = state.ours.setdefault(
            slot, {"id": "", "type": "function", "function": {"name": self.name, "arguments": ""}}
        )
        for piece in pieces:
            if piece.get("id") and isinstance(piece["id"], str):
                into["id"] = piece["id"]
            arguments = function_of(piece).get("arguments")
            if isinstance(arguments, str):
                into["function"]["arguments"] += arguments
        return []

    def closing(self) -> list[bytes]:
        state = self._state
        finish = state.finish or {
            "id": self._head.get("id"),
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}}],
        }
        if state.ours and not any(k == "theirs" for k in state.kinds.values()):
            finish["choices"][0]["finish_reason"] = "stop"  # the recall calls were ours: nothing for the agent to run
        out = [encode_data(finish)]
        if self._usage and self.include_usage:
            usage = {"id": self._head.get("id"), "object": "chat.completion.chunk", "choices": [], "usage": self._usage}
            out.append(encode_data(usage))
        out.append(DONE)
        return out


async def complete(send: Send, body: Body, paging: Paging) -> tuple[UpstreamResponse | None, bytes]:
    """A whole chat completion through the recall loop: (the failed upstream response, b"") when
    an upstream call answers an error, else (None, the final completion JSON)."""
    first = await send(jsonio.dumps(body))
    if first.status != 200:
        return first, b""
    return await whole(answered(first, send, body, paging, CHAT, CHAT.answer(False, paging.name, body)))


def relay(first: UpstreamResponse, send: Send, body: Body, paging: Paging) -> AsyncIterator[bytes]:
    """A chat stream through the recall loop; a failed round raises a `GatewayError`."""
    return streamed(answered(first, send, body, paging, CHAT, CHAT.answer(True, paging.name, body)))
