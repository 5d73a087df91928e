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
from gateway.api.app import create_app
from gateway.api.errors import InvalidRequest
from gateway.api.relay import relayed_path, shared_route
from gateway.settings import Overrides, load_settings
from gateway.store.embedded import free_port

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
        return JSONResponse(seen, status_code=201 if request.method == "PUT" else 200, headers={"x-request-id": "echo"})

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
    with start("upstream:\n  api_key: sk-upstream\n  account_routes: true\n") as running:
        yield running


def test_get_is_relayed_with_its_query_and_no_body(relay: tuple[str, EchoUpstream]) -> None:
    url, echo = relay
    response = httpx.get(url + "/models", params={"limit": "2", "after": "a b"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "echo"
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
    assert seen["openai-beta"] == "assistants=v2"
    assert seen["accept"] == "application/json"
    # the operator's shared key: the client does not choose its organization or project
    for dropped in ("cookie", "x-clawvm-session", "x-custom", "openai-organization", "openai-project"):
        assert dropped not in seen


def test_a_tenant_with_its_own_upstream_key_chooses_its_organization_and_project(start: Start) -> None:
    config = "upstream:\n  api_key: sk-shared\ntenants:\n  own:\n    api_keys: [sk-own]\n    upstream:\n      api_key: sk-own-up\n"
    headers = {"authorization": "Bearer sk-own", "openai-organization": "org-1", "openai-project": "proj-1"}
    with start(config) as (url, _):
        seen = httpx.get(url + "/models", headers=headers).json()["headers"]
    assert seen["authorization"] == "Bearer sk-own-up"
    assert (seen["openai-organization"], seen["openai-project"]) == ("org-1", "proj-1")


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
        response = httpx.post(url + "/embeddings", content=b"x" * 5000)
        assert response.status_code == 413 and response.json()["error"]["type"] == "invalid_request_error"
        assert not echo.seen


def test_an_unreachable_upstream_is_502(start: Start) -> None:
    with start(upstream=f"http://127.0.0.1:{free_port()}/v1") as (url, _):
        response = httpx.get(url + "/models")
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "api_error" and error["code"] == "upstream_unreachable"
    assert "127.0.0.1" not in error["message"]
    assert json.dumps(error).count("sk-") == 0


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"/v1/models", "/models"),
        (b"/v1/files/file-abc/content?x=1", "/files/file-abc/content"),
        (b"/v1/models/ft%3Agpt-4o%3Aorg%3A%3Aabc", "/models/ft:gpt-4o:org::abc"),
        (b"/%76%31/models", "/models"),
    ],
)
def test_a_plain_relayed_path_is_kept_decoded(raw: bytes, path: str) -> None:
    assert relayed_path(raw) == path


@pytest.mark.parametrize(
    "raw",
    [
        b"/v1/%2E%2E/%2E%2E/x",
        b"/v1/../x",
        b"/v1/./models",
        b"/v1/models/.",
        b"/v1//models",
        b"/v1/models/",
        b"/v1/models%2F..%2Fx",
        b"/v1/models%5Cx",
        b"/v1/%252E%252E/x",
        b"/v1/models%3Fx=1",
        b"/v1/models%23x",
        b"/v1/models/%00",
        b"/v1/models/%0d%0aHost:%20evil",
        b"/v1/models/%7F",
        b"/v1/models/%FF",
        b"/v1",
        b"/v2/models",
    ],
)
def test_a_relayed_path_that_could_leave_v1_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        relayed_path(raw)
    assert caught.value.param == "path"


@pytest.mark.parametrize(
    ("method", "path", "shared"),
    [
        ("GET", "/models", True),
        ("GET", "/models/gpt-4o", True),
        ("DELETE", "/models/ft:gpt-4o:org::abc", False),
        ("POST", "/embeddings", True),
        ("POST", "/moderations", True),
        ("POST", "/audio/transcriptions", True),
        ("POST", "/images/generations", True),
        ("GET", "/embeddings", False),
        ("GET", "/files", False),
        ("POST", "/uploads", False),
        ("GET", "/batches/batch_1", False),
        ("POST", "/responses", False),
        ("GET", "/responses/resp_1/input_items", False),
        ("GET", "/chat/completions", False),
        ("GET", "/chat/completions/chatcmpl-1/messages", False),
        ("POST", "/fine_tuning/jobs", False),
        ("POST", "/realtime/sessions", False),
        ("GET", "/organization/costs", False),
        ("GET", "/something-new", False),
    ],
)
def test_only_stateless_routes_are_shared(method: str, path: str, shared: bool) -> None:
    assert shared_route(method, path) is shared


def test_account_routes_through_the_shared_key_are_refused_before_the_body_is_read(start: Start) -> None:
    with start("upstream:\n  api_key: sk-shared\n") as (url, echo):
        refused = httpx.delete(url + "/files/file-abc")
        allowed = httpx.get(url + "/models")
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert "upstream.account_routes" in refused.json()["error"]["message"]
    assert allowed.status_code == 200 and [seen["path"] for seen in echo.seen] == ["/v1/models"]
