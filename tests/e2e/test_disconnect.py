"""A client that hangs up mid-stream makes the gateway drop its upstream call."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from bench.fake_upstream import serve
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings

CHUNKS = 50


class SlowStream:
    """An upstream that streams one SSE chunk every 100 ms and records how the stream ended."""

    def __init__(self) -> None:
        self.sent = 0
        self.ended = threading.Event()
        self.finished = False
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> StreamingResponse:
        await request.body()
        return StreamingResponse(self.events(), media_type="text/event-stream")

    async def events(self) -> AsyncIterator[bytes]:
        try:
            for n in range(CHUNKS):
                self.sent += 1
                yield f'data: {{"choices":[{{"index":0,"delta":{{"content":"{n} "}}}}]}}\n\n'.encode()
                await asyncio.sleep(0.1)
            yield b"data: [DONE]\n\n"
            self.finished = True
        finally:
            self.ended.set()


def test_client_disconnect_cancels_the_upstream_stream(redis_url: str, tmp_path: Path) -> None:
    upstream = SlowStream()
    with serve(upstream.app) as upstream_url:
        settings = load_settings(None, {}, Overrides(upstream=upstream_url, store=redis_url))
        with serve(create_app(settings)) as url:
            body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "count"}]}
            with httpx.Client(timeout=10) as client, client.stream("POST", url + "/chat/completions", json=body) as r:
                assert r.status_code == 200
                first = next(r.iter_raw())
                assert first.startswith(b"data: ")
            assert upstream.ended.wait(timeout=5), "the upstream stream was never closed"
            assert not upstream.finished
            assert upstream.sent < CHUNKS
            time.sleep(0.3)
            with httpx.Client() as client:  # the gateway keeps serving
                assert client.get(url.removesuffix("/v1") + "/health").status_code == 200
