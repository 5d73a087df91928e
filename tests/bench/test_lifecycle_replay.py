"""bench.lifecycle_replay: the user-intent check after the agent's own reset, through a real gateway."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.fake_upstream import FakeUpstream, serve
from bench.intent_check import Label
from bench.lifecycle_replay import BoundaryRecord, run
from bench.peers.model import TraceModel
from bench.traces import Trace
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings
from gateway.store.embedded import EmbeddedRedis

KEPT = "I prefer short answers in English."
NEVER_SAID = "Never ship anything to the Denver warehouse."


def support_trace(steps: int = 8) -> Trace:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a support agent. Always confirm the order id before any change."},
        {"role": "user", "content": f"{KEPT} Please check my orders."},
    ]
    for n in range(steps):
        call = {"id": f"c{n}", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"n": n})}}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": f"order #W{7000000 + n} shipped"})
        messages.append({"role": "assistant", "content": f"Order #W{7000000 + n} has shipped."})
        messages.append({"role": "user", "content": f"And the next one, number {n + 1}?"})
    messages.append({"role": "assistant", "content": "That is all of them."})
    return Trace("support", messages, [])


def replayed(injector: str, labels: list[Label], model: TraceModel | None = None) -> BoundaryRecord | None:
    fake = FakeUpstream(model) if model is not None else FakeUpstream()
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(Path(data)) as store, serve(fake.app) as upstream:
        settings = load_settings(None, {}, Overrides(upstream=upstream, store=store, budget=16000))
        with serve(create_app(settings)) as url, httpx.Client(timeout=60) as client:
            return run(client, url, fake, support_trace(), injector, labels, model)


def test_after_a_reset_a_labelled_intent_the_prompt_lacks_is_a_fault_and_one_it_holds_is_not(offline: None) -> None:
    labels = [Label("support", 1, KEPT, "intent"), Label("support", 1, NEVER_SAID, "intent")]
    record = replayed("reset", labels)
    assert record is not None and record.status == 200
    assert record.missing_intent == (NEVER_SAID,)
    assert not record.ok
    clean = replayed("reset", labels[:1])
    assert clean is not None and clean.missing_intent == ()


def test_with_a_model_every_later_request_is_checked_to_the_end_of_the_trace(offline: None) -> None:
    trace = support_trace()
    turns = len(list(trace.turns()))
    labels = [Label("support", 1, KEPT, "intent"), Label("support", 1, NEVER_SAID, "intent")]
    record = replayed("claude_code_compact", labels, TraceModel())
    assert record is not None and record.later is not None
    assert record.later.requests == turns - record.turn  # the first request after the boundary and the rest
    assert record.later.intent_faults == record.later.requests  # the sentence never said misses every time
    assert record.later.answer_faults == 0  # the agent got the model's real answers
    assert not record.ok
