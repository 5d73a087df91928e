"""Upstream faults through the running gateway, seen by the `openai` SDK (its own retries off).

The upstream is a raw HTTP/1.1 server playing one scripted answer per connection: an error
status with its headers, an answer, a stream that ends, drops or stalls after some events, or
silence. Raw sockets because a drop must be a real connection cut mid-body (with no traceback
of the upstream's own in the logs), and because the upstream must see when the gateway hangs up.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from bench.fake_upstream import serve
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings
from tests.e2e.test_chat import long_session
from tests.e2e.test_recall import recall_call

FAST = """upstream:
  retries: 2
  backoff: 0.01
  backoff_max: 0.02
  timeout_seconds: 2
  stream_idle_timeout: 0.4
"""
HELLO = [{"role": "user", "content": "hello"}]
Play = Callable[[socket.socket], "bool | None"]  # True: the gateway hung up on it


# ---------------------------------------------------------------- the scripted upstream


def _http(status: int, headers: dict[str, str], body: bytes) -> bytes:
    head = {"content-type": "application/json", "content-length": str(len(body)), "connection": "close", **headers}
    lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
    return f"HTTP/1.1 {status} X\r\n{lines}\r\n".encode() + body


def status(code: int, headers: dict[str, str] | None = None, body: bytes | None = None) -> Play:
    error = {"error": {"message": f"scripted {code}", "type": "server_error", "param": None, "code": None}}
    payload = json.dumps(error).encode() if body is None else body

    def play(sock: socket.socket) -> None:
        sock.sendall(_http(code, headers or {}, payload))
        return None

    return play


def answer(message: dict[str, object]) -> Play:
    completion = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    return status(200, body=json.dumps(completion).encode())


def _event(text: str) -> bytes:
    chunk = {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    data = f"data: {json.dumps(chunk)}\n\n".encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def stream(events: int, then: str, gate: threading.Event | None = None) -> Play:
    """`events` content chunks, then "done" ([DONE], a clean end), "drop" (the connection cut
    mid-event, chunked body unterminated) or "stall" (silence until the gateway hangs up).
    With a `gate`, the end waits until the test has seen the events (set it then)."""

    def play(sock: socket.socket) -> bool | None:
        head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        sock.sendall(head.encode() + b"".join(_event(f"w{n} ") for n in range(events)))
        if gate is not None:
            gate.wait(5)
        if then == "done":
            done = b"data: [DONE]\n\n"
            sock.sendall(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
        elif then == "drop":
            sock.sendall(b'20\r\ndata: {"id":"chatcmpl-s","obj')  # half an event, then the cut
        else:
            return _until_closed(sock)
        return None

    return play


def silence(sock: socket.socket) -> bool:
    return _until_closed(sock)


def _until_closed(sock: socket.socket) -> bool:
    """Wait for the peer to close the connection (True), at most 10 s (False)."""
    sock.settimeout(10)
    try:
        while sock.recv(1024):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


@dataclass
class Upstream:
    plays: list[Play]
    bodies: list[dict[str, object]] = field(default_factory=list)
    hung_up: threading.Event = field(default_factory=threading.Event)  # the gateway closed a connection on us

    @property
    def attempts(self) -> int:
        return len(self.bodies)

    def handle(self, sock: socket.socket) -> None:
        self.bodies.append(_read_request(sock))
        play = self.plays.pop(0) if self.plays else answer({"content": "ok"})
        try:
            if play(sock):
                self.hung_up.set()
        except OSError:
            pass


def _read_request(sock: socket.socket) -> dict[str, object]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return json.loads(body)


@contextmanager
def scripted(*plays: Play) -> Iterator[tuple[str, Upstream]]:
    upstream = Upstream(list(plays))

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            upstream.handle(self.request)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", upstream
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Running:
    url: str
    upstream: Upstream

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key="sk-test", max_retries=0, timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        shown = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in httpx.get(self.root + "/metrics").text.splitlines():
            if line.startswith(f"{name}{{{shown}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path, offline: None) -> Callable[..., object]:
    @contextmanager
    def start(*plays: Play, config: str = FAST, budget: int | None = None) -> Iterator[Running]:
        path = tmp_path / "config.yaml"
        path.write_text(config)
        with scripted(*plays) as (upstream_url, upstream):
            settings = load_settings(path, {}, Overrides(upstream=upstream_url, store=redis_url, budget=budget))
            with serve(create_app(settings)) as url:
                yield Running(url, upstream)

    return start


# ---------------------------------------------------------------- statuses, retried and relayed


def test_503_then_200_is_retried_and_the_agent_sees_only_the_answer(gateway) -> None:
    with gateway(status(503), status(503)) as gw:
        completion = gw.client().chat.completions.create(model="gpt-4o", messages=HELLO)
        assert completion.choices[0].message.content == "ok"
        assert gw.upstream.attempts == 3
        assert gw.metric("clawvm_upstream_faults_total", kind="retry_503") == 2


def test_429_waits_its_retry_after_then_answers(gateway) -> None:
    with gateway(status(429, {"retry-after-ms": "30"})) as gw:
        completion = gw.client().chat.completions.create(model="gpt-4o", messages=HELLO)
        assert completion.choices[0].message.content == "ok" and gw.upstream.attempts == 2


def test_429_after_the_retries_stays_429_with_its_retry_after(gateway) -> None:
    limited = {"retry-after-ms": "10", "retry-after": "1", "x-ratelimit-remaining-requests": "0"}
    with gateway(*(status(429, limited) for _ in range(3))) as gw:
        with pytest.raises(openai.RateLimitError) as caught:
            gw.client().chat.completions.create(model="gpt-4o", messages=HELLO)
        assert gw.upstream.attempts == 3
        response = caught.value.response
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert response.json()["error"]["message"] == "scripted 429"


def test_a_retry_after_longer_than_we_wait_goes_straight_to_the_agent(gateway) -> None:
    with gateway(status(429, {"retry-after": "3600"})) as gw:
        with pytest.raises(openai.RateLimitError) as caught:
            gw.client().chat.completions.create(model="gpt-4o", messages=HELLO)
        assert caught.value.response.headers["retry-after"] == "3600"
        assert gw.upstream.attempts == 1


def test_500_is_relayed_at_once_not_retried(gateway) -> None:
    with gateway(status(500)) as gw:
        with pytest.raises(openai.InternalServerError) as caught:
            gw.client().chat.completions.create(model="gpt-4o", messages=HELLO)
        assert caught.value.status_code == 500 and gw.upstream.attempts == 1


def test_an_error_page_that_is_not_openai_json_is_reshaped_keeping_its_status(gateway) -> None:
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    with gateway(*(status(502, {"content-type": "text/html"}, page) for _ in range(3))) as gw:
        response = httpx.post(gw.url + "/chat/completions", json={"model": "gpt-4o", "messages": HELLO})
        assert response.status_code == 502 and gw.upstream.attempts == 3
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert (
            error["type"] == "api_error" and error["message"] == "the upstream answered 502; the request may be retried"
        )
        assert set(error) == {"message", "type", "param", "code"}


def test_no_answer_within_the_timeout_is_504_upstream_timeout(gateway) -> None:
    config = "upstream:\n  retries: 1\n  backoff: 0.01\n  timeout_seconds: 0.3\n"
    with gateway(silence, silence, config=config) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            gw.client().chat.completions.create(model="gpt-4o", messages=HELLO)
        assert caught.value.status_code == 504
        assert caught.value.body["code"] == "upstream_timeout"  # type: ignore[index]
        assert gw.upstream.attempts == 2
        assert gw.metric("clawvm_upstream_faults_total", kind="retry_timeout") == 1


# ---------------------------------------------------------------- streams that fail midway


def _stream_texts(gw: Running, seen: int, gate: threading.Event) -> tuple[list[str], openai.APIError]:
    """The contents the SDK yields (the gate opened after `seen` of them) and the error it raises."""
    texts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in gw.client().chat.completions.create(model="gpt-4o", messages=HELLO, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
            if len(texts) == seen:
                gate.set()
    return texts, caught.value


def _raw_events(gw: Running, seen: int, gate: threading.Event) -> list[str]:
    body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
    events = []
    with httpx.stream("POST", gw.url + "/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                events.append(line)
            if len(events) == seen:
                gate.set()
    return events


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record)


@contextmanager
def logged_errors() -> Iterator[list[logging.LogRecord]]:
    """ERROR records of uvicorn (its "Exception in ASGI application" traceback) and of the gateway.
    Entered once the servers run: uvicorn's start-up configures its loggers afresh."""
    handler, names = _Errors(), ("uvicorn.error", "uvicorn", "clawvm")
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler.seen
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)


