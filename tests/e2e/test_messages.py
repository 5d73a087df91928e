"""The Anthropic Messages API through the running gateway, with the real `anthropic` SDK against
a fake Anthropic upstream: managed turns, recall spliced in (whole and streamed) and never seen
by the agent, thinking signatures byte for byte, count_tokens, errors in Anthropic's shape."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx
import pytest

from bench.fake_anthropic import FakeAnthropic, prompt_tokens, sign
from bench.fake_upstream import serve

UPSTREAM_KEY = "sk-ant-upstream-secret"
SEARCHED = "line 117 of module 3: value = 3117"
TOOLS = [{"name": "read_file", "description": "Read a file", "input_schema": {"type": "object"}}]
SYSTEM = "You are a careful coding agent.\n- Never push to main.\n- Always run the tests before committing."


@contextmanager
def running(
    start_gateway: Callable[..., Any], fake: FakeAnthropic, budget: int | None = None, tenants: str = ""
) -> Iterator[tuple[str, FakeAnthropic]]:
    with serve(fake.app) as url:
        config = f"upstream:\n  anthropic_base: {url.removesuffix('/v1')}\n  anthropic_key: {UPSTREAM_KEY}\n{tenants}"
        with start_gateway(config_yaml=config, budget=budget) as gw:
            yield gw.root, fake


def client(root: str, key: str = "sk-agent") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=root, api_key=key, max_retries=0)


def long_session(turns: int) -> list[dict[str, Any]]:
    """A tool loop in Anthropic's shape: each turn reads a module of 120 numbered lines."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Please fix the failing build. I prefer small commits."}
    ]
    for n in range(turns):
        call = {"type": "tool_use", "id": f"toolu_{n}", "name": "read_file", "input": {"path": f"src/m{n}.py"}}
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": f"Step {n}: reading file {n}."}, call]}
        )
        body = "\n".join(f"line {i} of module {n}: value = {n * 1000 + i}" for i in range(120))
        messages.append(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{n}", "content": body}]}
        )
    messages[-1]["content"].append({"type": "text", "text": "What did you find in module 3?"})
    return messages


def recall_result(body: dict[str, Any]) -> str | None:
    """The text of the recall result the last user message carries, if any."""
    last = body["messages"][-1]
    for block in last["content"] if isinstance(last["content"], list) else []:
        if block.get("type") == "tool_result" and str(block.get("content", "")).startswith("[recall:"):
            return block["content"]
    return None


def searching(body: dict[str, Any]) -> dict[str, Any]:
    """A model that searches for a value paged out of its prompt, then answers from the result."""
    result = recall_result(body)
    if result is not None:
        line = next(line for line in result.splitlines() if line.startswith(SEARCHED))
        return {"content": f"found: {line.strip()}"}
    assert any(t["name"] == "clawvm_recall" for t in body.get("tools") or [])
    assert SEARCHED not in json.dumps(body)  # paged out: only a search finds it
    return {
        "content": "Let me look that up.",
        "tool_calls": [{"name": "clawvm_recall", "input": {"query": "value = 3117"}}],
    }


def test_a_recall_is_spliced_into_a_whole_answer_and_the_agent_never_sees_it(start_gateway) -> None:
    with running(start_gateway, FakeAnthropic(searching, key=UPSTREAM_KEY), budget=4000) as (root, fake):
        raw = client(root).messages.with_raw_response.create(
            model="claude-sonnet-4-5",
            max_tokens=512,
            system=SYSTEM,
            messages=long_session(30),
            tools=TOOLS,
            extra_headers={"anthropic-beta": "context-management-2025-06-27"},
        )
        message = raw.parse()
        assert [b.type for b in message.content] == ["text"]  # the last round's answer, as for chat
        assert message.content[0].text == f"found: {SEARCHED}"
        assert message.stop_reason == "end_turn"
        assert "clawvm_recall" not in raw.http_response.text
        first, second = fake.requests
        assert first.headers["x-api-key"] == UPSTREAM_KEY  # the tenant's upstream key, never the agent's
        assert first.headers["anthropic-beta"] == "context-management-2025-06-27"
        assert first.headers["anthropic-version"] == raw.http_response.request.headers["anthropic-version"]
        assert first.body["system"] == SYSTEM  # the client's own system prompt, unchanged
        assert second.body["messages"][-2]["content"][-1]["name"] == "clawvm_recall"
        assert SEARCHED in recall_result(second.body)
        assert message.usage.input_tokens == prompt_tokens(first.body) + prompt_tokens(second.body)
        assert int(raw.headers["x-clawvm-prompt-tokens"]) <= 4000


