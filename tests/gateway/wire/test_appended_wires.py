"""Every request of the real traces, sent as Chat Completions, Anthropic Messages and stateless
Responses the way an agent resends its conversation: read through the session's reader (the appended bytes only, the
earlier transcript reused), each gives exactly the body and transcript of a whole parse."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.traces import Trace, load_traces, traces_dir
from bench.wire_bodies import to_messages, to_responses
from gateway.wire.base import Wire
from gateway.wire.chat import CHAT
from gateway.wire.chat_transcripts import TranscriptCache
from gateway.wire.messages import MESSAGES
from gateway.wire.responses import RESPONSES

TRACES = load_traces(traces_dir()) if traces_dir().is_dir() else []


def chat_body(trace: Trace, messages: list[dict[str, Any]]) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": messages, "user": "u"}
    if trace.tools:
        body["tools"] = trace.tools
    return json.dumps(body).encode()


def messages_body(trace: Trace, messages: list[dict[str, Any]]) -> bytes:
    system, turns, tools = to_messages(messages, trace.tools)
    body: dict[str, Any] = {"model": "claude-x", "max_tokens": 1024, "messages": turns}
    if system:
        body["system"] = system
    if tools:
        body["tools"] = tools
    return json.dumps(body).encode()


def responses_body(trace: Trace, messages: list[dict[str, Any]]) -> bytes:
    instructions, items, tools = to_responses(messages, trace.tools)
    body: dict[str, Any] = {"model": "gpt-4.1", "input": items, "store": False}
    if instructions:
        body["instructions"] = instructions
    if tools:
        body["tools"] = tools
    return json.dumps(body).encode()


@pytest.mark.skipif(not TRACES, reason="the shared traces are not present")
@pytest.mark.parametrize(
    ("wire", "encode"),
    [(CHAT, chat_body), (MESSAGES, messages_body), (RESPONSES, responses_body)],
    ids=["chat", "messages", "responses"],
)
def test_every_request_reads_as_a_whole_parse_does(wire: Wire, encode: Any) -> None:
    cache = TranscriptCache()
    reused = 0
    for trace in TRACES:
        for turn in trace.turns():
            raw = encode(trace, turn)
            reader = cache.parser(trace.name)
            read, whole = wire.parse(raw, reader), wire.parse(raw)
            assert read.body == whole.body and read.messages == whole.messages, trace.name
            reused += reader._before is not None and reader._before.transcript is not None
    assert reused > 100  # most requests extend the one before


def _assistant(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


@pytest.mark.parametrize(
    "added",
    [[_assistant("and more")], [{"type": "compaction", "encrypted_content": "enc"}, {"role": "user", "content": "go"}]],
    ids=["joins the model's run", "a compaction"],
)
def test_responses_input_that_does_not_parse_apart_is_parsed_whole(added: list[dict[str, Any]]) -> None:
    items = [{"role": "user", "content": "hi " * 6000}, _assistant("first")]
    earlier = json.dumps({"model": "m", "input": items, "store": False}).encode()
    later = json.dumps({"model": "m", "input": [*items, *added], "store": False}).encode()
    cache = TranscriptCache()
    RESPONSES.parse(earlier, cache.parser("t"))
    reader = cache.parser("t")
    read = RESPONSES.parse(later, reader)
    assert reader._before is not None  # the body was read by its appended bytes
    assert read.messages == RESPONSES.parse(later).messages