def test_a_mid_stream_drop_ends_the_stream_with_an_error_event(gateway) -> None:
    first, second = threading.Event(), threading.Event()
    with gateway(stream(3, "drop", first), stream(3, "drop", second)) as gw, logged_errors() as errors:
        texts, error = _stream_texts(gw, 3, first)
        assert texts == ["w0 ", "w1 ", "w2 "]  # what came before the drop reached the agent
        assert error.code == "upstream_disconnected" and "dropped mid-response" in error.message
        events = _raw_events(gw, 3, second)
        assert gw.upstream.attempts == 2  # never retried once bytes went out
        assert gw.metric("clawvm_upstream_faults_total", kind="stream_dropped") == 2
    assert len(events) == 4 and "[DONE]" not in events[-1]
    assert json.loads(events[-1].removeprefix("data: "))["error"]["type"] == "api_error"
    assert all(json.loads(e.removeprefix("data: "))["choices"] for e in events[:3])  # no half event relayed
    assert not errors, [r.getMessage() for r in errors]


def test_a_stalled_stream_ends_with_an_upstream_timeout_event(gateway) -> None:
    with gateway(stream(2, "stall")) as gw, logged_errors() as errors:
        texts, error = _stream_texts(gw, 2, threading.Event())
        assert texts == ["w0 ", "w1 "]
        assert error.code == "upstream_timeout"
        assert gw.upstream.hung_up.wait(5), "the gateway kept the stalled upstream connection open"
        assert gw.metric("clawvm_upstream_faults_total", kind="stream_timeout") == 1
    assert not errors, [r.getMessage() for r in errors]


