"""The Anthropic Messages adapter (`POST /v1/messages`): what Claude Code speaks.

Parsing: the top-level `system` is one system message (a string or one block) or one per text
block (a harness's summary block pages apart from the prompt it follows); each user or
assistant message is one neutral message, except that a user message's `tool_result` blocks
become one `tool` message each, so the policy core pairs calls and results as it does for chat,
and a user message of several blocks one user message per block (the older blocks of a turn can
be paged out apart from its newest). A message's `raw` is the client's own dict (a
split message's raw holds its own blocks), so what is kept whole is forwarded unchanged:
`thinking` and `redacted_thinking` blocks with their signatures, `cache_control`, images.

Rendering: leading system messages go back to the top-level `system` (the client's own value
when it is whole); the rest are grouped into alternating user and assistant messages, tool
results first in a user message. The retained-state note, a system message in the middle of the
transcript, becomes a user text block (Anthropic has no system role there).

The recall tool is `{"name", "description", "input_schema"}`; its calls are `tool_use` blocks,
their results `tool_result` blocks. In a stream, the recall call's `content_block_*` events are
held, every other event is relayed at once, block indexes renumbered so the agent sees one
message; `message_delta` and `message_stop` are held to the end (one of each, usage summed), and
a later round's `message_start` is dropped.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway import jsonio
from gateway.api.errors import GatewayError, InvalidRequest
from gateway.api.errors import anthropic_error_body as error_body
from gateway.settings import Tenant
from gateway.upstream.client import UpstreamResponse, UpstreamTarget
from gateway.upstream.targets import anthropic_target
from gateway.wire import chat_json
from gateway.wire.base import (
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
    json_object,
    messages_from,
    metadata_names,
    passed,
)
from gateway.wire.cache_hints import add_anthropic_breakpoints
from gateway.wire.recall import DESCRIPTION, parameters
from policies.transcript import Message, ToolCall

USAGE = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
ROLES = ("user", "assistant")
SPOKEN = (*ROLES, "system")  # a `system` message in `messages`: newer models take them mid-conversation
TOP_SYSTEM = "clawvm.system"  # the raw of the top-level `system`
MEDIA = frozenset({"image", "document"})  # non-text blocks the full level carries
PLACEHOLDER = "[clawvm: the conversation continues; earlier turns were paged out]"
VERSION_HEADERS = ("accept", "anthropic-version", "anthropic-beta")
COUNTED = ("model", "messages", "system", "tools", "tool_choice", "thinking")  # what count_tokens accepts


def tool_schema(name: str) -> dict[str, Any]:
    return {"name": name, "description": DESCRIPTION, "input_schema": parameters()}


class MessagesWire(Stateless, ToolList):
    name = "messages"
    transcript_field = "messages"
    path = "/v1/messages"
    litellm = False

    def target(self, tenant: Tenant, headers: Mapping[str, str]) -> UpstreamTarget:
        return anthropic_target(tenant, headers)

    def forwarded(self, headers: Mapping[str, str]) -> dict[str, str]:
        return passed(headers, VERSION_HEADERS)

    def owns_account(self, tenant: Tenant) -> bool:
        return tenant.upstream.owns_anthropic_account

    def parse(self, raw: bytes, parse: Parse | None = None) -> WireRequest:
        return parse_request(raw, parse=parse)

    def names(self, request: WireRequest) -> Names:
        """`metadata`'s names (Anthropic's own is `user_id`; the API has no top-level user field)."""
        return metadata_names(request.body)

    def render(self, request: WireRequest, messages: Sequence[Message], tenant: Tenant) -> Body:
        body = dict(request.body)
        system, body["messages"] = to_wire(messages)
        body.pop("system", None)
        if system is not None:
            body["system"] = system
        body["model"] = tenant.upstream.upstream_model(request.model)
        return body

    def cache_hints(
        self, body: Body, model: str, built: Sequence[Message], stable: int, owner: Owner, litellm: bool
    ) -> None:
        """Anthropic's breakpoints, beside the client's own (four at most)."""
        add_anthropic_breakpoints(body, stable_end(body, built, stable))

    def shown(self, request: WireRequest, built: Sequence[Message], body: Body) -> tuple[list[Any], list[Any]]:
        """In chat's shape where the gateway built a message, else as the client sent it (its `raw`)."""
        return chat_json.to_wire(request.messages), chat_json.to_wire(built)

    def offers_recall(self, body: Mapping[str, Any]) -> bool:
        choice = body.get("tool_choice")
        return not (isinstance(choice, dict) and choice.get("type") == "none")

    def schema(self, name: str) -> dict[str, Any]:
        return tool_schema(name)

    dropped = ("tools", "tool_choice")

    def auto(self) -> Any:
        return {"type": "auto"}

    def continue_after(self, body: Body, found: Found, replies: Sequence[str]) -> None:
        results = [
            {"type": "tool_result", "tool_use_id": call.id, "content": text}
            for call, text in zip(found.ours, replies, strict=True)
        ]
        turn = [{"role": "assistant", "content": list(found.turn)}, {"role": "user", "content": results}]
        body["messages"] = [*body["messages"], *turn]

    def answer(self, stream: bool, name: str, body: Mapping[str, Any]) -> MessagesWhole | MessagesStream:
        return MessagesStream(name) if stream else MessagesWhole(name)

    def error_body(self, exc: GatewayError) -> Any:
        return error_body(exc)

    def error_event(self, exc: GatewayError) -> bytes:
        return event("error", error_body(exc))


