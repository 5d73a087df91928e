"""The recall tool stays the gateway's: a streaming agent never sees a recall call, however the
upstream packs it, and a model still recalling past the bound gives the agent its real answer."""

from __future__ import annotations

from bench.fake_upstream import FakeUpstream
from tests.e2e.test_chat import TOOLS, client, long_session
from tests.e2e.test_recall import offered, paged_ids, recall_call, tool_id_of

FINAL = "Answering from what I have: the build needs module 3."


def test_a_recall_call_in_the_finish_chunk_never_reaches_a_streaming_agent(start_gateway) -> None:
    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        if last["role"] == "tool" and last["content"].startswith("[recall: ok]"):
            return {"content": "found: " + last["content"].splitlines()[2]}
        return {"content": "Let me look. ", "tool_calls": [recall_call([tool_id_of(body, 3)], call_id="rc_hidden")]}

    fake = FakeUpstream(responder, calls_in_finish=True)
    with start_gateway(budget=9000, fake=fake) as gw:
        chunks = list(client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30), stream=True))
        seen = "".join(c.model_dump_json() for c in chunks)
        assert "clawvm_recall" not in seen and "rc_hidden" not in seen
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Let me look. found: line 0 of module 3: value = 3000"
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        assert len(gw.fake.requests) == 2  # the recall round ran
        assert gw.fake.requests[1].body["messages"][-1]["tool_call_id"] == "rc_hidden"


def test_mixed_calls_in_the_finish_chunk_give_a_streaming_agent_only_its_own(start_gateway) -> None:
    own = {"id": "c_own", "type": "function", "function": {"name": "get_order", "arguments": '{"order_id":"1"}'}}

    def responder(body: dict) -> dict:
        return {"tool_calls": [recall_call(paged_ids(body)[:1], call_id="rc_hidden"), own]}

    with start_gateway(budget=2500, fake=FakeUpstream(responder, calls_in_finish=True)) as gw:
        stream = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30), tools=TOOLS, stream=True)
        chunks = list(stream)
        seen = "".join(c.model_dump_json() for c in chunks)
        assert "clawvm_recall" not in seen and "rc_hidden" not in seen
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert [(tc.id, tc.function.name, tc.function.arguments) for tc in calls] == [
            ("c_own", "get_order", '{"order_id":"1"}')
        ]


def keeps_recalling(body: dict) -> dict:
    """A model that calls recall whenever the tool is offered, and answers once it is gone."""
    if offered(body):
        return {"tool_calls": [recall_call(paged_ids(body)[:1], call_id=f"rc{len(body['messages'])}")]}
    return {"content": FINAL}


def test_past_the_bound_the_agent_gets_the_models_real_answer(start_gateway) -> None:
    with start_gateway(budget=2500, fake=FakeUpstream(keeps_recalling)) as gw:
        answer = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30))
        assert answer.choices[0].message.content == FINAL and answer.choices[0].finish_reason == "stop"
        assert not answer.choices[0].message.tool_calls
        last = gw.fake.requests[-1].body
        assert len(gw.fake.requests) == 5  # the first call, three recall rounds, one call without the tool
        assert not offered(last) and last["messages"][-1]["content"].startswith("[recall: exhausted]")


def test_past_the_bound_a_streaming_agent_gets_the_models_real_answer(start_gateway) -> None:
    with start_gateway(budget=2500, fake=FakeUpstream(keeps_recalling)) as gw:
        stream = client(gw).chat.completions.create(model="gpt-4o", messages=long_session(30), stream=True)
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FINAL
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        assert not [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert len({c.id for c in chunks}) == 1 and len(gw.fake.requests) == 5
        assert not offered(gw.fake.requests[-1].body)
