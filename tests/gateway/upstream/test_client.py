from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.fake_upstream import FakeUpstream, Running, running, serve
from gateway.api.errors import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.upstream.client import (
    FAILED,
    TIMED_OUT,
    UNREACHABLE,
    OpenAICompatible,
    UpstreamResponse,
    UpstreamTarget,
    forwarded_headers,
    map_body_errors,
    map_transport_errors,
    redact,
    redact_headers,
    redact_text,
    relayed_headers,
    secrets_of,
)
from gateway.upstream.sse import DONE

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "say something"}]
JSON = {"content-type": "application/json"}


def chat_body(**extra: Any) -> bytes:
    return json.dumps({"model": "gpt-x", "messages": MESSAGES, **extra}).encode()


@pytest.fixture
async def client() -> AsyncIterator[OpenAICompatible]:
    upstream = OpenAICompatible()
    yield upstream
    await upstream.aclose()


async def post_chat(client: OpenAICompatible, served: Running, **extra: Any) -> UpstreamResponse:
    return await client.send(target(served), "POST", "/chat/completions", chat_body(**extra), JSON)


def target(served: Running, api_key: str | None = "sk-upstream", timeout: float = 30.0) -> UpstreamTarget:
    return UpstreamTarget(served.url, api_key, timeout)


async def test_non_stream_response_is_relayed(client: OpenAICompatible, fake_upstream: Running) -> None:
    response = await post_chat(client, fake_upstream)
    body = json.loads(await response.read())
    assert response.status == 200 and not response.is_stream
    assert body["id"] == "chatcmpl-fake-1" and body["choices"][0]["message"]["content"] == "ok"
    assert dict(response.headers) == {"content-type": "application/json"}


async def test_sse_is_relayed_byte_for_byte(client: OpenAICompatible, fake_upstream: Running) -> None:
    fake_upstream.fake.responder = lambda req: {"content": "several words to stream"}
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with running(FakeUpstream(fake_upstream.fake.responder)) as direct:
        expected = httpx.post(f"{direct.url}/chat/completions", content=body, headers=JSON).content
    response = await client.send(target(fake_upstream), "POST", "/chat/completions", body, JSON)
    assert response.is_stream
    assert b"".join([chunk async for chunk in response.aiter_raw()]) == expected
    assert expected.endswith(DONE)


async def test_sse_chunks_arrive_as_the_upstream_sends_them(client: OpenAICompatible, fake_upstream: Running) -> None:
    fake_upstream.fake.responder = lambda req: {"content": "one two three four"}
    fake_upstream.fake.chunk_delay = 0.05
    response = await post_chat(client, fake_upstream, stream=True)
    arrivals = [(time.monotonic(), chunk) async for chunk in response.aiter_raw()]
    times = [at for at, _ in arrivals]
    assert len(arrivals) >= 3
    assert times == sorted(times) and times[-1] > times[0]
    assert arrivals[0][1].startswith(b"data: ") and arrivals[-1][1].endswith(DONE)


@pytest.mark.parametrize("status", [429, 500])
async def test_error_statuses_are_relayed_not_raised(
    client: OpenAICompatible, fake_upstream: Running, status: int
) -> None:
    fake_upstream.fake.fail_next = [status]
    response = await post_chat(client, fake_upstream, stream=True)
    assert response.status == status and not response.is_stream
    error = json.loads(await response.read())["error"]
    assert error["message"] == f"fake upstream failure {status}"
    assert set(error) == {"message", "type", "param", "code"}


async def test_get_with_query_reaches_the_path_under_api_base(client: OpenAICompatible, fake_upstream: Running) -> None:
    response = await client.send(target(fake_upstream), "GET", "/models", None, {}, query="?limit=5")
    assert json.loads(await response.read())["data"][0]["id"] == "fake-model"
    missing = await client.send(target(fake_upstream), "POST", "embeddings/nope", b"{}", JSON)
    assert missing.status == 404
    assert [(r.method, r.path) for r in fake_upstream.fake.requests] == [
        ("GET", "/v1/models"),
        ("POST", "/v1/embeddings/nope"),
    ]
    await missing.aclose()


async def test_unreachable_upstream_raises_upstream_error(client: OpenAICompatible) -> None:
    closed = UpstreamTarget(f"http://127.0.0.1:{_closed_port()}/v1", None)
    with pytest.raises(UpstreamError) as caught:
        await client.send(closed, "POST", "/chat/completions", chat_body(), JSON)
    assert caught.value.status_code == 502
    assert caught.value.message == UNREACHABLE  # the host and port stay in the log
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectionError)


async def test_a_stream_outliving_the_timeout_raises_upstream_timeout(
    client: OpenAICompatible, fake_upstream: Running
) -> None:
    fake_upstream.fake.chunk_delay = 5.0
    slow = target(fake_upstream, timeout=0.3)
    response = await client.send(slow, "POST", "/chat/completions", chat_body(stream=True), JSON)
    with pytest.raises(UpstreamTimeout) as caught:
        async for _ in response.aiter_raw():
            pass
    assert caught.value.status_code == 504


