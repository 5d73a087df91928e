from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from bench.fake_upstream import (
    CREATED,
    INJECTED_ERROR,
    INJECTED_STATUSES,
    FakeUpstream,
    Faults,
    Running,
    agent_responder,
    content_pieces,
    embedding_vector,
    running,
    serve,
)

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
READ_FILE = {"name": "read_file", "arguments": '{"path": "/etc/hosts"}'}
CALL = {"id": "call_abc", "type": "function", "function": READ_FILE}


def tool_responder(request: dict[str, Any]) -> dict[str, Any]:
    return {"content": None, "tool_calls": [CALL]}


def chat(url: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", json={"model": "gpt-x", "messages": MESSAGES, **extra})


def sse_payloads(body: bytes) -> list[Any]:
    events = [e for e in body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


def test_non_stream_completion_is_openai_shaped_and_deterministic(fake_upstream: Running) -> None:
    body = chat(fake_upstream.url).json()
    assert body == {
        "id": "chatcmpl-fake-1",
        "created": CREATED,
        "model": "gpt-x",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3 + (4 + 2) + (4 + 2), "completion_tokens": 1, "total_tokens": 16},
        "system_fingerprint": "fp_fake",
    }
    assert chat(fake_upstream.url).json()["id"] == "chatcmpl-fake-2"


def test_tool_calls_end_with_finish_reason_tool_calls(fake_upstream: Running) -> None:
    fake_upstream.fake.responder = tool_responder
    choice = chat(fake_upstream.url).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [CALL]}
    assert choice["finish_reason"] == "tool_calls"


