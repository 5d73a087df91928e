from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.fake_upstream import Running, serve
from gateway.api.errors import UpstreamTimeout, UpstreamUnreachable
from gateway.upstream.client import OpenAICompatible, UpstreamTarget
from gateway.upstream.retry import (
    RetryPolicy,
    backoff_delay,
    delay,
    retry_after,
    schedule,
    with_retries,
)

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
BODY = json.dumps({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}).encode()
FAST = RetryPolicy(retries=2, backoff=0.001, backoff_cap=0.002)


# ---------------------------------------------------------------- the pure schedule


def test_backoff_doubles_within_its_jitter_band_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(retries=6, backoff=0.5, backoff_cap=3.0)
    assert [backoff_delay(policy, n, 0.0) for n in range(5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    assert [backoff_delay(policy, n, 0.999) for n in range(5)] == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0], rel=1e-3)


def test_the_schedule_is_deterministic_for_a_seeded_jitter_source() -> None:
    policy = RetryPolicy(retries=4, backoff=0.5, backoff_cap=8.0)
    first = schedule(policy, random.Random(7).random)
    assert first == schedule(policy, random.Random(7).random)
    assert first != schedule(policy, random.Random(8).random)
    assert len(first) == 4
    for n, wait in enumerate(first):
        ceiling = min(8.0, 0.5 * 2**n)
        assert ceiling / 2 <= wait < ceiling


def test_no_retries_no_schedule() -> None:
    assert schedule(RetryPolicy(retries=0), random.Random(1).random) == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("retry-after-ms", "250")], 0.25),
        ([("retry-after", "3")], 3.0),
        ([("retry-after", "1.5")], 1.5),
        ([("retry-after-ms", "100"), ("retry-after", "9")], 0.1),  # the precise one wins
        ([("retry-after", format_datetime(datetime.fromtimestamp(1_000_030, UTC), usegmt=True))], 30.0),
        ([("retry-after", format_datetime(datetime.fromtimestamp(999_000, UTC), usegmt=True))], 0.0),  # past
        ([("retry-after", "soon")], None),
        ([("retry-after", "-4")], None),
        ([("retry-after", "nan")], None),
        ([("content-type", "application/json")], None),
    ],
)
def test_retry_after_reads_milliseconds_seconds_and_dates(
    headers: list[tuple[str, str]], expected: float | None
) -> None:
    assert retry_after(headers, now=1_000_000.0) == expected


def test_a_retry_after_beyond_the_cap_is_not_waited_for() -> None:
    policy = RetryPolicy(retry_after_cap=30.0)
    assert delay(policy, 0, 0.5, asked=12.0) == 12.0
    assert delay(policy, 0, 0.5, asked=31.0) is None
    assert delay(policy, 1, 0.0, asked=None) == backoff_delay(policy, 1, 0.0)


# ---------------------------------------------------------------- the loop, against real servers


@pytest.fixture
async def client() -> AsyncIterator[OpenAICompatible]:
    upstream = OpenAICompatible()
    yield upstream
    await upstream.aclose()