MESSAGES = MessagesWire()


def event(name: str, data: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + jsonio.dumps(data) + b"\n\n"


def _named(value: Any, name: str) -> bool:
    return isinstance(value, dict) and value.get("name") == name


def counted_body(body: Mapping[str, Any]) -> Body:
    """The part of a forwarded body that `/v1/messages/count_tokens` accepts."""
    return {key: body[key] for key in COUNTED if key in body}


# -- parsing ---------------------------------------------------------------------------------------


def parse_request(raw: bytes, *, counting: bool = False, parse: Parse | None = None) -> WireRequest:
    """The request validated (`counting`: a count_tokens request, which has no `max_tokens`);
    `parse` reads the body and its messages reusing earlier requests' work
    (`gateway.wire.chat_transcripts.Reader`)."""
    body = json_object(raw) if parse is None else parse.loads(raw)
    model = body.get("model")
    if type(model) is not str or not model:
        raise InvalidRequest("model: Field required (a non-empty string)", param="model")
    tokens = body.get("max_tokens")
    if not counting and (type(tokens) is not int or tokens < 1):
        raise InvalidRequest("max_tokens: Field required (an integer of at least 1)", param="max_tokens")
    raw_messages = body.get("messages")
    if type(raw_messages) is not list or not raw_messages:
        raise InvalidRequest("messages: Field required (a non-empty array)", param="messages")
    for key, kind in (("stream", bool), ("tools", list), ("metadata", dict), ("tool_choice", dict)):
        if key in body and body[key] is not None and type(body[key]) is not kind:
            raise InvalidRequest(f"{key}: expected {_KINDS[kind]}", param=key)
    for index, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or (tool.get("type") in (None, "custom") and not _text(tool.get("name"))):
            raise InvalidRequest(f"tools.{index}: a tool must be an object with a name", param=f"tools.{index}")
    turns = parse_messages(raw_messages) if parse is None else parse.transcript(raw_messages, MESSAGES_FROM)
    messages = [*_system(body.get("system")), *turns]
    return WireRequest(body=body, model=model, messages=messages, stream=body.get("stream") is True)


_KINDS = {bool: "a boolean", list: "an array", dict: "an object"}


def _system(system: Any) -> list[Message]:
    if system is None:
        return []
    if type(system) is str:
        return [Message("system", system, raw={"type": TOP_SYSTEM, "content": system})] if system else []
    if type(system) is not list:
        raise InvalidRequest("system: expected a string or an array of text blocks", param="system")
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or type(block.get("text")) is not str:
            raise InvalidRequest(f"system.{index}: expected a text block", param=f"system.{index}")
    if len(system) == 1:
        return [Message("system", system[0]["text"], raw={"type": TOP_SYSTEM, "content": system})]
    return [Message("system", block["text"], raw={"type": TOP_SYSTEM, "block": block}) for block in system]


def parse_messages(raw_messages: Sequence[Any], start: int = 0) -> list[Message]:
    """The transcript of `raw_messages`, the first at index `start` of the request's. A whole
    request leaves no `tool_use` unanswered, so what follows it parses on its own."""
    messages: list[Message] = []
    pending: dict[str, int] = {}
    for index, item in enumerate(raw_messages, start):
        where = f"messages.{index}"
        if not isinstance(item, dict) or item.get("role") not in SPOKEN:
            raise InvalidRequest(f"{where}.role: expected 'user', 'assistant' or 'system'", param=f"{where}.role")
        content = item.get("content")
        if type(content) is str:
            blocks: list[dict[str, Any]] = []
        elif type(content) is list:
            blocks = [_block(block, f"{where}.content.{n}") for n, block in enumerate(content)]
        else:
            raise InvalidRequest(f"{where}.content: expected a string or an array of blocks", param=f"{where}.content")
        answered = [b for b in blocks if b["type"] == "tool_result"]
        for block in answered:
            if item["role"] != "user" or pending.pop(block["tool_use_id"], None) is None:
                raise InvalidRequest(
                    f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {block['tool_use_id']!r}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.",
                    param=f"{where}.content",
                )
        if pending:
            raise InvalidRequest(
                f"{where}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(pending)}. Each `tool_use` block must have a corresponding `tool_result` block "
                "in the next message.",
                param=f"messages.{pending[next(iter(pending))]}.content",
            )
        if item["role"] == "assistant":
            message = _assistant(item, content, blocks)
            pending.update((call.id, index) for call in message.tool_calls)
            messages.append(message)
        elif item["role"] == "system":  # forwarded as it came, where it came
            if any(b["type"] != "text" for b in blocks):
                raise InvalidRequest(
                    f"{where}.content: a system message holds text blocks only", param=f"{where}.content"
                )
            messages.append(Message("system", content if type(content) is str else _joined(blocks), raw=item))
        else:
            messages.extend(_user(item, content, blocks))
    if pending:
        index = next(iter(pending.values()))
        raise InvalidRequest(
            f"messages.{index}: `tool_use` ids were found without `tool_result` blocks after them: "
            f"{', '.join(pending)}.",
            param=f"messages.{index}.content",
        )
    return messages


MESSAGES_FROM = messages_from(parse_messages)


_REQUIRED: dict[str, tuple[tuple[str, type], ...]] = {
    "text": (("text", str),),
    "tool_use": (("id", str), ("name", str), ("input", dict)),
    "tool_result": (("tool_use_id", str),),
    "thinking": (("thinking", str), ("signature", str)),
    "redacted_thinking": (("data", str),),
}


def _block(block: Any, where: str) -> dict[str, Any]:
    if not isinstance(block, dict) or type(block.get("type")) is not str:
        raise InvalidRequest(f"{where}: expected a content block (an object with a type)", param=where)
    for key, kind in _REQUIRED.get(block["type"], ()):
        value = block.get(key)
        if type(value) is not kind or (kind is str and key in ("id", "name", "tool_use_id") and not value):
            raise InvalidRequest(
                f"{where}.{key}: Field required ({_KINDS.get(kind, 'a string')})", param=f"{where}.{key}"
            )
    content = block.get("content")
    nested = type(content) is list and all(isinstance(part, dict) for part in content)
    if block["type"] == "tool_result" and content is not None and type(content) is not str and not nested:
        raise InvalidRequest(f"{where}.content: expected a string or an array of blocks", param=f"{where}.content")
    return block


def _assistant(item: dict[str, Any], content: Any, blocks: list[dict[str, Any]]) -> Message:
    if type(content) is str:
        return Message("assistant", content, raw=item)
    calls = tuple(
        ToolCall(b["id"], b["name"], json.dumps(b["input"], ensure_ascii=False, separators=(",", ":")))
        for b in blocks
        if b["type"] == "tool_use"
    )
    return Message("assistant", _joined(blocks), calls, raw=item)


def _user(item: dict[str, Any], content: Any, blocks: list[dict[str, Any]]) -> list[Message]:
    if type(content) is str:
        return [Message("user", content, raw=item)]
    results = [b for b in blocks if b["type"] == "tool_result"]
    rest = [b for b in blocks if b["type"] != "tool_result"]
    if not results and len(rest) <= 1:
        return [Message("user", _joined(rest), raw=item, images=sum(1 for b in rest if b["type"] in MEDIA))]
    out = [
        Message("tool", _result_text(b), tool_call_id=b["tool_use_id"], raw={"role": "user", "content": [b]})
        for b in results
    ]
    for block in rest:  # one page per block: Claude Code's reminders page out apart from the request
        images = 1 if block["type"] in MEDIA else 0
        out.append(Message("user", _joined([block]), raw={"role": "user", "content": [block]}, images=images))
    return out


def _joined(blocks: Sequence[dict[str, Any]]) -> str:
    return "\n".join(b["text"] for b in blocks if b.get("type") == "text" and type(b.get("text")) is str)


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    text = content if type(content) is str else _joined(content or [])
    return f"[error] {text}" if block.get("is_error") is True else text


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


# -- rendering -------------------------------------------------------------------------------------


def to_wire(messages: Sequence[Message]) -> tuple[Any, list[dict[str, Any]]]:
    """(the top-level `system`, or None; the alternating messages)."""
    lead = 0  # the top-level system prompt, or what the assembly built in its place
    while lead < len(messages) and messages[lead].is_instruction and messages[lead].raw.get("role") != "system":
        lead += 1
    system = _system_wire(messages[:lead])
    groups: list[tuple[str, list[tuple[Message, list[dict[str, Any]]]]]] = []
    for message in messages[lead:]:
        blocks = _blocks(message)
        if not blocks:
            continue  # an empty message is refused by the API: nothing to say
        role = message.raw.get("role") or ("assistant" if message.role == "assistant" else "user")
        role = role if role in SPOKEN else "user"  # built tool results and system notes (older models take none)
        if groups and groups[-1][0] == role and role != "system":
            groups[-1][1].append((message, blocks))
        else:
            groups.append((role, [(message, blocks)]))
    out = [_grouped(role, members) for role, members in groups]
    if out and out[0]["role"] == "assistant":
        out.insert(0, {"role": "user", "content": PLACEHOLDER})
    return system, out


def stable_end(body: Body, messages: Sequence[Message], stable: int) -> tuple[str, int] | None:
    """Where the stable prefix (the first `stable` neutral messages) ends in the rendered `body`:
    ("system", -1) when it is the top-level system alone, ("messages", i) when it ends with the
    last block of message i; None when it ends inside a message the rendering reordered (a user
    message whose tool results go first) or holds nothing."""
    if stable <= 0:
        return None
    system, prefix = to_wire(messages[:stable])
    if not prefix:
        return ("system", -1) if system is not None else None
    index = len(prefix) - 1
    rendered = body.get("messages") or []
    if index >= len(rendered) or not _same_end(prefix[index], rendered[index]):
        return None
    return ("messages", index)


def _same_end(prefix: dict[str, Any], rendered: Any) -> bool:
    """The rendered message ends where the prefix's does (nothing of the prefix follows it)."""
    if not isinstance(rendered, dict):
        return False
    mine, theirs = prefix.get("content"), rendered.get("content")
    if not isinstance(mine, list) or not isinstance(theirs, list):
        return mine == theirs
    return theirs[: len(mine)] == mine and len(theirs) == len(mine)


def _system_wire(instructions: Sequence[Message]) -> Any:
    """The top-level `system`: the client's own when it is whole, else its blocks (the client's
    where they were kept, rebuilt where the assembly rebuilt them)."""
    if not instructions:
        return None
    if len(instructions) == 1 and "content" in instructions[0].raw:
        return instructions[0].raw["content"]
    return [m.raw["block"] if "block" in m.raw else block for m in instructions for block in _text_blocks(m)[:1]]


def _grouped(role: str, members: list[tuple[Message, list[dict[str, Any]]]]) -> dict[str, Any]:
    if len(members) == 1 and members[0][0].raw.get("role") == role:
        return dict(members[0][0].raw)  # the client's own message (or its own blocks of one)
    blocks = [block for _, own in members for block in own]
    if role == "user":  # tool results first in their message, as the API requires
        blocks = [b for b in blocks if b.get("type") == "tool_result"] + [
            b for b in blocks if b.get("type") != "tool_result"
        ]
    return {"role": role, "content": blocks}


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.raw and message.raw.get("role") in SPOKEN:
        content = message.raw["content"]
        return list(content) if isinstance(content, list) else _text_blocks(message)
    if message.role == "tool":
        return [
            {"type": "tool_result", "tool_use_id": message.tool_call_id or "", "content": message.text or "(empty)"}
        ]
    blocks = _text_blocks(message)
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)})
    return blocks