def test_responder_shorthand_gets_ids_and_types_filled_in(fake_upstream: Running) -> None:
    fake_upstream.fake.responder = lambda req: {"tool_calls": [{"name": "f", "arguments": {"x": 1}}]}
    message = chat(fake_upstream.url).json()["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "call_fake_0", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    ]


def test_stream_has_openai_chunk_sequence(fake_upstream: Running) -> None:
    fake_upstream.fake.responder = lambda req: {"content": "one two three", "tool_calls": [CALL]}
    response = chat(fake_upstream.url, stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    *payloads, done = sse_payloads(response.content)
    assert done == "[DONE]"
    chunks = [json.loads(p) for p in payloads]
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [d["content"] for d in deltas[1:4]] == ["one ", "two ", "three"]
    calls = [d["tool_calls"][0] for d in deltas[4:-1]]
    opening = {"name": "read_file", "arguments": ""}
    first = {"index": 0, "id": "call_abc", "type": "function", "function": opening}
    assert calls[0] == first
    assert all(set(c) == {"index", "function"} for c in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == CALL["function"]["arguments"]
    finish_reasons = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finish_reasons == [None] * (len(chunks) - 2) + ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 15
    assert {c["id"] for c in chunks} == {"chatcmpl-fake-1"}


def test_stream_without_include_usage_has_no_usage(fake_upstream: Running) -> None:
    payloads = sse_payloads(chat(fake_upstream.url, stream=True).content)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_same_request_gives_the_same_bytes_from_two_fakes() -> None:
    with running() as first, running() as second:
        a = chat(first.url, stream=True, stream_options={"include_usage": True}).content
        b = chat(second.url, stream=True, stream_options={"include_usage": True}).content
    assert a == b


@pytest.mark.parametrize("stream", [False, True])
def test_first_byte_delay_is_waited_before_every_answer_and_changes_nothing(
    fake_upstream: Running, stream: bool
) -> None:
    waited: list[float] = []

    async def think(seconds: float) -> None:
        waited.append(seconds)

    fake_upstream.fake.think = think
    at_once = chat(fake_upstream.url, stream=stream).content
    assert waited == []  # no think time unless asked
    fake_upstream.fake.first_byte_delay = 0.05
    thought = chat(fake_upstream.url, stream=stream).content
    assert waited == [0.05]  # once per answer, whole or streamed
    assert thought.replace(b"fake-2", b"fake-1") == at_once


def test_chunk_delay_paces_but_does_not_change_the_stream(fake_upstream: Running) -> None:
    fake_upstream.fake.chunk_delay = 0.01
    paced = chat(fake_upstream.url, stream=True).content
    with running() as other:
        assert chat(other.url, stream=True).content == paced


def test_openai_sdk_reads_completions_streams_and_embeddings(fake_upstream: Running) -> None:
    fake_upstream.fake.responder = lambda req: {"content": "Hello from the fake upstream!"}
    client = openai.OpenAI(base_url=fake_upstream.url, api_key="sk-test", max_retries=0)
    completion = client.chat.completions.create(model="gpt-x", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Hello from the fake upstream!"
    options: Any = {"include_usage": True}
    stream = client.chat.completions.create(
        model="gpt-x",
        messages=MESSAGES,
        stream=True,
        stream_options=options,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream!"
    usage, expected = chunks[-1].usage, completion.usage
    assert usage is not None and expected is not None and usage.prompt_tokens == expected.prompt_tokens
    vectors = client.embeddings.create(model="emb", input=["a", "b"]).data
    assert vectors[0].embedding == pytest.approx(embedding_vector("a"), abs=1e-6)
    assert [m.id for m in client.models.list()] == ["fake-model"]


def test_embeddings_are_deterministic_per_text(fake_upstream: Running) -> None:
    url = f"{fake_upstream.url}/embeddings"
    first = httpx.post(url, json={"model": "emb", "input": "same"}).json()
    again = httpx.post(url, json={"model": "emb", "input": ["same", "other"]}).json()
    assert first["data"][0]["embedding"] == again["data"][0]["embedding"] == embedding_vector("same")
    assert again["data"][1]["embedding"] != embedding_vector("same")
    assert [d["index"] for d in again["data"]] == [0, 1]


def test_base64_embeddings_decode_to_the_float_vector(fake_upstream: Running) -> None:
    body = {"model": "emb", "input": "x", "encoding_format": "base64"}
    encoded = httpx.post(f"{fake_upstream.url}/embeddings", json=body).json()["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(embedding_vector("x"), abs=1e-6)


def test_fail_next_answers_queued_statuses_with_openai_errors(fake_upstream: Running) -> None:
    fake_upstream.fake.fail_next = [429, 500]
    first, second, third = chat(fake_upstream.url), chat(fake_upstream.url), chat(fake_upstream.url)
    assert (first.status_code, second.status_code, third.status_code) == (429, 500, 200)
    assert first.json()["error"] == {
        "message": "fake upstream failure 429",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert second.json()["error"]["type"] == "api_error"
    assert third.json()["id"] == "chatcmpl-fake-1"
    assert fake_upstream.fake.fail_next == []


def test_every_request_is_recorded_in_order(fake_upstream: Running) -> None:
    chat(fake_upstream.url, temperature=0)
    httpx.get(f"{fake_upstream.url}/models", headers={"X-Trace": "t1"})
    httpx.post(f"{fake_upstream.url}/chat/completions", content=b"not json")
    recorded = fake_upstream.fake.requests
    assert [(r.method, r.path) for r in recorded] == [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ]
    assert recorded[0].body == {"model": "gpt-x", "messages": MESSAGES, "temperature": 0}
    assert recorded[1].headers["x-trace"] == "t1" and recorded[1].body is None
    assert recorded[2].body is None


def test_bad_bodies_get_openai_400s(fake_upstream: Running) -> None:
    missing = httpx.post(f"{fake_upstream.url}/chat/completions", json={"model": "m"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    assert httpx.post(f"{fake_upstream.url}/embeddings", json={}).status_code == 400


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/responses"), ("GET", "/v1/chat/completions"), ("GET", "/")])
def test_unknown_routes_get_openai_shaped_404s(fake_upstream: Running, method: str, path: str) -> None:
    base = fake_upstream.url.removesuffix("/v1")
    response = httpx.request(method, base + path)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_content_pieces_rejoin_to_the_content() -> None:
    for text in ["", "   ", "one", " lead and  trail ", "a\nb\tc"]:
        assert "".join(content_pieces(text)) == text
    assert len(content_pieces("several words here")) == 3


def test_serve_stops_the_server_on_exit() -> None:
    with serve(FakeUpstream().app) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert httpx.get(f"{url}/models").status_code == 200
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_module_main_serves_a_fake(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bench.fake_upstream", "--port", str(port)]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        assert f":{port}/v1" in process.stdout.readline().decode()
        assert _get_when_up(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"] == "fake-model"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get_when_up(url: str, attempts: int = 500) -> httpx.Response:
    for _ in range(attempts):
        try:
            return httpx.get(url)
        except httpx.ConnectError:
            time.sleep(0.02)
    raise AssertionError(f"{url} never came up")


def test_faults_are_off_unless_asked(fake_upstream: Running) -> None:
    assert fake_upstream.fake.faults is None
    assert all(chat(fake_upstream.url).status_code == 200 for _ in range(20))


def test_injected_errors_are_openai_errors_named_as_injected() -> None:
    with running(FakeUpstream(faults=Faults(error_rate=1.0, seed=3))) as served:
        responses = [chat(served.url) for _ in range(30)]
        injected = served.fake.faults.injected if served.fake.faults else {}
    assert {r.status_code for r in responses} <= set(INJECTED_STATUSES)
    assert len({r.status_code for r in responses}) > 1  # the statuses vary
    assert all(r.json()["error"]["message"].startswith(INJECTED_ERROR) for r in responses)
    assert sum(injected.values()) == 30


def test_same_seed_same_faults() -> None:
    def statuses(seed: int) -> list[int]:
        with running(FakeUpstream(faults=Faults(error_rate=0.5, seed=seed))) as served:
            return [chat(served.url).status_code for _ in range(20)]

    assert statuses(11) == statuses(11)
    assert 200 in statuses(11)


def test_dropped_streams_stop_before_done() -> None:
    with running(FakeUpstream(faults=Faults(drop_rate=1.0))) as served:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            with httpx.stream(
                "POST", f"{served.url}/chat/completions", json={"messages": MESSAGES, "stream": True}
            ) as r:
                assert r.status_code == 200
                for data in r.iter_raw():
                    received += data
        assert served.fake.faults is not None and served.fake.faults.injected == {"dropped": 1}
    assert received.startswith(b"data: ") and b"[DONE]" not in received
    non_stream = FakeUpstream(faults=Faults(drop_rate=1.0))
    with running(non_stream) as served:
        assert chat(served.url).status_code == 200  # only streams are cut


def test_agent_responder_calls_a_tool_with_fresh_ids() -> None:
    first = agent_responder({"messages": MESSAGES})
    parallel = agent_responder({"messages": MESSAGES * 2})  # four messages: two parallel calls
    assert first["content"] and [c["id"] for c in first["tool_calls"]] == ["call_2_0"]
    assert [c["id"] for c in parallel["tool_calls"]] == ["call_4_0", "call_4_1"]
    assert json.loads(first["tool_calls"][0]["function"]["arguments"]) == {"path": "src/m2_0.py"}