def test_a_recall_is_spliced_into_one_stream(start_gateway) -> None:
    with running(start_gateway, FakeAnthropic(searching), budget=4000) as (root, fake):
        with client(root).messages.stream(
            model="claude-sonnet-4-5", max_tokens=512, system=SYSTEM, messages=long_session(30), tools=TOOLS
        ) as stream:
            events = list(stream)
            message = stream.get_final_message()
        kinds = [e.type for e in events]
        assert kinds.count("message_start") == 1 and kinds.count("message_stop") == 1
        starts = [e.index for e in events if e.type == "content_block_start"]
        assert starts == [0, 1]  # one message: the rounds' blocks numbered in turn
        assert [b.type for b in message.content] == ["text", "text"]
        assert message.content[1].text == f"found: {SEARCHED}" and message.stop_reason == "end_turn"
        assert all(getattr(b, "name", None) != "clawvm_recall" for b in message.content)
        assert len(fake.requests) == 2 and SEARCHED in recall_result(fake.requests[1].body)


def thinking_agent(body: dict[str, Any]) -> dict[str, Any]:
    """A model that thinks, calls the agent's tool once, then answers."""
    last = body["messages"][-1]["content"]
    if isinstance(last, list) and any(
        b.get("type") == "tool_result" and b.get("tool_use_id") == "toolu_own" for b in last
    ):
        return {"content": "The file says hello."}
    return {
        "thinking": "I should read the file first.",
        "tool_calls": [{"id": "toolu_own", "name": "read_file", "input": {"path": "a.txt"}}],
    }


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_loop_with_thinking_keeps_signatures_byte_for_byte(start_gateway, stream: bool) -> None:
    with running(start_gateway, FakeAnthropic(thinking_agent)) as (root, fake):
        agent = client(root)
        messages: list[Any] = [{"role": "user", "content": "Read a.txt"}]
        kwargs = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "tools": TOOLS,
            "thinking": {"type": "enabled", "budget_tokens": 512},
        }
        if stream:
            with agent.messages.stream(messages=messages, **kwargs) as events:
                first = events.get_final_message()
        else:
            first = agent.messages.create(messages=messages, **kwargs)
        assert [b.type for b in first.content] == ["thinking", "tool_use"] and first.stop_reason == "tool_use"
        assert first.content[0].signature == sign("I should read the file first.")
        messages += [
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_own", "content": "hello"}]},
        ]
        second = agent.messages.create(messages=messages, **kwargs)
        assert second.content[0].text == "The file says hello."  # the fake refuses an altered signature
        assert f'"signature":"{sign("I should read the file first.")}"'.encode() in fake.requests[-1].raw


def unmarked(value: Any) -> Any:
    """`value` without the gateway's `cache_control` breakpoints (a text block it made from a string
    content back to the string)."""
    if isinstance(value, dict):
        return {k: unmarked(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict) and set(value[0]) == {"type", "text", "cache_control"}:
            return value[0]["text"]
        return [unmarked(v) for v in value]
    return value


def test_count_tokens_counts_the_prompt_the_gateway_would_forward(start_gateway) -> None:
    with running(start_gateway, FakeAnthropic(), budget=4000) as (root, fake):
        counted = client(root).messages.count_tokens(
            model="claude-sonnet-4-5", system=SYSTEM, messages=long_session(30), tools=TOOLS
        )
        sent = fake.requests[-1]
        assert sent.path == "/v1/messages/count_tokens" and "max_tokens" not in sent.body
        original = prompt_tokens({"system": SYSTEM, "messages": long_session(30), "tools": TOOLS})
        assert counted.input_tokens == prompt_tokens(sent.body) < original / 2  # the managed prompt, not the agent's
        answer = client(root).messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, system=SYSTEM, messages=long_session(30), tools=TOOLS
        )
        turn = unmarked(fake.requests[-1].body)  # the turn's cache breakpoints change no token count
        assert {k: turn[k] for k in ("messages", "system", "tools")} == {
            k: sent.body[k] for k in ("messages", "system", "tools")
        }
        assert answer.headers["x-clawvm-session"]  # the count stored nothing: the turn planned the same prompt


def test_claude_codes_compaction_summary_is_detected(start_gateway) -> None:
    with running(start_gateway, FakeAnthropic(), budget=8000) as (root, fake):
        agent = client(root)
        headers = {"x-clawvm-session": "cc-compact"}
        agent.messages.create(
            model="claude-sonnet-4-5", max_tokens=64, system=SYSTEM, messages=long_session(6), extra_headers=headers
        )
        summary = "This session is being continued from a previous conversation that ran out of context. Summary: module 3 holds 3117."
        compacted = [
            {"role": "user", "content": [{"type": "text", "text": summary}]},
            {"role": "assistant", "content": "Understood."},
            {"role": "user", "content": "Go on."},
        ]
        raw = agent.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=64, system=SYSTEM, messages=compacted, extra_headers=headers
        )
        assert raw.headers["x-clawvm-event"] == "compaction"


