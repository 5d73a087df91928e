from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench.fake_upstream import FakeUpstream, serve
from bench.fuzz import OneConnection
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings
from gateway.store.embedded import EmbeddedRedis, free_port
from gateway.store.store import Keys, session_scope

_ids = itertools.count()


@pytest.fixture(autouse=True)
def _offline(offline: None) -> None:
    """Every test here runs with the offline tokenizer environment."""


@pytest.fixture(scope="module")
def fake() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture(scope="module")
def gateway(redis_url: str, fake: FakeUpstream) -> Iterator[str]:
    """The root URL of a gateway on the shared Redis, in front of the fake upstream."""
    with serve(fake.app) as upstream_url:
        settings = load_settings(None, {}, Overrides(upstream=upstream_url, store=redis_url))
        with serve(create_app(settings)) as url:
            yield url.removesuffix("/v1")


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def chat(root: str, session: str) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(root + "/v1/chat/completions", json=body, headers={"x-clawvm-session": session})


def test_health_is_ok_with_a_live_store(gateway: str) -> None:
    response = httpx.get(gateway + "/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "store": "ok", "queued": 0}
    ready = httpx.get(gateway + "/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "store": "ok", "queued": 0}


def test_health_is_degraded_and_not_ready_when_the_store_is_down() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = load_settings(None, {}, Overrides(upstream="http://127.0.0.1:9/v1", store=dead))
    with serve(create_app(settings)) as url:
        response = httpx.get(url.removesuffix("/v1") + "/health")
        ready = httpx.get(url.removesuffix("/v1") + "/ready")
    assert response.status_code == 200  # alive: it still serves, degraded
    assert response.json() == {"status": "degraded", "store": "unavailable", "queued": 0}
    assert ready.status_code == 503  # not ready: a load balancer should prefer a replica with its store
    assert ready.json() == {"status": "not_ready", "store": "unavailable", "queued": 0}


@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("POST", "/v2/chat/completions"), ("GET", "/")])
def test_an_unknown_route_is_an_openai_shaped_404(gateway: str, fake: FakeUpstream, method: str, path: str) -> None:
    before = len(fake.requests)
    error = assert_openai_error(httpx.request(method, gateway + path), 404)
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"Unknown route {method} {path}"
    assert len(fake.requests) == before


def test_a_wrong_method_is_an_openai_shaped_405(gateway: str) -> None:
    assert_openai_error(httpx.post(gateway + "/health"), 405)


@pytest.mark.parametrize(
    "fields",
    [{"v": "not-a-number", "data": "{}"}, {"v": "1", "data": "{}"}, {"v": "1", "data": "not json"}],
)
def test_unreadable_stored_state_is_an_openai_shaped_503_and_the_gateway_lives_on(
    gateway: str, redis_url: str, fields: dict[str, str]
) -> None:
    session = f"corrupt-{next(_ids)}"
    with redis.Redis.from_url(redis_url) as client:
        client.hset(Keys.of("default", session_scope(session)).table, mapping=fields)
    error = assert_openai_error(chat(gateway, session), 503)
    assert error["code"] == "session_state_unreadable" and session in error["message"]
    with redis.Redis.from_url(redis_url) as client:  # left untouched for inspection
        stored = client.hgetall(Keys.of("default", session_scope(session)).table)
    assert {k.decode(): v.decode() for k, v in stored.items()} == fields
    assert "Traceback" not in error["message"]
    assert httpx.get(gateway + "/health").status_code == 200
    assert chat(gateway, f"healthy-{next(_ids)}").status_code == 200


def test_gateway_errors_keep_their_status(gateway: str) -> None:
    response = httpx.post(gateway + "/v1/chat/completions", content=b"[]")
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"


def failing_once(monkeypatch: pytest.MonkeyPatch, target: str) -> list[str]:
    """`target` (a function of the gateway, by import path) raises a bug's exception the first
    time it is called; the list records the calls."""
    module, name = target.rsplit(".", 1)
    real = getattr(importlib.import_module(module), name)
    calls: list[str] = []

    def once(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == 1:
            raise ValueError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, once)
    return calls


CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


def test_a_bug_is_an_openai_shaped_500_and_the_connection_stays_open(
    gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starlette's last handler raises the exception again once it has answered, and uvicorn then
    closes the connection: the client's next request on it failed too."""
    failing_once(monkeypatch, "gateway.wire.chat_json.parse_request")
    with OneConnection(gateway, {"x-clawvm-session": f"bug-{next(_ids)}"}) as connection:
        first = connection.post("/v1/chat/completions", CHAT)
        second = connection.post("/v1/chat/completions", CHAT)
    assert first.status == 500 and not first.dropped
    error = json.loads(first.body)["error"]
    assert error == {
        "message": "internal gateway error (ValueError); this is a bug",
        "type": "api_error",
        "param": None,
        "code": None,
    }
    assert second.status == 200 and not second.dropped  # the same connection, still open


def test_a_failure_after_a_whole_answer_keeps_the_connection_open(
    gateway: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turn's bookkeeping runs after the answer is sent: its failure is logged, and the client,
    which has its whole answer, keeps its connection."""
    calls = failing_once(monkeypatch, "gateway.turns.pipeline.record")
    with OneConnection(gateway, {"x-clawvm-session": f"bug-{next(_ids)}"}) as connection:
        answers = [connection.post("/v1/chat/completions", CHAT) for _ in range(3)]
    assert calls  # the failure did happen
    assert [(a.status, a.dropped) for a in answers] == [(200, False)] * 3


def test_an_embedded_store_lives_and_dies_with_the_app(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(f"store:\n  url: embedded\n  data_dir: {json.dumps(str(data_dir))}\n")
    with serve(FakeUpstream().app) as upstream_url:
        settings = load_settings(config, {}, Overrides(upstream=upstream_url))
        with serve(create_app(settings)) as url:
            root = url.removesuffix("/v1")
            assert httpx.get(root + "/health").json() == {"status": "ok", "store": "ok", "queued": 0}
            assert chat(root, "embedded-1").status_code == 200
    assert (data_dir / "appendonly.aof").stat().st_size > 0
    with EmbeddedRedis(data_dir) as store_url, redis.Redis.from_url(store_url) as client:  # the lock was released
        assert client.exists(Keys.of("default", session_scope("embedded-1")).table)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's failed start
def test_an_embedded_store_in_a_relative_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("store:\n  url: embedded\n  data_dir: relative-data\n")
    settings = load_settings(Path("config.yaml"), {}, Overrides(upstream="http://127.0.0.1:9/v1"))
    with serve(create_app(settings)) as url:
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
    assert (tmp_path / "relative-data" / "appendonly.aof").is_file()


def test_the_classifier_tables_are_built_at_start_up(redis_url: str, fake: FakeUpstream) -> None:
    """The typo table of `policies.intent` is built before the first request, not by it."""
    from policies import intent

    intent._mistyped_verbs.cache_clear()
    with serve(fake.app) as upstream_url:
        settings = load_settings(None, {}, Overrides(upstream=upstream_url, store=redis_url))
        with serve(create_app(settings)) as url:
            assert intent._mistyped_verbs.cache_info().currsize == 1
            assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
