"""The real `openai` SDK talks to the running gateway, which talks to the fake upstream."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from bench.fake_upstream import FakeUpstream
from gateway.upstream.tokens import Tokenizers, count_tools
from gateway.wire.chat_tokens import count_messages

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Look up an order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        },
    }
]


def client(gw, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


def conversation() -> list[dict]:
    return [
        {"role": "system", "content": "You are a support agent. You must confirm before cancelling any order."},
        {"role": "user", "content": "Where is my order #W123?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_order", "arguments": '{"order_id":"#W123"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"order_id":"#W123","status":"shipped"}'},
        {"role": "user", "content": "Thanks. And what was the status again?"},
    ]


def test_non_streaming_passthrough_keeps_everything_when_it_fits(gateway) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=conversation(),
        tools=TOOLS,
        tool_choice="auto",
        response_format={"type": "text"},
        temperature=0.25,
        extra_body={"seed": 7, "vendor_field": {"a": 1}},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "ok"
    sent = gateway.fake.requests[-1].body
    assert sent["messages"] == conversation()
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == "auto"
    assert sent["response_format"] == {"type": "text"}
    assert sent["temperature"] == 0.25 and sent["seed"] == 7 and sent["vendor_field"] == {"a": 1}
    assert raw.headers["x-clawvm-session"]
    assert int(raw.headers["x-clawvm-prompt-tokens"]) > 0
    assert int(raw.headers["x-clawvm-budget"]) > 0
    assert int(raw.headers["x-clawvm-overhead-us"]) >= 0


def test_streaming_relays_every_chunk(gateway) -> None:
    stream = client(gateway).chat.completions.create(
        model="gpt-4o", messages=conversation(), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ok"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    assert gateway.fake.requests[-1].body["stream"] is True


def test_streaming_tool_calls_reach_the_agent(start_gateway) -> None:
    def responder(body: dict) -> dict:
        return {
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_order", "arguments": '{"order_id":"#W9"}'},
                }
            ]
        }

    with start_gateway(fake=FakeUpstream(responder)) as gw:
        stream = client(gw).chat.completions.create(model="gpt-4o", messages=conversation(), tools=TOOLS, stream=True)
        deltas = [c.choices[0].delta for c in stream if c.choices]
        calls = [tc for d in deltas for tc in (d.tool_calls or [])]
        assert calls[0].function.name == "get_order"
        assert "".join(tc.function.arguments or "" for tc in calls) == '{"order_id":"#W9"}'
        non_stream = client(gw).chat.completions.create(model="gpt-4o", messages=conversation(), tools=TOOLS)
        assert non_stream.choices[0].message.tool_calls[0].id == "call_9"


def long_session(turns: int) -> list[dict]:
    messages: list[dict] = [
        {
            "role": "system",
            "content": "You are a careful coding agent.\n- Never push to main.\n- Always run the tests before committing.",
        },
        {"role": "user", "content": "Please fix the failing build. I prefer small commits."},
    ]
    for n in range(turns):
        messages.append(
            {
                "role": "assistant",
                "content": f"Step {n}: reading file {n}.",
                "tool_calls": [
                    {
                        "id": f"c{n}",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": json.dumps({"path": f"src/m{n}.py"})},
                    }
                ],
            }
        )
        body = "\n".join(f"line {i} of module {n}: value = {n * 1000 + i}" for i in range(120))
        messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": body})
    messages.append({"role": "user", "content": "What did you find in module 3?"})
    return messages


def forwarded_tokens(body: dict) -> int:
    counter = Tokenizers().for_model(body["model"])
    return count_messages(counter, body["messages"]) + count_tools(counter, body.get("tools"))


def assert_valid(messages: list[dict]) -> None:
    waiting: set[str] = set()
    for m in messages:
        if m["role"] == "tool":
            assert m["tool_call_id"] in waiting, "orphan tool message"
            waiting.discard(m["tool_call_id"])
        else:
            assert not waiting, f"unanswered tool calls {waiting}"
        for call in m.get("tool_calls") or []:
            json.loads(call["function"]["arguments"] or "{}")
            waiting.add(call["id"])
    assert not waiting


def test_budget_pressure_pages_out_but_keeps_invariants(start_gateway) -> None:
    with start_gateway(budget=3000) as gw:
        messages = long_session(30)
        raw = client(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, tools=TOOLS)
        sent = gw.fake.requests[-1].body
        assert forwarded_tokens(sent) <= 3000
        assert int(raw.headers["x-clawvm-prompt-tokens"]) <= 3000
        assert "x-clawvm-insufficient" not in raw.headers
        assert sent["messages"][0]["role"] == "system"
        assert sent["messages"][-1] == messages[-1]
        assert_valid(sent["messages"])
        text = json.dumps(sent["messages"])
        assert "Never push to main" in text and "Always run the tests before committing" in text
        assert "clawvm_recall" in text  # pointers say how to get pages back


def test_same_transcript_same_assembly(start_gateway) -> None:
    with start_gateway(budget=2500) as first, start_gateway(budget=2500) as second:
        messages = long_session(20)
        for gw in (first, second):
            client(gw).chat.completions.create(model="gpt-4o", messages=messages, user="det-session")
        assert first.fake.requests[-1].body == second.fake.requests[-1].body


def test_models_and_other_endpoints_are_relayed(gateway) -> None:
    c = client(gateway)
    assert [m.id for m in c.models.list()]
    vector = c.embeddings.create(model="text-embedding-3-small", input="hello")
    assert vector.data[0].embedding
    with httpx.Client() as h:
        health = h.get(gateway.root + "/health")
        assert health.status_code == 200 and health.json()["store"] == "ok"
        missing = h.get(gateway.url + "/models/nope", headers={"authorization": "Bearer x"})
        assert missing.status_code == 404 and "error" in missing.json()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"model": "gpt-4o"}', "messages"),
        (b'{"model": "gpt-4o", "messages": [{"role": "wizard", "content": "hi"}]}', "role"),
        (b'{"model": "gpt-4o", "messages": [{"role": "tool", "tool_call_id": "x", "content": "hi"}]}', "tool"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
    ],
)
def test_bad_input_gets_openai_shaped_400(gateway, body: bytes, needle: str) -> None:
    with httpx.Client() as h:
        response = h.post(gateway.url + "/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    assert not gateway.fake.requests  # nothing reached the model


def test_body_over_the_limit_is_413_and_gateway_keeps_serving(start_gateway) -> None:
    with start_gateway(config_yaml="server:\n  max_body_bytes: 2000\n") as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            client(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x" * 5000}])
        assert caught.value.status_code == 413
        ok = client(gw).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == "ok"


def test_bad_api_key_is_401_and_tenant_key_works(start_gateway) -> None:
    config = "tenants:\n  acme:\n    api_keys: [sk-acme]\n"
    with start_gateway(config_yaml=config) as gw:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(gw, "sk-wrong").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.body["code"] == "invalid_api_key"
        assert "sk-wrong" not in json.dumps(caught.value.body)
        ok = client(gw, "sk-acme").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == "ok"


def test_bad_request_loses_no_stored_page(start_gateway) -> None:
    with start_gateway(budget=2500) as gw:
        c = client(gw)
        messages = long_session(10)
        c.chat.completions.create(model="gpt-4o", messages=messages, user="keep-me")
        before = gw.fake.requests[-1].body["messages"]
        broken = messages + [{"role": "tool", "tool_call_id": "nope", "content": "x"}]
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="gpt-4o", messages=broken, user="keep-me")
        c.chat.completions.create(model="gpt-4o", messages=messages, user="keep-me")
        assert gw.fake.requests[-1].body["messages"] == before


def test_default_body_limit_admits_a_million_token_transcript(gateway) -> None:
    chunk = "word " * 2000  # about 2,000 tokens
    messages = [{"role": "user", "content": chunk} for _ in range(500)] + [{"role": "user", "content": "sum up"}]
    body = json.dumps({"model": "gpt-4o", "messages": messages}).encode()
    assert len(body) > 4_000_000
    with httpx.Client(timeout=120) as h:
        response = h.post(gateway.url + "/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert int(response.headers["x-clawvm-prompt-tokens"]) <= int(response.headers["x-clawvm-budget"])


def test_unknown_model_is_forwarded_with_the_default_window(gateway) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="my-self-hosted-llama", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == "ok"
    assert gateway.fake.requests[-1].body["model"] == "my-self-hosted-llama"
    assert raw.headers["x-clawvm-budget-source"] == "default"
    assert int(raw.headers["x-clawvm-budget"]) == 128000 - 4096


def test_unknown_model_uses_the_tenant_budget_when_set(start_gateway) -> None:
    with start_gateway(budget=5000) as gw:
        raw = client(gw).chat.completions.with_raw_response.create(
            model="my-self-hosted-llama", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-clawvm-budget-source"] == "tenant_budget"
        assert raw.headers["x-clawvm-budget"] == "5000"