def test_a_drop_in_a_stream_the_gateway_pages_ends_with_an_error_event_too(gateway) -> None:
    gate = threading.Event()
    with gateway(stream(2, "drop", gate), budget=9000) as gw:
        texts: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in gw.client().chat.completions.create(model="gpt-4o", messages=long_session(30), stream=True):
                texts.extend(
                    [chunk.choices[0].delta.content] if chunk.choices and chunk.choices[0].delta.content else []
                )
                if len(texts) == 2:
                    gate.set()
        assert texts == ["w0 ", "w1 "] and caught.value.code == "upstream_disconnected"
        assert any(t["function"]["name"] == "clawvm_recall" for t in gw.upstream.bodies[0]["tools"])  # type: ignore[index, union-attr]
        assert gw.metric("clawvm_upstream_faults_total", kind="stream_dropped") == 1


def test_a_stream_that_ends_cleanly_is_relayed_unchanged(gateway) -> None:
    with gateway(stream(3, "done")) as gw:
        events = _raw_events(gw, 3, threading.Event())
    assert events[-1] == "data: [DONE]" and len(events) == 4


# ---------------------------------------------------------------- the agent hangs up


def hang_up_once_forwarded(gw: Running, body: dict[str, object], headers: dict[str, str], attempts: int) -> None:
    """Send the request over a raw socket, and close it once the upstream has seen `attempts` calls."""
    port = int(gw.root.rsplit(":", 1)[1])
    payload = json.dumps(body).encode()
    head = {"host": "127.0.0.1", "content-type": "application/json", "content-length": str(len(payload)), **headers}
    request = "POST /v1/chat/completions HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode() + payload)
        assert _wait_for(lambda: gw.upstream.attempts >= attempts), "the gateway never called the upstream"


def _session(gw: Running, session: str) -> dict[str, object]:
    response = httpx.get(gw.url + f"/clawvm/sessions/{session}", headers={"authorization": "Bearer sk-test"})
    assert response.status_code == 200
    return response.json()


def test_a_hang_up_while_waiting_cancels_the_upstream_call_and_keeps_the_committed_turn(gateway) -> None:
    with gateway(silence, config="upstream:\n  timeout_seconds: 30\n") as gw:
        headers = {"x-clawvm-session": "hangup-plain"}
        body = {"model": "gpt-4o", "messages": HELLO}
        hang_up_once_forwarded(gw, body, headers, attempts=1)
        assert gw.upstream.hung_up.wait(5), "the upstream call outlived the client"
        assert gw.upstream.attempts == 1
        table = _session(gw, "hangup-plain")
        assert table["turn"] == 1 and len(table["pages"]) == 1  # type: ignore[arg-type]  # committed before forwarding
        events = httpx.get(gw.url + "/clawvm/sessions/hangup-plain/events")
        assert events.status_code == 200 and isinstance(events.json()["data"], list)
        assert _wait_for(lambda: gw.metric("clawvm_requests_total", tenant="default", status="499") == 1)
        again = httpx.post(gw.url + "/chat/completions", json=body, headers=headers, timeout=10)
        assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "ok"


def test_a_hang_up_during_a_recall_round_cancels_it(gateway) -> None:
    def recalls(sock: socket.socket) -> None:
        page = re.findall(r"p:[0-9a-f]{12}", json.dumps(upstream.bodies[0]))[0]
        answer({"content": None, "tool_calls": [recall_call([page])]})(sock)

    with gateway(recalls, silence, budget=9000, config="upstream:\n  timeout_seconds: 30\n") as gw:
        upstream = gw.upstream
        body = {"model": "gpt-4o", "messages": long_session(30)}
        hang_up_once_forwarded(gw, body, {}, attempts=2)
        assert upstream.hung_up.wait(5), "the recall round outlived the client"
        assert upstream.attempts == 2  # the first call and the recall round
        assert upstream.bodies[1]["messages"][-1]["content"].startswith("[recall: ok]")  # type: ignore[index]


def _wait_for(check: Callable[[], bool], limit: float = 5.0) -> bool:
    deadline = threading.Event()
    for _ in range(int(limit / 0.05)):
        if check():
            return True
        deadline.wait(0.05)
    return check()
