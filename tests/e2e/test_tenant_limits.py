"""A per-tenant limit on concurrent requests (issue 11, item 10): a tenant at its limit gets 429
in OpenAI's shape with Retry-After on every /v1 route, while another tenant is still served; the
slots come back after answers, streams, errors and client hang-ups (no leak). The fake upstream
holds requests open (`FakeUpstream.hold`) so the requests in flight are real."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from bench.fake_upstream import FakeUpstream
from tests.e2e.conftest import Gateway

LIMIT = 2
WAIT_S = 30.0  # a generous bound on "eventually": never a timing assertion
CONFIG = f"""
tenants:
  alpha:
    api_keys: [sk-alpha]
    limits: {{max_concurrent_requests: {LIMIT}}}
  beta:
    api_keys: [sk-beta]
"""
ALPHA, BETA = "sk-alpha", "sk-beta"


def body(session: str, *, stream: bool = False) -> dict:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": f"hello from {session}"}], "stream": stream}


def chat(gw: Gateway, key: str, session: str, *, stream: bool = False) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "x-clawvm-session": session}
    response = httpx.post(f"{gw.url}/chat/completions", json=body(session, stream=stream), headers=headers, timeout=60)
    return response


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S}s: {what}")
        time.sleep(0.01)


def in_flight(gw: Gateway, tenant: str) -> float:
    for line in httpx.get(gw.root + "/metrics").text.splitlines():
        if line.startswith(f'clawvm_requests_in_flight{{tenant="{tenant}"}}'):
            return float(line.split()[-1])
    return 0.0


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "concurrency_limit_exceeded"
    assert "max_concurrent_requests" in error["message"]


@contextmanager
def held(fake: FakeUpstream) -> Iterator[threading.Event]:
    """The fake holds chat completions open until the block ends."""
    gate = threading.Event()
    fake.hold = gate
    try:
        yield gate
    finally:
        gate.set()
        fake.hold = None


@pytest.fixture
def limited(start_gateway) -> Iterator[Gateway]:
    with start_gateway(config_yaml=CONFIG, fake=FakeUpstream()) as gw:
        yield gw


def test_a_tenant_at_its_limit_gets_429_while_another_tenant_is_served(limited: Gateway) -> None:
    gw, fake = limited, limited.fake
    with ThreadPoolExecutor(4) as pool, held(fake) as gate:
        first = [pool.submit(chat, gw, ALPHA, "a-plain"), pool.submit(chat, gw, ALPHA, "a-stream", stream=True)]
        eventually(lambda: fake.held == LIMIT, "alpha's requests reach the upstream")

        assert_refused(chat(gw, ALPHA, "a-third"))
        assert_refused(httpx.get(f"{gw.url}/models", headers={"authorization": f"Bearer {ALPHA}"}))
        assert_refused(httpx.get(f"{gw.url}/clawvm/sessions/a-plain", headers={"authorization": f"Bearer {ALPHA}"}))
        sdk = openai.OpenAI(base_url=gw.url, api_key=ALPHA, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(**body("a-sdk"))

        other: Future = pool.submit(chat, gw, BETA, "b-plain")
        eventually(lambda: fake.held == LIMIT + 1, "beta's request reaches the upstream")
        assert httpx.get(f"{gw.url}/models", headers={"authorization": f"Bearer {BETA}"}).status_code == 200
        gate.set()
        assert [f.result().status_code for f in (*first, other)] == [200, 200, 200]
    eventually(lambda: in_flight(gw, "alpha") == 0, "alpha's slots are released")
    assert chat(gw, ALPHA, "a-after").status_code == 200
    assert 'clawvm_requests_total{status="429",tenant="alpha"} 2.0' in httpx.get(gw.root + "/metrics").text


def test_slots_come_back_after_streams_errors_and_hang_ups(limited: Gateway) -> None:
    gw, fake = limited, limited.fake
    assert chat(gw, ALPHA, "s-stream", stream=True).status_code == 200
    fake.fail_next = [400]
    assert chat(gw, ALPHA, "s-upstream-error").status_code == 400
    bad = httpx.post(f"{gw.url}/chat/completions", content=b"{", headers={"authorization": f"Bearer {ALPHA}"})
    assert bad.status_code == 400
    assert in_flight(gw, "alpha") == 0

    with held(fake):
        client = httpx.Client(timeout=60)
        headers = {"authorization": f"Bearer {ALPHA}", "x-clawvm-session": "s-hang-stream"}
        with client.stream("POST", f"{gw.url}/chat/completions", json=body("h", stream=True), headers=headers):
            hung_plain = hang_up_later(gw, "s-hang-plain")
            eventually(lambda: fake.held == LIMIT, "both requests are held upstream")
            assert in_flight(gw, "alpha") == LIMIT
            assert_refused(chat(gw, ALPHA, "s-refused"))
        client.close()  # the streaming client hangs up mid-stream
        hung_plain.close()  # and the other one before its answer
        eventually(lambda: in_flight(gw, "alpha") == 0, "slots released on hang-up")
    with ThreadPoolExecutor(LIMIT) as pool, held(fake) as gate:  # the full limit is usable again
        again = [pool.submit(chat, gw, ALPHA, f"s-again-{n}", stream=bool(n)) for n in range(LIMIT)]
        eventually(lambda: fake.held == LIMIT, "the full limit is in flight again")
        assert_refused(chat(gw, ALPHA, "s-refused-again"))
        gate.set()
        assert [f.result().status_code for f in again] == [200] * LIMIT
    eventually(lambda: in_flight(gw, "alpha") == 0, "slots released after the streams")


def hang_up_later(gw: Gateway, session: str) -> socket.socket:
    """A raw HTTP request sent in full, its connection left open; close it to hang up."""
    address = urlsplit(gw.url)
    payload = json.dumps(body(session)).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {address.netloc}\r\nauthorization: Bearer {ALPHA}\r\n"
        f"x-clawvm-session: {session}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    )
    conn = socket.create_connection((address.hostname, address.port))
    conn.sendall(head.encode() + payload)
    return conn


def test_the_limit_is_per_tenant_and_zero_means_unlimited(start_gateway) -> None:
    config = "tenants:\n  free:\n    api_keys: [sk-free]\n    limits: {max_concurrent_requests: 0}\n"
    with start_gateway(config_yaml=config, fake=FakeUpstream()) as gw, ThreadPoolExecutor(8) as pool:
        with held(gw.fake) as gate:
            many = [pool.submit(chat, gw, "sk-free", f"f-{n}") for n in range(6)]
            eventually(lambda: gw.fake.held == 6, "every request is in flight")
            gate.set()
            assert [f.result().status_code for f in many] == [200] * 6


def test_the_limit_answers_anthropics_routes_in_anthropics_shape(limited: Gateway) -> None:
    import anthropic

    gw, fake = limited, limited.fake
    with ThreadPoolExecutor(2) as pool, held(fake):
        first = [pool.submit(chat, gw, ALPHA, f"a-{n}") for n in range(LIMIT)]
        eventually(lambda: fake.held == LIMIT, "alpha's requests reach the upstream")
        agent = anthropic.Anthropic(base_url=gw.root, api_key=ALPHA, max_retries=0)
        hello = [{"role": "user", "content": "hi"}]
        with pytest.raises(anthropic.RateLimitError) as refused:
            agent.messages.create(model="claude-x", max_tokens=8, messages=hello)
        assert refused.value.type == "rate_limit_error" and refused.value.body["type"] == "error"
        assert refused.value.response.headers["retry-after"] == "1"
        with pytest.raises(anthropic.RateLimitError):
            agent.messages.count_tokens(model="claude-x", messages=hello)
    assert [f.result().status_code for f in first] == [200] * LIMIT
