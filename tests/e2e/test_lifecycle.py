"""Lifecycle boundaries through the running gateway: real traces, the harnesses' own rewrites."""

from __future__ import annotations

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from bench.harnesses import INJECTORS
from bench.lifecycle_replay import run
from bench.traces import load_traces, traces_dir

TRACES = load_traces(traces_dir()) if traces_dir().is_dir() else []


@pytest.mark.skipif(not TRACES, reason="no real traces (set CLAWVM_TRACES)")
@pytest.mark.parametrize("injector", sorted(INJECTORS))
def test_after_every_boundary_the_rules_preferences_and_plan_are_forwarded(start_gateway, injector: str) -> None:
    fake = FakeUpstream()
    with start_gateway(budget=16_000, fake=fake) as gw, httpx.Client(timeout=60) as client:
        records = [r for trace in TRACES if (r := run(client, gw.url, fake, trace, injector)) is not None]
    assert records
    for record in records:
        assert record.ok, record


def test_a_new_session_of_the_same_agent_carries_the_users_rules(start_gateway) -> None:
    """A reset the way `/clear` does it: a new transcript (new session id) from the same agent."""
    system = {"role": "system", "content": "You are a coding agent."}
    first = [system, {"role": "user", "content": "Fix the parser. Never push to main. I prefer small commits."}]
    fake = FakeUpstream()
    with start_gateway(fake=fake) as gw, httpx.Client(timeout=30) as client:
        client.post(gw.url + "/chat/completions", json={"model": "gpt-4o", "messages": first})
        again = [system, {"role": "user", "content": "Start over on the lexer."}]
        answer = client.post(gw.url + "/chat/completions", json={"model": "gpt-4o", "messages": again})
        assert answer.status_code == 200
        assert answer.headers["x-clawvm-event"] == "reset"
        seen = " ".join(m["content"] for m in fake.requests[-1].body["messages"])
        assert "Never push to main." in seen and "I prefer small commits." in seen
        assert "user said: Fix the parser." in seen  # what the user asked for carries too
