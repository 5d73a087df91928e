"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol, reading a request
body ahead of the app and handing it over whole.

Agents resend the whole conversation every turn, so a request body grows with the session (1.2 MB
at turn 1,000 of the growth bench) and each copy of it is paid again on every turn. For each part
the parser hands over, uvicorn's own protocol appends it to a `bytearray` (copied, and moved again
as the buffer grows), stops reading the socket once more than 64 KiB wait for the app (its flow
control: the client's upload stalls until the app asks), and wakes the app, which takes the
buffer as a new `bytes` (copied again) and joins the parts it was handed (`read_body`: once more).

`ReadAhead` keeps the parts as they came (`Parts`: joined once, when the app takes them; a single
part not at all), reads on while the unread body is at most `READ_AHEAD_BYTES`, and wakes the app
once the body is complete: it receives the whole body in one message. Past that bound, and for a
pipelined request waiting its turn, it pauses and wakes the app as uvicorn does. The bytes the app
receives, and their order, are unchanged.
"""

from __future__ import annotations

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

READ_AHEAD_BYTES = 8 * 1024 * 1024  # unread request body one connection may buffer before pausing


class Parts:
    """A request body's unread parts, as the parser handed them: what uvicorn's request cycle keeps
    in a `bytearray` (`+=`, `len`, `bytes`), without copying a part until the app takes them."""

    __slots__ = ("_parts", "_size")

    def __init__(self, first: bytes | bytearray = b"") -> None:
        self._parts: list[bytes] = [bytes(first)] if first else []
        self._size = len(first)

    def __iadd__(self, part: bytes) -> Parts:
        self._parts.append(part)
        self._size += len(part)
        return self

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)


class ReadAhead(HttpToolsProtocol):
    """uvicorn's httptools protocol, buffering a request body as `Parts`, pausing its reads only
    past `READ_AHEAD_BYTES` and waking the app once it is complete."""

    def on_body(self, body: bytes) -> None:
        """uvicorn's `on_body`, but for when it pauses reading and wakes the app."""
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        if not isinstance(cycle.body, Parts):
            cycle.body = Parts(cycle.body)
        cycle.body += body
        if len(cycle.body) <= READ_AHEAD_BYTES and not self.pipeline:
            return  # read on: `on_message_complete` wakes the app
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()
