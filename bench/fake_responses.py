"""A fake OpenAI Responses API server, beside `bench.fake_upstream` (chat) and
`bench.fake_anthropic` (Messages), for tests and benchmarks of `POST /v1/responses`.

`FakeResponses(responder).app` answers:

- POST /v1/responses: a `response` object, or with `"stream": true` the Responses SSE events in
  order, each with its `sequence_number` (`response.created`, `response.in_progress`, per output
  item `response.output_item.added`, a message's `response.content_part.added`,
  `response.output_text.delta`..., `response.output_text.done`, `response.content_part.done`, a
  call's `response.function_call_arguments.delta`..., `.done`, then `response.output_item.done`;
  last `response.completed`);
- POST /v1/responses/compact: `response.compaction`, the input's user messages then one
  `compaction` item whose `encrypted_content` is a digest of what it replaced;
- anything else: 404 in OpenAI's error shape. A `previous_response_id` is refused (the fake
  stores nothing): a gateway must resolve chains itself.

The `responder` maps the request JSON to `{"content": text, "tool_calls": [{"call_id", "name",
"arguments"}], "reasoning": text}` (each optional); a reasoning item carries an
`encrypted_content` the fake can check when it comes back (`seal`). Requests are recorded in
`requests`; ids count requests, so everything is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.fake_anthropic import Recorded
from bench.fake_upstream import ALL_METHODS, ARGUMENT_PIECE, CREATED, content_pieces, error, estimate_tokens

Json = dict[str, Any]
Responder = Callable[[Json], Json]


def seal(text: str) -> str:
    """The fake's `encrypted_content` for a reasoning text or a compacted history."""
    return "enc-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


class FakeResponses:
    def __init__(self, responder: Responder | None = None) -> None:
        self.responder = responder or (lambda body: {"content": "ok"})
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._count = 0
        self.app = Starlette(
            routes=[
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/responses/compact", self._compact, methods=["POST"]),
                Route("/{path:path}", self._not_found, methods=ALL_METHODS),
            ]
        )

    async def _receive(self, request: Request) -> tuple[Json | None, int]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else None
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            self.requests.append(Recorded(request.url.path, headers, body, raw))
            self._count += 1
            return body, self._count

    async def _responses(self, request: Request) -> Response:
        body, number = await self._receive(request)
        if body is None or not isinstance(body.get("input"), list | str):
            return error(400, "Missing required parameter: 'input'.", param="input")
        if body.get("previous_response_id"):
            return error(400, f"Previous response with id '{body['previous_response_id']}' not found.")
        response = self.response(body, number)
        if body.get("stream"):
            return Response(b"".join(stream_events(response)), media_type="text/event-stream")
        return JSONResponse(response)

    def response(self, body: Json, number: int) -> Json:
        reply = self.responder(body)
        output: list[Json] = []
        if reply.get("reasoning"):
            text = reply["reasoning"]
            summary = [{"type": "summary_text", "text": text}]
            output.append(
                {"type": "reasoning", "id": f"rs_{number}", "summary": summary, "encrypted_content": seal(text)}
            )
        if reply.get("content"):
            part = {"type": "output_text", "text": reply["content"], "annotations": []}
            output.append(
                {
                    "type": "message",
                    "id": f"msg_{number}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [part],
                }
            )
        for n, call in enumerate(reply.get("tool_calls") or []):
            arguments = call.get("arguments", "{}")
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_{number}_{n}",
                    "call_id": call.get("call_id") or f"call_{number}_{n}",
                    "name": call["name"],
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    "status": "completed",
                }
            )
        prompt = estimate_tokens(json.dumps(body.get("input")) + str(body.get("instructions") or ""))
        completion = estimate_tokens(json.dumps(output))
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }
        return {
            "id": f"resp_fake_{number}",
            "object": "response",
            "created_at": CREATED,
            "status": "completed",
            "model": body.get("model"),
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "usage": usage,
        }

    async def _compact(self, request: Request) -> Response:
        body, number = await self._receive(request)
        if body is None or not isinstance(body.get("input"), list):
            return error(400, "Missing required parameter: 'input'.", param="input")
        users = [i for i in body["input"] if isinstance(i, dict) and i.get("role") == "user"]
        sealed = {"type": "compaction", "id": f"cmp_{number}", "encrypted_content": seal(json.dumps(body["input"]))}
        usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
        return JSONResponse(
            {
                "id": f"resp_cmp_{number}",
                "object": "response.compaction",
                "created_at": CREATED,
                "output": [*users, sealed],
                "usage": usage,
            }
        )

    async def _not_found(self, request: Request) -> Response:
        await request.body()
        return error(404, f"Unknown request URL: {request.method} {request.url.path}")


def stream_events(response: Json) -> list[bytes]:
    """The events of one streamed response, in the API's order."""
    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[Json] = [
        {"type": "response.created", "response": opening},
        {"type": "response.in_progress", "response": opening},
    ]
    for index, item in enumerate(response["output"]):
        events.extend(_item_events(index, item))
    events.append({"type": "response.completed", "response": response})
    return [_event({**e, "sequence_number": n}) for n, e in enumerate(events)]


def _item_events(index: int, item: Json) -> Iterator[Json]:
    kind = item["type"]
    if kind == "message":
        yield {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "content": [], "status": "in_progress"},
        }
        text = item["content"][0]["text"]
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        yield {
            "type": "response.content_part.added",
            **where,
            "part": {"type": "output_text", "text": "", "annotations": []},
        }
        for piece in content_pieces(text):
            yield {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        yield {"type": "response.output_text.done", **where, "text": text, "logprobs": []}
        yield {"type": "response.content_part.done", **where, "part": item["content"][0]}
    elif kind == "function_call":
        yield {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {**item, "arguments": "", "status": "in_progress"},
        }
        arguments = item["arguments"]
        where = {"item_id": item["id"], "output_index": index}
        for at in range(0, len(arguments), ARGUMENT_PIECE):
            yield {
                "type": "response.function_call_arguments.delta",
                **where,
                "delta": arguments[at : at + ARGUMENT_PIECE],
            }
        yield {"type": "response.function_call_arguments.done", **where, "arguments": arguments}
    else:
        yield {"type": "response.output_item.added", "output_index": index, "item": item}
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def _event(data: Json) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
