"""Duplicate tool calls: a fault when the earlier result was paged out, an alert when resident."""

from __future__ import annotations

import json

from gateway.wire.chat_json import parse_messages
from policies.budget import resolve_budget
from policies.duplicates import ALERT, FAULT, after_ingest, signature
from policies.pagetable import PageTable
from policies.tenant import Budget, TenantPolicy
from policies.tokens import CharCounter
from policies.turn import assemble_turn, ingest_turn


def test_signatures_ignore_key_order_and_spacing() -> None:
    assert signature("read", '{"b": 1, "a": [1, 2]}') == signature("read", '{"a":[1,2],"b":1}')
    assert signature("read", '{"a": 1}') != signature("grep", '{"a": 1}')
    assert signature("read", "not json ") == signature("read", "not json")


def call(call_id: str, path: str) -> dict:
    arguments = json.dumps({"path": path})
    return {"id": call_id, "type": "function", "function": {"name": "read_file", "arguments": arguments}}


def session(repeat_path: str) -> list[list[dict]]:
    """Requests of an agent that reads a big file, chats, then reads `repeat_path`."""
    first = [
        {"role": "user", "content": "Look at the parser."},
        {"role": "assistant", "content": None, "tool_calls": [call("c1", "src/parser.py")]},
        {"role": "tool", "tool_call_id": "c1", "content": "def parse():\n" + "    x = 1\n" * 600},
        {"role": "assistant", "content": "I have read the parser."},
        {"role": "user", "content": "Thanks. Now something else entirely, please."},
    ]
    second = [
        *first,
        {"role": "assistant", "content": None, "tool_calls": [call("c2", repeat_path)]},
        {"role": "tool", "tool_call_id": "c2", "content": "def parse():\n    pass"},
    ]
    return [first, second]


def run(requests: list[list[dict]], budget: int) -> list:
    table = PageTable("t", "s", "p")
    tokens = resolve_budget(Budget(max_prompt_tokens=budget), 128_000, "model_map", 0)
    found = []
    for raw in requests:
        messages = parse_messages(raw)
        result = ingest_turn(table, messages, TenantPolicy(), CharCounter())
        found.append(after_ingest(table, result))
        assemble_turn(table, messages, result, TenantPolicy(), tokens)
    return found


def test_rerunning_a_paged_out_call_is_a_duplicate_tool_fault() -> None:
    first, second = run(session("src/parser.py"), budget=400)
    assert first == []
    assert [(d.kind, d.call_id) for d in second] == [(FAULT, "c2")]


def test_rerunning_a_resident_call_is_only_an_alert() -> None:
    _, second = run(session("src/parser.py"), budget=100_000)
    assert [(d.kind, d.call_id) for d in second] == [(ALERT, "c2")]


def test_a_different_call_is_no_duplicate() -> None:
    _, second = run(session("src/lexer.py"), budget=400)
    assert second == []
