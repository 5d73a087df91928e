from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import anyio
from hypothesis import given
from hypothesis import strategies as st

from bench.fake_upstream import stream_events
from gateway.errors import RateLimited, error_body
from gateway.sse import DONE, encode_data, error_event, event_data, is_done, iter_events

HEAD = {"id": "chatcmpl-1", "created": 1, "model": "m"}
REPLY = {
    "role": "assistant",
    "content": "Hello there, 世界 — two words\nand a line",
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
}
USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
EVENTS = [b": keep-alive comment\n\n", *stream_events(HEAD, REPLY, USAGE, include_usage=True)]
STREAM = b"".join(EVENTS)


async def _chunks(parts: Sequence[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def events_of(parts: Sequence[bytes]) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [event async for event in iter_events(_chunks(parts))]

    return anyio.run(collect)


def _cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def test_a_whole_stream_yields_its_events_byte_for_byte() -> None:
    assert events_of([STREAM]) == EVENTS
    assert events_of([STREAM])[-1] == DONE


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_split_into_chunks_yields_the_same_events(points: list[int]) -> None:
    assert events_of(_cut(STREAM, points)) == EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM) * 2), max_size=40))
def test_crlf_streams_yield_the_lf_events_under_any_split(points: list[int]) -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    assert events_of(_cut(crlf, points)) == EVENTS


def test_lone_cr_line_breaks_are_accepted() -> None:
    assert events_of([b"data: a\r\r", b"data: b\r", b"\r"]) == [b"data: a\n\n", b"data: b\n\n"]


def test_runs_of_blank_lines_dispatch_nothing() -> None:
    assert events_of([b"\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n"]) == [b"data: a\n\n", b"data: b\n\n"]


def test_a_last_event_without_its_blank_line_still_counts() -> None:
    assert events_of([b"data: a\n\ndata: [DONE]"]) == [b"data: a\n\n", DONE]
    assert events_of([b"data: a\n\n\n"]) == [b"data: a\n\n"]
    assert events_of([]) == []


def test_event_data_joins_data_fields_and_ignores_other_fields() -> None:
    assert event_data(b"event: message\nid: 7\ndata: one\ndata:two\ndata\n\n") == "one\ntwo\n"
    assert event_data(b"data:  two spaces\n\n") == " two spaces"
    assert event_data(b": comment\n\n") is None
    assert event_data(b"event: ping\n\n") is None
    assert event_data(b"data: x\r\n\r\n") == "x"


def test_is_done_recognises_only_the_done_sentinel() -> None:
    assert is_done(DONE)
    assert not is_done(encode_data({"done": "[DONE]"}))
    assert not is_done(b": [DONE]\n\n")


def test_encode_data_writes_compact_json_and_one_data_line_per_text_line() -> None:
    assert encode_data({"a": [1, 2], "b": "é"}) == 'data: {"a":[1,2],"b":"é"}\n\n'.encode()
    assert encode_data("x\ny\r\nz") == b"data: x\ndata: y\ndata: z\n\n"
    assert encode_data("[DONE]") == DONE


@given(st.text())
def test_encoded_text_round_trips_through_the_parser(text: str) -> None:
    event = encode_data(text)
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    assert events_of([event]) == [event]
    assert event_data(event) == normalised


def test_error_event_carries_openai_error_json() -> None:
    exc = RateLimited("slow down")
    data = event_data(error_event(exc))
    assert data is not None
    assert json.loads(data) == error_body(exc)
