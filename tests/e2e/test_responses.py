"""The OpenAI Responses API through the running gateway, with the real `openai` SDK
(`client.responses.create`, streaming and not) against a fake Responses upstream: managed turns
as Codex sends them (stateless `input`, `store: false`), recall spliced in and never seen by the
agent, reasoning and compaction items byte for byte, `previous_response_id` chains resolved by
the gateway, `/v1/responses/compact` relayed."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from bench.fake_responses import FakeResponses, seal

SEARCHED = "line 117 of module 3: value = 3117"
INSTRUCTIONS = "You are a careful coding agent.\n- Never push to main.\n- Always run the tests before committing."
TOOLS = [{"type": "function", "name": "read_file", "description": "Read a file", "parameters": {"type": "object"}}]


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key="sk-agent", max_retries=0)


def long_session(turns: int) -> list[dict[str, Any]]:
    """A Codex-style input: each turn the model reads a module of 120 numbered lines."""
    items: list[dict[str, Any]] = [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Please fix the failing build."}],
        }
    ]
    for n in range(turns):
        items.append(
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": f"Step {n}: reading file {n}."}],
            }
        )
        items.append(
            {
                "type": "function_call",
                "call_id": f"c{n}",
                "name": "read_file",
                "arguments": json.dumps({"path": f"src/m{n}.py"}),
            }
        )
        output = "\n".join(f"line {i} of module {n}: value = {n * 1000 + i}" for i in range(120))
        items.append({"type": "function_call_output", "call_id": f"c{n}", "output": output})
    items.append(
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "What did you find in module 3?"}],
        }
    )
    return items


def recall_result(body: dict[str, Any]) -> str | None:
    last = body["input"][-1]
    output = last.get("output") if last.get("type") == "function_call_output" else None
    return output if isinstance(output, str) and output.startswith("[recall:") else None


def searching(body: dict[str, Any]) -> dict[str, Any]:
    result = recall_result(body)
    if result is not None:
        return {"content": "found: " + next(line for line in result.splitlines() if line.startswith(SEARCHED))}
    assert any(t.get("name") == "clawvm_recall" for t in body.get("tools") or [])
    assert SEARCHED not in json.dumps(body)
    return {
        "content": "Searching.",
        "tool_calls": [{"name": "clawvm_recall", "arguments": json.dumps({"query": "value = 3117"})}],
    }


def test_a_recall_is_spliced_into_a_whole_response_and_the_agent_never_sees_it(start_gateway) -> None:
    fake = FakeResponses(searching)
    with start_gateway(budget=4000, fake=fake) as gw:
        raw = client(gw).responses.with_raw_response.create(
            model="gpt-5-codex", instructions=INSTRUCTIONS, input=long_session(30), tools=TOOLS, store=False
        )
        response = raw.parse()
        assert response.output_text == f"found: {SEARCHED}"
        assert "clawvm_recall" not in raw.http_response.text
        first, second = fake.requests
        assert first.body["store"] is False and "previous_response_id" not in first.body
        assert first.body["instructions"] == INSTRUCTIONS
        assert [i["type"] for i in second.body["input"][-3:]] == ["message", "function_call", "function_call_output"]
        assert second.body["input"][-2]["name"] == "clawvm_recall" and SEARCHED in recall_result(second.body)
        assert response.usage.output_tokens > 0 and response.usage.total_tokens > response.usage.output_tokens
        assert int(raw.headers["x-clawvm-prompt-tokens"]) <= 4000


def test_a_recall_is_spliced_into_one_stream_with_every_event_in_order(start_gateway) -> None:
    fake = FakeResponses(searching)
    with start_gateway(budget=4000, fake=fake) as gw:
        events = list(
            client(gw).responses.create(
                model="gpt-5-codex",
                instructions=INSTRUCTIONS,
                input=long_session(30),
                tools=TOOLS,
                store=False,
                stream=True,
            )
        )
        kinds = [e.type for e in events]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
        assert kinds.count("response.created") == 1 and kinds.count("response.completed") == 1
        assert [e.sequence_number for e in events] == list(range(len(events)))
        added = [e.output_index for e in events if e.type == "response.output_item.added"]
        assert added == [0, 1]  # "Searching." then the answer: one response, items numbered in turn
        final = events[-1].response
        assert [item.type for item in final.output] == ["message", "message"]
        assert final.output[-1].content[0].text == f"found: {SEARCHED}"
        assert all("clawvm_recall" not in e.model_dump_json() for e in events)
        assert final.id == events[0].response.id
        assert len(fake.requests) == 2


def reasoning_agent(body: dict[str, Any]) -> dict[str, Any]:
    last = body["input"][-1]
    if last.get("type") == "function_call_output" and last.get("call_id") == "call_own":
        return {"content": "The file says hello."}
    return {
        "reasoning": "Read it first.",
        "tool_calls": [{"call_id": "call_own", "name": "read_file", "arguments": '{"path":"a"}'}],
    }


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_loop_passes_reasoning_items_byte_for_byte(start_gateway, stream: bool) -> None:
    fake = FakeResponses(reasoning_agent)
    with start_gateway(fake=fake) as gw:
        agent = client(gw)
        items: list[Any] = [{"role": "user", "content": "Read a"}]
        kwargs = {"model": "gpt-5-codex", "tools": TOOLS, "store": False, "include": ["reasoning.encrypted_content"]}
        if stream:
            first = [
                e for e in agent.responses.create(input=items, stream=True, **kwargs) if e.type == "response.completed"
            ][0].response
        else:
            first = agent.responses.create(input=items, **kwargs)
        assert [i.type for i in first.output] == ["reasoning", "function_call"]
        returned = [i.model_dump(exclude_none=True) for i in first.output]
        items += [*returned, {"type": "function_call_output", "call_id": "call_own", "output": "hello"}]
        second = agent.responses.create(input=items, **kwargs)
        assert second.output_text == "The file says hello."
        sent = fake.requests[-1]
        reasoning = next(i for i in sent.body["input"] if i.get("type") == "reasoning")
        assert reasoning == returned[0] and reasoning["encrypted_content"] == seal("Read it first.")
        assert json.dumps(reasoning["encrypted_content"]).encode() in sent.raw


def test_a_compaction_item_passes_byte_for_byte_and_is_a_boundary(start_gateway) -> None:
    fake = FakeResponses()
    with start_gateway(budget=8000, fake=fake) as gw:
        agent = client(gw)
        headers = {"x-clawvm-session": "codex-compact"}
        history = long_session(6)
        agent.responses.create(
            model="gpt-5-codex", instructions=INSTRUCTIONS, input=history, store=False, extra_headers=headers
        )
        compacted = httpx.post(
            gw.url + "/responses/compact", json={"model": "gpt-5-codex", "input": history}, timeout=30
        ).json()
        assert compacted["object"] == "response.compaction" and compacted["output"][-1]["type"] == "compaction"
        rewritten = [*compacted["output"], {"role": "user", "content": "Go on."}]
        raw = agent.responses.with_raw_response.create(
            model="gpt-5-codex", instructions=INSTRUCTIONS, input=rewritten, store=False, extra_headers=headers
        )
        assert raw.headers["x-clawvm-event"] == "compaction"
        sent = fake.requests[-1].body["input"]
        assert sent[: len(compacted["output"])] == compacted["output"]  # the compacted history as it came


def test_previous_response_id_chains_are_resolved_by_the_gateway(start_gateway) -> None:
    fake = FakeResponses(lambda body: {"content": f"turn {len(body['input'])}"})
    with start_gateway(fake=fake) as gw:
        agent = client(gw)
        first = agent.responses.create(model="gpt-4.1", instructions=INSTRUCTIONS, input="Hello")
        second = agent.responses.create(
            model="gpt-4.1", instructions=INSTRUCTIONS, input="And then?", previous_response_id=first.id
        )
        sent = fake.requests[-1].body
        assert "previous_response_id" not in sent and sent["store"] is False
        spoken = [i for i in sent["input"] if i.get("role") != "system"]  # the project's carried rules may come too
        assert [i.get("role") for i in spoken] == ["user", "assistant", "user"]
        assert spoken[1]["content"][0]["text"] == first.output_text
        third = agent.responses.create(model="gpt-4.1", input="Last?", previous_response_id=second.id)
        spoken = [i for i in fake.requests[-1].body["input"] if i.get("role") != "system"]
        assert [i["content"] if isinstance(i["content"], str) else i["content"][0]["text"] for i in spoken] == [
            "Hello",
            first.output_text,
            "And then?",
            second.output_text,
            "Last?",
        ]
        assert third.output_text.startswith("turn ")
        with pytest.raises(openai.BadRequestError) as refused:
            agent.responses.create(model="gpt-4.1", input="x", previous_response_id="resp_not_ours")
        assert refused.value.code == "previous_response_not_found" and "whole conversation" in refused.value.message


def test_bad_requests_are_refused_in_openais_shape(start_gateway) -> None:
    fake = FakeResponses()
    with start_gateway(fake=fake) as gw:
        agent = client(gw)
        with pytest.raises(openai.BadRequestError) as orphan:
            agent.responses.create(
                model="m", input=[{"type": "function_call_output", "call_id": "nope", "output": "x"}]
            )
        assert orphan.value.body["param"] == "input[0].call_id"
        for body in (b"{", b'{"model": "m"}', b'{"model": "m", "input": [{"type": "function_call", "name": "f"}]}'):
            answer = httpx.post(gw.url + "/responses", content=body, timeout=30)
            assert answer.status_code == 400 and set(answer.json()["error"]) == {"message", "type", "param", "code"}
        refused = httpx.post(
            gw.url + "/responses/compact", json={"model": "m", "input": [], "previous_response_id": "r"}, timeout=30
        )
        assert refused.status_code == 400
        assert fake.requests == []


def test_a_response_chain_is_the_tenants_own(start_gateway) -> None:
    """Through a key tenants share, nothing is stored upstream, and one tenant cannot chain from
    another's response: the id names nothing this tenant was answered."""
    tenants = "tenants:\n  acme:\n    api_keys: [sk-acme]\n  globex:\n    api_keys: [sk-globex]\n"
    fake = FakeResponses()
    with start_gateway(config_yaml=tenants, fake=fake) as gw:
        acme = openai.OpenAI(base_url=gw.url, api_key="sk-acme", max_retries=0)
        globex = openai.OpenAI(base_url=gw.url, api_key="sk-globex", max_retries=0)
        first = acme.responses.create(model="gpt-4.1", input="The secret is 42.", store=True)
        assert fake.requests[-1].body["store"] is False  # never stored on the shared key
        with pytest.raises(openai.BadRequestError) as refused:
            globex.responses.create(model="gpt-4.1", input="What was the secret?", previous_response_id=first.id)
        assert refused.value.code == "previous_response_not_found"
        assert len(fake.requests) == 1  # refused before anything was sent
        chained = acme.responses.create(model="gpt-4.1", input="And?", previous_response_id=first.id, stream=True)
        assert [e.type for e in chained][-1] == "response.completed"
        assert "The secret is 42." in json.dumps(fake.requests[-1].body)
