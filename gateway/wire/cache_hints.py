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


# -- the Messages API: breakpoints on content blocks ------------------------------------------------

UNMARKABLE = frozenset({"thinking", "redacted_thinking"})  # blocks that cannot carry `cache_control`


def anthropic_breakpoints(body: Json) -> int:
    """The `cache_control` breakpoints already in a Messages body: tools, system blocks, message
    blocks (and blocks nested in a tool result)."""
    found = sum(1 for tool in body.get("tools") or [] if isinstance(tool, dict) and "cache_control" in tool)
    system = body.get("system")
    found += _marks(system) if isinstance(system, list) else 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        found += _marks(content) if isinstance(content, list) else 0
    return found


def _marks(blocks: Sequence[object]) -> int:
    found = 0
    for block in blocks:
        if isinstance(block, dict):
            found += "cache_control" in block
            nested = block.get("content")
            found += _marks(nested) if isinstance(nested, list) else 0
    return found


def add_anthropic_breakpoints(body: Json, prefix: tuple[str, int] | None) -> None:
    """Breakpoints at the end of the stable prefix (`prefix`: ("system", -1), the top-level system,
    or ("messages", i), the last block of message i) and at the end of the last message, as room
    under MAX_BREAKPOINTS allows; a place that already carries one is left as it is. Marked
    messages and blocks are copies: the client's own objects are never changed."""
    room = MAX_BREAKPOINTS - anthropic_breakpoints(body)
    messages = body.get("messages")
    places = [prefix] if prefix is not None else []
    if isinstance(messages, list) and messages:
        places.append(("messages", len(messages) - 1))
    for where, index in dict.fromkeys(places):
        if room <= 0:
            return
        if where == "system":
            marked = _marked_content(body.get("system"))
            if marked is not None:
                body["system"], room = marked, room - 1
        elif isinstance(messages, list) and isinstance(messages[index], dict):
            content = _marked_content(messages[index].get("content"))
            if content is not None:
                messages[index], room = {**messages[index], "content": content}, room - 1


def _marked_content(content: object) -> list[Json] | None:
    """`content` (a string or blocks) with a breakpoint on its last block that can carry one; None
    when it already has one at its end or none can."""
    if isinstance(content, str):
        return [{"type": "text", "text": content, "cache_control": dict(EPHEMERAL)}] if content else None
    if not isinstance(content, list) or not content:
        return None
    for index in range(len(content) - 1, -1, -1):
        block = content[index]
        if not isinstance(block, dict) or block.get("type") in UNMARKABLE:
            continue
        if "cache_control" in block:
            return None
        return [*content[:index], {**block, "cache_control": dict(EPHEMERAL)}, *content[index + 1 :]]
    return None