@pytest.mark.parametrize(
    ("api_key", "client_headers", "expected"),
    [
        ("sk-upstream", {"Authorization": "Bearer sk-client"}, "Bearer sk-upstream"),
        ("sk-upstream", {}, "Bearer sk-upstream"),
        (None, {"Authorization": "Bearer sk-client"}, "Bearer sk-client"),
        (None, {}, None),
    ],
)
async def test_authorization_comes_from_the_target_or_else_the_caller(
    client: OpenAICompatible,
    fake_upstream: Running,
    api_key: str | None,
    client_headers: dict[str, str],
    expected: str | None,
) -> None:
    response = await client.send(target(fake_upstream, api_key), "GET", "/models", None, client_headers)
    await response.read()
    assert fake_upstream.fake.requests[0].headers.get("authorization") == expected


async def test_hop_by_hop_headers_stay_behind_and_end_to_end_ones_go(
    client: OpenAICompatible, fake_upstream: Running
) -> None:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Accept-Encoding": "gzip, br",
        "Connection": "keep-alive, X-Private",
        "X-Private": "secret",
        "TE": "trailers",
        "Host": "gateway.example",
        "OpenAI-Organization": "org-1",
        "X-Request-Id": "req-1",
    }
    response = await client.send(target(fake_upstream), "POST", "/chat/completions", chat_body(), headers)
    await response.read()
    seen = fake_upstream.fake.requests[0].headers
    assert seen["accept"] == "text/event-stream" and seen["content-type"] == "application/json"
    assert seen["openai-organization"] == "org-1" and seen["x-request-id"] == "req-1"
    assert seen["accept-encoding"] == "identity"
    assert "x-private" not in seen and "te" not in seen
    assert seen["host"].startswith("127.0.0.1:")


def test_forwarded_headers_drop_hop_by_hop_and_replace_the_key() -> None:
    headers = {"authorization": "Bearer c", "Content-Length": "12", "Upgrade": "h2c", "X-Keep": "1"}
    assert forwarded_headers(UpstreamTarget("http://u/v1", "k"), headers) == [
        ("X-Keep", "1"),
        ("Accept-Encoding", "identity"),
        ("Authorization", "Bearer k"),
    ]


