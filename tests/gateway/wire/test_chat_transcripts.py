"""A transcript cache hit parses only the new messages and gives exactly what a full parse does."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.errors import InvalidRequest
from gateway.wire.chat_json import parse_messages
from gateway.wire.chat_transcripts import MIN_REUSE, TranscriptCache


def turn(n: int) -> list[dict[str, Any]]:
    call = {"id": f"c{n}", "type": "function", "function": {"name": "read", "arguments": f'{{"n":{n}}}'}}
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{n}", "content": f"result {n}"},
    ]


def transcript(turns: int) -> list[dict[str, Any]]:
    raw: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Go."}]
    for n in range(turns):
        raw += turn(n)
    return raw


@given(st.integers(min_value=MIN_REUSE, max_value=30), st.integers(min_value=0, max_value=10))
def test_a_request_that_extends_the_last_one_parses_the_same(first: int, more: int) -> None:
    cache = TranscriptCache()
    earlier, later = transcript(first), transcript(first + more)
    assert cache.parse("t", earlier) == parse_messages(earlier)
    assert cache.parse("t", copy.deepcopy(later)) == parse_messages(later)


def test_a_hit_reuses_the_earlier_messages_and_parses_only_the_new_ones() -> None:
    cache = TranscriptCache()
    earlier = cache.parse("t", transcript(10))
    later = cache.parse("t", transcript(12))
    assert all(a is b for a, b in zip(earlier, later[: len(earlier)], strict=False))
    assert len(later) == len(earlier) + 4


def test_an_edited_prefix_is_parsed_again() -> None:
    cache = TranscriptCache()
    cache.parse("t", transcript(10))
    edited = transcript(12)
    edited[3]["content"] = "[pruned]"
    assert cache.parse("t", edited) == parse_messages(edited)
    assert cache.parse("t", edited)[3].text == "[pruned]"


def test_sessions_with_another_hint_do_not_share_entries() -> None:
    cache = TranscriptCache()
    first = cache.parse("a", transcript(10))
    other = cache.parse("b", transcript(11))
    assert not any(x is y for x, y in zip(first, other, strict=False))


def test_errors_in_the_new_messages_name_their_true_index() -> None:
    cache = TranscriptCache()
    raw = transcript(10)
    cache.parse("t", raw)
    bad = [*raw, {"role": "tool", "tool_call_id": "c3", "content": "answered twice"}]
    with pytest.raises(InvalidRequest) as info:
        cache.parse("t", bad)
    assert info.value.param == f"messages.[{len(raw)}].tool_call_id"
    with pytest.raises(InvalidRequest) as whole:
        parse_messages(bad)
    assert str(whole.value) == str(info.value)


def test_deeply_nested_values_are_a_miss_not_an_error() -> None:
    def nested() -> list[dict[str, Any]]:  # as deep as the JSON decoder admits (orjson: 1,024)
        deep: Any = "x"
        for _ in range(1020):
            deep = [deep]
        raw = transcript(10)
        raw[1] = {"role": "user", "content": [{"type": "text", "text": "hi", "extra": deep}]}
        return raw

    try:
        expected = parse_messages(nested())
    except InvalidRequest:
        pytest.skip("such a message is refused before any cache")
    cache = TranscriptCache()
    cache.parse("t", nested())
    assert cache.parse("t", nested()) == expected


def encoded(raw_messages: list[dict[str, Any]], pad: int = 20_000) -> bytes:
    """A chat body big enough to be kept (`MIN_BODY_BYTES`)."""
    return json.dumps({"model": "m", "messages": raw_messages, "user": "u", "pad": "x" * pad}).encode()


def test_a_body_that_extends_a_kept_one_is_read_by_its_new_bytes() -> None:
    cache = TranscriptCache()
    reader = cache.parser("t")
    first = reader.loads(encoded(transcript(10)))
    later = reader.loads(encoded(transcript(12)))
    assert later == json.loads(encoded(transcript(12)))
    assert all(a is b for a, b in zip(first["messages"], later["messages"], strict=False))  # not parsed again
    assert reader(later["messages"]) == parse_messages(later["messages"])


def test_a_body_of_another_session_under_one_hint_is_parsed_whole_and_kept_beside() -> None:
    cache = TranscriptCache()
    reader = cache.parser("t")
    other = transcript(10)
    other[1]["content"] = "Another conversation."
    first, second = reader.loads(encoded(transcript(10))), reader.loads(encoded(other))
    assert reader.loads(encoded(transcript(11)))["messages"][2] is first["messages"][2]
    assert reader.loads(encoded([*other, *turn(99)]))["messages"][2] is second["messages"][2]


def test_kept_bodies_are_bounded_by_their_bytes() -> None:
    cache = TranscriptCache(body_bytes=50_000)
    first = {hint: cache.parser(hint).loads(encoded(transcript(10))) for hint in ("a", "b", "c")}
    assert sum(len(k.raw) for ks in cache._bodies.values() for k in ks) <= 50_000
    later = {hint: cache.parser(hint).loads(encoded(transcript(11))) for hint in ("c", "a")}
    assert later["c"]["messages"][2] is first["c"]["messages"][2]  # kept: read by its new bytes
    assert later["a"]["messages"][2] is not first["a"]["messages"][2]  # the oldest, dropped: parsed whole


def test_a_body_that_is_not_an_object_is_refused_as_before() -> None:
    with pytest.raises(InvalidRequest):
        TranscriptCache().parser("t").loads(b"[1, 2]")


def test_only_what_extends_a_checked_body_is_left_to_check() -> None:
    cache = TranscriptCache()
    first, later = encoded(transcript(10)), encoded(transcript(12))
    unchecked = cache.parser("t")
    unchecked.loads(first)  # not marked checked: the next body is checked whole
    reader = cache.parser("t")
    body = reader.loads(later)
    assert reader.unchecked(later, body).start is None and reader.unchecked(later, body).raw is later
    reader.checked()
    grown = encoded(transcript(13))
    reader = cache.parser("t")
    body = reader.loads(grown)
    part = reader.unchecked(grown, body)
    assert part.start == len(transcript(12)) and part.body == turn(12)
    assert json.loads(b"[" + part.raw.removeprefix(b",") + b"]") == turn(12)
