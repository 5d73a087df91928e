from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.chat import ChatRequest, parse_request, to_wire
from gateway.errors import InvalidRequest
from policies.budget import TokenBudget
from policies.pagetable import PageTable
from policies.tenant import TenantPolicy
from policies.tokens import CharCounter
from policies.transcript import Message, ToolCall
from policies.turn import plan_turn

Json = dict[str, Any]


def encode(messages: Any, **extra: Any) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": messages, **extra}).encode()


def call(call_id: str, name: str = "read_file", arguments: Any = '{"path":"a.py"}') -> Json:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def rejected(raw: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(raw)
    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"
    return caught.value


USER = {"role": "user", "content": "hi"}
ASKS = {"role": "assistant", "content": None, "tool_calls": [call("c1")]}
ANSWER = {"role": "tool", "tool_call_id": "c1", "content": "file body"}


# -- the body -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"model": "\xff\xfe"}', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b"null", "JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_rejected(raw: bytes, needle: str) -> None:
    assert needle in rejected(raw).message


@pytest.mark.parametrize("model", [None, "", 5, ["gpt-4o"]])
def test_model_is_required_and_a_non_empty_string(model: Any) -> None:
    body: Json = {"messages": [USER]}
    if model is not None:
        body["model"] = model
    error = rejected(json.dumps(body).encode())
    assert error.param == "model" and "model" in error.message


@pytest.mark.parametrize("messages", [None, [], "hi", {"role": "user"}, 3])
def test_messages_are_required_and_a_non_empty_array(messages: Any) -> None:
    body: Json = {"model": "gpt-4o"}
    if messages is not None:
        body["messages"] = messages
    error = rejected(json.dumps(body).encode())
    assert error.param == "messages" and "'messages'" in error.message


@pytest.mark.parametrize("stream", ["yes", 1, 0, [], {}])
def test_stream_must_be_a_boolean(stream: Any) -> None:
    error = rejected(encode([USER], stream=stream))
    assert error.param == "stream" and "'stream'" in error.message


def test_stream_null_means_not_streaming() -> None:
    assert parse_request(encode([USER], stream=None)).stream is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("tools", 1), ("tools", True), ("tools", {"type": "function"}), ("tools", "f"), ("stream_options", ["x"])],
)
def test_fields_the_gateway_extends_must_have_their_shape(field: str, value: Any) -> None:
    """`tools` gets the recall tool appended and `stream_options` is read: found by the fuzzer (a 500)."""
    error = rejected(encode([USER], **{field: value}))
    assert error.param == field and f"'{field}'" in error.message
    assert parse_request(encode([USER], **{field: None})).body[field] is None


# -- one message ----------------------------------------------------------------------------


@pytest.mark.parametrize("item", [5, "hi", None, ["user", "hi"]])
def test_a_message_must_be_an_object(item: Any) -> None:
    error = rejected(encode([USER, item]))
    assert error.param == "messages.[1]" and "messages[1]" in error.message


@pytest.mark.parametrize("role", ["wizard", "function", "", None, 1, "User"])
def test_unknown_roles_are_rejected(role: Any) -> None:
    message: Json = {"content": "hi"} if role is None else {"role": role, "content": "hi"}
    error = rejected(encode([message]))
    assert error.param == "messages.[0].role" and "messages[0].role" in error.message


@pytest.mark.parametrize("content", [5, 1.5, True, {"type": "text", "text": "hi"}])
def test_content_of_the_wrong_type_is_rejected(content: Any) -> None:
    error = rejected(encode([USER, {"role": "user", "content": content}]))
    assert "messages[1].content" in error.message


@pytest.mark.parametrize("part", [{"text": "hi"}, "hi", {"type": 5, "text": "hi"}, None, ["text"]])
def test_every_content_part_needs_a_type(part: Any) -> None:
    error = rejected(encode([{"role": "user", "content": [{"type": "text", "text": "ok"}, part]}]))
    assert "messages[0].content" in error.message and "'type'" in error.message


# -- tool calls and their answers -----------------------------------------------------------


@pytest.mark.parametrize("call_id", [None, "", 7])
def test_a_tool_message_needs_a_tool_call_id(call_id: Any) -> None:
    answer: Json = {"role": "tool", "content": "x"}
    if call_id is not None:
        answer["tool_call_id"] = call_id
    error = rejected(encode([USER, ASKS, answer]))
    assert error.param == "messages.[2].tool_call_id" and "messages[2].tool_call_id" in error.message


def test_a_tool_message_must_answer_a_waiting_call() -> None:
    error = rejected(encode([USER, {"role": "tool", "tool_call_id": "ghost", "content": "x"}]))
    assert error.param == "messages.[1].tool_call_id"
    assert "messages[1]" in error.message and "'ghost'" in error.message


def test_a_call_is_answered_once_only() -> None:
    error = rejected(encode([USER, ASKS, ANSWER, dict(ANSWER)]))
    assert error.param == "messages.[3].tool_call_id" and "'c1'" in error.message


