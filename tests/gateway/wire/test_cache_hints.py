"""gateway.wire.cache_hints: the cache key and the breakpoints, on bodies of the real shape."""

from __future__ import annotations

import copy
from typing import Any

from gateway.wire.cache_hints import (
    EPHEMERAL,
    MAX_BREAKPOINTS,
    add_breakpoints,
    add_cache_key,
    breakpoints,
    cache_key,
    caches_explicitly,
)

Json = dict[str, Any]


def test_the_key_is_a_digest_of_tenant_and_session() -> None:
    assert cache_key("acme", "s1") == cache_key("acme", "s1") != cache_key("acme", "s2") != cache_key("beta", "s1")
    assert "acme" not in cache_key("acme", "s1") and "s1" not in cache_key("acme", "s1")[7:]
    body: Json = {"prompt_cache_key": "mine"}
    add_cache_key(body, "acme", "s1")
    assert body == {"prompt_cache_key": "mine"}


def test_anthropic_models_cache_explicitly() -> None:
    assert caches_explicitly("anthropic/claude-3-5-sonnet-20240620")
    assert not caches_explicitly("gpt-4o") and not caches_explicitly("openai/gpt-4o")


def test_breakpoints_go_on_copies_and_skip_call_only_messages() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: list[Json] = [
        {"role": "system", "content": "rules"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "result"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]},
    ]
    original = copy.deepcopy(messages)
    body: Json = {"messages": list(messages)}
    add_breakpoints(body, 2)  # the stable prefix ends on the call-only assistant message: nothing to mark there
    assert messages == original  # the client's objects are untouched
    assert "cache_control" not in body["messages"][1]
    assert body["messages"][3]["content"][0]["cache_control"] == EPHEMERAL
    assert breakpoints(body) == 1
    body = {"messages": list(messages)}
    add_breakpoints(body, 3)
    assert body["messages"][2]["cache_control"] == EPHEMERAL and breakpoints(body) == 2


def test_never_more_than_four_and_never_twice_on_one_message() -> None:
    marked = {"role": "user", "content": "x", "cache_control": dict(EPHEMERAL)}
    body: Json = {"messages": [marked, marked, marked, {"role": "user", "content": "y"}]}
    add_breakpoints(body, 1)  # the stable end already carries one; one room left goes to the last message
    assert breakpoints(body) == MAX_BREAKPOINTS
    add_breakpoints(body, 4)
    assert breakpoints(body) == MAX_BREAKPOINTS


def test_messages_breakpoints_go_at_the_prefix_end_and_the_last_message_within_four() -> None:
    from gateway.wire.cache_hints import add_anthropic_breakpoints, anthropic_breakpoints

    own = {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}
    thinking = {"type": "thinking", "thinking": "t", "signature": "s"}
    first = {"role": "user", "content": "hello"}
    body = {
        "system": [own],
        "tools": [{"name": "a", "cache_control": {"type": "ephemeral"}}],
        "messages": [first, {"role": "assistant", "content": [{"type": "text", "text": "x"}, thinking]}],
    }
    add_anthropic_breakpoints(body, ("messages", 0))
    assert body["messages"][0]["content"] == [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"][1]["content"][0]["cache_control"] == {"type": "ephemeral"}  # not on the thinking block
    assert "cache_control" not in body["messages"][1]["content"][1]
    assert first == {"role": "user", "content": "hello"}  # the client's object is untouched
    assert anthropic_breakpoints(body) == 4
    add_anthropic_breakpoints(body, ("messages", 0))
    assert anthropic_breakpoints(body) == 4  # never more than four


def test_messages_breakpoints_keep_the_clients_own_and_stop_at_four() -> None:
    from gateway.wire.cache_hints import add_anthropic_breakpoints, anthropic_breakpoints

    marked = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    body = {"system": "s", "messages": [{"role": "user", "content": [dict(marked)]} for _ in range(3)]}
    add_anthropic_breakpoints(body, ("system", -1))
    assert body["system"] == [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]
    assert anthropic_breakpoints(body) == 4 and all(m["content"] == [marked] for m in body["messages"])
    full = {"system": "s", "messages": [{"role": "user", "content": [dict(marked)]} for _ in range(4)]}
    add_anthropic_breakpoints(full, ("system", -1))
    assert full["system"] == "s" and anthropic_breakpoints(full) == 4
