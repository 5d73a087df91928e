"""The stream splicer fed what a broken upstream may send: chunks it does not understand are
relayed as they came, never a crash mid-stream (found by tests/e2e/test_fuzz.py); however the
upstream cuts its stream, a recall call never reaches the agent and its round still runs; past
the bound, the model is called once more without the tool."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.errors import UpstreamError
from gateway.store.store import RedisStore, session_scope
from gateway.upstream.client import UpstreamResponse
from gateway.wire.chat import relay, tool_schema
from gateway.wire.recall import Paging
from policies.pagetable import make_page_id, tenant_tag
from policies.tokens import CharCounter
from tests.factories import make_page

pytestmark = pytest.mark.anyio
SSE = [("content-type", "text/event-stream")]


def stream(*chunks: Any) -> UpstreamResponse:
    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return UpstreamResponse(200, SSE, events())


def chunk(choice: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [choice]}


async def answered(body: bytes) -> UpstreamResponse:
    """The model's answer once recall is exhausted (rounds=0): plain text."""
    return stream(chunk({"index": 0, "delta": {"content": "done"}, "finish_reason": "stop"}))


@pytest.mark.parametrize(
    "odd",
    [
        chunk(True),
        chunk({"index": 0, "delta": ["not", "a", "delta"]}),
        chunk({"index": 0, "delta": {"tool_calls": 7}}),
        chunk({"index": 0, "delta": {"tool_calls": ["not a call"]}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": [1], "function": "read_file"}]}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": 5, "function": {"name": "clawvm_recall"}}]}}),
        chunk({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 12}}]}}),
        {"id": "c1", "choices": "not a list"},
    ],
    ids=[
        "choice_not_object",
        "delta_not_object",
        "tool_calls_not_list",
        "call_not_object",
        "odd_index_and_function",
        "recall_with_numeric_id",
        "numeric_arguments",
        "choices_not_list",
    ],
)
async def test_an_odd_chunk_is_relayed_or_held_never_a_crash(redis_url: str, odd: dict[str, Any]) -> None:
    async with RedisStore.from_url(redis_url) as store:
        paging = Paging(store, "t-odd", "s1", "p1", CharCounter(), 1000, rounds=0)
        first = chunk({"index": 0, "delta": {"role": "assistant", "content": "hi"}})
        out = [piece async for piece in relay(stream(first, odd), answered, {"messages": []}, paging)]
    text = b"".join(out).decode()
    assert text.endswith("data: [DONE]\n\n") and text.count("data: [DONE]") == 1
    assert '"content":"hi"' in text.replace(" ", "")


