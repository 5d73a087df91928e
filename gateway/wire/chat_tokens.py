"""Tokens of a Chat Completions `messages` array, framed as the policy core frames pages
(`policies.tokens`), so the bench's and tests' counts of a forwarded chat body and the selector's agree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway.upstream.tokens import compact_json
from policies.tokens import IMAGE_TOKENS, REPLY_PRIMING, TokenCounter, framed, tool_calls_tokens
from policies.transcript import ToolCall


def count_messages(counter: TokenCounter, messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat `messages` array, framed as `policies.tokens` frames pages."""
    return sum(message_tokens(counter, m) for m in messages) + REPLY_PRIMING


def message_tokens(counter: TokenCounter, message: Mapping[str, Any]) -> int:
    text = content_tokens(counter, message.get("content"))
    calls = tool_calls_tokens(counter, wire_tool_calls(message.get("tool_calls")))
    return framed(text + calls, named=bool(message.get("name")))


def content_tokens(counter: TokenCounter, content: object) -> int:
    """A string counts as is; a part list counts its text parts joined, plus a flat
    IMAGE_TOKENS for every other part (image, audio, file), as the policy core does."""
    if isinstance(content, str):
        return counter.count(content)
    if not isinstance(content, list):
        return 0
    texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    images = sum(1 for p in content if isinstance(p, dict) and "text" not in p and "refusal" not in p)
    return counter.count("".join(texts)) + IMAGE_TOKENS * images


def wire_tool_calls(calls: object) -> tuple[ToolCall, ...]:
    if not isinstance(calls, list):
        return ()
    return tuple(wire_tool_call(c) for c in calls if isinstance(c, dict))


def wire_tool_call(call: Mapping[str, Any]) -> ToolCall:
    function = call.get("function")
    fields = function if isinstance(function, dict) else {}
    return ToolCall(str(call.get("id") or ""), as_text(fields.get("name")), as_text(fields.get("arguments")))


def as_text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else compact_json(value)
