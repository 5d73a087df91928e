"""Lifecycle boundaries through the running gateway: real traces, the harnesses' own rewrites."""

from __future__ import annotations

import json

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from bench.harnesses import INJECTORS, claude_code_compact
from bench.lifecycle_replay import run
from bench.traces import load_traces, traces_dir
from tests.e2e.test_chat import TOOLS, client, long_session
from tests.e2e.test_recall import recall_call

INDEX = "[clawvm evidence index: "
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


def test_after_a_compaction_dropped_evidence_is_listed_and_recalled_by_id_and_by_query(start_gateway) -> None:
    """Claude Code compacts a session that read eight modules: the prompt the model sees lists the
    dropped `read_file` results in the evidence index, and the model gets one back by the id it
    reads there, then a line of another by a query alone; the agent sees only the answers."""
    session = long_session(8)
    history = [*claude_code_compact(session[:-1]), {"role": "user", "content": "Which value did module 3 hold?"}]
    asked: dict[str, str] = {}

    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return {"content": "recalled: " + last["content"]}
        index = next((m["content"] for m in body["messages"] if str(m["content"]).startswith(INDEX)), None)
        if index is None:
            return {"content": "Read them all."}
        line = next(line for line in index.splitlines() if "read_file(src/m3.py)" in line)
        asked["index"], asked["id"] = index, line.split(" ", 1)[0]
        if last["content"].startswith("Which value"):
            return {"tool_calls": [recall_call([asked["id"]])]}
        return {"tool_calls": [recall_call(json.dumps({"query": "value = 5117"}), "rc2")]}

    with start_gateway(budget=6_000, fake=FakeUpstream(responder)) as gw:
        agent = client(gw).with_options(default_headers={"x-clawvm-session": "compacted-reader"})
        agent.chat.completions.create(model="gpt-4o", messages=session, tools=TOOLS)
        by_id = agent.chat.completions.create(model="gpt-4o", messages=history, tools=TOOLS)
        assert by_id.choices[0].message.content.startswith("recalled: ")
        assert "line 119 of module 3: value = 3119" in by_id.choices[0].message.content
        assert not by_id.choices[0].message.tool_calls
        assert (
            asked["id"] in asked["index"]
            and 'read_file(src/m3.py): "line 0 of module 3: value = 3000"' in asked["index"]
        )
        answered = [*history, {"role": "assistant", "content": "3119"}, {"role": "user", "content": "And module 5?"}]
        by_query = agent.chat.completions.create(model="gpt-4o", messages=answered, tools=TOOLS)
        found = by_query.choices[0].message.content
        module5 = next(line for line in asked["index"].splitlines() if "read_file(src/m5.py)" in line)
        assert "line 117 of module 5: value = 5117" in found and module5.split(" ", 1)[0] in found
        assert "clawvm_recall" not in str(by_query.choices[0].message)
