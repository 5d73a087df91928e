from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from bench.fake_upstream import Running, serve
from bench.peers.passthrough import create_app, end_to_end
from gateway.store.embedded import free_port

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], "user": "relay-test"}


@pytest.fixture
def relay(fake_upstream: Running) -> Iterator[str]:
    with serve(create_app(fake_upstream.url)) as url:
        yield url


def test_relays_the_request_bytes_and_the_answer(relay: str, fake_upstream: Running) -> None:
    raw = json.dumps(BODY, separators=(",", ":")).encode()
    response = httpx.post(relay + "/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"] == {"role": "assistant", "content": "ok"}
    recorded = fake_upstream.fake.requests[-1]
    assert recorded.path == "/v1/chat/completions"
    assert recorded.body == BODY
    assert recorded.headers["content-type"] == "application/json"


def test_streams_every_event(relay: str, fake_upstream: Running) -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    direct = httpx.post(fake_upstream.url + "/chat/completions", json=body).content
    relayed = httpx.post(relay + "/chat/completions", json=body).content
    assert relayed.rstrip().endswith(b"data: [DONE]")
    assert relayed.replace(b"chatcmpl-fake-2", b"chatcmpl-fake-1") == direct


def test_passes_upstream_errors_through(relay: str, fake_upstream: Running) -> None:
    fake_upstream.fake.fail_next.append(429)
    response = httpx.post(relay + "/chat/completions", json=BODY)
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_relays_get_requests_with_their_query(relay: str, fake_upstream: Running) -> None:
    response = httpx.get(relay + "/models", params={"limit": "2"})
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == "fake-model"
    assert fake_upstream.fake.requests[-1].path == "/v1/models"


def test_unreachable_upstream_is_a_502_in_openai_shape() -> None:
    with serve(create_app(f"http://127.0.0.1:{free_port()}/v1")) as url:
        response = httpx.post(url + "/chat/completions", json=BODY)
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "api_error"


def test_health_answers(relay: str) -> None:
    assert httpx.get(relay.removesuffix("/v1") + "/health").status_code == 200


def test_end_to_end_drops_hop_by_hop_headers() -> None:
    headers = {"Host": "x", "Connection": "keep-alive", "Content-Length": "3", "Authorization": "Bearer k", "X-A": "1"}
    assert end_to_end(headers) == {"Authorization": "Bearer k", "X-A": "1"}
