"""The Chat Completions wire adapter: request JSON <-> neutral transcript.

`parse_request` validates what the policy core and the upstream rely on (the type of every
field OpenAI defines, `gateway.wire.chat_fields`; roles, ids and tool-call pairing here) and raises
`InvalidRequest` naming the offending field by its JSON path, the way OpenAI does. `to_wire`
turns an assembled transcript back into `messages`; a message kept at full fidelity is the
client's own dict, forwarded unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.api.errors import InvalidRequest
from gateway.wire.base import Parse, WireRequest, json_object
from gateway.wire.chat_fields import ARRAY, BODY, MESSAGE, STRING, Spec, check, invalid, of
from policies.transcript import ROLES, Message, ToolCall

ChatRequest = WireRequest  # a chat request is a wire request (gateway.wire.base)


def parse_request(raw: bytes, parse: Parse | None = None) -> ChatRequest:
    """The request, validated; `parse` reads its body and turns its `messages` into the transcript
    (default: `json_object` and `parse_messages`; `gateway.wire.chat_transcripts.TranscriptCache.parser`
    reuses earlier requests' work)."""
    body = json_object(raw) if parse is None else parse.loads(raw)
    model = body.get("model")
    if type(model) is not str or not model:
        raise _absent("model", _MODEL, model, "you must provide a model parameter")
    raw_messages = body.get("messages")
    if type(raw_messages) is not list or not raw_messages:
        raise _absent(
            "messages", _MESSAGES, raw_messages, "'messages' is a required property and must be a non-empty array."
        )
    check(body, BODY)  # every other field the gateway reads or forwards
    messages = parse_messages(raw_messages) if parse is None else parse(raw_messages)
    return ChatRequest(body=body, model=model, messages=messages, stream=body.get("stream") is True)


_MODEL = of(STRING, required=True)
_MESSAGES = of(ARRAY, required=True)


def _absent(name: str, spec: Spec, value: Any, message: str) -> InvalidRequest:
    """The error for a required field that is absent, null or empty (`message`) or of the wrong type."""
    return (
        InvalidRequest(message, param=name)
        if value is None or value == "" or value == []
        else invalid(name, spec, value)
    )


PLAIN_ROLES = frozenset({"system", "developer", "user", "assistant"})
PLAIN_KEYS = frozenset({"role", "content"})


def parse_messages(raw_messages: Sequence[Any], start: int = 0) -> list[Message]:
    """The transcript of `raw_messages`, which follow `start` earlier messages whose tool calls
    were all answered (their indexes name fields in errors)."""
    messages: list[Message] = []
    pending: dict[str, int] = {}
    for index, item in enumerate(raw_messages, start):
        message = _plain(item) if not pending else None
        if message is not None:  # the common shape, validated in a few dict look-ups
            messages.append(message)
            continue
        message = parse_message(item, index)
        if message.role == "tool":
            if pending.pop(message.tool_call_id or "", None) is None:
                raise InvalidRequest(
                    f"messages[{index}]: a message with role 'tool' must be a response to a preceding "
                    f"message with 'tool_calls' (no call with id {message.tool_call_id!r} is waiting).",
                    param=f"messages.[{index}].tool_call_id",
                )
        elif pending:
            _unanswered(pending)
        for call in message.tool_calls:
            pending[call.id] = index
        messages.append(message)
    if pending:
        _unanswered(pending)
    return messages


def _plain(item: Any) -> Message | None:
    """A message of only `role` and string `content` in a non-tool role, or None."""
    if type(item) is not dict or item.keys() != PLAIN_KEYS:
        return None
    role, content = item["role"], item["content"]
    if type(role) is not str or role not in PLAIN_ROLES or type(content) is not str:
        return None
    return Message(role, content, (), None, None, item)


def _unanswered(pending: Mapping[str, int]) -> None:
    call_id, index = next(iter(pending.items()))
    raise InvalidRequest(
        f"messages[{index}]: an assistant message with 'tool_calls' must be followed by tool messages "
        f"responding to each 'tool_call_id'; {call_id!r} has no response.",
        param=f"messages.[{index}].tool_calls",
    )


def parse_message(item: Any, index: int) -> Message:
    check(item, MESSAGE, "messages", index)  # every field of the right type
    role = item["role"]
    if role not in ROLES:
        raise InvalidRequest(
            f"messages[{index}].role: {role!r} is not one of 'system', 'developer', 'user', 'assistant', 'tool'.",
            param=f"messages.[{index}].role",
            code="invalid_value",
        )
    content = item.get("content")
    calls = _tool_calls(item.get("tool_calls"), index) if role == "assistant" else ()
    call_id = item.get("tool_call_id")
    if role == "tool" and not call_id:
        raise InvalidRequest(
            f"messages[{index}].tool_call_id is required for role 'tool'.",
            param=f"messages.[{index}].tool_call_id",
            code="missing_required_parameter",
        )
    name = item.get("name")
    images = sum(1 for p in content if "text" not in p and "refusal" not in p) if type(content) is list else 0
    return Message(
        role,
        content_text(content),
        calls,
        call_id if role == "tool" else None,
        name or None,
        item,
        images,
    )


def content_text(content: str | list[dict[str, Any]] | None) -> str:
    """The text of checked content (`fields.MESSAGE`): a string, or its text and refusal parts, a line each."""
    if type(content) is str:
        return content
    if not content:
        return ""
    parts = []
    for part in content:
        if type(part.get("text")) is str:
            parts.append(part["text"])
        elif type(part.get("refusal")) is str:
            parts.append(part["refusal"])
    return "\n".join(parts)


def _tool_calls(value: list[dict[str, Any]] | None, index: int) -> tuple[ToolCall, ...]:
    """The calls of checked `tool_calls` (`fields.TOOL_CALL`), each with an id and a name."""
    calls = []
    for position, call in enumerate(value or ()):
        function = call["function"]
        for field, given in (("id", call["id"]), ("function.name", function["name"])):
            if not given:
                raise InvalidRequest(
                    f"messages[{index}].tool_calls[{position}].{field} must not be empty.",
                    param=f"messages.[{index}].tool_calls.[{position}].{field}",
                    code="invalid_value",
                )
        calls.append(ToolCall(id=call["id"], name=function["name"], arguments=function.get("arguments") or ""))
    return tuple(calls)


def to_wire(messages: Sequence[Message]) -> list[Any]:
    return [m.raw if m.raw else _build(m) for m in messages]


def _build(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.text}
    if message.tool_calls:
        out["content"] = message.text or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out
