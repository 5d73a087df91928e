"""Graceful shutdown: a stream in flight when the gateway is told to stop is finished, whole,
before the server goes away. (That a turn committed just before a stop is stored after a restart
on the same data directory is tests/e2e/test_cli_serve.py::test_serve_answers_persists_and_shuts_down_cleanly.)"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import httpx

from bench.fake_upstream import FakeUpstream, serve
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings

WORDS = 20
CHUNK_DELAY_S = 0.03  # the whole stream well inside uvicorn's graceful-shutdown time (2 s in `serve`)
WAIT_S = 30.0


@dataclass
class Reader:
    url: str
    started: threading.Event = field(default_factory=threading.Event)
    lines: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def run(self) -> None:
        body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Tell me a story."}]}
        try:
            with (
                httpx.Client(timeout=WAIT_S) as client,
                client.stream("POST", self.url + "/chat/completions", json=body) as response,
            ):
                assert response.status_code == 200
                for line in response.iter_lines():
                    self.lines.append(line)
                    self.started.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test's own assertions
            self.error = exc
        finally:
            self.started.set()


def test_an_in_flight_stream_completes_when_the_gateway_shuts_down(redis_url: str, offline: None) -> None:
    story = " ".join(f"word{n}" for n in range(WORDS))
    fake = FakeUpstream(lambda body: {"content": story}, chunk_delay=CHUNK_DELAY_S)
    with serve(fake.app) as upstream_url:
        settings = load_settings(None, {}, Overrides(upstream=upstream_url, store=redis_url))
        with serve(create_app(settings)) as url:
            reader = Reader(url)
            thread = threading.Thread(target=reader.run, daemon=True)
            thread.start()
            assert reader.started.wait(WAIT_S)
            assert reader.error is None
        # leaving `serve` asked uvicorn to exit and waited for it: the stream was still going
        thread.join(WAIT_S)
    assert not thread.is_alive() and reader.error is None, reader.error
    data = [line.removeprefix("data: ") for line in reader.lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == story  # every word, none cut off by the shutdown
    assert any(c["choices"][0].get("finish_reason") == "stop" for c in chunks if c.get("choices"))
