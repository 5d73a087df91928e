"""Demand paging through the running gateway: the model recalls, the agent never sees it."""

from __future__ import annotations

import json
import re

import httpx
import openai

from bench.fake_upstream import FakeUpstream
from gateway.wire.chat_json import parse_messages
from policies.pagetable import content_digest, make_page_id, tenant_tag
from tests.e2e.test_chat import TOOLS, client, forwarded_tokens, long_session

PAGE = re.compile(r"p:[0-9a-f]{12}")
RANGE = re.compile(r"(p:[0-9a-f]{12}\.\.p:[0-9a-f]{12}) \(\d+ older pages")


def recall_call(ids: list[str] | str, call_id: str = "rc1", query: str | None = None) -> dict:
    arguments = json.dumps({"page_ids": ids, **({"query": query} if query else {})}) if isinstance(ids, list) else ids
    return {"id": call_id, "type": "function", "function": {"name": "clawvm_recall", "arguments": arguments}}


def offered(body: dict) -> bool:
    return any(t["function"]["name"] == "clawvm_recall" for t in body.get("tools") or [])


def paged_ids(body: dict) -> list[str]:
    text = " ".join(m.get("content") or "" for m in body["messages"] if isinstance(m.get("content"), str))
    return PAGE.findall(text)


def tool_id_of(body: dict, index: int) -> str:
    """The page id of module `index`'s `read_file` result: from its line in a span stub, or from
    the degraded tool message that names it; when it is among a stub's older pages (listed only as
    a range), the id the gateway gives that message (the fake model knows the conversation)."""
    name = f"read_file(src/m{index}.py)"
    for message in body["messages"]:
        text = message.get("content") or ""
        if name not in text:
            continue
        line = next(line for line in text.splitlines() if name in line)
        found = PAGE.search(line) or PAGE.search(text)
        if found:
            return found.group()
    if any(RANGE.search(m.get("content") or "") for m in body["messages"]):
        tool = next(m for m in parse_messages(long_session(30)) if m.tool_call_id == f"c{index}")
        return make_page_id(tenant_tag("default"), content_digest(tool))
    raise AssertionError(f"no pointer names module {index}")


def test_the_model_recalls_a_page_and_the_agent_sees_only_the_answer(start_gateway) -> None:
    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        if last["role"] == "tool" and last["content"].startswith("[recall: ok]"):
            return {"content": "found: " + last["content"].splitlines()[2]}
        assert offered(body)
        return {"tool_calls": [recall_call([tool_id_of(body, 3)])]}

    with start_gateway(budget=9000, fake=FakeUpstream(responder)) as gw:
        answer = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30), tools=TOOLS)
        message = answer.choices[0].message
        assert message.content == "found: line 0 of module 3: value = 3000"
        assert not message.tool_calls
        first, second = (r.body for r in gw.fake.requests)
        recalled = second["messages"][-1]["content"]
        assert "line 119 of module 3: value = 3119" in recalled  # the whole tool output came back
        assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "clawvm_recall"
        assert len(second["messages"]) == len(first["messages"]) + 2


def test_a_query_alone_finds_a_line_the_prompt_does_not_place_and_the_agent_never_sees_it(start_gateway) -> None:
    """The model knows the value it needs but no page id: it searches with `query` only."""
    searched = "line 117 of module 3: value = 3117"

    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return {"content": "searched"}
        assert offered(body) and searched not in json.dumps(body)  # paged out: only a search finds it
        return {"tool_calls": [recall_call(json.dumps({"query": "value = 3117"}))]}

    with start_gateway(budget=4000, fake=FakeUpstream(responder)) as gw:
        answer = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30), tools=TOOLS)
        message = answer.choices[0].message
        assert message.content == "searched" and not message.tool_calls
        recalled = gw.fake.requests[-1].body["messages"][-1]["content"]
        assert recalled.startswith("[recall: ok]") and searched in recalled
        head = next(line for line in recalled.splitlines() if line.startswith("[p:"))
        assert PAGE.match(head[1:]) and "lines matching 'value = 3117'" in head  # the page id names the lines
        assert "value = 3050" not in recalled  # the matching lines, not the whole page


def test_recalled_text_is_cut_to_the_budget_with_a_reason(start_gateway) -> None:
    def responder(body: dict) -> dict:
        if body["messages"][-1]["role"] == "tool":
            return {"content": body["messages"][-1]["content"]}
        return {"tool_calls": [recall_call([tool_id_of(body, n) for n in range(3, 7)])]}  # more than the room

    with start_gateway(budget=4000, fake=FakeUpstream(responder)) as gw:
        answer = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30))
        text = answer.choices[0].message.content
        assert text.startswith("[recall: ok]") and "cut to fit the budget" in text
        second = gw.fake.requests[-1].body
        assert forwarded_tokens(second) <= 4000


