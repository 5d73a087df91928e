from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.api.errors import InvalidRequest
from gateway.wire.chat_json import ChatRequest, parse_request, to_wire
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


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"text": "hi"}, "messages.[0].content.[1].type"),
        ("hi", "messages.[0].content.[1]"),
        ({"type": 5, "text": "hi"}, "messages.[0].content.[1].type"),
        (None, "messages.[0].content.[1]"),
        (["text"], "messages.[0].content.[1]"),
    ],
)
def test_every_content_part_is_an_object_with_a_type(part: Any, param: str) -> None:
    error = rejected(encode([{"role": "user", "content": [{"type": "text", "text": "ok"}, part]}]))
    assert error.param == param and param.replace(".[", "[") in error.message


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
        ("c1", "'messages[1].tool_calls': expected an array"),
        ({"id": "c1"}, "'messages[1].tool_calls': expected an array"),
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
        {"role": "user", "content": "bye", "name": None},
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


# -- the type of every field ----------------------------------------------------------------

FULL: Json = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be brief.", "name": "harness"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "u", "detail": "low"}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": [call("c1")], "refusal": None},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "file body"}]},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": "read_file", "description": "d", "parameters": {"type": "object"}, "strict": True},
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "read_file"}},
    "parallel_tool_calls": True,
    "stream": True,
    "stream_options": {"include_usage": True},
    "n": 1,
    "max_tokens": 100,
    "max_completion_tokens": 100,
    "temperature": 0.5,
    "top_p": 1,
    "stop": ["\n"],
    "user": "alice",
    "seed": 7,
    "logprobs": False,
    "logit_bias": {"50256": -100},
    "response_format": {"type": "json_object"},
    "metadata": {"session_id": "s1", "project_id": "p1", "clawvm_event": "reset", "user_id": "u1"},
}


def test_a_request_with_every_field_of_the_right_type_is_accepted() -> None:
    chat = parse_request(json.dumps(FULL).encode())
    assert chat.stream is True and len(chat.messages) == 5
    assert chat.messages[1].images == 1 and chat.messages[3].text == "file body"


def changed(path: tuple[Any, ...], value: Any) -> bytes:
    body = json.loads(json.dumps(FULL))
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(body).encode()


DROP = object()
WRONG_TYPES = [
    (("messages", 1, "role"), {}),
    (("messages", 1, "role"), []),
    (("messages", 1, "role"), [None]),
    (("messages", 1, "role"), 3),
    (("messages", 0, "content"), {"text": "x"}),
    (("messages", 0, "name"), 5),
    (("messages", 0, "name"), ["harness"]),
    (("messages", 1, "content", 0), None),
    (("messages", 1, "content", 0, "text"), None),
    (("messages", 1, "content", 0, "text"), ["x"]),
    (("messages", 1, "content", 1, "image_url"), "https://example.com/cat.png"),
    (("messages", 1, "content", 1, "image_url", "url"), {}),
    (("messages", 1, "content", 1, "image_url", "detail"), 1),
    (("messages", 2, "tool_calls"), {}),
    (("messages", 2, "tool_calls", 0), [None]),
    (("messages", 2, "tool_calls", 0, "id"), {}),
    (("messages", 2, "tool_calls", 0, "type"), 1),
    (("messages", 2, "tool_calls", 0, "function"), []),
    (("messages", 2, "tool_calls", 0, "function", "name"), None),
    (("messages", 2, "tool_calls", 0, "function", "arguments"), {"path": "a.py"}),
    (("messages", 2, "refusal"), 1.5),
    (("messages", 3, "tool_call_id"), ["c1"]),
    (("messages", 3, "content", 0, "type"), None),
    (("messages", 4, "content", 0, "input_audio", "format"), 3),
    (("tools",), {}),
    (("tools", 0), "read_file"),
    (("tools", 0, "type"), None),
    (("tools", 0, "function"), "read_file"),
    (("tools", 0, "function", "name"), {}),
    (("tools", 0, "function", "description"), 1),
    (("tools", 0, "function", "parameters"), "{}"),
    (("tools", 0, "function", "strict"), "yes"),
    (("tool_choice",), 1),
    (("tool_choice",), ["auto"]),
    (("tool_choice", "type"), {}),
    (("tool_choice", "function"), "read_file"),
    (("tool_choice", "function", "name"), 1),
    (("parallel_tool_calls",), "true"),
    (("stream",), "true"),
    (("stream_options",), True),
    (("stream_options", "include_usage"), "yes"),
    (("n",), "2"),
    (("n",), True),
    (("n",), 1.5),
    (("max_tokens",), [100]),
    (("max_completion_tokens",), "100"),
    (("temperature",), "hot"),
    (("temperature",), False),
    (("top_p",), {}),
    (("stop",), 5),
    (("stop", 0), None),
    (("user",), {"id": "alice"}),
    (("seed",), 7.5),
    (("logprobs",), 1),
    (("logit_bias",), [1]),
    (("response_format",), "json"),
    (("response_format", "type"), None),
    (("metadata",), "s1"),
    (("metadata", "session_id"), 1),
    (("metadata", "project_id"), ["p1"]),
    (("metadata", "clawvm_event"), {}),
    (("metadata", "user_id"), 5),
]


