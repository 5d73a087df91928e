"""The Chat Completions wire adapter: request JSON <-> neutral transcript.

`parse_request` validates what the policy core and the upstream rely on (roles, content
shapes, tool-call pairing) and raises `InvalidRequest` naming the offending field, the way
OpenAI does. `to_wire` turns an assembled transcript back into `messages`; a message kept at
full fidelity is the client's own dict, forwarded unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import jsonio
from gateway.errors import InvalidRequest
from policies.transcript import ROLES, Message, ToolCall


@dataclass(frozen=True, slots=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    messages: list[Message]
    stream: bool


Parse = Callable[[list[Any]], list[Message]]


def parse_request(raw: bytes, parse: Parse | None = None) -> ChatRequest:
    """The request, validated; `parse` turns its `messages` into the transcript (default
    `parse_messages`; `gateway.transcripts.TranscriptCache.parser` reuses an earlier parse)."""
    try:
        body = jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("'messages' is a required property and must be a non-empty array.", param="messages")
    messages = (parse or parse_messages)(raw_messages)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean or null.", param="stream")
    for name, kind, shape in SHAPED_FIELDS:  # fields the gateway itself reads or extends
        if body.get(name) is not None and not isinstance(body[name], kind):
            raise InvalidRequest(f"'{name}' must be {shape} or null.", param=name)
    return ChatRequest(body=body, model=model, messages=messages, stream=bool(stream))


SHAPED_FIELDS = (("tools", list, "an array"), ("stream_options", dict, "an object"))
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
    if role not in PLAIN_ROLES or type(content) is not str:
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
    if type(item) is not dict:
        raise InvalidRequest(f"messages[{index}] must be an object.", param=f"messages.[{index}]")
    role = item.get("role")
    if role not in ROLES:
        raise InvalidRequest(
            f"messages[{index}].role: {role!r} is not one of 'system', 'developer', 'user', 'assistant', 'tool'.",
            param=f"messages.[{index}].role",
        )
    content = item.get("content")
    text = content if type(content) is str else content_text(content, f"messages[{index}]")
    calls = (
        _tool_calls(item["tool_calls"], f"messages[{index}]") if role == "assistant" and "tool_calls" in item else ()
    )
    call_id = item.get("tool_call_id")
    if role == "tool" and (type(call_id) is not str or not call_id):
        raise InvalidRequest(
            f"messages[{index}].tool_call_id is required for role 'tool'.", param=f"messages.[{index}].tool_call_id"
        )
    name = item.get("name")
    images = sum(1 for p in content if "text" not in p and "refusal" not in p) if type(content) is list else 0
    return Message(
        role,
        text,
        calls,
        call_id if role == "tool" else None,
        name if type(name) is str and name else None,
        item,
        images,
    )


def content_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string, an array of content parts, or null.")
    parts = []
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"{where}.content: every content part must be an object with a 'type'.")
        if isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif isinstance(part.get("refusal"), str):
            parts.append(part["refusal"])
    return "\n".join(parts)


def _tool_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(f"{where}.tool_calls must be an array.")
    calls = []
    for position, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str) or not call["id"]:
            raise InvalidRequest(f"{where}.tool_calls[{position}] must have an 'id' and a 'function'.")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.tool_calls[{position}].function.name is required.")
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            raise InvalidRequest(f"{where}.tool_calls[{position}].function.arguments must be a string.")
        calls.append(ToolCall(id=call["id"], name=name, arguments=arguments or ""))
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
