"""Server-Sent Events framing for OpenAI-style chat streams.

In: raw bytes as a transport delivers them, cut anywhere (mid-line, mid-UTF-8 sequence, between the
`\\r` and `\\n` of a line break). Out: whole events, one `bytes` each, ending in a blank line, so a
caller can inspect an event and then relay, drop or replace it. Line breaks are normalised to `\\n`
(SSE allows `\\r\\n`, `\\n` and `\\r`); a stream that already uses `\\n`, like OpenAI's, comes out byte for
byte. No I/O here: the caller owns the transport.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from gateway.api.errors import GatewayError, error_body

DONE = b"data: [DONE]\n\n"
_SEPARATOR = b"\n\n"
_COMPACT = (",", ":")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _normalise(buffer: bytes) -> bytes:
    return buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _split(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Whole events in `buffer` (normalised), and the unfinished rest."""
    held = b"\r" if buffer.endswith(b"\r") else b""  # may be the first half of \r\n
    text = _normalise(buffer[: len(buffer) - len(held)])
    *events, rest = text.split(_SEPARATOR)
    stripped = (e.strip(b"\n") for e in events)  # runs of blank lines dispatch nothing
    return [e + _SEPARATOR for e in stripped if e], rest + held


async def iter_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Complete events from arbitrarily cut chunks. A final event missing its blank line still counts."""
    pending = b""
    async for chunk in chunks:
        events, pending = _split(pending + chunk)
        for event in events:
            yield event
    tail = _normalise(pending).strip(b"\n")
    if tail:
        yield tail + _SEPARATOR


def event_data(raw_event: bytes) -> str | None:
    """The joined `data:` fields of one event, or None when it has none (comments, bare `event:`)."""
    values = [_field_value(line) for line in _normalise(raw_event).split(b"\n") if _is_data(line)]
    if not values:
        return None
    return "\n".join(values)


def _is_data(line: bytes) -> bool:
    return line == b"data" or line.startswith(b"data:")


def _field_value(line: bytes) -> str:
    value = line[5:]
    if value.startswith(b" "):
        value = value[1:]
    return value.decode("utf-8")


def is_done(raw_event: bytes) -> bool:
    return event_data(raw_event) == "[DONE]"


def encode_data(payload: Any) -> bytes:
    """One `data:` event: a string as it is (one `data:` line per line), anything else as compact JSON.
    Lone surrogates (valid in JSON as escapes, not in UTF-8) are written as escapes."""
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=_COMPACT, ensure_ascii=False)
    try:
        return _data_lines(text).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        if isinstance(payload, str):
            return _data_lines(text).encode("utf-8", "backslashreplace") + b"\n"
        return _data_lines(json.dumps(payload, separators=_COMPACT, ensure_ascii=True)).encode("ascii") + b"\n"


def _data_lines(text: str) -> str:
    lines = _LINE_BREAK.split(text)  # a raw line break inside a field would end the field
    return "".join(f"data: {line}\n" for line in lines)


def error_event(exc: GatewayError) -> bytes:
    """An event carrying OpenAI's error JSON: how a stream that already sent its 200 reports failure."""
    return encode_data(error_body(exc))


_BOUNDARY = re.compile(rb"(?:\r\n|\r(?!\n)|\n){2}")  # a blank line, \r\n never split


def _whole(buffer: bytes) -> int:
    """Where the last complete event of `buffer` ends (0: none is complete)."""
    if buffer.endswith(_SEPARATOR):
        return len(buffer)
    return max((m.end() for m in _BOUNDARY.finditer(buffer)), default=0)


async def ending_cleanly(
    chunks: AsyncIterator[bytes],
    on_error: Callable[[GatewayError], None] | None = None,
    event: Callable[[GatewayError], bytes] = error_event,
) -> AsyncIterator[bytes]:
    """A stream relayed whole events at a time, whose failure is its last event.

    Bytes pass as they come, except that an event cut by a chunk boundary is held until it is
    complete. A `GatewayError` raised while streaming (the upstream dropped or stalled) ends the
    stream with `event` (`error_event`: OpenAI's) and nothing after it (no `[DONE]`, as OpenAI does): the event
    being received when it failed is dropped, so the agent never sees half an event. At the
    end of a stream that closed cleanly, an unfinished tail is relayed as it is."""
    pending = b""
    try:
        async for chunk in chunks:
            if pending:
                chunk, pending = pending + chunk, b""
            end = _whole(chunk)
            if end < len(chunk):
                chunk, pending = chunk[:end], chunk[end:]
            if chunk:
                yield chunk
        if pending:
            yield pending
    except GatewayError as exc:
        if on_error is not None:
            on_error(exc)
        yield event(exc)