def test_an_answer_to_an_earlier_round_is_an_orphan() -> None:
    later = {"role": "assistant", "content": None, "tool_calls": [call("c2")]}
    error = rejected(encode([USER, ASKS, ANSWER, later, dict(ANSWER)]))
    assert error.param == "messages.[4].tool_call_id"


def test_calls_left_unanswered_at_the_end_are_rejected() -> None:
    error = rejected(encode([USER, ASKS]))
    assert error.param == "messages.[1].tool_calls"
    assert "messages[1]" in error.message and "'c1'" in error.message


def test_calls_must_be_answered_before_the_next_message() -> None:
    parallel = {"role": "assistant", "content": None, "tool_calls": [call("c1"), call("c2")]}
    error = rejected(encode([USER, parallel, ANSWER, {"role": "user", "content": "and?"}]))
    assert error.param == "messages.[1].tool_calls" and "'c2'" in error.message


@pytest.mark.parametrize(
    ("tool_calls", "needle"),
    [
        ("c1", "messages[1].tool_calls must be an array"),
        ({"id": "c1"}, "messages[1].tool_calls must be an array"),
        ([5], "messages[1].tool_calls[0]"),
        ([{"type": "function", "function": {"name": "f", "arguments": "{}"}}], "messages[1].tool_calls[0]"),
        ([{"id": "", "type": "function", "function": {"name": "f", "arguments": "{}"}}], "messages[1].tool_calls[0]"),
        ([{"id": 3, "type": "function", "function": {"name": "f", "arguments": "{}"}}], "messages[1].tool_calls[0]"),
        ([{"id": "c1", "type": "function"}], "messages[1].tool_calls[0]"),
        ([{"id": "c1", "type": "function", "function": "f"}], "messages[1].tool_calls[0]"),
        ([call("c0"), {"id": "c1", "function": {"arguments": "{}"}}], "messages[1].tool_calls[1].function.name"),
        ([{"id": "c1", "function": {"name": "", "arguments": "{}"}}], "messages[1].tool_calls[0].function.name"),
        ([call("c1", arguments={"path": "a.py"})], "messages[1].tool_calls[0].function.arguments"),
        ([call("c1", arguments=5)], "messages[1].tool_calls[0].function.arguments"),
    ],
)
def test_malformed_tool_calls_are_rejected(tool_calls: Any, needle: str) -> None:
    error = rejected(encode([USER, {"role": "assistant", "content": None, "tool_calls": tool_calls}]))
    assert needle in error.message


# -- what is accepted -----------------------------------------------------------------------


def test_a_plain_request_parses_into_the_neutral_transcript() -> None:
    raw = encode(
        [{"role": "system", "content": "Be brief."}, USER],
        temperature=0.2,
        tools=[{"type": "function", "function": {"name": "f"}}],
        vendor_field={"a": [1]},
    )
    chat = parse_request(raw)
    assert isinstance(chat, ChatRequest)
    assert chat.model == "gpt-4o" and chat.stream is False
    assert chat.messages == [Message("system", "Be brief."), Message("user", "hi")]
    assert chat.body == json.loads(raw)
    assert all(m.raw is chat.body["messages"][i] for i, m in enumerate(chat.messages))


@pytest.mark.parametrize("stream", [True, False])
def test_stream_flag(stream: bool) -> None:
    assert parse_request(encode([USER], stream=stream)).stream is stream


def test_null_content_is_empty_text() -> None:
    chat = parse_request(encode([{"role": "user", "content": None}, {"role": "assistant", "content": None}]))
    assert [m.text for m in chat.messages] == ["", ""]
    chat = parse_request(encode([{"role": "user"}]))
    assert chat.messages[0].text == ""


