from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.fake_upstream import serve
from gateway.app import create_app
from gateway.embedded import free_port
from gateway.settings import Overrides, load_settings

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class EchoUpstream:
    """A stand-in for an OpenAI-compatible API that answers with what it received."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/stream", self._stream, methods=["POST"]),
                Route("/v1/missing", self._missing, methods=ALL_METHODS),
                Route("/v1/{path:path}", self._echo, methods=ALL_METHODS),
            ]
        )

    async def _record(self, request: Request) -> dict[str, Any]:
        seen = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": (await request.body()).decode("utf-8", "replace"),
        }
        self.seen.append(seen)
        return seen

    async def _echo(self, request: Request) -> Response:
        seen = await self._record(request)
        return JSONResponse(seen, status_code=201 if request.method == "PUT" else 200, headers={"x-upstream": "echo"})

    async def _missing(self, request: Request) -> Response:
        await self._record(request)
        error = {"error": {"message": "No such file", "type": "invalid_request_error", "param": None, "code": None}}
        return JSONResponse(error, status_code=404)

    async def _stream(self, request: Request) -> Response:
        await self._record(request)

        async def events() -> AsyncIterator[bytes]:
            for n in range(3):
                yield f'data: {{"n":{n}}}\n\n'.encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


Start = Callable[..., Any]


@pytest.fixture(scope="module")
def start(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Start:
    @contextmanager
    def running(config_yaml: str = "", upstream: str | None = None) -> Iterator[tuple[str, EchoUpstream]]:
        echo = EchoUpstream()
        config = tmp_path_factory.mktemp("relay") / "config.yaml"
        config.write_text(config_yaml)
        with serve(echo.app) as echo_url:
            settings = load_settings(config, {}, Overrides(upstream=upstream or echo_url, store=redis_url))
            with serve(create_app(settings)) as url:
                yield url, echo

    return running


@pytest.fixture(scope="module")
def relay(start: Start) -> Iterator[tuple[str, EchoUpstream]]:
    with start("upstream:\n  api_key: sk-upstream\n") as running:
        yield running


def test_get_is_relayed_with_its_query_and_no_body(relay: tuple[str, EchoUpstream]) -> None:
    url, echo = relay
    response = httpx.get(url + "/models", params={"limit": "2", "after": "a b"})
    assert response.status_code == 200 and response.headers["x-upstream"] == "echo"
    seen = response.json()
    assert (seen["method"], seen["path"], seen["body"]) == ("GET", "/v1/models", "")
    assert seen["query"] == "limit=2&after=a+b"


def test_post_body_is_relayed_byte_for_byte(relay: tuple[str, EchoUpstream]) -> None:
    url, echo = relay
    body = b'{"input": "h\xc3\xa9llo",   "model":"text-embedding-3-small"}'
    response = httpx.post(url + "/embeddings", content=body, headers={"content-type": "application/json"})
    seen = response.json()
    assert (seen["method"], seen["path"]) == ("POST", "/v1/embeddings")
    assert seen["body"].encode() == body
    assert seen["headers"]["content-type"] == "application/json"


@pytest.mark.parametrize(("method", "status"), [("PUT", 201), ("PATCH", 200), ("DELETE", 200)])
def test_other_methods_and_nested_paths_are_relayed(relay: tuple[str, EchoUpstream], method: str, status: int) -> None:
    url, _ = relay
    response = httpx.request(method, url + "/files/file-abc/content", content=b"{}" if method != "DELETE" else None)
    assert response.status_code == status
    assert (response.json()["method"], response.json()["path"]) == (method, "/v1/files/file-abc/content")


def test_only_end_to_end_api_headers_pass_and_the_key_is_replaced(relay: tuple[str, EchoUpstream]) -> None:
    url, _ = relay
    headers = {
        "authorization": "Bearer sk-client",
        "openai-beta": "assistants=v2",
        "openai-organization": "org-1",
        "openai-project": "proj-1",
        "accept": "application/json",
        "cookie": "session=secret",
        "x-clawvm-session": "s1",
        "x-custom": "dropped",
    }
    seen = httpx.post(url + "/threads", content=b"{}", headers=headers).json()["headers"]
    assert seen["authorization"] == "Bearer sk-upstream"
    assert (seen["openai-beta"], seen["openai-organization"]) == ("assistants=v2", "org-1")
    assert seen["openai-project"] == "proj-1"
    assert seen["accept"] == "application/json"
    for dropped in ("cookie", "x-clawvm-session", "x-custom"):
        assert dropped not in seen


def test_the_client_key_is_forwarded_when_configured(start: Start) -> None:
    with start("upstream:\n  forward_client_key: true\n") as (url, _):
        seen = httpx.get(url + "/models", headers={"authorization": "Bearer sk-client-own"}).json()
    assert seen["headers"]["authorization"] == "Bearer sk-client-own"


def test_upstream_errors_are_relayed_unchanged(relay: tuple[str, EchoUpstream]) -> None:
    url, _ = relay
    response = httpx.get(url + "/missing")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "No such file"


def test_event_streams_are_relayed(relay: tuple[str, EchoUpstream]) -> None:
    url, _ = relay
    with httpx.stream("POST", url + "/stream", content=b'{"stream": true}') as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines == ['data: {"n":0}', 'data: {"n":1}', 'data: {"n":2}', "data: [DONE]"]


def test_tenants_must_authenticate_on_relayed_routes_too(start: Start) -> None:
    with start("tenants:\n  acme:\n    api_keys: [sk-acme]\n") as (url, echo):
        refused = httpx.get(url + "/models", headers={"authorization": "Bearer sk-wrong"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert not echo.seen
        assert httpx.get(url + "/models", headers={"authorization": "Bearer sk-acme"}).status_code == 200


def test_relayed_bodies_are_limited(start: Start) -> None:
    with start("server:\n  max_body_bytes: 1000\n") as (url, echo):
        response = httpx.post(url + "/files", content=b"x" * 5000)
        assert response.status_code == 413 and response.json()["error"]["type"] == "invalid_request_error"
        assert not echo.seen


def test_an_unreachable_upstream_is_502(start: Start) -> None:
    with start(upstream=f"http://127.0.0.1:{free_port()}/v1") as (url, _):
        response = httpx.get(url + "/models")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "api_error" and "unreachable" in error["message"]
    assert json.dumps(error).count("sk-") == 0
