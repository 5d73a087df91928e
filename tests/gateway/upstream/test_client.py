from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.fake_upstream import FakeUpstream, Running, running, serve
from gateway.api.errors import (
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_body,
    error_response,
)
from gateway.upstream.client import (
    FAILED,
    TIMED_OUT,
    UNREACHABLE,
    LiteLLMProvider,
    OpenAICompatible,
    UpstreamResponse,
    UpstreamTarget,
    forwarded_headers,
    import_litellm,
    map_body_errors,
    map_transport_errors,
    redact,
    redact_headers,
    redact_text,
    relayed_headers,
    secrets_of,
)
from gateway.upstream.sse import DONE, event_data

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


# --- litellm: other providers. respx sees litellm's calls only with its aiohttp transport off. ---

ANTHROPIC_MESSAGES = "https://api.anthropic.com/v1/messages"
CLAUDE = "anthropic/claude-3-5-sonnet-20240620"


class TestLiteLLMProvider:
    @pytest.fixture(autouse=True)
    def httpx_transport(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        monkeypatch.setenv("DISABLE_AIOHTTP_TRANSPORT", "True")
        litellm = import_litellm()
        monkeypatch.setattr(litellm, "disable_aiohttp_transport", True)
        litellm.in_memory_llm_clients_cache.flush_cache()  # no client built with aiohttp may be reused
        yield
        litellm.in_memory_llm_clients_cache.flush_cache()

    async def test_openai_compatible_provider_answers_openai_json(self) -> None:
        completion = {
            "id": "chatcmpl-mocked",
            "object": "chat.completion",
            "created": 1,
            "model": "some-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "mocked"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        with respx.mock(assert_all_mocked=True, assert_all_called=True) as mock:
            route = mock.post("https://compat.test/v1/chat/completions").respond(200, json=completion)
            body = {"model": "openai/some-model", "messages": MESSAGES}
            response = await LiteLLMProvider().chat(body, UpstreamTarget("https://compat.test/v1", "sk-c"))
            answer = json.loads(await response.read())
        sent = route.calls.last.request
        assert sent.headers["authorization"] == "Bearer sk-c"
        assert json.loads(sent.content)["model"] == "some-model"
        assert (response.status, response.is_stream) == (200, False)
        assert answer["choices"][0]["message"]["content"] == "mocked"
        assert answer["usage"]["total_tokens"] == 4

    async def test_anthropic_is_translated_both_ways(self) -> None:
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-sonnet-20240620",
            "content": [{"type": "text", "text": "hi from claude"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 4},
        }
        with respx.mock(assert_all_mocked=True, assert_all_called=True) as mock:
            route = mock.post(ANTHROPIC_MESSAGES).respond(200, json=message)
            body = {"model": CLAUDE, "messages": MESSAGES}
            response = await LiteLLMProvider().chat(body, UpstreamTarget(ANTHROPIC_MESSAGES, "sk-ant"))
            answer = json.loads(await response.read())
        sent = route.calls.last.request
        assert sent.headers["x-api-key"] == "sk-ant"
        assert json.loads(sent.content)["model"] == "claude-3-5-sonnet-20240620"
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == "hi from claude"
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == (10, 4)

    async def test_provider_429_becomes_rate_limited_in_openai_shape(self) -> None:
        refusal = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
        with respx.mock(assert_all_mocked=True, assert_all_called=True) as mock:
            mock.post(ANTHROPIC_MESSAGES).respond(429, json=refusal)
            with pytest.raises(RateLimited) as caught:
                body = {"model": CLAUDE, "messages": MESSAGES}
                await LiteLLMProvider().chat(body, UpstreamTarget(ANTHROPIC_MESSAGES, "sk-ant"))
        response = error_response(caught.value)
        assert response.status_code == 429
        assert json.loads(bytes(response.body)) == error_body(caught.value)
        assert "slow down" in caught.value.message and caught.value.code == "rate_limit_exceeded"

    async def test_a_client_chosen_destination_is_refused_before_any_call(self) -> None:
        with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
            anthropic = mock.post(ANTHROPIC_MESSAGES).respond(200, json={})
            attacker = mock.post(url__startswith="http://127.0.0.1").respond(200, json={})
            for field in ("base_url", "api_base", "custom_llm_provider", "extra_headers"):
                body = {"model": CLAUDE, "messages": MESSAGES, field: "http://127.0.0.1:9/v1"}
                with pytest.raises(InvalidRequest) as caught:
                    await LiteLLMProvider().chat(body, UpstreamTarget(ANTHROPIC_MESSAGES, "sk-ant"))
                assert caught.value.param == field
        assert not anthropic.called and not attacker.called

    async def test_the_gateways_metadata_and_unknown_fields_do_not_reach_the_provider(self) -> None:
        completion = {
            "id": "chatcmpl-mocked",
            "object": "chat.completion",
            "created": 1,
            "model": "some-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        with respx.mock(assert_all_mocked=True, assert_all_called=True) as mock:
            route = mock.post("https://compat.test/v1/chat/completions").respond(200, json=completion)
            body = {
                "model": "openai/some-model",
                "messages": MESSAGES,
                "temperature": 0.5,
                "metadata": {"session_id": "s1", "project_id": "p1"},
                "vendor_extension": "x",
            }
            await LiteLLMProvider().chat(body, UpstreamTarget("https://compat.test/v1", "sk-c"))
        sent = json.loads(route.calls.last.request.content)
        assert sent["temperature"] == 0.5
        assert "metadata" not in sent and "vendor_extension" not in sent

    async def test_a_connection_failure_does_not_quote_the_host(self) -> None:
        with respx.mock(assert_all_mocked=True) as mock:
            mock.post(ANTHROPIC_MESSAGES).mock(side_effect=httpx.ConnectError("Cannot connect to 10.1.2.3:8443"))
            with pytest.raises(UpstreamError) as caught:
                body = {"model": CLAUDE, "messages": MESSAGES}
                await LiteLLMProvider().chat(body, UpstreamTarget(ANTHROPIC_MESSAGES, "sk-ant"))
        assert caught.value.message in (UNREACHABLE, FAILED)  # litellm reports it as a 500 for some providers
        assert "10.1.2.3" not in caught.value.message

    async def test_provider_500_keeps_its_status(self) -> None:
        failure = {"error": {"message": "exploded", "type": "server_error", "param": None, "code": None}}
        with respx.mock(assert_all_mocked=True) as mock:
            mock.post("https://compat.test/v1/chat/completions").respond(500, json=failure)
            with pytest.raises(UpstreamError) as caught:
                body = {"model": "openai/some-model", "messages": MESSAGES}
                await LiteLLMProvider().chat(body, UpstreamTarget("https://compat.test/v1", "sk-c"))
        assert caught.value.status_code == 500 and "exploded" not in caught.value.message  # only logged

    async def test_stream_is_reencoded_as_openai_sse(self, fake_upstream: Running) -> None:
        fake_upstream.fake.responder = lambda req: {"content": "streamed through litellm"}
        body = {"model": "openai/fake-model", "messages": MESSAGES, "stream": True}
        response = await LiteLLMProvider().chat(body, UpstreamTarget(fake_upstream.url, "sk-f"))
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
        assert response.is_stream and events[-1] == DONE
        chunks = [json.loads(event_data(e) or "") for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == "streamed through litellm"
        assert all("finish_reason" in c["choices"][0] for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert fake_upstream.fake.requests[0].headers["authorization"] == "Bearer sk-f"


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