def test_relayed_headers_drop_hop_by_hop_framing_and_server_identity() -> None:
    raw = (
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"10"),
        (b"Content-Encoding", b"gzip"),
        (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
        (b"Server", b"uvicorn"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close, X-Hop"),
        (b"X-Hop", b"1"),
        (b"X-Ratelimit-Remaining-Requests", b"99"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    )
    assert relayed_headers(raw) == [
        ("content-type", "application/json"),
        ("x-ratelimit-remaining-requests", "99"),
    ]


def test_relayed_headers_keep_what_clients_need_and_drop_the_operators_account() -> None:
    kept = {
        "content-type": "application/json",
        "retry-after": "1",
        "retry-after-ms": "500",
        "x-should-retry": "false",
        "x-request-id": "req-1",
        "request-id": "req-2",
        "openai-processing-ms": "12",
        "openai-version": "2020-10-01",
        "x-ratelimit-remaining-tokens": "10",
        "anthropic-ratelimit-requests-remaining": "3",
    }
    account = {
        "openai-organization": "org-operator",
        "openai-project": "proj_operator",
        "set-cookie": "__cf_bm=x",
        "set-cookie2": "y=1",
        "anthropic-organization-id": "org-a",
        "x-internal-host": "10.0.0.7",
    }
    raw = tuple((name.encode(), value.encode()) for name, value in {**kept, **account}.items())
    assert dict(relayed_headers(raw)) == kept


async def test_response_close_is_idempotent_and_read_after_close_is_empty() -> None:
    closes: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async def closer() -> None:
        closes.append(1)

    response = UpstreamResponse(200, [("content-type", "text/event-stream; charset=utf-8")], chunks(), closer)
    assert response.is_stream
    assert await response.read() == b"ab"
    await response.aclose()
    assert closes == [1]
    assert await response.read() == b""


async def test_abandoning_the_body_closes_the_source_and_the_connection() -> None:
    events: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            yield b"never read"
        finally:
            events.append("source closed")

    async def closer() -> None:
        events.append("released")

    body = UpstreamResponse(200, [], chunks(), closer).aiter_raw()
    assert await body.__anext__() == b"first"
    await body.aclose()
    assert events == ["source closed", "released"]


async def test_an_abandoned_upstream_stream_frees_its_connection(
    client: OpenAICompatible, fake_upstream: Running
) -> None:
    fake_upstream.fake.chunk_delay = 5.0
    response = await post_chat(client, fake_upstream, stream=True)
    body = response.aiter_raw()
    assert (await body.__anext__()).startswith(b"data: ")
    await body.aclose()
    fake_upstream.fake.chunk_delay = 0.0
    again = await client.send(target(fake_upstream), "GET", "/models", None, {})
    assert again.status == 200 and b"fake-model" in await again.read()


async def test_an_owned_session_is_closed_and_a_lent_one_is_not(fake_upstream: Running) -> None:
    lent = aiohttp.ClientSession()
    borrower = OpenAICompatible(lent)
    response = await borrower.send(target(fake_upstream), "GET", "/models", None, {})
    await response.read()
    await borrower.aclose()
    assert not lent.closed
    await lent.close()

    owner = OpenAICompatible()
    await (await owner.send(target(fake_upstream), "GET", "/models", None, {})).read()
    session = owner._session
    await owner.aclose()
    await owner.aclose()
    assert session is not None and session.closed


@pytest.mark.parametrize(
    ("raised", "expected", "prefix"),
    [
        (TimeoutError(), UpstreamTimeout, TIMED_OUT),
        (aiohttp.ServerTimeoutError("read timed out"), UpstreamTimeout, TIMED_OUT),
        (aiohttp.ServerDisconnectedError(), UpstreamUnreachable, UNREACHABLE),
        (aiohttp.ClientPayloadError("cut short"), UpstreamError, FAILED),
    ],
)
def test_transport_errors_are_mapped(raised: Exception, expected: type[UpstreamError], prefix: str) -> None:
    with pytest.raises(expected) as caught, map_transport_errors():
        raise raised
    assert type(caught.value) is expected
    assert caught.value.message.startswith(prefix)
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize(
    ("raised", "expected", "code"),
    [
        (aiohttp.ServerTimeoutError("read timed out"), UpstreamTimeout, "upstream_timeout"),
        (aiohttp.ClientPayloadError("cut short"), UpstreamError, "upstream_disconnected"),
        (aiohttp.ServerDisconnectedError(), UpstreamError, "upstream_disconnected"),
    ],
)
def test_body_errors_are_mapped_and_never_look_retryable(
    raised: Exception, expected: type[UpstreamError], code: str
) -> None:
    with pytest.raises(expected) as caught, map_body_errors():
        raise raised
    assert type(caught.value) is expected and caught.value.code == code
    assert "mid-response" in caught.value.message


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the upstream key never reaches the agent ------------------------------------------------------

SECRET = "sk-upstream-0123456789abcdefWXYZ"


@pytest.mark.parametrize(
    ("echoed", "expected"),
    [
        (f'{{"message": "Bearer {SECRET}"}}'.encode(), b'{"message": "Bearer [redacted]"}'),
        (json.dumps({"m": SECRET}).encode(), b'{"m": "[redacted]"}'),
        (
            b'{"m": "Incorrect API key provided: sk-upst********WXYZ."}',
            b'{"m": "Incorrect API key provided: [redacted]."}',
        ),
        (b'{"m": "no key here: sk-other****abcd"}', b'{"m": "no key here: sk-other****abcd"}'),
    ],
    ids=["plain", "json", "openai_masked", "another_key_left_alone"],
)
def test_redact_replaces_the_key_in_every_form_an_upstream_echoes(echoed: bytes, expected: bytes) -> None:
    assert redact(echoed, [SECRET]) == expected
    assert redact_text(echoed.decode(), [SECRET]) == expected.decode()


def test_redact_handles_json_escaped_slashes_and_no_secrets() -> None:
    key = "sk/with/slashes-0123456789"
    assert redact(b'{"k": "sk\\/with\\/slashes-0123456789"}', [key]) == b'{"k": "[redacted]"}'
    assert redact(b"untouched", []) == b"untouched"


def test_relayed_headers_drop_credentials_and_redact_echoes() -> None:
    raw = (
        (b"Authorization", f"Bearer {SECRET}".encode()),
        (b"X-Api-Key", SECRET.encode()),
        (b"x-request-id", f"got {SECRET}".encode()),
        (b"content-type", b"application/json"),
    )
    headers = redact_headers(relayed_headers(raw), secrets_of(UpstreamTarget("http://u", SECRET)))
    assert headers == [("x-request-id", "got [redacted]"), ("content-type", "application/json")]
    assert secrets_of(UpstreamTarget("http://u", None)) == () and secrets_of(None) == ()


async def test_an_error_body_echoing_the_key_is_redacted_and_a_success_is_untouched() -> None:
    async def echo(request: Request) -> JSONResponse:
        said = request.headers["authorization"]
        status = 401 if request.url.path.endswith("/fail") else 200
        return JSONResponse({"echo": said}, status_code=status, headers={"x-request-id": said})

    client = OpenAICompatible()
    with serve(Starlette(routes=[Route("/{path:path}", echo)])) as url:
        try:
            target = UpstreamTarget(url, SECRET)
            failed = await client.send(target, "GET", "/fail", None, {})
            failed_body = await failed.read()
            ok = await client.send(target, "GET", "/ok", None, {})
            ok_body = await ok.read()
        finally:
            await client.aclose()
    assert failed.status == 401 and json.loads(failed_body) == {"echo": "Bearer [redacted]"}
    assert dict(failed.headers)["x-request-id"] == "Bearer [redacted]"
    assert json.loads(ok_body) == {"echo": f"Bearer {SECRET}"}  # a 2xx body is the model's: relayed as it is