def _text_blocks(message: Message) -> list[dict[str, Any]]:
    return [{"type": "text", "text": message.text}] if message.text.strip() else []


def _input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- answers ---------------------------------------------------------------------------------------


def _calls(blocks: Sequence[Any], name: str) -> tuple[list[ToolCall], bool]:
    """(the recall calls, whether the agent's own tool calls are there too) of an answer's blocks."""
    ours, theirs = [], False
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            if block.get("name") == name:
                arguments = json.dumps(block.get("input") if isinstance(block.get("input"), dict) else {})
                ours.append(ToolCall(_text(block.get("id")), name, arguments))
            else:
                theirs = True
    return ours, theirs


class MessagesWhole(WholeAnswer):
    """Whole answers: the last round's message, its recall calls stripped, usage summed."""

    usage_keys = USAGE

    def inspect(self, data: Any) -> Found | None:
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            return None
        ours, theirs = _calls(data["content"], self.name)
        text = _joined([b for b in data["content"] if isinstance(b, dict)])
        return Found(tuple(ours), theirs, text, list(data["content"]))

    def finish(self, data: dict[str, Any]) -> None:
        if self.found.ours:
            data["content"] = [b for b in data["content"] if not (isinstance(b, dict) and _named(b, self.name))]
            if not self.found.theirs:
                data["stop_reason"] = "end_turn"
        if self.usage and isinstance(data.get("usage"), dict):
            data["usage"] = {**data["usage"], **self.usage}


