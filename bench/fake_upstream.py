"""A fake OpenAI-compatible server, for tests, benchmarks and demos.

`FakeUpstream(responder).app` is a Starlette app answering like OpenAI's API:

- POST /v1/chat/completions: a `chat.completion`, or with `"stream": true` an SSE stream shaped like
  OpenAI's (role chunk, content in several chunks, tool-call deltas, finish chunk, usage chunk when
  `stream_options.include_usage`, `data: [DONE]`);
- GET /v1/models, POST /v1/embeddings (vectors derived from the input text);
- anything else: 404 with OpenAI's error body.

The `responder` maps the request JSON to the assistant message (`{"content": ..., "tool_calls": [...]}`).
Everything is deterministic: ids count requests (`chatcmpl-fake-1`, ...), `created` is fixed, token
counts are a character estimate. Every request is recorded in `requests`; statuses queued in
`fail_next` are answered (with an OpenAI error body) instead of the next requests.

Holding requests open (tests of concurrency limits): while `hold` is a `threading.Event` that is
not set, a chat completion waits for it before answering, and a stream waits after its first
event (the client already reads it); `held` counts the requests waiting. Set the event (or set
`hold` to None) to let them finish.

Opt-in fault injection (off unless `faults` is given; `--fault-rate`/`--drop-rate` on the command
line): `Faults(error_rate, drop_rate, seed)` answers a seeded share of chat completions with 429, 500
or 503 (OpenAI error bodies whose message starts with `INJECTED_ERROR`), and cuts a share of streams
after half their events by dropping the connection (no final chunk, no `[DONE]`). `agent_responder`
(`--agent`) answers like a tool-using agent's model: a sentence and a tool call with a fresh id
(two parallel calls when the transcript's length is 4 modulo 5). With `calls_in_finish`, a stream
sends its tool calls whole in the finish chunk, as some OpenAI-compatible providers do.

A model's think time: with `first_byte_delay` (`--first-byte-delay`) the answer's first byte
waits that many seconds, a stream's first event and a whole completion alike.

`serve(app)` runs any ASGI app under uvicorn in a background thread on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CREATED = 1_700_000_000
INJECTED_ERROR = "fake upstream injected failure"
INJECTED_CODE = "fake_upstream_injected"  # the `code` of an injected 5xx: the gateway relays codes, not 5xx messages
INJECTED_STATUSES = (429, 500, 503)
MODELS = ("fake-model",)
EMBEDDING_DIMENSIONS = 8
ARGUMENT_PIECE = 8
HOLD_POLL_S = 0.01
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}

Responder = Callable[[dict[str, Any]], dict[str, Any]]
Json = dict[str, Any]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None


def default_responder(request: Json) -> Json:
    return {"content": "ok"}


def agent_responder(request: Json) -> Json:
    """A tool-using agent's model: one sentence and a `read_file` call (two when len(messages) % 5 == 4),
    call ids made unique within the transcript from its length."""
    turn = len(request.get("messages") or [])
    calls = 2 if turn % 5 == 4 else 1
    tool_calls = [
        {
            "id": f"call_{turn}_{n}",
            "function": {"name": "read_file", "arguments": json.dumps({"path": f"src/m{turn}_{n}.py"})},
        }
        for n in range(calls)
    ]
    return {"content": f"Reading the next module to check turn {turn} of the plan.", "tool_calls": tool_calls}


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


class StreamDropped(Exception):
    """Raised inside a stream to cut the connection mid-way (an injected fault)."""


@dataclass
class Faults:
    """Opt-in fault injection: a seeded share of chat completions fails, a share of streams drops."""

    error_rate: float = 0.0  # answered with one of INJECTED_STATUSES
    drop_rate: float = 0.0  # streams cut after half their events
    seed: int = 0
    statuses: tuple[int, ...] = INJECTED_STATUSES
    injected: dict[str, int] = field(default_factory=dict)  # "status_500", "dropped": counts
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def draw(self) -> tuple[int | None, bool]:
        """(an error status to answer with, or None; whether to drop the stream)."""
        roll = self._random.random()
        if roll < self.error_rate:
            status = self._random.choice(self.statuses)
            self.count(f"status_{status}")
            return status, False
        drop = roll < self.error_rate + self.drop_rate
        return None, drop

    def count(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1


class FakeUpstream:
    """The fake. `responder`, `chunk_delay`, `first_byte_delay`, `think` and `hold` are read per
    request, so tests may change them."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        chunk_delay: float = 0.0,
        faults: Faults | None = None,
        calls_in_finish: bool = False,
        first_byte_delay: float = 0.0,
    ) -> None:
        self.responder = responder or default_responder
        self.chunk_delay = chunk_delay
        self.first_byte_delay = first_byte_delay  # seconds before the answer's first byte (a model's think time)
        self.think: Callable[[float], Awaitable[None]] = asyncio.sleep  # how it waits them
        self.calls_in_finish = calls_in_finish
        self.faults = faults
        self.requests: list[Recorded] = []
        self.fail_next: list[int] = []
        self.hold: threading.Event | None = None  # see the module docstring
        self.held = 0
        self._lock = threading.Lock()
        self._completions = 0
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/{path:path}", self._not_found, methods=ALL_METHODS),
            ]
        )

    async def _receive(self, request: Request) -> tuple[Json | None, Response | None]:
        """Record the request; answer it with a queued failure if there is one."""
        body = _json_object(await request.body())
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            self.requests.append(Recorded(request.method, request.url.path, headers, body))
            status = self.fail_next.pop(0) if self.fail_next else None
        if status is None:
            return body, None
        return body, error(status, f"fake upstream failure {status}")

    def _next_id(self) -> str:
        with self._lock:
            self._completions += 1
            return f"chatcmpl-fake-{self._completions}"

    async def _chat(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure is not None:
            return failure
        if body is None or not isinstance(body.get("messages"), list):
            return error(400, "'messages' is a required property", param="messages")
        status, drop = self._draw_fault()
        if status is not None:
            return error(status, f"{INJECTED_ERROR} {status}", code=INJECTED_CODE if status >= 500 else None)
        reply = _assistant(self.responder(body))
        head = {"id": self._next_id(), "created": CREATED, "model": body.get("model", MODELS[0])}
        usage = _usage(body["messages"], reply)
        if body.get("stream"):
            events = stream_events(head, reply, usage, _include_usage(body), calls_in_finish=self.calls_in_finish)
            cut = len(events) // 2 if drop else None
            return StreamingResponse(self._paced(events, cut), media_type="text/event-stream")
        if self.first_byte_delay:
            await self.think(self.first_byte_delay)
        await self._held()
        return JSONResponse(completion(head, reply, usage))

    async def _held(self) -> None:
        """Wait while `hold` is an unset event, counted in `held`."""
        hold = self.hold
        if hold is None or hold.is_set():
            return
        with self._lock:
            self.held += 1
        try:
            while not hold.is_set():
                await asyncio.sleep(HOLD_POLL_S)
        finally:
            with self._lock:
                self.held -= 1

    def _draw_fault(self) -> tuple[int | None, bool]:
        if self.faults is None:
            return None, False
        with self._lock:
            return self.faults.draw()

    async def _paced(self, events: list[bytes], cut: int | None = None) -> AsyncIterator[bytes]:
        for number, event in enumerate(events):
            if number == 0 and self.first_byte_delay:
                await self.think(self.first_byte_delay)
            if number == 1:
                await self._held()
            if number and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            if number == cut and self.faults is not None:
                with self._lock:
                    self.faults.count("dropped")
                raise StreamDropped(f"stream cut after {cut} of {len(events)} events (injected)")
            yield event

    async def _models(self, request: Request) -> Response:
        _, failure = await self._receive(request)
        if failure is not None:
            return failure
        data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in MODELS]
        return JSONResponse({"object": "list", "data": data})

    async def _embeddings(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure is not None:
            return failure
        if body is None or "input" not in body:
            return error(400, "'input' is a required property", param="input")
        return JSONResponse(embeddings(body))

    async def _not_found(self, request: Request) -> Response:
        _, failure = await self._receive(request)
        if failure is not None:
            return failure
        return error(404, f"Unknown request URL: {request.method} {request.url.path}")


def error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    code = "rate_limit_exceeded" if status == 429 else code
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _json_object(raw: bytes) -> Json | None:
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _include_usage(body: Json) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _assistant(reply: Json) -> Json:
    """The responder's message, completed: role, content (None with tool calls), call ids and types."""
    calls = [_tool_call(n, c) for n, c in enumerate(reply.get("tool_calls") or [])]
    message: Json = {"role": "assistant", "content": reply.get("content")}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(number: int, call: Json) -> Json:
    function = call.get("function", call)
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": call.get("id") or f"call_fake_{number}",
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def _text(message: Any) -> str:
    """All the text of one request message that a tokenizer would see."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    calls = message.get("tool_calls") or []
    parts = [str(content or "")] + [json.dumps(c, sort_keys=True) for c in calls]
    return "".join(parts)


def _usage(messages: Sequence[Any], reply: Json) -> Json:
    prompt = 3 + sum(4 + estimate_tokens(_text(m)) for m in messages)
    completion_tokens = estimate_tokens(_text(reply))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def _finish_reason(reply: Json) -> str:
    return "tool_calls" if reply.get("tool_calls") else "stop"


def completion(head: Json, reply: Json, usage: Json) -> Json:
    choice = {"index": 0, "message": reply, "logprobs": None, "finish_reason": _finish_reason(reply)}
    return {
        **head,
        "object": "chat.completion",
        "choices": [choice],
        "usage": usage,
        "system_fingerprint": "fp_fake",
    }


def stream_events(
    head: Json, reply: Json, usage: Json, include_usage: bool, *, calls_in_finish: bool = False
) -> list[bytes]:
    """The SSE events of one streamed completion, exactly in OpenAI's order; with `calls_in_finish`,
    the tool calls whole in the finish chunk instead of in deltas before it."""
    deltas: list[Json] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in content_pieces(reply.get("content") or "")]
    calls = [{"index": n, **call} for n, call in enumerate(reply.get("tool_calls", []))]
    if not calls_in_finish:
        deltas += [delta for call in calls for delta in tool_call_deltas(call["index"], call)]
    chunks = [_chunk(head, delta, None, include_usage) for delta in deltas]
    chunks.append(
        _chunk(head, {"tool_calls": calls} if calls_in_finish and calls else {}, _finish_reason(reply), include_usage)
    )
    if include_usage:
        chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    return [_event(chunk) for chunk in chunks] + [b"data: [DONE]\n\n"]


def content_pieces(content: str) -> list[str]:
    """Word-sized pieces (each word with the spaces after it), the way tokens stream."""
    return re.findall(r"\s*\S+\s*", content) or ([content] if content else [])


def tool_call_deltas(number: int, call: Json) -> list[Json]:
    function = call["function"]
    first = {"index": number, "id": call["id"], "type": "function"}
    first["function"] = {"name": function["name"], "arguments": ""}
    arguments = function["arguments"]
    pieces = [arguments[i : i + ARGUMENT_PIECE] for i in range(0, len(arguments), ARGUMENT_PIECE)]
    rest = [{"index": number, "function": {"arguments": piece}} for piece in pieces]
    return [{"tool_calls": [delta]} for delta in [first, *rest]]


def _chunk(head: Json, delta: Json, finish_reason: str | None, include_usage: bool) -> Json:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    chunk = {**head, "object": "chat.completion.chunk", "system_fingerprint": "fp_fake", "choices": [choice]}
    if include_usage:
        chunk["usage"] = None
    return chunk


def _event(chunk: Json) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode("utf-8") + b"\n\n"


def embeddings(body: Json) -> Json:
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    as_base64 = body.get("encoding_format") == "base64"
    data = [_embedding(n, str(text), as_base64) for n, text in enumerate(texts)]
    tokens = sum(estimate_tokens(str(text)) for text in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": body.get("model", MODELS[0]), "usage": usage}


def embedding_vector(text: str) -> list[float]:
    """A unit-free, deterministic vector in [-1, 1] from the text's SHA-256."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [round(b / 127.5 - 1.0, 6) for b in digest[:EMBEDDING_DIMENSIONS]]


def _embedding(number: int, text: str, as_base64: bool) -> Json:
    vector: Any = embedding_vector(text)
    if as_base64:
        vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return {"object": "embedding", "index": number, "embedding": vector}


@contextmanager
def serve(app: Any, host: str = "127.0.0.1", port: int = 0, http: Any = "auto") -> Iterator[str]:
    """Run `app` under uvicorn in a thread (`http`: its HTTP protocol, a name or a class); yield
    "http://HOST:PORT/v1" once it accepts connections."""
    config = uvicorn.Config(app, host=host, port=port, http=http, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{host}:{port}", daemon=True)
    thread.start()
    try:
        bound = _wait_started(server, thread)
        _wait_accepting(host, bound)
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join()


def _wait_started(server: uvicorn.Server, thread: threading.Thread, limit: float = 10.0) -> int:
    deadline = time.monotonic() + limit
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.005)
    return int(server.servers[0].sockets[0].getsockname()[1])


def _wait_accepting(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=5.0):
        pass


@dataclass(frozen=True)
class Running:
    url: str
    fake: FakeUpstream


@contextmanager
def running(fake: FakeUpstream | None = None) -> Iterator[Running]:
    """A fake served on a free port: `.url` is its api_base, `.fake` the instance to script and inspect."""
    fake = fake or FakeUpstream()
    with serve(fake.app) as url:
        yield Running(url, fake)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI-compatible API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between SSE events")
    parser.add_argument("--first-byte-delay", type=float, default=0.0, help="seconds before the answer's first byte")
    parser.add_argument("--agent", action="store_true", help="answer like a tool-using agent's model")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of completions failed with 429/500/503")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="share of streams cut mid-way")
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="log warnings only, no access log")
    args = parser.parse_args(argv)
    faults = None
    if args.fault_rate or args.drop_rate:
        faults = Faults(error_rate=args.fault_rate, drop_rate=args.drop_rate, seed=args.fault_seed)
    fake = FakeUpstream(
        agent_responder if args.agent else None,
        chunk_delay=args.chunk_delay,
        faults=faults,
        first_byte_delay=args.first_byte_delay,
    )
    print(f"fake upstream on http://{args.host}:{args.port}/v1", flush=True)
    quiet = {"log_level": "warning", "access_log": False} if args.quiet else {}
    uvicorn.run(fake.app, host=args.host, port=args.port, **quiet)


if __name__ == "__main__":
    main()
