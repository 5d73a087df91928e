from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from bench.fake_upstream import serve
from gateway.api.protocol import READ_AHEAD_BYTES, Parts, ReadAhead

PART = 256 * 1024  # what one socket read hands the protocol


class Transport:
    """The asyncio transport a protocol is given, recording whether reading is paused."""

    def __init__(self) -> None:
        self.paused = False
        self.written = bytearray()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 4000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def _unread_app(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(3600)  # never reads: the body waits in the protocol


def head(size: int) -> bytes:
    return f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: {size}\r\n\r\n".encode()


def fed(protocol_class: type[HttpToolsProtocol], size: int) -> tuple[HttpToolsProtocol, Transport]:
    """A connection of `protocol_class` fed a request with a `size`-byte body, a socket read at a
    time, its app not reading any of it yet."""

    async def feed() -> tuple[HttpToolsProtocol, Transport]:
        config = uvicorn.Config(_unread_app, log_level="warning")
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(head(size))
        body = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for start in range(0, size, PART):
            if transport.paused:  # the event loop reads nothing more from a paused transport
                break
            protocol.data_received(body[start : start + PART])
        for task in list(protocol.tasks):
            task.cancel()
        return protocol, transport

    return asyncio.run(feed())


def test_uvicorns_protocol_pauses_a_body_past_64_kib() -> None:
    protocol, transport = fed(HttpToolsProtocol, 3 * 1024 * 1024)
    assert transport.paused and len(protocol.cycle.body) == PART


def test_a_body_within_the_read_ahead_is_read_whole_without_a_pause() -> None:
    size = 3 * 1024 * 1024
    protocol, transport = fed(ReadAhead, size)
    assert not transport.paused and len(protocol.cycle.body) == size


def test_past_the_read_ahead_reading_pauses_until_the_app_reads() -> None:
    protocol, transport = fed(ReadAhead, READ_AHEAD_BYTES + 3 * PART)
    assert transport.paused and READ_AHEAD_BYTES < len(protocol.cycle.body) <= READ_AHEAD_BYTES + PART


def test_parts_join_once_and_a_single_part_is_not_copied() -> None:
    parts = Parts(bytearray(b"ab"))
    parts += b"cd"
    parts += b"e"
    assert (len(parts), bytes(parts)) == (5, b"abcde")
    only = b"x" * 100_000
    single = Parts()
    single += only
    assert bytes(single) is only and (len(Parts()), bytes(Parts())) == (0, b"")


async def _digest(request: Request) -> JSONResponse:
    """The body's size and digest, and how many messages it came in."""
    parts = []
    while True:
        message = await request.receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(parts)
    messages = sum(1 for part in parts if part)
    return JSONResponse({"size": len(body), "sha256": hashlib.sha256(body).hexdigest(), "messages": messages})


@pytest.fixture
def echo() -> Iterator[str]:
    """An app answering each body's size and digest, served by uvicorn with `ReadAhead`."""
    app = Starlette(routes=[Route("/digest", _digest, methods=["POST"])])
    with serve(app, http=ReadAhead) as url:
        yield url.removesuffix("/v1") + "/digest"


@pytest.mark.parametrize("size", [0, 70_000, 3 * 1024 * 1024, READ_AHEAD_BYTES + 5 * 1024 * 1024])
def test_the_app_receives_every_byte_in_order(echo: str, size: int) -> None:
    body = hashlib.sha256(str(size).encode()).digest() * (size // 32) + b"x" * (size % 32)
    with httpx.Client(trust_env=False, timeout=30) as client:
        for _ in range(2):  # a second request on the same connection
            answer = client.post(echo, content=body).json()
            assert (answer["size"], answer["sha256"]) == (size, hashlib.sha256(body).hexdigest())
            if 0 < size <= READ_AHEAD_BYTES:
                assert answer["messages"] == 1  # the whole body, woken once
            elif size > READ_AHEAD_BYTES:
                assert answer["messages"] > 1  # past the bound, read as the app asks