@dataclass(slots=True)
class _Round:
    blocks: dict[int, dict[str, Any]] = field(default_factory=dict)  # upstream index -> the block so far
    partial: dict[int, list[str]] = field(default_factory=dict)  # a tool_use's input JSON pieces
    ours: set[int] = field(default_factory=set)
    theirs: bool = False
    index: dict[int, int] = field(default_factory=dict)  # upstream index -> the agent's
    delta: dict[str, Any] | None = None  # the held message_delta
    usage: dict[str, Any] = field(default_factory=dict)  # message_start's, updated by message_delta's
    failed: bool = False  # the upstream ended the stream with an `error` event


class MessagesStream:
    """Streams (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._started = False
        self._next = 0
        self._rounds: list[_Round] = []
        self._round = _Round()

    @property
    def found(self) -> Found:
        state = self._round
        blocks = [self._finished(i, state) for i in sorted(state.blocks)]
        ours = tuple(
            ToolCall(_text(b.get("id")), self.name, json.dumps(b["input"])) for b in blocks if _named(b, self.name)
        )
        return Found(ours, state.theirs, _joined(blocks), blocks)

    def _finished(self, index: int, state: _Round) -> dict[str, Any]:
        block = dict(state.blocks[index])
        if block.get("type") == "tool_use" or index in state.partial:
            block["input"] = _input("".join(state.partial.get(index, []))) or block.get("input") or {}
        return block

    async def read(self, upstream: UpstreamResponse) -> AsyncIterator[bytes]:
        self._round = state = _Round()
        self._rounds.append(state)
        async for raw, payload in json_events(upstream):
            if not isinstance(payload, dict):
                continue
            out = self._event(payload, state, raw)
            if out is not None:
                yield out
            state.failed = payload.get("type") == "error"
            if payload.get("type") in ("message_stop", "error"):
                return

    def _event(self, payload: dict[str, Any], state: _Round, raw: bytes) -> bytes | None:
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            state.usage = dict(usage) if isinstance(usage, dict) else {}
            if self._started:
                return None  # a later round's start: the agent's message began already
            self._started = True
            return raw
        if kind == "message_delta":
            if isinstance(payload.get("usage"), dict):  # counts so far: they replace message_start's
                state.usage.update(payload["usage"])
            state.delta = payload
            return None
        if kind == "message_stop":
            return None
        if kind in ("content_block_start", "content_block_delta", "content_block_stop"):
            return self._block_event(kind, payload, state, raw)
        return raw  # ping, error, and events this gateway does not know: relayed as they came

    def _block_event(self, kind: str, payload: dict[str, Any], state: _Round, raw: bytes) -> bytes | None:
        index = payload.get("index")
        if not isinstance(index, int):
            return raw  # not an event we understand (a broken upstream): relayed as it came
        if kind == "content_block_start":
            block = payload.get("content_block")
            block = dict(block) if isinstance(block, dict) else {}
            state.blocks[index] = block
            if block.get("type") == "tool_use":
                if block.get("name") == self.name:
                    state.ours.add(index)
                else:
                    state.theirs = True
            if index not in state.ours:
                state.index[index] = self._next
                self._next += 1
        elif kind == "content_block_delta":
            self._grow(state, index, payload.get("delta"))
        if index in state.ours:
            return None
        shown = state.index.get(index)
        if shown is None:  # a block that never started: relayed as it came
            return raw
        if shown == index:
            return raw
        return event(kind, {**payload, "index": shown})

    def _grow(self, state: _Round, index: int, delta: Any) -> None:
        block = state.blocks.setdefault(index, {})
        if not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = _text(block.get("text")) + _text(delta.get("text"))
        elif kind == "thinking_delta":
            block["thinking"] = _text(block.get("thinking")) + _text(delta.get("thinking"))
        elif kind == "signature_delta":
            block["signature"] = _text(block.get("signature")) + _text(delta.get("signature"))
        elif kind == "input_json_delta":
            state.partial.setdefault(index, []).append(_text(delta.get("partial_json")))

    def closing(self) -> list[bytes]:
        state = self._round
        if state.failed:  # the error event was the stream's last word, relayed as it came
            return []
        delta = state.delta or {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
        inner = delta.get("delta")
        delta = {**delta, "delta": dict(inner) if isinstance(inner, dict) else {}}
        if state.ours and not state.theirs:
            delta["delta"]["stop_reason"] = "end_turn"  # the calls were ours: nothing for the agent to run
        total: dict[str, Any] = {}
        for done in self._rounds:
            add_usage(total, done.usage, USAGE)
        if total:
            usage = delta.get("usage") if isinstance(delta.get("usage"), dict) else {}
            delta["usage"] = {**usage, **total}
        return [event("message_delta", delta), event("message_stop", {"type": "message_stop"})]
