"""A plain passthrough: the cheapest proxy one could put in front of an OpenAI-compatible API.

Every request under `/v1/` is relayed byte for byte to the upstream and its answer streamed back
(status, body, end-to-end headers). No parsing, no policy: the baseline any proxy's added latency
is compared with. `GET /health` answers 200. Run it with
`python -m bench.peers.passthrough --port N --upstream http://127.0.0.1:M/v1`.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TypedDict

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
SKIPPED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
TIMEOUT_S = 120.0
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class State(TypedDict):
    session: aiohttp.ClientSession
    upstream: str


def end_to_end(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers a proxy passes on: all but hop-by-hop ones, host and content-length."""
    return {name: value for name, value in headers.items() if name.lower() not in HOP_BY_HOP}


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def relay(request: Request) -> Response:
    session: aiohttp.ClientSession = request.state.session
    url = request.state.upstream + "/" + request.path_params["path"]
    try:
        answer = await session.request(
            request.method,
            url,
            params=request.query_params.multi_items(),
            headers=end_to_end(request.headers),
            data=await request.body(),
        )
    except aiohttp.ClientError as exc:
        return bad_gateway(exc)
    return StreamingResponse(
        answer.content.iter_any(),
        status_code=answer.status,
        headers=end_to_end(answer.headers),
        background=BackgroundTask(answer.release),
    )


def bad_gateway(exc: aiohttp.ClientError) -> Response:
    error = {"message": f"upstream unreachable: {exc!r}", "type": "api_error", "param": None, "code": None}
    return JSONResponse({"error": error}, status_code=502)


def create_app(upstream: str) -> Starlette:
    """The relay in front of `upstream` (an api_base such as `http://127.0.0.1:8000/v1`)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        # raw bytes both ways: no decompression, no default headers beyond what the agent sent
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False, skip_auto_headers=SKIPPED) as session:
            yield {"session": session, "upstream": upstream.rstrip("/")}

    routes = [Route("/health", health), Route("/v1/{path:path}", relay, methods=METHODS)]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A plain HTTP passthrough to an OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's api_base, e.g. http://127.0.0.1:8000/v1")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.upstream), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