async def test_an_upstream_5xx_in_a_recall_round_does_not_quote_its_body(redis_url: str) -> None:
    async def failing(body: bytes) -> UpstreamResponse:
        async def page() -> AsyncIterator[bytes]:
            yield b"psycopg2.OperationalError: could not connect to 10.9.9.9:5432"

        return UpstreamResponse(500, [("content-type", "text/plain")], page())

    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "clawvm_recall", "arguments": "{}"}}
    recall = chunk({"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}})
    finish = chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"})
    async with RedisStore.from_url(redis_url) as store:
        paging = Paging(store, "t-5xx", "s1", "p1", CharCounter(), 1000, rounds=1)
        with pytest.raises(UpstreamError) as caught:
            _ = [piece async for piece in relay(stream(recall, finish), failing, {"messages": []}, paging)]
    assert caught.value.status_code == 500
    assert "10.9.9.9" not in caught.value.message and "psycopg2" not in caught.value.message


# --- a recall call is never relayed, however the upstream's SSE is cut ------------------------

RECALL_ID = "call_rcl_7f3a9"
OWN = {"id": "call_own_1", "name": "read_file", "arguments": '{"path": "src/m1.py"}'}
FINAL = "The value is 3000."
HIDDEN = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def call_pieces(index: int, call_id: str, name: str, arguments: str, style: str, size: int) -> list[dict[str, Any]]:
    """One call's tool-call deltas: `openai` (id and name first, then the arguments in pieces),
    `id_apart` (the id alone, then the name, then the arguments), `name_late` (the id with the
    first piece of arguments, the name after it), `whole` (everything in one delta)."""
    parts = [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
    args = [{"index": index, "function": {"arguments": part}} for part in parts]
    if style == "whole":
        return [{"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]
    if style == "id_apart":
        return [
            {"index": index, "id": call_id, "type": "function"},
            {"index": index, "function": {"name": name}},
            *args,
        ]
    if style == "name_late":
        first = {"index": index, "id": call_id, "type": "function", "function": {"arguments": parts[0]}}
        return [first, {"index": index, "function": {"name": name}}, *args[1:]]
    return [{"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}, *args]


@st.composite
def recall_streams(draw: st.DrawFn, page_id: str) -> tuple[str, bytes, list[bytes]]:
    """(answer shape, the upstream's SSE bytes, how they are cut into chunks)."""
    shape = draw(st.sampled_from(["recall", "recall+content", "recall+own", "recall_in_finish"]))
    style = draw(st.sampled_from(["openai", "id_apart", "name_late", "whole"]))
    size = draw(st.integers(1, 40))
    arguments = json.dumps({"page_ids": [page_id]})
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    if shape == "recall+content":
        deltas.append({"content": "Let me look. "})
    pieces = call_pieces(0, RECALL_ID, "clawvm_recall", arguments, style, size)
    if shape == "recall+own":
        pieces += call_pieces(1, OWN["id"], OWN["name"], OWN["arguments"], style, size)
    deltas += [{"tool_calls": [piece]} for piece in pieces]
    in_finish = draw(st.integers(1, len(deltas) - 1)) if shape == "recall_in_finish" else 0
    held, deltas = deltas[len(deltas) - in_finish :], deltas[: len(deltas) - in_finish]
    finish: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    if held:  # the last deltas ride in the finish chunk
        finish["delta"] = {"tool_calls": [p for d in held for p in d.get("tool_calls", [])]}
    per_chunk = draw(st.integers(1, 3))  # several choice-deltas in one chunk
    choices = [{"index": 0, "delta": d, "finish_reason": None} for d in deltas]
    chunks = [
        {"id": "c1", "object": "chat.completion.chunk", "choices": choices[i : i + per_chunk]}
        for i in range(0, len(choices), per_chunk)
    ]
    chunks.append({"id": "c1", "object": "chat.completion.chunk", "choices": [finish]})
    events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
    whole = b"".join(events)
    cut = draw(st.sampled_from(["event", "one", "bytes"]))
    if cut == "event":
        return shape, whole, events
    if cut == "one":
        return shape, whole, [whole]
    at = sorted(draw(st.sets(st.integers(1, len(whole) - 1), max_size=40)))
    return shape, whole, [whole[a:b] for a, b in zip([0, *at], [*at, len(whole)], strict=True)]


def sse(parts: list[bytes]) -> UpstreamResponse:
    async def events() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return UpstreamResponse(200, SSE, events())


async def relayed(redis_url: str, tenant: str, parts: list[bytes]) -> tuple[bytes, list[dict[str, Any]]]:
    """What the agent receives from the real relay, and the continuation bodies the upstream got."""
    sent: list[dict[str, Any]] = []

    async def send(body: bytes) -> UpstreamResponse:
        sent.append(json.loads(body))
        return stream(
            chunk({"index": 0, "delta": {"content": FINAL}}), chunk({"index": 0, "delta": {}, "finish_reason": "stop"})
        )

    async with RedisStore.from_url(redis_url) as store:
        paging = Paging(store, tenant, "s1", "p1", CharCounter(), 4000)
        body = {
            "messages": [{"role": "user", "content": "what is the value?"}],
            "tools": [tool_schema("clawvm_recall")],
        }
        out = b"".join([piece async for piece in relay(sse(parts), send, body, paging)])
    return out, sent


@pytest.fixture
def stored_page(redis_url: str, tenant: str) -> str:
    page_id = make_page_id(tenant_tag(tenant), "00000000a")

    async def put() -> None:
        async with RedisStore.from_url(redis_url) as store:
            await store.put_pages(tenant, session_scope("s1"), [make_page(page_id, text="line 0: value = 3000")])

    asyncio.run(put())
    return page_id


@HIDDEN
@given(data=st.data())
def test_a_recall_call_never_reaches_the_agent_however_the_stream_is_cut(
    redis_url: str, tenant: str, stored_page: str, data: st.DataObject
) -> None:
    shape, whole, parts = data.draw(recall_streams(stored_page))
    out, sent = asyncio.run(relayed(redis_url, tenant, parts))
    text = out.decode()
    arguments = json.dumps({"page_ids": [stored_page]})
    for secret in ("clawvm_recall", RECALL_ID, stored_page, arguments, arguments[:12]):
        assert secret not in text, (secret, text)
    assert text.endswith("data: [DONE]\n\n") and text.count("[DONE]") == 1
    events = [json.loads(e.removeprefix("data: ")) for e in text.split("\n\n") if e and e != "data: [DONE]"]
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")]
    if shape == "recall+own":  # mixed: the agent gets its own call, whole, and no round runs
        calls = [tc for e in events for c in e["choices"] for tc in c["delta"].get("tool_calls", [])]
        assert {tc["function"]["name"] for tc in calls if tc.get("function", {}).get("name")} == {"read_file"}
        assert "".join(tc.get("function", {}).get("arguments", "") for tc in calls) == OWN["arguments"]
        assert finishes == ["tool_calls"] and sent == []
        return
    (continuation,) = sent  # the round ran: the store was asked and the upstream called again
    assert continuation["messages"][-1]["tool_call_id"] == RECALL_ID
    assert continuation["messages"][-1]["content"].startswith("[recall: ok]")
    assert "value = 3000" in continuation["messages"][-1]["content"]
    assert FINAL in text and finishes == ["stop"]


async def test_past_the_bound_a_stream_gets_the_models_answer_without_the_tool(redis_url: str, tenant: str) -> None:
    """A model that keeps recalling: after the last round it is told recall is exhausted and called
    once more without the tool; its real answer is spliced into the one stream."""
    sent: list[dict[str, Any]] = []
    recall = {"index": 0, "id": "rc", "type": "function", "function": {"name": "clawvm_recall", "arguments": "{}"}}

    async def send(body: bytes) -> UpstreamResponse:
        sent.append(json.loads(body))
        return model(sent[-1])

    def model(body: dict[str, Any]) -> UpstreamResponse:
        if any(t["function"]["name"] == "clawvm_recall" for t in body.get("tools") or []):
            return stream(chunk({"index": 0, "delta": {"tool_calls": [recall]}, "finish_reason": "tool_calls"}))
        return stream(
            chunk({"index": 0, "delta": {"content": FINAL}}), chunk({"index": 0, "delta": {}, "finish_reason": "stop"})
        )

    body = {
        "messages": [{"role": "user", "content": "q"}],
        "tools": [tool_schema("clawvm_recall")],
        "tool_choice": "auto",
    }
    async with RedisStore.from_url(redis_url) as store:
        paging = Paging(store, tenant, "s1", "p1", CharCounter(), 4000, rounds=2)
        out = b"".join([p async for p in relay(model(body), send, body, paging)]).decode()
    assert FINAL in out and "clawvm_recall" not in out and out.count("[DONE]") == 1
    assert out.count('"finish_reason":"stop"') == 1
    assert len(sent) == 3  # two recall rounds, then the call without the tool
    assert "tools" not in sent[-1] and "tool_choice" not in sent[-1]
    assert sent[-1]["messages"][-1]["content"].startswith("[recall: exhausted]")
    assert len({json.loads(e[6:])["id"] for e in out.split("\n\n") if e.startswith("data: {")}) == 1