def _param(path: tuple[Any, ...]) -> str:
    return ".".join(f"[{key}]" if isinstance(key, int) else key for key in path)


def _shown(path: tuple[Any, ...]) -> str:
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).removeprefix(".")


@pytest.mark.parametrize(("path", "value"), WRONG_TYPES, ids=[f"{_shown(p)}={v!r}" for p, v in WRONG_TYPES])
def test_a_field_of_the_wrong_type_is_a_400_naming_its_json_path(path: tuple[Any, ...], value: Any) -> None:
    error = rejected(changed(path, value))
    assert error.param == _param(path), error.message
    assert f"'{_shown(path)}'" in error.message
    assert error.code == "invalid_type"


REQUIRED = [
    ("messages", 1, "content", 0, "type"),
    ("messages", 1, "content", 0, "text"),
    ("messages", 1, "content", 1, "image_url"),
    ("messages", 1, "content", 1, "image_url", "url"),
    ("messages", 2, "tool_calls", 0, "id"),
    ("messages", 2, "tool_calls", 0, "function"),
    ("messages", 2, "tool_calls", 0, "function", "name"),
    ("tools", 0, "type"),
    ("tools", 0, "function"),
    ("tools", 0, "function", "name"),
    ("tool_choice", "type"),
    ("tool_choice", "function", "name"),
    ("response_format", "type"),
]


@pytest.mark.parametrize("path", REQUIRED, ids=[_shown(p) for p in REQUIRED])
def test_a_required_field_left_out_is_a_400_naming_it(path: tuple[Any, ...]) -> None:
    error = rejected(changed(path, DROP))
    assert error.param == _param(path), error.message
    assert error.code == "missing_required_parameter"


SAMPLES = {"null": None, "boolean": True, "integer": 7, "decimal": 1.5, "string": "x", "array": ["x"], "object": {}}
FIELD_TYPES = [
    (("tool_choice",), {"null", "string", "object"}),
    (("stop",), {"null", "string", "array"}),
    (("temperature",), {"null", "integer", "decimal"}),
    (("n",), {"null", "integer"}),
    (("stream",), {"null", "boolean"}),
    (("user",), {"null", "string"}),
    (("metadata",), {"null", "object"}),
    (("tools",), {"null", "array"}),
    (("messages", 0, "content"), {"null", "string", "array"}),
    (("messages", 0, "name"), {"null", "string"}),
    (("messages", 2, "tool_calls", 0, "function", "arguments"), {"null", "string"}),
    (("messages", 2, "tool_calls", 0, "type"), {"null", "string"}),
    (("tools", 0, "function", "parameters"), {"null", "object"}),
]


@pytest.mark.parametrize(("path", "accepted"), FIELD_TYPES, ids=[_shown(p) for p, _ in FIELD_TYPES])
def test_each_field_takes_exactly_the_types_openai_does(path: tuple[Any, ...], accepted: set[str]) -> None:
    """Each JSON type at the field: refused naming it, or taken (a value of an accepted type may
    still be refused for what is inside it, naming that: `tool_choice: {}` lacks its `type`)."""
    for kind, value in SAMPLES.items():
        if kind in accepted:
            try:
                parse_request(changed(path, value))
            except InvalidRequest as error:
                assert error.param != _param(path) and error.param.startswith(_param(path)), (kind, error.message)
        else:
            error = rejected(changed(path, value))
            assert (error.param, error.code) == (_param(path), "invalid_type"), kind


def test_fields_openai_does_not_define_are_left_to_the_upstream() -> None:
    body = json.loads(json.dumps(FULL))
    body["tools"].append({"type": "custom", "custom": {"name": "grammar"}})
    body["messages"][1]["content"].append({"type": "vendor_part", "vendor": [1]})
    body["messages"][1]["cache_control"] = {"type": "ephemeral"}
    body["metadata"]["other"] = 5
    body["vendor_field"] = {"a": [None]}
    assert parse_request(json.dumps(body).encode()).body == body


@pytest.mark.parametrize("role", [{}, [], [None], {"role": "user"}])
def test_a_role_of_an_unhashable_type_is_a_400_not_a_crash(role: Any) -> None:
    """The fast path for plain messages looked the role up in a set: a 500 (TypeError) on main."""
    for message in ({"role": role, "content": "hi"}, {"role": role, "content": "hi", "name": "a"}):
        error = rejected(encode([USER, message]))
        assert error.param == "messages.[1].role" and error.code == "invalid_type"