def test_usage_adds_up_over_rounds(start_gateway) -> None:
    def responder(body: dict) -> dict:
        if body["messages"][-1]["role"] == "tool":
            return {"content": "done"}
        return {"tool_calls": [recall_call(paged_ids(body)[:1])]}

    with start_gateway(budget=2500, fake=FakeUpstream(responder)) as gw:
        answer = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30))
        assert answer.choices[0].message.content == "done"
        assert len(gw.fake.requests) == 2
        assert answer.usage.total_tokens > answer.usage.completion_tokens > 1


def test_mixed_calls_give_the_agent_only_its_own(start_gateway) -> None:
    own = {"id": "c_own", "type": "function", "function": {"name": "get_order", "arguments": '{"order_id":"1"}'}}

    def responder(body: dict) -> dict:
        return {"tool_calls": [recall_call(paged_ids(body)[:1]), own]}

    with start_gateway(budget=2500, fake=FakeUpstream(responder)) as gw:
        answer = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30), tools=TOOLS)
        calls = answer.choices[0].message.tool_calls
        assert [c.id for c in calls] == ["c_own"]
        assert answer.choices[0].finish_reason == "tool_calls"
        assert len(gw.fake.requests) == 1


def test_bad_recalls_get_reason_codes_never_silence(start_gateway) -> None:
    answers: list[str] = []

    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        if last["role"] == "tool":
            answers.append(last["content"])
        bad = [
            recall_call([make_page_id(tenant_tag("default"), "000000000")], "r1"),
            recall_call("{not json", "r2"),
            recall_call(["../etc"], "r3"),
        ]
        return {"content": "gave up"} if len(answers) >= 3 else {"tool_calls": [bad[len(answers)]]}

    with start_gateway(budget=2500, fake=FakeUpstream(responder)) as gw:
        answer = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30))
        assert answer.choices[0].message.content == "gave up"
        assert [a.split("]")[0] for a in answers] == ["[recall: no_match", "[recall: no_match", "[recall: no_match"]
        assert all(len(a.splitlines()) > 1 and a.splitlines()[1] for a in answers)


def test_nothing_paged_means_no_recall_tool(gateway) -> None:
    client(gateway).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert not offered(gateway.fake.requests[-1].body)


def test_streaming_recall_is_spliced_into_one_stream(start_gateway) -> None:
    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        if last["role"] == "tool" and last["content"].startswith("[recall: ok]"):
            return {"content": "found: " + last["content"].splitlines()[2]}
        assert offered(body)
        return {"content": "Let me look. ", "tool_calls": [recall_call([tool_id_of(body, 3)])]}

    with start_gateway(budget=9000, fake=FakeUpstream(responder)) as gw:
        stream = client(gw).chat.completions.create(
            model="gpt-4o", messages=long_session(30), stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Let me look. found: line 0 of module 3: value = 3000"
        assert not [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert len({c.id for c in chunks}) == 1  # one stream id throughout
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        usage = [c.usage for c in chunks if c.usage]
        assert len(usage) == 1 and usage[0].prompt_tokens > 0
        assert len(gw.fake.requests) == 2
        assert "line 119 of module 3" in gw.fake.requests[1].body["messages"][-1]["content"]


def test_streaming_mixed_calls_relay_only_the_agents(start_gateway) -> None:
    own = {"id": "c_own", "type": "function", "function": {"name": "get_order", "arguments": '{"order_id":"1"}'}}

    def responder(body: dict) -> dict:
        return {"tool_calls": [recall_call(paged_ids(body)[:1]), own]}

    with start_gateway(budget=2500, fake=FakeUpstream(responder)) as gw:
        stream = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30), tools=TOOLS, stream=True)
        chunks = list(stream)
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert {tc.function.name for tc in calls if tc.function and tc.function.name} == {"get_order"}
        assert "".join(tc.function.arguments or "" for tc in calls) == '{"order_id":"1"}'
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
            "tool_calls"
        ]
        assert len(gw.fake.requests) == 1


def test_an_upstream_error_during_paging_is_relayed(start_gateway) -> None:
    fake = FakeUpstream()
    fake.fail_next.append(429)
    with start_gateway("upstream:\n  retries: 0\n", budget=2500, fake=fake) as gw:  # relayed, not retried
        try:
            client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30))
        except openai.RateLimitError as exc:
            assert exc.status_code == 429
        else:
            raise AssertionError("the 429 was swallowed")


