from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import anyio
from hypothesis import given
from hypothesis import strategies as st

from bench.fake_upstream import stream_events
from gateway.api.errors import GatewayError, RateLimited, UpstreamError, error_body
from gateway.upstream.sse import DONE, encode_data, ending_cleanly, error_event, event_data, is_done, iter_events

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


# ---------------------------------------------------------------- ending_cleanly


def relayed(parts: Sequence[bytes], fail: GatewayError | None = None) -> tuple[list[bytes], list[GatewayError]]:
    seen: list[GatewayError] = []

    async def source() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
        if fail is not None:
            raise fail

    async def collect() -> list[bytes]:
        return [chunk async for chunk in ending_cleanly(source(), seen.append)]

    return anyio.run(collect), seen


def test_a_stream_that_ends_well_is_relayed_byte_for_byte() -> None:
    out, seen = relayed(EVENTS)
    assert out == EVENTS and not seen


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), unique=True, max_size=12))
def test_events_cut_anywhere_are_relayed_whole_and_complete(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    out, _ = relayed([STREAM[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])
    assert b"".join(out) == STREAM
    assert all(chunk.endswith(b"\n\n") for chunk in out)


def test_a_failure_ends_the_stream_with_its_error_event_and_no_done() -> None:
    fail = UpstreamError("the upstream connection dropped mid-response", code="upstream_disconnected")
    half = b'data: {"choices":[{"delta":{"content":"he'
    out, seen = relayed([EVENTS[1], EVENTS[2] + half], fail)
    assert out == [EVENTS[1], EVENTS[2], error_event(fail)]  # the half event is never relayed
    assert seen == [fail] and DONE not in out


def test_an_unfinished_tail_of_a_clean_end_is_relayed_as_it_is() -> None:
    out, _ = relayed([EVENTS[1], b"data: [DONE]"])
    assert out == [EVENTS[1], b"data: [DONE]"]


def test_crlf_events_are_not_cut_between_cr_and_lf() -> None:
    out, _ = relayed([b"data: 1\r\n\r\ndata: 2\r", b"\n\r\n"])
    assert out == [b"data: 1\r\n\r\n", b"data: 2\r\n\r\n"]


def test_lone_surrogates_are_written_as_escapes_never_as_invalid_utf8() -> None:
    """A broken upstream's chunk (found by tests/e2e/test_fuzz.py): JSON carries \\ud800 as an escape."""
    event = encode_data({"delta": "\ud800 é"})
    assert event == b'data: {"delta":"\\ud800 \\u00e9"}\n\n'
    assert json.loads(event_data(event) or "") == {"delta": "\ud800 é"}
    assert encode_data({"delta": "é"}) == 'data: {"delta":"é"}\n\n'.encode()  # the common case unchanged
    assert encode_data("x\ud800") == b"data: x\\ud800\n\n"