class Sleeps:
    """A `sleep` that records what it was asked to wait, and waits nothing."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


def attempt_on(client: OpenAICompatible, target: UpstreamTarget):  # noqa: ANN201 - a zero-argument coroutine factory
    return lambda: client.send(target, "POST", "/chat/completions", BODY, JSON)


async def test_503_twice_then_200_takes_three_attempts(client: OpenAICompatible, fake_upstream: Running) -> None:
    fake_upstream.fake.fail_next = [503, 503]
    reasons: list[str] = []
    response = await with_retries(
        attempt_on(client, UpstreamTarget(fake_upstream.url, None)), FAST, on_retry=reasons.append
    )
    assert response.status == 200 and json.loads(await response.read())["choices"][0]["message"]["content"] == "ok"
    assert len(fake_upstream.fake.requests) == 3
    assert reasons == ["503", "503"]


async def test_retries_exhausted_return_the_last_answer(client: OpenAICompatible, fake_upstream: Running) -> None:
    fake_upstream.fake.fail_next = [502, 504, 503, 503]
    response = await with_retries(attempt_on(client, UpstreamTarget(fake_upstream.url, None)), FAST)
    assert response.status == 503
    assert json.loads(await response.read())["error"]["message"] == "fake upstream failure 503"
    assert len(fake_upstream.fake.requests) == 3  # the first attempt and two retries


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 500])
async def test_statuses_that_would_fail_again_are_not_retried(
    client: OpenAICompatible, fake_upstream: Running, status: int
) -> None:
    fake_upstream.fake.fail_next = [status]
    response = await with_retries(attempt_on(client, UpstreamTarget(fake_upstream.url, None)), FAST)
    assert response.status == status
    assert len(fake_upstream.fake.requests) == 1
    await response.aclose()


async def test_zero_retries_means_one_attempt(client: OpenAICompatible, fake_upstream: Running) -> None:
    fake_upstream.fake.fail_next = [503]
    response = await with_retries(attempt_on(client, UpstreamTarget(fake_upstream.url, None)), RetryPolicy(retries=0))
    assert response.status == 503 and len(fake_upstream.fake.requests) == 1
    await response.aclose()


class Scripted:
    """A Starlette upstream answering each request with the next scripted (status, headers)."""

    def __init__(self, *answers: tuple[int, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.attempts = 0
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> JSONResponse:
        await request.body()
        self.attempts += 1
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        body = {"error": {"message": f"scripted {status}", "type": "x", "param": None, "code": None}}
        return JSONResponse(body if status >= 400 else {"ok": True}, status_code=status, headers=headers)


@pytest.fixture
def scripted() -> Iterator[tuple[Scripted, UpstreamTarget]]:
    upstream = Scripted()
    with serve(upstream.app) as url:
        yield upstream, UpstreamTarget(url, None)


async def test_retry_after_is_waited_as_asked(
    client: OpenAICompatible, scripted: tuple[Scripted, UpstreamTarget]
) -> None:
    upstream, target = scripted
    upstream.answers = [(429, {"retry-after-ms": "40"}), (503, {"retry-after": "2"})]
    sleeps = Sleeps()
    response = await with_retries(attempt_on(client, target), FAST, sleep=sleeps)
    assert response.status == 200 and upstream.attempts == 3
    assert sleeps.asked == [0.04, 2.0]


async def test_a_retry_after_longer_than_the_cap_is_relayed_at_once(
    client: OpenAICompatible, scripted: tuple[Scripted, UpstreamTarget]
) -> None:
    upstream, target = scripted
    upstream.answers = [(429, {"retry-after": "3600"})]
    sleeps = Sleeps()
    response = await with_retries(attempt_on(client, target), FAST, sleep=sleeps)
    assert response.status == 429 and dict(response.headers)["retry-after"] == "3600"
    assert upstream.attempts == 1 and sleeps.asked == []
    await response.aclose()


async def test_x_should_retry_false_is_obeyed(
    client: OpenAICompatible, scripted: tuple[Scripted, UpstreamTarget]
) -> None:
    upstream, target = scripted
    upstream.answers = [(503, {"x-should-retry": "false"})]
    response = await with_retries(attempt_on(client, target), FAST)
    assert response.status == 503 and upstream.attempts == 1
    await response.aclose()


async def test_the_backoff_waits_follow_the_seeded_schedule(
    client: OpenAICompatible, scripted: tuple[Scripted, UpstreamTarget]
) -> None:
    upstream, target = scripted
    upstream.answers = [(502, {}), (502, {})]
    policy, sleeps = RetryPolicy(retries=2, backoff=0.5, backoff_cap=8.0), Sleeps()
    response = await with_retries(attempt_on(client, target), policy, sleep=sleeps, jitter=random.Random(3).random)
    assert response.status == 200
    assert sleeps.asked == schedule(policy, random.Random(3).random)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_is_retried_then_raised(client: OpenAICompatible) -> None:
    target = UpstreamTarget(f"http://127.0.0.1:{_closed_port()}/v1", None)
    reasons: list[str] = []
    with pytest.raises(UpstreamUnreachable) as caught:
        await with_retries(attempt_on(client, target), FAST, on_retry=reasons.append)
    assert reasons == ["unreachable", "unreachable"]
    assert caught.value.status_code == 502 and caught.value.code == "upstream_unreachable"


class Silent:
    """An upstream that reads the request and never answers (until the test ends)."""

    def __init__(self) -> None:
        self.attempts = 0
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> JSONResponse:
        await request.body()
        self.attempts += 1
        while not await request.is_disconnected():
            await asyncio.sleep(0.01)
        return JSONResponse({})


async def test_no_status_line_within_the_timeout_is_retried_then_504(client: OpenAICompatible) -> None:
    silent = Silent()
    with serve(silent.app) as url:
        reasons: list[str] = []
        with pytest.raises(UpstreamTimeout) as caught:
            await with_retries(
                attempt_on(client, UpstreamTarget(url, None, timeout=0.2)), FAST, on_retry=reasons.append
            )
    assert reasons == ["timeout", "timeout"] and silent.attempts == 3
    assert caught.value.status_code == 504 and caught.value.code == "upstream_timeout"


async def test_a_stream_silent_past_its_idle_timeout_times_out_before_its_headers(client: OpenAICompatible) -> None:
    silent = Silent()
    with serve(silent.app) as url:
        target = UpstreamTarget(url, None, timeout=30.0, stream_idle_timeout=0.2)
        with pytest.raises(UpstreamTimeout):
            await client.send(target, "POST", "/chat/completions", BODY, JSON, stream=True)
    assert silent.attempts == 1
