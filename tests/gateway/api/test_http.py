from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.fake_upstream import serve
from gateway.api.errors import GatewayError, InvalidRequest, PayloadTooLarge, UpstreamTimeout, error_response
from gateway.api.http import HeaderLimit, head_bytes, read_body, respond
from gateway.upstream.client import UpstreamResponse

pytestmark = pytest.mark.anyio

Message = dict[str, Any]


class Client:
    """The receiving side of one ASGI request: the body in chunks, then a disconnect."""

    def __init__(self, chunks: Sequence[bytes], *, disconnect_early: bool = False) -> None:
        self.events: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1} for n, chunk in enumerate(chunks)
        ]
        if disconnect_early:
            self.events[-1] = {"type": "http.disconnect"}
        self.reads = 0

    async def receive(self) -> Message:
        self.reads += 1
        if self.events:
            return self.events.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    def request(self, headers: dict[str, str] | None = None) -> Request:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }
        return Request(scope, self.receive)


# -- read_body ------------------------------------------------------------------------------


async def test_the_whole_body_is_read_in_chunks() -> None:
    client = Client([b'{"a":', b"", b' "b"}'])
    assert await read_body(client.request({"content-length": "9"}), limit=100) == b'{"a": "b"}'


async def test_a_body_in_one_message_is_that_message_not_a_copy() -> None:
    body = b"x" * 100_000
    assert await read_body(Client([body]).request({"content-length": "100000"}), limit=200_000) is body


async def test_a_body_exactly_at_the_limit_is_accepted() -> None:
    client = Client([b"x" * 60, b"y" * 40])
    assert await read_body(client.request({"content-length": "100"}), limit=100) == b"x" * 60 + b"y" * 40


async def test_an_empty_body_is_empty() -> None:
    assert await read_body(Client([b""]).request(), limit=10) == b""


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    client = Client([b"x" * 10])
    with pytest.raises(PayloadTooLarge) as caught:
        await read_body(client.request({"content-length": "5000"}), limit=4096)
    assert caught.value.status_code == 413
    assert "5000" in caught.value.message and "4096" in caught.value.message
    assert "server.max_body_bytes" in caught.value.message
    assert client.reads == 0


async def test_a_streamed_body_over_the_limit_is_refused_as_soon_as_it_passes() -> None:
    client = Client([b"x" * 40] * 10)  # chunked: no content-length
    with pytest.raises(PayloadTooLarge) as caught:
        await read_body(client.request(), limit=100)
    assert "120 bytes so far" in caught.value.message
    assert client.reads == 3  # the rest is never read


async def test_a_client_that_declares_less_than_it_sends_is_caught() -> None:
    client = Client([b"x" * 80, b"x" * 80])
    with pytest.raises(PayloadTooLarge):
        await read_body(client.request({"content-length": "10"}), limit=100)


@pytest.mark.parametrize("declared", ["abc", "-1", "", "1e9"])
async def test_a_meaningless_content_length_falls_back_to_counting(declared: str) -> None:
    assert await read_body(Client([b"abc"]).request({"content-length": declared}), limit=10) == b"abc"
    with pytest.raises(PayloadTooLarge):
        await read_body(Client([b"x" * 11]).request({"content-length": declared}), limit=10)


async def test_a_client_that_disconnects_mid_body_is_a_bad_request() -> None:
    client = Client([b"x" * 10, b"x" * 10, b"lost"], disconnect_early=True)
    with pytest.raises(InvalidRequest, match="disconnected"):
        await read_body(client.request(), limit=100)


def limited_app(limit: int) -> Starlette:
    async def echo(request: Request) -> Response:
        body = await read_body(request, limit)
        return JSONResponse({"size": len(body)})

    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    return Starlette(routes=[Route("/echo", echo, methods=["POST"])], exception_handlers={GatewayError: gateway_error})


@pytest.fixture(scope="module")
def limited() -> Iterator[str]:
    with serve(limited_app(1000)) as url:
        yield url.removesuffix("/v1") + "/echo"


def chunked(total: int, piece: int = 100) -> Iterator[bytes]:
    for start in range(0, total, piece):
        yield b"x" * min(piece, total - start)


def test_over_real_http_413_by_declared_length(limited: str) -> None:
    response = httpx.post(limited, content=b"x" * 1001)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "1001" in response.json()["error"]["message"]


