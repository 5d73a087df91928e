"""Where requests go and what comes back from the upstream, over real HTTP (issue 11, items 1, 3, 4).

- A client cannot choose where a litellm-routed request goes, nor its key, retries or callbacks: a
  listening loopback server named as the destination receives nothing, the client gets 400 naming
  the field.
- A relayed path never leaves `/v1` nor the `api_base` path prefix, whatever its encoding (sent
  with a raw socket: no client normalises it first).
- Account-level routes (files, batches, stored responses, ... and any DELETE) pass only for a
  tenant with its own upstream key or with `upstream.account_routes: true`; 403 otherwise.
- The upstream's account headers (organization, project, cookies) do not reach tenants, a
  client's `openai-organization` does not reach the upstream with the operator's key, and 5xx
  answers quote no internal host, port or library text.

The gateway runs under uvicorn on a free port with the shared real Redis; the upstream is a small
recording app standing in for an OpenAI-compatible API under a path prefix.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.fake_upstream import serve
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings
from gateway.store.embedded import free_port

SHARED_KEY = "sk-operator-shared-0123456789"
ACME, GLOBEX, OWN, ALLOWED = "sk-acme-agent", "sk-globex-agent", "sk-own-agent", "sk-allowed-agent"
CONFIG = f"""
upstream:
  api_key: {SHARED_KEY}
  retries: 0
tenants:
  acme:
    api_keys: [{ACME}]
  globex:
    api_keys: [{GLOBEX}]
  own:
    api_keys: [{OWN}]
    upstream:
      api_key: sk-own-upstream-key
  allowed:
    api_keys: [{ALLOWED}]
    upstream:
      account_routes: true
"""
ACCOUNT_HEADERS = {
    "openai-organization": "org-operator",
    "openai-project": "proj_operator",
    "set-cookie": "__cf_bm=operator; path=/",
    "anthropic-organization-id": "org-anthropic-operator",
}
USEFUL_HEADERS = {"x-request-id": "req-1", "x-ratelimit-remaining-requests": "99", "openai-processing-ms": "12"}
INTERNAL = "10.20.30.40:5432"
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class Recorder:
    """An OpenAI-compatible upstream that records every request as it arrived (raw path, method,
    headers) and answers with account headers; `/prefix/v1/fail` answers a 500 quoting internals."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/{path:path}", self.answer, methods=["GET", "POST", "DELETE"])])

    async def answer(self, request: Request) -> Response:
        raw = request.scope["raw_path"].decode("latin-1")
        self.seen.append({"method": request.method, "raw_path": raw, "headers": dict(request.headers)})
        headers = {**ACCOUNT_HEADERS, **USEFUL_HEADERS}
        if raw.endswith("/fail") or raw.endswith("/models/broken"):
            page = f"Traceback: psycopg2.OperationalError: could not connect to {INTERNAL}"
            return Response(page, status_code=500, media_type="text/plain", headers=headers)
        if raw.endswith("/chat/completions"):
            return JSONResponse(COMPLETION, headers=headers)
        return JSONResponse({"object": "list", "data": []}, headers=headers)


