"""The recall resolver against a real store: queries with alternatives, windows in long lines,
and a round's room shared fairly among its calls; past the bound, the model's own answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.recall import (
    DEFAULT_ROUNDS,
    MIN_ANSWER_TOKENS,
    QUERY_OR,
    Paging,
    complete,
    framing,
    resolve_all,
    shares,
    split_calls,
    tool_schema,
)
from gateway.store import RedisStore, session_scope
from gateway.upstream import UpstreamResponse
from policies.pagetable import make_page_id, tenant_tag
from policies.tokens import CharCounter
from tests.factories import make_page

SESSION = "s1"
pytestmark = pytest.mark.anyio


def call(page_id: str, query: str | None = None, number: int = 0) -> dict:
    arguments = {"page_ids": [page_id], **({"query": query} if query else {})}
    return {
        "id": f"rc{number}",
        "type": "function",
        "function": {"name": "clawvm_recall", "arguments": json.dumps(arguments)},
    }


async def stored(store: RedisStore, tenant: str, *texts: str) -> list[str]:
    ids = [make_page_id(tenant_tag(tenant), f"{n:09x}") for n in range(len(texts))]
    pages = [make_page(i, text=t) for i, t in zip(ids, texts, strict=True)]
    await store.put_pages(tenant, session_scope(SESSION), pages)
    return ids


def paging(store: RedisStore, tenant: str, room: int) -> Paging:
    return Paging(store, tenant, SESSION, "p", CharCounter(), room)


def test_shares_give_small_answers_whole_and_split_the_rest_evenly() -> None:
    assert shares([100, 1000, 1000], 1100, 2000) == [100, 500, 500]
    assert shares([10, 20], 1000, 2000) == [10, 20]
    assert shares([500, 500], 1000, 300) == [300, 300]


def test_shares_never_hand_out_slivers_while_room_lasts() -> None:
    caps = shares([400] * 10, 200, 2000)
    assert caps.count(MIN_ANSWER_TOKENS) == 200 // MIN_ANSWER_TOKENS
    assert sum(caps) <= 200
    assert shares([5, 7], 0, 2000) == [0, 0]


async def test_a_query_with_alternatives_returns_the_lines_of_each(store: RedisStore, tenant: str) -> None:
    text = "\n".join(["alpha 1", "filler", "filler", "filler", "beta 2", "filler", "filler", "gamma 3"])
    (page_id,) = await stored(store, tenant, text)
    (answer,) = await resolve_all(paging(store, tenant, 10_000), [call(page_id, f"alpha{QUERY_OR}gamma")], 10_000)
    assert answer.code == "ok"
    assert "alpha 1" in answer.text and "gamma 3" in answer.text
    assert "beta 2" not in answer.text


async def test_a_hit_deep_in_one_long_line_is_shown_in_a_window(store: RedisStore, tenant: str) -> None:
    line = json.dumps([{"flight": f"HAT{n:03d}", "seats": n} for n in range(200)])
    (page_id,) = await stored(store, tenant, line)
    (answer,) = await resolve_all(paging(store, tenant, 10_000), [call(page_id, "HAT187")], 10_000)
    assert "HAT187" in answer.text
    assert len(answer.text) < len(line) // 4


async def test_one_long_answer_no_longer_starves_the_calls_after_it(store: RedisStore, tenant: str) -> None:
    big, small = await stored(store, tenant, "x" * 5000, "the order id is W123")
    answers = await resolve_all(paging(store, tenant, 600), [call(big), call(small, number=1)], 600)
    assert "W123" in answers[1].text
    assert "cut to fit the budget" in answers[0].text
    assert sum(a.tokens for a in answers) <= 600


async def test_cramped_queries_keep_less_context_so_every_hit_fits(store: RedisStore, tenant: str) -> None:
    rows = [json.dumps([{"flight": f"HAT{n:03d}", "note": "x" * 150} for n in range(40)]) for _ in range(4)]
    ids = await stored(store, tenant, *rows)
    calls = [call(pid, f"HAT{10 * k + 5:03d}", k) for k, pid in enumerate(ids)]
    wide = await resolve_all(paging(store, tenant, 100_000), calls, 100_000)
    room = sum(a.tokens for a in wide) // 2
    answers = await resolve_all(paging(store, tenant, room), calls, room)
    for k, answer in enumerate(answers):
        assert f"HAT{10 * k + 5:03d}" in answer.text
    assert sum(a.tokens for a in answers) <= room


# -- what a broken upstream may answer (found by tests/e2e/test_fuzz.py) -----------------------------


def test_odd_tool_calls_are_never_ours_and_never_crash_the_split() -> None:
    odd = [
        "not a call",
        {"id": "x", "function": "clawvm_recall"},
        {"id": 5, "function": {"name": "clawvm_recall", "arguments": 12}},
        {"function": {"name": "read_file"}},
    ]
    ours, theirs = split_calls({"tool_calls": odd}, "clawvm_recall")
    assert ours == [odd[2]] and theirs == [odd[0], odd[1], odd[3]]
    assert split_calls({"tool_calls": 7}, "clawvm_recall") == ([], [])
    assert framing({"content": None}, ours, CharCounter()) > 0  # a numeric id and arguments count as empty


async def test_an_answer_that_is_not_json_is_relayed_as_it_came(store: RedisStore, tenant: str) -> None:
    async def send(body: bytes) -> UpstreamResponse:
        async def once() -> AsyncIterator[bytes]:
            yield b"<html>bad gateway</html>"

        return UpstreamResponse(200, [("content-type", "text/html")], once())

    failed, answer = await complete(send, {"messages": []}, paging(store, tenant, 1000))
    assert failed is None and answer == b"<html>bad gateway</html>"


def answer(message: dict) -> UpstreamResponse:
    async def once() -> AsyncIterator[bytes]:
        yield json.dumps({"id": "c1", "choices": [{"index": 0, "message": message, "finish_reason": "x"}]}).encode()

    return UpstreamResponse(200, [("content-type", "application/json")], once())


def recalling_model(sent: list[dict]) -> Callable[[bytes], Awaitable[UpstreamResponse]]:
    """A model that calls recall while the tool is offered (or named by tool_choice), and answers
    for real once it is gone."""

    async def send(body: bytes) -> UpstreamResponse:
        sent.append(json.loads(body))
        names = {t["function"]["name"] for t in sent[-1].get("tools") or []}
        if "clawvm_recall" in names or "clawvm_recall" in json.dumps(sent[-1].get("tool_choice")):
            return answer({"role": "assistant", "content": None, "tool_calls": [call("p:x", number=len(sent))]})
        return answer({"role": "assistant", "content": "From what I have: 3000."})

    return send


async def test_past_the_bound_the_model_answers_without_the_tool(store: RedisStore, tenant: str) -> None:
    sent: list[dict] = []
    body = {
        "messages": [{"role": "user", "content": "q"}],
        "tools": [tool_schema("clawvm_recall")],
        "tool_choice": "auto",
    }
    failed, raw = await complete(recalling_model(sent), body, paging(store, tenant, 1000))
    message = json.loads(raw)["choices"][0]["message"]
    assert failed is None and message["content"] == "From what I have: 3000." and "tool_calls" not in message
    assert len(sent) == DEFAULT_ROUNDS + 2  # the first call, the recall rounds, one call without the tool
    assert "tools" not in sent[-1] and "tool_choice" not in sent[-1]
    assert sent[-1]["messages"][-1]["content"].startswith("[recall: exhausted]")


async def test_withdrawing_recall_keeps_the_agents_tools_and_frees_a_choice_naming_it(
    store: RedisStore, tenant: str
) -> None:
    sent: list[dict] = []
    own = {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}
    body = {
        "messages": [{"role": "user", "content": "q"}],
        "tools": [own, tool_schema("clawvm_recall")],
        "tool_choice": {"type": "function", "function": {"name": "clawvm_recall"}},
    }
    failed, raw = await complete(recalling_model(sent), body, paging(store, tenant, 1000))
    assert json.loads(raw)["choices"][0]["message"]["content"] == "From what I have: 3000."
    assert sent[-1]["tools"] == [own] and sent[-1]["tool_choice"] == "auto"