def test_over_real_http_413_by_streamed_size(limited: str) -> None:
    response = httpx.post(limited, content=chunked(5000))
    assert response.status_code == 413
    assert "exceeds this gateway's limit of 1000 bytes" in response.json()["error"]["message"]


def test_over_real_http_a_body_within_the_limit_is_read(limited: str) -> None:
    assert httpx.post(limited, content=chunked(1000)).json() == {"size": 1000}
    assert httpx.post(limited, content=b"y" * 1000).json() == {"size": 1000}


# -- respond --------------------------------------------------------------------------------


class Upstream:
    """An upstream answer built from chunks, recording whether it was closed."""

    def __init__(
        self, status: int, content_type: str, chunks: Sequence[bytes], extra: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.chunks = list(chunks)
        self.closed = 0
        headers = [("content-type", content_type), *extra]
        self.response = UpstreamResponse(status, headers, self._iterate(), self._close)

    async def _iterate(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def _close(self) -> None:
        self.closed += 1


async def run(response: Response) -> tuple[int, dict[str, str], list[bytes]]:
    """Serve `response` to an in-memory ASGI client; status, headers and the body chunks sent."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await response(Client([b""]).request().scope, Client([b""]).receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    bodies = [m["body"] for m in sent[1:] if m["type"] == "http.response.body" and m.get("body")]
    return start["status"], headers, bodies


async def test_a_json_answer_is_relayed_whole_with_our_headers_on_top() -> None:
    body = [b'{"id":"chatcmpl-1",', b'"choices":[]}']
    upstream = Upstream(200, "application/json", body, [("x-request-id", "req-1"), ("x-clawvm-session", "theirs")])
    response = await respond(upstream.response, {"x-clawvm-session": "ours", "x-clawvm-budget": "1000"})
    assert not isinstance(response, StreamingResponse)
    assert upstream.closed == 1  # read to the end and released before answering
    status, headers, chunks = await run(response)
    assert status == 200 and b"".join(chunks) == b'{"id":"chatcmpl-1","choices":[]}'
    assert headers["content-type"] == "application/json" and headers["x-request-id"] == "req-1"
    assert headers["x-clawvm-session"] == "ours" and headers["x-clawvm-budget"] == "1000"
    assert headers["content-length"] == str(len(b"".join(body)))


async def test_an_upstream_error_keeps_its_status_and_body() -> None:
    fields = {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    error = json.dumps({"error": fields})
    upstream = Upstream(429, "application/json", [error.encode()], [("retry-after", "3")])
    status, headers, chunks = await run(await respond(upstream.response, {}))
    assert status == 429 and headers["retry-after"] == "3"
    assert json.loads(b"".join(chunks)) == json.loads(error)


async def test_an_sse_answer_is_streamed_chunk_by_chunk_then_closed() -> None:
    events = [
        b'data: {"choices":[{"delta":{"content":"he"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"llo"}}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    upstream = Upstream(200, "text/event-stream; charset=utf-8", events, [("x-request-id", "req-2")])
    response = await respond(upstream.response, {"x-clawvm-session": "s"})
    assert isinstance(response, StreamingResponse)
    assert upstream.closed == 0  # nothing read yet: bytes flow as they come
    status, headers, chunks = await run(response)
    assert status == 200 and chunks == events
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["x-request-id"] == "req-2" and headers["x-clawvm-session"] == "s"
    assert "content-length" not in headers
    assert upstream.closed == 1


async def test_a_superscript_content_length_falls_back_to_counting() -> None:
    assert await read_body(Client([b"abc"]).request({"content-length": "\xb2"}), limit=10) == b"abc"


async def test_an_upstream_4xx_that_is_not_openai_json_is_reshaped_quoting_it_keeping_status_and_headers() -> None:
    page = [b"<html><h1>429 Too Many", b" Requests</h1></html>"]
    upstream = Upstream(429, "text/html", page, [("retry-after", "7")])
    status, headers, chunks = await run(await respond(upstream.response, {"x-clawvm-session": "s"}))
    error = json.loads(b"".join(chunks))["error"]
    assert status == 429 and headers["retry-after"] == "7" and headers["x-clawvm-session"] == "s"
    assert headers["content-type"] == "application/json"
    assert error["type"] == "rate_limit_error" and "429 Too Many Requests" in error["message"]
    assert upstream.closed == 1


@pytest.mark.parametrize(
    ("content_type", "page"),
    [
        ("text/html", b"<html>502: connect to 10.0.0.7:5432 failed (psycopg2.OperationalError)</html>"),
        ("application/json", b'{"error": {"message": "ConnectError: 10.0.0.7:5432 refused", "type": "server_error"}}'),
    ],
    ids=["page", "openai-shaped"],
)
async def test_an_upstream_5xx_body_is_not_quoted_but_its_status_and_headers_are_kept(
    content_type: str, page: bytes
) -> None:
    upstream = Upstream(503, content_type, [page], [("retry-after", "7")])
    status, headers, chunks = await run(await respond(upstream.response, {"x-clawvm-session": "s"}))
    error = json.loads(b"".join(chunks))["error"]
    assert status == 503 and headers["retry-after"] == "7" and headers["x-clawvm-session"] == "s"
    assert error == {
        "message": "the upstream answered 503; the request may be retried",
        "type": "api_error",
        "param": None,
        "code": None,
    }
    assert upstream.closed == 1


@pytest.mark.parametrize(
    ("code", "kept"), [("server_error", "server_error"), ("boom at 10.0.0.7:5432", None), (17, None)]
)
async def test_an_upstream_5xx_keeps_its_error_code_when_it_is_an_identifier(code: object, kept: str | None) -> None:
    page = json.dumps({"error": {"message": "internal detail", "type": "server_error", "code": code}}).encode()
    upstream = Upstream(500, "application/json", [page])
    _, _, chunks = await run(await respond(upstream.response, {}))
    error = json.loads(b"".join(chunks))["error"]
    assert error["code"] == kept and "internal detail" not in error["message"]


async def test_an_error_status_with_an_event_stream_is_answered_whole() -> None:
    upstream = Upstream(429, "text/event-stream", [b"data: slow down\n\n"])
    response = await respond(upstream.response, {})
    assert not isinstance(response, StreamingResponse)
    status, _, chunks = await run(response)
    assert status == 429 and json.loads(b"".join(chunks))["error"]["code"] == "rate_limit_exceeded"


async def test_a_stream_that_fails_midway_ends_with_an_error_event_reported_once() -> None:
    class Failing(Upstream):
        async def _iterate(self) -> AsyncIterator[bytes]:
            yield b'data: {"choices":[]}\n\n'
            raise UpstreamTimeout("the upstream stalled mid-response")

    upstream, seen = Failing(200, "text/event-stream", []), []
    status, _, chunks = await run(await respond(upstream.response, {}, seen.append))
    assert status == 200 and chunks[0] == b'data: {"choices":[]}\n\n'
    assert json.loads(chunks[-1].removeprefix(b"data: "))["error"]["code"] == "upstream_timeout"
    assert [type(e) for e in seen] == [UpstreamTimeout] and upstream.closed == 1


# -- the header limit -----------------------------------------------------------------------------


def test_head_bytes_counts_the_target_and_every_header_line() -> None:
    scope = {"raw_path": b"/v1/x", "query_string": b"a=1", "headers": [(b"host", b"h"), (b"x-k", b"vv")]}
    assert head_bytes(scope) == len("/v1/x") + len("a=1") + len("host: h\r\n") + len("x-k: vv\r\n")
    assert head_bytes({"headers": []}) == 0


def header_limited(limit: int) -> Starlette:
    async def ok(request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/{path:path}", ok)], middleware=[Middleware(HeaderLimit, limit=limit)])


def test_over_real_http_a_header_block_past_the_limit_is_431_before_any_route() -> None:
    with serve(header_limited(2000)) as url, httpx.Client() as client:
        within = client.get(url + "/x", headers={"x-pad": "p" * 1500})
        over = client.get(url + "/x", headers={"x-pad": "p" * 2500})
        long_target = client.get(url + "/x?" + "q" * 2500)
    assert (within.status_code, within.text) == (200, "ok")
    for response in (over, long_target):
        assert response.status_code == 431
        assert response.json()["error"] == {
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": "request_header_fields_too_large",
        }
        assert "limit of 2000 bytes (server.max_header_bytes)" in response.json()["error"]["message"]