class Listener:
    """A loopback TCP server that only counts the connections it is offered (an attacker's host)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


Start = Callable[..., Any]


@pytest.fixture
def start(redis_url: str, tmp_path: Path, offline: None) -> Start:
    @contextmanager
    def started(config: str = CONFIG, upstream: str | None = None) -> Iterator[tuple[str, Recorder]]:
        recorder = Recorder()
        path = tmp_path / "config.yaml"
        path.write_text(config)
        with serve(recorder.app) as recorder_url:
            api_base = upstream or recorder_url.removesuffix("/v1") + "/prefix/v1"
            settings = load_settings(path, {}, Overrides(upstream=api_base, store=redis_url))
            with serve(create_app(settings)) as url:
                yield url.removesuffix("/v1"), recorder

    return started


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def raw_request(root: str, method: str, target: str, key: str) -> tuple[int, bytes]:
    """One request sent byte for byte (no client normalises the path): status and body."""
    host, port = root.removeprefix("http://").split(":")
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode("latin-1"))
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# -- item 1: the litellm route -----------------------------------------------------------------


@pytest.mark.parametrize("field", ["base_url", "api_base", "extra_headers", "mock_response", "api_key", "fallbacks"])
def test_a_client_cannot_send_a_litellm_routed_request_elsewhere_or_change_how_it_is_made(
    start: Start, field: str
) -> None:
    with Listener() as attacker, start() as (root, recorder):
        values = {
            "base_url": attacker.url,
            "api_base": attacker.url,
            "extra_headers": {"x-api-key": "sk-attacker"},
            "mock_response": "the canned answer",
            "api_key": "sk-attacker",
            "fallbacks": ["openai/gpt-4o"],
        }
        body = {
            "model": "anthropic/claude-3-5-sonnet-20240620",
            "messages": [{"role": "user", "content": "hello"}],
            field: values[field],
        }
        response = httpx.post(root + "/v1/chat/completions", json=body, headers=auth(ACME), timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", field)
    assert field in error["message"]
    assert attacker.connections == 0 and recorder.seen == []


# -- item 3: relayed paths and account-level routes ----------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v1/%2E%2E/%2E%2E/x",
        "/v1/%2e%2e/x",
        "/v1/models/%2F..%2F..%2Fx",
        "/v1/models/..%5C..%5Cx",
        "/v1/models/%252E%252E/x",
        "/v1//models",
        "/v1/models/%00",
        "/v1/./models",
    ],
)
def test_a_relayed_path_cannot_leave_v1_or_the_api_base_prefix(start: Start, target: str) -> None:
    with start() as (root, recorder):
        status, body = raw_request(root, "GET", target, ALLOWED)
    assert status == 400, body
    assert b'"param":"path"' in body.replace(b" ", b"")
    assert recorder.seen == []


ACCOUNT_ROUTES = [
    ("GET", "/v1/files"),
    ("GET", "/v1/files/file-abc/content"),
    ("DELETE", "/v1/files/file-abc"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/responses/resp_123"),
    ("DELETE", "/v1/responses/resp_123"),
    ("GET", "/v1/responses/resp_123/input_items"),  # POST /v1/responses is a managed turn (tests/e2e/test_responses.py)
    ("GET", "/v1/chat/completions"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/vector_stores"),
    ("POST", "/v1/threads"),
    ("DELETE", "/v1/models/ft:gpt-4o:operator::abc"),
    ("GET", "/v1/organization/projects"),
]


@pytest.mark.parametrize(("method", "path"), ACCOUNT_ROUTES)
def test_one_tenant_cannot_reach_account_objects_through_the_shared_upstream_key(
    start: Start, method: str, path: str
) -> None:
    with start() as (root, recorder), httpx.Client(timeout=30) as client:
        refused = client.request(method, root + path, headers=auth(GLOBEX))
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["type"] == "permission_error" and "upstream.account_routes" in error["message"]
        assert recorder.seen == []
        # a tenant with its own upstream key, or allowed by the operator, is relayed
        for key in (OWN, ALLOWED):
            assert client.request(method, root + path, headers=auth(key)).status_code == 200
        assert [seen["raw_path"] for seen in recorder.seen] == ["/prefix" + path] * 2
        # stateless routes stay relayed through the shared key
        assert client.get(root + "/v1/models", headers=auth(GLOBEX)).status_code == 200
        embedded = client.post(root + "/v1/embeddings", json={"input": "x", "model": "e"}, headers=auth(GLOBEX))
        assert embedded.status_code == 200


# -- item 4: what the upstream says about the operator --------------------------------------------


def test_the_upstreams_account_headers_do_not_reach_tenants(start: Start) -> None:
    with start() as (root, _), httpx.Client(timeout=30) as client:
        relayed = client.get(root + "/v1/models", headers=auth(ACME))
        chat = client.post(
            root + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            headers=auth(ACME),
        )
    for response in (relayed, chat):
        assert response.status_code == 200, response.text
        for name in ACCOUNT_HEADERS:
            assert name not in response.headers, (name, response.request.url)
        for name, value in USEFUL_HEADERS.items():
            assert response.headers[name] == value


def test_a_tenant_cannot_choose_the_operators_organization_or_project(start: Start) -> None:
    chosen = {"openai-organization": "org-operator", "openai-project": "proj_operator"}
    with start() as (root, recorder), httpx.Client(timeout=30) as client:
        assert client.get(root + "/v1/models", headers={**auth(ACME), **chosen}).status_code == 200
        assert client.get(root + "/v1/models", headers={**auth(OWN), **chosen}).status_code == 200
    shared, own = (seen["headers"] for seen in recorder.seen)
    assert shared["authorization"] == f"Bearer {SHARED_KEY}"
    assert "openai-organization" not in shared and "openai-project" not in shared
    assert (own["openai-organization"], own["openai-project"]) == ("org-operator", "proj_operator")


def test_upstream_failures_do_not_quote_internal_hosts_ports_or_library_text(start: Start) -> None:
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    port = free_port()
    with start(upstream=f"http://127.0.0.1:{port}/v1") as (root, _), httpx.Client(timeout=30) as client:
        unreachable = [
            client.get(root + "/v1/models", headers=auth(ACME)),
            client.post(root + "/v1/chat/completions", json=chat, headers=auth(ACME)),
        ]
    with start() as (root, _), httpx.Client(timeout=30) as client:
        failed = client.get(root + "/v1/models/broken", headers=auth(ACME))
    for response in unreachable:
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_unreachable" and "may be retried" in error["message"]
        assert "127.0.0.1" not in response.text and str(port) not in response.text
        assert "Cannot connect" not in response.text
    assert failed.status_code == 500
    assert failed.json()["error"]["message"] == "the upstream answered 500; the request may be retried"
    assert INTERNAL not in failed.text and "psycopg2" not in failed.text
