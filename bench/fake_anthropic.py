"""A fake Anthropic Messages API server, beside `bench.fake_upstream` (OpenAI's), for tests and
benchmarks of `POST /v1/messages` through the gateway.

`FakeAnthropic(responder).app` answers:

- POST /v1/messages: a `message`, or with `"stream": true` Anthropic's SSE events in order
  (`message_start`, a `ping`, per block `content_block_start` / `content_block_delta` /
  `content_block_stop`, `message_delta` with the stop reason and usage, `message_stop`);
- POST /v1/messages/count_tokens: `{"input_tokens": n}`, a character estimate of the prompt;
- anything else: 404 in Anthropic's error shape. A request without `anthropic-version`, or
  without `x-api-key` when `key` is set (or with another), is refused as Anthropic does.

The `responder` maps the request JSON to the answer: `{"content": text, "tool_calls": [{"id",
"name", "input"}], "thinking": text}` (each optional). A thinking block is signed with a digest
of its text (`signature`), and a request whose thinking block's signature does not match is
refused with 400, as Anthropic refuses a block altered on the way. Every request is recorded
in `requests` (the body parsed, and its raw bytes); statuses queued in `fail_next` are answered
instead of the next requests. Everything is deterministic: ids count requests.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.fake_upstream import ALL_METHODS, ARGUMENT_PIECE, content_pieces, estimate_tokens

Json = dict[str, Any]
Responder = Callable[[Json], Json]
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Json | None
    raw: bytes


def sign(thinking: str) -> str:
    """The fake's signature of a thinking block: what it checks when the block comes back."""
    return "sig-" + hashlib.sha256(thinking.encode("utf-8")).hexdigest()[:32]


def error(status: int, message: str) -> JSONResponse:
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status)


class FakeAnthropic:
    def __init__(self, responder: Responder | None = None, *, key: str | None = None) -> None:
        self.responder = responder or (lambda body: {"content": "ok"})
        self.key = key
        self.requests: list[Recorded] = []
        self.fail_next: list[int] = []
        self._lock = threading.Lock()
        self._count = 0
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/{path:path}", self._not_found, methods=ALL_METHODS),
            ]
        )

    async def _receive(self, request: Request) -> tuple[Json | None, Response | None]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            self.requests.append(Recorded(request.url.path, headers, body if isinstance(body, dict) else None, raw))
            status = self.fail_next.pop(0) if self.fail_next else None
        if status is not None:
            return None, error(status, f"fake anthropic failure {status}")
        if "anthropic-version" not in headers:
            return None, error(400, "anthropic-version: header is required")
        if self.key is not None and headers.get("x-api-key") != self.key:
            return None, error(401, "invalid x-api-key")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return None, error(400, "messages: Field required")
        altered = _altered_thinking(body)
        if altered:
            return None, error(400, f"messages.{altered}: Invalid `signature` in `thinking` block")
        return body, None

    async def _messages(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure is not None:
            return failure
        assert body is not None
        with self._lock:
            self._count += 1
            number = self._count
        blocks = answer_blocks(self.responder(body), number)
        usage = {"input_tokens": prompt_tokens(body), "output_tokens": estimate_tokens(json.dumps(blocks))}
        stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        message = {
            "id": f"msg_fake_{number}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        if body.get("stream"):
            return Response(b"".join(stream_events(message)), media_type="text/event-stream")
        return JSONResponse(message)

    async def _count_tokens(self, request: Request) -> Response:
        body, failure = await self._receive(request)
        if failure is not None:
            return failure
        assert body is not None
        return JSONResponse({"input_tokens": prompt_tokens(body)})

    async def _not_found(self, request: Request) -> Response:
        await request.body()
        return error(404, f"Not found: {request.method} {request.url.path}")


def _altered_thinking(body: Json) -> int | None:
    """The index of the first message holding a thinking block whose signature is not the fake's."""
    for index, message in enumerate(body["messages"]):
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "thinking":
                if block.get("signature") != sign(str(block.get("thinking"))):
                    return index
    return None


def answer_blocks(reply: Json, number: int) -> list[Json]:
    blocks: list[Json] = []
    if reply.get("thinking"):
        blocks.append({"type": "thinking", "thinking": reply["thinking"], "signature": sign(reply["thinking"])})
    if reply.get("content"):
        blocks.append({"type": "text", "text": reply["content"]})
    for n, call in enumerate(reply.get("tool_calls") or []):
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_fake_{number}_{n}",
                "name": call["name"],
                "input": call.get("input") or {},
            }
        )
    return blocks


def prompt_tokens(body: Json) -> int:
    text = json.dumps(body.get("system") or "") + json.dumps(body.get("messages")) + json.dumps(body.get("tools") or [])
    return estimate_tokens(text)


def stream_events(message: Json) -> list[bytes]:
    """Anthropic's events for one message, in order."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    out = [_event("message_start", {"type": "message_start", "message": start}), _event("ping", {"type": "ping"})]
    for index, block in enumerate(message["content"]):
        out.extend(_block_events(index, block))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    out.append(
        _event(
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": message["usage"]["output_tokens"]}},
        )
    )
    out.append(_event("message_stop", {"type": "message_stop"}))
    return out


def _block_events(index: int, block: Json) -> Iterator[bytes]:
    kind = block["type"]
    if kind == "text":
        yield _start(index, {"type": "text", "text": ""})
        for piece in content_pieces(block["text"]):
            yield _delta(index, {"type": "text_delta", "text": piece})
    elif kind == "thinking":
        yield _start(index, {"type": "thinking", "thinking": "", "signature": ""})
        for piece in content_pieces(block["thinking"]):
            yield _delta(index, {"type": "thinking_delta", "thinking": piece})
        yield _delta(index, {"type": "signature_delta", "signature": block["signature"]})
    else:
        yield _start(index, {**block, "input": {}})
        arguments = json.dumps(block["input"])
        for at in range(0, len(arguments), ARGUMENT_PIECE):
            yield _delta(index, {"type": "input_json_delta", "partial_json": arguments[at : at + ARGUMENT_PIECE]})
    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})


def _start(index: int, block: Json) -> bytes:
    return _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def _delta(index: int, delta: Json) -> bytes:
    return _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _event(name: str, data: Json) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
