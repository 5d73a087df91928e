"""Secrets and limits over real HTTP: keys are never echoed or logged, the upstream key never
reaches the agent, message text stays out of the logs unless `server.log_content`, and the header
limit answers 431 in OpenAI's shape.

The gateway runs under uvicorn on a free port with the shared real Redis; the upstreams are the
fake (bench.fake_upstream) or, for the key tests, a small upstream that echoes the credentials it
received in its error bodies and headers, the way a careless proxy or a 401 page might.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.fake_upstream import FakeUpstream, serve
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings

AGENT_KEY = "sk-agent-acme-5f1e2d3c4b5a"
WRONG_KEY = "sk-wrong-9a8b7c6d5e4f3a2b1c"
UPSTREAM_KEY = "sk-upstream-SECRET-0123456789abcdefWXYZ"
MASKED = "sk-upst********************WXYZ"  # OpenAI's 401 quotes the key like this
CONTENT = "MARKER-content-7f3e the secret plan is to rename the invoices table"
CONFIG = f"""
server:
  max_header_bytes: {{headers}}
  log_content: {{log_content}}
tenants:
  acme:
    api_keys: [{AGENT_KEY}]
    upstream:
      api_key: {UPSTREAM_KEY}
"""
ROUTES = [
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/clawvm/sessions/s1"),
    ("GET", "/v1/clawvm/sessions/s1/decisions"),
    ("GET", "/v1/clawvm/sessions/s1/events"),
    ("GET", "/v1/clawvm/sessions/s1/journal"),
    ("GET", "/v1/clawvm/pages/p:000000000000?session=s1"),
    ("GET", "/v1/models"),
]


class Echo:
    """An upstream that refuses everything, quoting the credentials it was sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.app = Starlette(routes=[Route("/{path:path}", self.refuse, methods=["GET", "POST"])])

    async def refuse(self, request: Request) -> Response:
        received = request.headers.get("authorization", "")
        self.seen.append(received)
        message = f"Incorrect API key provided: {MASKED}. You sent: {received!r}"
        body = {
            "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
        }
        status = 401 if request.url.path.endswith("/chat/completions") else 403
        headers = {"x-request-id": received, "www-authenticate": f"Bearer realm={received}"}
        return JSONResponse(body, status_code=status, headers={**headers, "authorization": received})


@pytest.fixture
def start(redis_url: str, tmp_path: Path, offline: None) -> Callable[..., object]:
    @contextmanager
    def started(app: object, *, headers: int = 65536, log_content: bool = False) -> Iterator[str]:
        path = tmp_path / "config.yaml"
        path.write_text(CONFIG.format(headers=headers, log_content=str(log_content).lower()))
        with serve(app) as upstream_url:
            settings = load_settings(path, {}, Overrides(upstream=upstream_url, store=redis_url))
            with serve(create_app(settings)) as url:
                yield url.removesuffix("/v1")

    return started


def chat_body(stream: bool = False) -> dict:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": CONTENT}], "stream": stream}


def everything(response: httpx.Response) -> str:
    return response.text + "\n".join(f"{name}: {value}" for name, value in response.headers.items())


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)


