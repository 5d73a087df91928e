"""The neutral transcript: messages compare by content, never by their raw wire form."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.wire.chat_json import parse_messages, to_wire
from policies.transcript import ROLES, Message, ToolCall


def test_roles_are_the_chat_roles() -> None:
    assert ROLES == {"system", "developer", "user", "assistant", "tool"}


@pytest.mark.parametrize(
    ("role", "instruction"),
    [("system", True), ("developer", True), ("user", False), ("assistant", False), ("tool", False)],
)
def test_instructions_are_system_and_developer_messages(role: str, instruction: bool) -> None:
    assert Message(role=role, text="x").is_instruction is instruction


def test_defaults() -> None:
    message = Message(role="user", text="hi")
    assert (message.tool_calls, message.tool_call_id, message.name, dict(message.raw)) == ((), None, None, {})


def test_raw_takes_no_part_in_equality() -> None:
    one = Message(role="user", text="hi", raw={"role": "user", "content": "hi"})
    two = Message(role="user", text="hi", raw={"role": "user", "content": [{"type": "text", "text": "hi"}]})
    assert one == two
    assert one != Message(role="user", text="hi", name="sam")


def test_messages_and_calls_are_slotted_values() -> None:
    # not frozen (a frozen dataclass costs 4x to build, one per message per request), but slotted
    with pytest.raises(AttributeError):
        Message(role="user", text="hi").extra = 1  # type: ignore[attr-defined]
    assert dataclasses.fields(ToolCall)[0].name == "id"


def test_the_wire_adapter_keeps_the_clients_dicts() -> None:
    wire = [
        {"role": "system", "content": "You are an agent.", "x-vendor": 1},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read", "arguments": '{"p": 1}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "data"},
    ]
    messages = parse_messages(wire)
    assert [m.text for m in messages] == ["You are an agent.", "a\nb", "", "data"]
    assert messages[2].tool_calls == (ToolCall("c1", "read", '{"p": 1}'),)
    assert messages[3].tool_call_id == "c1"
    out = to_wire(messages)
    assert all(a is b for a, b in zip(out, wire, strict=True))


def test_a_built_message_goes_out_in_openai_shape() -> None:
    calls = (ToolCall("c1", "read", "{}"),)
    assert to_wire([Message(role="assistant", text="", tool_calls=calls)]) == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}],
        }
    ]
    assert to_wire([Message(role="tool", text="x", tool_call_id="c1", name="read")]) == [
        {"role": "tool", "content": "x", "tool_call_id": "c1", "name": "read"}
    ]
