"""Provider prompt-cache hints on the forwarded body.

- OpenAI routes requests to a cache machine by a hash of the prompt's head plus
  `prompt_cache_key`: a key per session keeps one session's requests together. The key is a
  digest of the tenant and the session id (no personal data: a session id may be a client's own
  string), added unless the client sent its own.
- Anthropic caches only up to explicit `cache_control` breakpoints (at most four per request).
  Through litellm, a breakpoint goes on the last message of the stable prefix (what the next
  turn forwards unchanged when it only appends) and on the last message (a recall follow-up or
  the next turn reads it); the client's own breakpoints are kept, and ours are added only while
  the total stays within four. litellm reads `cache_control` on a message with text content and on
  a content part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

KEY_PREFIX = "clawvm-"
EPHEMERAL = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4
ANTHROPIC_PREFIXES = ("anthropic/", "bedrock/anthropic.", "vertex_ai/claude")

Json = dict[str, Any]


def cache_key(tenant: str, session: str) -> str:
    """A stable key per tenant and session that names neither."""
    digest = hashlib.sha256(f"{tenant}\x1f{session}".encode()).hexdigest()[:32]
    return KEY_PREFIX + digest


def add_cache_key(body: Json, tenant: str, session: str) -> None:
    """`prompt_cache_key` for the session, unless the client chose one."""
    if "prompt_cache_key" not in body:
        body["prompt_cache_key"] = cache_key(tenant, session)


def caches_explicitly(model: str) -> bool:
    """A model whose provider caches only at `cache_control` breakpoints (Anthropic's)."""
    return model.startswith(ANTHROPIC_PREFIXES)


def breakpoints(body: Json) -> int:
    """The `cache_control` breakpoints already in the tools and messages."""
    found = sum(1 for tool in body.get("tools") or [] if isinstance(tool, dict) and "cache_control" in tool)
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        found += "cache_control" in message
        content = message.get("content")
        if isinstance(content, list):
            found += sum(1 for part in content if isinstance(part, dict) and "cache_control" in part)
    return found


def add_breakpoints(body: Json, stable: int) -> None:
    """Breakpoints at the end of the stable prefix (its first `stable` messages) and on the last
    message, as room under MAX_BREAKPOINTS allows; a message that already carries one is left
    as it is. Marked messages are copied: the client's own objects are never changed."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return
    room = MAX_BREAKPOINTS - breakpoints(body)
    for index in dict.fromkeys((stable - 1, len(messages) - 1)):
        if room <= 0 or index < 0:
            continue
        marked = _marked(messages[index])
        if marked is not None:
            messages[index] = marked
            room -= 1


def _marked(message: object) -> Json | None:
    """`message` with a breakpoint at its end, or None when it already has one or has no text to
    carry it (an assistant message made only of tool calls)."""
    if not isinstance(message, dict) or "cache_control" in message:
        return None
    content = message.get("content")
    if isinstance(content, list):
        return _marked_parts(message, content)
    if (isinstance(content, str) and content) or message.get("role") == "tool":
        return {**message, "cache_control": dict(EPHEMERAL)}
    return None


def _marked_parts(message: Json, parts: Sequence[object]) -> Json | None:
    if any(isinstance(p, dict) and "cache_control" in p for p in parts):
        return None
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        if isinstance(part, dict) and part.get("type") == "text":
            changed = [*parts[:index], {**part, "cache_control": dict(EPHEMERAL)}, *parts[index + 1 :]]
            return {**message, "content": changed}
    return None