def test_a_wrong_key_is_never_echoed_in_answers_or_logs(start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with start(FakeUpstream().app) as root, httpx.Client(timeout=30) as client:
        for method, path in ROUTES:
            for headers in ({"authorization": f"Bearer {WRONG_KEY}"}, {"x-api-key": WRONG_KEY}):
                response = client.request(method, root + path, headers=headers, json=chat_body())
                assert response.status_code == 401, (path, response.text)
                assert response.json()["error"]["code"] == "invalid_api_key"
                assert WRONG_KEY not in everything(response)
        ok = client.post(
            root + "/v1/chat/completions", headers={"authorization": f"Bearer {AGENT_KEY}"}, json=chat_body()
        )
        assert ok.status_code == 200
        assert AGENT_KEY not in everything(ok)
    assert caplog.records  # the gateway and its clients did log at DEBUG
    assert WRONG_KEY not in logged(caplog) and AGENT_KEY not in logged(caplog)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_the_upstream_key_never_reaches_the_agent(start, stream: bool) -> None:
    """The upstream echoes the key it got in its error body and headers: the agent sees neither."""
    echo = Echo()
    with start(echo.app) as root, httpx.Client(timeout=30) as client:
        auth = {"authorization": f"Bearer {AGENT_KEY}"}
        chat = client.post(root + "/v1/chat/completions", headers=auth, json=chat_body(stream))
        relayed = client.get(root + "/v1/models", headers=auth)
    assert echo.seen == [f"Bearer {UPSTREAM_KEY}"] * 2  # the gateway did send its key upstream
    assert (chat.status_code, relayed.status_code) == (401, 403)  # statuses relayed as they were
    for response in (chat, relayed):
        shown = everything(response)
        assert UPSTREAM_KEY not in shown and UPSTREAM_KEY[-4:] not in shown
        assert "authorization" not in response.headers  # the upstream's credential header is not relayed
        assert response.headers["x-request-id"] == "Bearer [redacted]"  # a relayed header, redacted
        assert "[redacted]" in response.json()["error"]["message"]
        assert response.json()["error"]["code"] == "invalid_api_key"  # the rest of the error is intact


@pytest.mark.parametrize("log_content", [False, True])
def test_message_text_reaches_the_logs_only_with_log_content(start, caplog, log_content: bool) -> None:
    caplog.set_level(logging.DEBUG)
    with start(FakeUpstream().app, log_content=log_content) as root, httpx.Client(timeout=30) as client:
        auth = {"authorization": f"Bearer {AGENT_KEY}", "x-clawvm-session": "log-content"}
        for stream in (False, True):
            assert client.post(root + "/v1/chat/completions", headers=auth, json=chat_body(stream)).status_code == 200
    text = logged(caplog)
    assert "turn tenant=acme session=log-content" in text  # the turn was logged, ids and counts
    assert (CONTENT in text) is log_content


def test_a_bugs_message_stays_out_of_the_logs(start, caplog, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unhandled exception quoting the request is logged by type and place, not by message."""

    def broken(raw: bytes, *_: object) -> object:
        raise ValueError(f"cannot handle {raw.decode()}")

    monkeypatch.setattr("gateway.wire.chat_json.parse_request", broken)
    caplog.set_level(logging.DEBUG)
    with start(FakeUpstream().app) as root, httpx.Client(timeout=30) as client:
        auth = {"authorization": f"Bearer {AGENT_KEY}"}
        response = client.post(root + "/v1/chat/completions", headers=auth, json=chat_body())
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "internal gateway error (ValueError); this is a bug"
    assert CONTENT not in response.text
    text = logged(caplog)
    assert "unhandled error on POST /v1/chat/completions: ValueError" in text
    assert "broken" in text  # where it happened
    assert CONTENT not in text


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/clawvm/sessions/s1", "/health"])
def test_a_header_block_over_the_limit_is_431_in_openai_shape(start, route: str) -> None:
    with start(FakeUpstream().app, headers=4096) as root, httpx.Client(timeout=30) as client:
        auth = {"authorization": f"Bearer {AGENT_KEY}"}
        within = client.post(root + "/v1/chat/completions", headers={**auth, "x-pad": "p" * 3000}, json=chat_body())
        assert within.status_code == 200
        over = client.request(
            "POST" if "chat" in route else "GET", root + route, headers={**auth, "x-pad": "p" * 5000}, json=chat_body()
        )
        big_url = client.get(root + "/v1/clawvm/sessions/s1?after=" + "9" * 5000, headers=auth)
    for response in (over, big_url):
        assert response.status_code == 431
        error = response.json()["error"]
        assert error["code"] == "request_header_fields_too_large" and error["type"] == "invalid_request_error"
        assert "server.max_header_bytes" in error["message"] and AGENT_KEY not in response.text
