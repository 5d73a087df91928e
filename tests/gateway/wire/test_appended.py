"""A body read by its appended bytes (`gateway.wire.appended`) is exactly what parsing it whole gives,
and anything else is parsed whole."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire.appended import Known, extended

TEXT = st.text(st.sampled_from('ab ]["{},:\\\n\té€😀'), max_size=12)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool"]), "content": TEXT},
    optional={"name": TEXT, "tool_calls": st.lists(st.fixed_dictionaries({"id": TEXT, "args": st.lists(TEXT)}))},
)
MEMBERS = st.dictionaries(
    st.sampled_from(["model", "user", "stop", "tools", "stream", "temperature", "metadata"]),
    st.one_of(TEXT, st.lists(TEXT, max_size=3), st.booleans(), st.dictionaries(TEXT, st.lists(TEXT), max_size=2)),
)
STYLES = [
    {"separators": (",", ":"), "ensure_ascii": False},
    {"separators": (", ", ": "), "ensure_ascii": True},
    {"indent": 2, "ensure_ascii": False},
]


def encode(body: dict[str, Any], style: dict[str, Any]) -> bytes:
    return json.dumps(body, **style).encode()


def body_of(members: dict[str, Any], place: int, messages: list[Any]) -> dict[str, Any]:
    """`members` with `messages` at position `place` among them."""
    items = list(members.items())
    place = min(place, len(items))
    return dict([*items[:place], ("messages", messages), *items[place:]])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    MEMBERS,
    st.integers(0, 7),
    st.lists(MESSAGE, min_size=1, max_size=4),
    st.lists(st.lists(MESSAGE, min_size=1, max_size=3), min_size=1, max_size=3),
    st.sampled_from(range(len(STYLES))),
)
def test_appended_messages_are_read_as_a_whole_parse_reads_them(
    members: dict[str, Any], place: int, first: list[Any], appends: list[list[Any]], style: int
) -> None:
    messages = list(first)
    raw = encode(body_of(members, place, messages), STYLES[style])
    known = Known(raw, orjson.loads(raw))
    for added in appends:
        messages = [*messages, *added]
        raw = encode(body_of(members, place, messages), STYLES[style])
        found = extended(known, raw)
        assert found is not None
        body, known = found
        assert body == orjson.loads(raw) and list(body) == list(orjson.loads(raw))
        assert known.end is not None and raw[known.end] in b"]\n "


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    MEMBERS,
    st.integers(0, 7),
    st.lists(MESSAGE, min_size=1, max_size=4),
    st.lists(MESSAGE, min_size=1, max_size=2),
    st.integers(0, 10_000),
    st.binary(max_size=4),
    st.integers(0, 3),
)
def test_any_other_change_is_never_taken_for_an_append(
    members: dict[str, Any], place: int, first: list[Any], added: list[Any], at: int, insert: bytes, cut: int
) -> None:
    """An edit anywhere in the later body: what `extended` returns, if anything, is what a whole
    parse gives; an invalid body is never read."""
    before = encode(body_of(members, place, first), STYLES[0])
    later = bytearray(encode(body_of(members, place, [*first, *added]), STYLES[0]))
    at %= len(later)
    later[at : at + cut] = insert
    known = Known(before, orjson.loads(before))
    found = extended(known, bytes(later))
    if found is None:
        return
    assert found[0] == orjson.loads(bytes(later))


def test_the_end_is_found_once_then_reused() -> None:
    first = b'{"model":"m","messages":[{"role":"user","content":"a]"}],"stop":["]"],"user":"u"}'
    second = first.replace(b'"a]"}]', b'"a]"},{"role":"assistant","content":"b"}]')
    third = second.replace(b'"b"}]', b'"b"},{"role":"user","content":"c"}]')
    body, known = extended(Known(first, orjson.loads(first)), second) or pytest.fail("not read")
    assert known.end == second.index(b"}]") + 1
    body, known = extended(known, third) or pytest.fail("not read")
    assert [m["content"] for m in body["messages"]] == ["a]", "b", "c"] and body["stop"] == ["]"]


def test_an_array_after_messages_that_grew_is_not_taken_for_messages() -> None:
    first = b'{"messages":[{"role":"user","content":"a"}],"stop":["x"],"user":"u"}'
    grown = b'{"messages":[{"role":"user","content":"a"}],"stop":["x","y"],"user":"u"}'
    assert extended(Known(first, orjson.loads(first)), grown) is None


def test_an_edited_earlier_message_is_parsed_whole() -> None:
    first = b'{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}'
    edited = b'{"messages":[{"role":"user","content":"A"},{"role":"user","content":"b"},{"role":"user","content":"c"}]}'
    assert extended(Known(first, orjson.loads(first)), edited) is None


def test_the_same_bytes_again_give_an_equal_body_of_fresh_containers() -> None:
    raw = b'{"messages":[{"role":"user","content":"a"}],"user":"u"}'
    known = Known(raw, orjson.loads(raw))
    body, again = extended(known, raw) or pytest.fail("not read")
    assert body == known.body and body is not known.body and body["messages"] is not known.body["messages"]


def test_appended_bytes_that_close_the_array_early_are_parsed_whole() -> None:
    first = b'{"messages":[{"role":"user","content":"a"}],"user":"u"}'
    sneaky = b'{"messages":[{"role":"user","content":"a"},1],"model":"x","z":[2],"user":"u"}'
    found = extended(Known(first, orjson.loads(first)), sneaky)
    assert found is None or found[0] == orjson.loads(sneaky)