def test_bad_requests_are_refused_in_anthropics_shape(start_gateway) -> None:
    with running(start_gateway, FakeAnthropic()) as (root, fake):
        agent = client(root)
        with pytest.raises(anthropic.BadRequestError) as missing:
            agent.messages.create(model="claude-sonnet-4-5", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
        assert missing.value.body["error"]["type"] == "invalid_request_error" and "max_tokens" in missing.value.message
        orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]
        with pytest.raises(anthropic.BadRequestError) as unpaired:
            agent.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=orphan)
        assert "tool_use_id" in unpaired.value.message
        for body in (
            b"{not json",
            b"[]",
            b'{"model": "m", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}',
        ):
            answer = httpx.post(root + "/v1/messages", content=body, headers={"x-api-key": "k"}, timeout=30)
            assert answer.status_code == 400 and answer.json()["type"] == "error", answer.text
        assert fake.requests == []  # nothing bad reached the upstream


def test_keys_map_to_tenants_and_a_wrong_key_is_refused_in_anthropics_shape(start_gateway) -> None:
    tenants = "tenants:\n  team:\n    api_keys: [sk-team-key]\n"
    with running(start_gateway, FakeAnthropic(key=UPSTREAM_KEY), tenants=tenants) as (root, fake):
        with pytest.raises(anthropic.AuthenticationError) as refused:
            client(root, "sk-wrong").messages.create(
                model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.body["error"]["type"] == "authentication_error"
        answer = client(root, "sk-team-key").messages.create(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.content[0].text == "ok"
        bearer = anthropic.Anthropic(
            base_url=root, auth_token="sk-team-key", max_retries=0
        )  # Claude Code's ANTHROPIC_AUTH_TOKEN
        assert (
            bearer.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
            .content[0]
            .text
            == "ok"
        )
        assert all(r.headers["x-api-key"] == UPSTREAM_KEY and "authorization" not in r.headers for r in fake.requests)


def test_an_upstream_error_reaches_the_agent_in_anthropics_shape(start_gateway) -> None:
    with running(start_gateway, FakeAnthropic()) as (root, fake):
        fake.fail_next.append(529)
        with pytest.raises(anthropic.APIStatusError) as failed:
            client(root).messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert failed.value.status_code == 529 and failed.value.body["type"] == "error"
        assert "529" in failed.value.message


def test_a_messages_session_is_in_the_inspector_with_its_prompt_and_diff(start_gateway) -> None:
    """The session inspector works for every wire format: a Messages session's turns, heat map and
    kept prompt (in the inspector's one shape) with its diff against what the agent sent."""
    session = "inspector-messages"
    with running(start_gateway, FakeAnthropic(key=UPSTREAM_KEY), budget=4000) as (root, _):
        agent = client(root)
        for turns in (20, 30):
            agent.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=64,
                system=SYSTEM,
                messages=long_session(turns),
                tools=TOOLS,
                extra_headers={"x-clawvm-session": session},
            )
        headers = {"authorization": "Bearer sk-agent"}
        with httpx.Client(base_url=root, headers=headers, timeout=30) as http:
            deadline = time.monotonic() + 10
            while len((body := http.get(f"/v1/clawvm/sessions/{session}/timeline").json()).get("turns", [])) < 2:
                assert time.monotonic() < deadline, body  # records are written after each answer
                time.sleep(0.05)
            assert body["heat"]["pages"] and body["heat"]["rows"]
            kept = http.get(f"/v1/clawvm/sessions/{session}/prompts/{body['turns'][-1]['prompt']}").json()
            assert kept["object"] == "clawvm.prompt" and kept["received"] and kept["forwarded"]
            assert len(kept["received"]) > len(kept["forwarded"])  # the budget paged part of it out
            assert kept["forwarded"][0] == {"type": "clawvm.system", "content": SYSTEM}  # as forwarded
            assert all("content" in item for item in kept["forwarded"]) and kept["diff"]
            listed = http.get("/v1/clawvm/sessions").json()["data"]
            assert session in [row["id"] for row in listed]


def test_breakpoints_mark_the_stable_prefix_and_the_last_message_beside_the_clients_own(start_gateway) -> None:
    """Issue 13 on the Messages API: the forwarded body carries a breakpoint at the end of the
    stable prefix and one on the last message, the client's own kept, four at most."""
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    with running(start_gateway, FakeAnthropic(), budget=4000) as (root, fake):
        agent = client(root)
        for turns in (30, 31):
            agent.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=64,
                system=system,
                messages=long_session(turns),
                tools=TOOLS,
                extra_headers={"x-clawvm-session": "breakpoints"},
            )
        earlier, later = (r.body for r in fake.requests[-2:])
        for body in (earlier, later):
            marks = [(n, b) for n, m in enumerate(body["messages"]) for b in m["content"] if "cache_control" in b]
            assert body["system"] == system  # the client's own breakpoint, kept
            assert 1 <= len(marks) <= 3 and marks[-1][0] == len(body["messages"]) - 1  # the last message
            assert len(marks) == 2 and marks[0][0] < marks[-1][0], marks  # and the end of the stable prefix