def test_content_parts_keep_their_text_and_their_raw_form() -> None:
    content = [
        {"type": "text", "text": "What is in"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        {"type": "text", "text": "this picture?"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]
    refusal = [{"type": "refusal", "refusal": "I can't."}]
    chat = parse_request(encode([{"role": "user", "content": content}, {"role": "assistant", "content": refusal}]))
    assert chat.messages[0].text == "What is in\nthis picture?"
    assert chat.messages[0].raw["content"] == content
    assert chat.messages[1].text == "I can't."
    assert parse_request(encode([{"role": "user", "content": []}])).messages[0].text == ""


def test_parallel_tool_calls_may_be_answered_in_any_order() -> None:
    asks = {"role": "assistant", "content": "Reading both.", "tool_calls": [call("a"), call("b", "grep", '{"q":"x"}')]}
    answers = [
        {"role": "tool", "tool_call_id": "b", "content": "B"},
        {"role": "tool", "tool_call_id": "a", "content": "A"},
    ]
    chat = parse_request(encode([USER, asks, *answers, {"role": "user", "content": "thanks"}]))
    assert chat.messages[1].tool_calls == (
        ToolCall("a", "read_file", '{"path":"a.py"}'),
        ToolCall("b", "grep", '{"q":"x"}'),
    )
    assert chat.messages[1].text == "Reading both."
    assert [m.tool_call_id for m in chat.messages[2:4]] == ["b", "a"]


def test_null_tool_arguments_are_empty() -> None:
    chat = parse_request(encode([USER, {"role": "assistant", "tool_calls": [call("c1", arguments=None)]}, ANSWER]))
    assert chat.messages[1].tool_calls == (ToolCall("c1", "read_file", ""),)


def test_tool_calls_null_or_empty_are_no_calls() -> None:
    chat = parse_request(encode([USER, {"role": "assistant", "content": "x", "tool_calls": None}]))
    assert chat.messages[1].tool_calls == ()
    chat = parse_request(encode([USER, {"role": "assistant", "content": "x", "tool_calls": []}]))
    assert chat.messages[1].tool_calls == ()


def test_tool_calls_on_other_roles_are_not_calls() -> None:
    chat = parse_request(encode([{"role": "user", "content": "x", "tool_calls": [call("u1")]}]))
    assert chat.messages[0].tool_calls == ()


def test_developer_role_is_an_instruction() -> None:
    chat = parse_request(encode([{"role": "developer", "content": "Answer in French."}, USER]))
    assert chat.messages[0].role == "developer" and chat.messages[0].is_instruction


def test_name_fields_are_kept() -> None:
    messages = [
        {"role": "system", "content": "s", "name": "harness"},
        {"role": "user", "content": "hi", "name": "alice"},
        {"role": "assistant", "tool_calls": [call("c1")], "name": "bot"},
        {"role": "tool", "tool_call_id": "c1", "content": "x", "name": "read_file"},
        {"role": "user", "content": "bye", "name": ""},
        {"role": "user", "content": "bye", "name": 5},
    ]
    chat = parse_request(encode(messages))
    assert [m.name for m in chat.messages] == ["harness", "alice", "bot", "read_file", None, None]
    assert chat.messages[3].tool_call_id == "c1"


def test_tool_call_id_is_kept_for_tool_messages_only() -> None:
    chat = parse_request(encode([{"role": "user", "content": "x", "tool_call_id": "stray"}]))
    assert chat.messages[0].tool_call_id is None


def test_lone_surrogates_and_unicode_survive() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "caf\\u00e9 \\ud800 \xe2\x9c\x93"}]}'
    assert parse_request(raw).messages[0].text == "café \ud800 ✓"


# -- back to the wire -----------------------------------------------------------------------


def test_full_fidelity_messages_are_the_clients_own_dicts() -> None:
    messages = [
        {"role": "system", "content": "s", "vendor": {"cache_control": {"type": "ephemeral"}}},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]},
        ASKS,
        ANSWER,
    ]
    chat = parse_request(encode(messages))
    wire = to_wire(chat.messages)
    assert wire == messages
    assert all(sent is given for sent, given in zip(wire, chat.body["messages"], strict=True))


def test_degraded_messages_are_built_well_formed() -> None:
    degraded = [
        Message("user", "[summary of a long question]"),
        Message("assistant", "", tool_calls=(ToolCall("c1", "read_file", '{"path":"a"}'),)),
        Message("assistant", "Reading.", tool_calls=(ToolCall("c2", "grep", ""),), name="bot"),
        Message("tool", "[pointer p:1]", tool_call_id="c1", name="read_file"),
    ]
    assert to_wire(degraded) == [
        {"role": "user", "content": "[summary of a long question]"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path":"a"}'}}
            ],
        },
        {
            "role": "assistant",
            "content": "Reading.",
            "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "grep", "arguments": ""}}],
            "name": "bot",
        },
        {"role": "tool", "content": "[pointer p:1]", "tool_call_id": "c1", "name": "read_file"},
    ]


def long_session(rounds: int) -> list[Json]:
    messages: list[Json] = [
        {"role": "system", "content": "You are a coding agent. Never push to main."},
        {"role": "user", "content": "Fix the build.", "name": "alice"},
    ]
    for n in range(rounds):
        messages.append({"role": "assistant", "content": f"Step {n}.", "tool_calls": [call(f"c{n}", arguments=None)]})
        body = "\n".join(f"line {i} of file {n}: value {n * 100 + i}" for i in range(60))
        messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": body})
    messages.append({"role": "user", "content": "What did file 2 say?"})
    return messages


def test_an_assembly_under_pressure_goes_back_on_the_wire_as_a_valid_request() -> None:
    chat = parse_request(encode(long_session(12)))
    budget = TokenBudget(cap=3000, usable=3000, hard_limit=100_000, source="config")
    plan = plan_turn(PageTable("t", "s", "p"), chat.messages, TenantPolicy(), CharCounter(), budget)
    wire = to_wire(plan.messages)
    assert len(json.dumps(wire)) < len(json.dumps(chat.body["messages"]))  # something was paged out
    again = parse_request(encode(wire))  # pairing, roles and shapes all still valid
    assert again.messages[-1] == chat.messages[-1]
    assert wire[-1] is chat.body["messages"][-1]
    assert json.dumps(wire) == json.dumps(to_wire(plan.messages))