def test_a_rerun_of_a_paged_out_call_is_reported(start_gateway) -> None:
    with start_gateway(budget=3000) as gw:
        c = client(gw)
        messages = long_session(12)
        c.chat.completions.create(model="gpt-4o", messages=messages)
        rerun = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "again",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"path":"src/m3.py"}'},
                }
            ],
        }
        later = [*messages, rerun, {"role": "tool", "tool_call_id": "again", "content": "same as before"}]
        raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=later)
        assert raw.headers["x-clawvm-duplicate-tools"].startswith("duplicate_tool=1; again->p:")


TWO_TENANTS = "tenants:\n  acme:\n    api_keys: [sk-acme]\n  globex:\n    api_keys: [sk-globex]\n"


def test_a_second_tenant_is_denied_the_first_tenants_pages(start_gateway) -> None:
    """globex's model asks for a page id it saw in acme's prompt: `denied`, and no acme text
    reaches globex's upstream prompt."""
    stolen: list[str] = []
    answers: list[str] = []

    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        if last["role"] == "tool":
            answers.append(last["content"])
            return {"content": "done"}
        if not stolen:  # acme's request: remember a pointer it was shown
            stolen.append(tool_id_of(body, 3))
            return {"content": "acme answer"}
        return {"tool_calls": [recall_call([stolen[0]])]}

    globex_session = [
        {**m, "content": m["content"].replace("value =", "globex value =")} if m["role"] == "tool" else m
        for m in long_session(30)
    ]
    with start_gateway(config_yaml=TWO_TENANTS, budget=9000, fake=FakeUpstream(responder)) as gw:
        client(gw, "sk-acme").chat.completions.create(model="gpt-4o", messages=long_session(30))
        answer = client(gw, "sk-globex").chat.completions.create(model="gpt-4o", messages=globex_session)
        assert answer.choices[0].message.content == "done"
        assert len(answers) == 1 and answers[0].startswith("[recall: denied]")
        assert stolen[0] in answers[0] and "another tenant" in answers[0]
        globex_prompts = [json.dumps(r.body) for r in gw.fake.requests[1:]]
        assert all("line 0 of module 3: value = 3000" not in p for p in globex_prompts)


def test_recalls_count_as_hits_and_a_second_recall_of_a_page_is_a_refetch(start_gateway) -> None:
    def responder(body: dict) -> dict:
        if body["messages"][-1]["role"] == "tool":
            return {"content": "noted"}
        return {"tool_calls": [recall_call([tool_id_of(body, 3)])]}

    with start_gateway(budget=9000, fake=FakeUpstream(responder)) as gw:
        headers = {"x-clawvm-session": "refetch-1"}
        first = client(gw).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=long_session(30), extra_headers=headers
        )
        assert first.headers["x-clawvm-faults"] == "0"
        follow = [*long_session(30), {"role": "assistant", "content": "noted"}, {"role": "user", "content": "Again?"}]
        client(gw).chat.completions.create(model="gpt-4o", messages=follow, extra_headers=headers)
        audit = httpx.get(f"{gw.url}/clawvm/sessions/refetch-1").json()
        assert audit["tally"]["hits"] == 2 and audit["tally"]["faults"] == {"refetch": 1}
        events = httpx.get(f"{gw.url}/clawvm/sessions/refetch-1/events").json()["data"]
        assert [e["kind"] for e in events if e.get("type") == "fault"] == ["refetch"]


def test_older_pages_listed_as_a_range_are_listed_then_searched(start_gateway) -> None:
    """A long stub names its older pages as one range. The model recalls the range to list it,
    then the range with a query, and gets the one line that holds it."""
    answers: list[str] = []

    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        handle = next(r.group(1) for m in body["messages"] if (r := RANGE.search(m.get("content") or "")))
        if last["role"] != "tool":
            return {"tool_calls": [recall_call([handle])]}
        answers.append(last["content"])
        if len(answers) == 1:
            module = int(re.search(r"read_file\(src/m(\d+)\.py\)", last["content"]).group(1))
            return {"tool_calls": [recall_call([handle], "rc2", query=f"of module {module}: value = {module * 1000}")]}
        return {"content": "found"}

    with start_gateway(budget=6000, fake=FakeUpstream(responder)) as gw:
        answer = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(150))
        assert answer.choices[0].message.content == "found"
        listed, searched = answers
        assert listed.startswith("[recall: ok]") and "pages; recall an id below" in listed
        module = int(re.search(r"read_file\(src/m(\d+)\.py\)", listed).group(1))
        assert f"line 0 of module {module}: value = {module * 1000}" in searched, listed
        assert searched.count("\nline ") <= 2  # the line that holds it, and its neighbour
