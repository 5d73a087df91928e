"""The recall resolver against a real store: queries with alternatives, windows in long lines,
and a round's room shared fairly among its calls; past the bound, the model's own answer; a
query without page ids searching the session, the project and the user's own part of it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.store.embedded import EmbeddedRedis
from gateway.store.journal import WritebackJournal
from gateway.store.memory import MemoryService
from gateway.store.session_state import SessionState
from gateway.store.store import RedisStore, session_scope
from gateway.upstream.client import UpstreamResponse
from gateway.wire.chat import complete, neutral, split_calls, tool_schema
from gateway.wire.recall import (
    DEFAULT_ROUNDS,
    MIN_ANSWER_TOKENS,
    QUERY_OR,
    SEARCH_SHOWN,
    Paging,
    Recalled,
    framing,
    shares,
)
from gateway.wire.recall import resolve_all as resolve_calls
from policies.pages import PageType
from policies.pagetable import PageTable, make_page_id, paged_out, tenant_tag
from policies.tokens import CharCounter
from tests.factories import make_page
from tests.policies.test_pagetable import Wire, feed, tool_pair

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


async def resolve_all(paging: Paging, calls: list[dict], room: int) -> list[Recalled]:
    """The resolver, given chat-shaped calls as a model sends them."""
    return await resolve_calls(paging, [neutral(c) for c in calls], room)


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
    assert framing("", [neutral(c) for c in ours], CharCounter()) > 0  # a numeric id and arguments count as empty


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


# -- a query without page ids: a search of every page the request may read ---------------------------

PROJECT = "proj-search"
CARD = "credit_card_4190576"
SYSTEM = {"role": "system", "content": "You are a support agent. You must never push to main."}


def recall(arguments: dict, number: int = 0) -> dict:
    return {
        "id": f"rs{number}",
        "type": "function",
        "function": {"name": "clawvm_recall", "arguments": json.dumps(arguments)},
    }


def search(query: str, number: int = 0) -> dict:
    return recall({"query": query} if query else {}, number)


def searching(store: RedisStore, tenant: str, session: str, user: str = "") -> Paging:
    memory = MemoryService(WritebackJournal(store.client), store)
    return Paging(
        store, tenant, session, PROJECT, CharCounter(), 10_000, sessions=SessionState(store), user=user, memory=memory
    )


async def lived(store: RedisStore, tenant: str, session: str, user: str, *turns: list[Wire]) -> PageTable:
    """A session that went through `turns` (each a whole transcript), stored and written back."""
    table = PageTable(tenant, session, PROJECT, user=user)
    sessions, memory = SessionState(store), MemoryService(WritebackJournal(store.client), store)
    for wire in turns:
        new_pages = list(feed(table, wire).new_pages)
        await memory.write_back(table, new_pages)
        await sessions.commit(table, new_pages)
    return table


def order_lookup() -> list[Wire]:
    rows = "\n".join(f"order #W{n:07d}: status delivered" for n in range(40))
    payment = f"order #W4836353: paid with {CARD}, total 310.50"
    return [
        SYSTEM,
        {"role": "user", "content": "Which card did I pay #W4836353 with?"},
        *tool_pair("c1", "get_order_details", '{"order_id": "#W4836353"}', f"{rows}\n{payment}\n{rows}"),
        {"role": "assistant", "content": "Let me check."},
    ]


async def test_a_query_without_page_ids_finds_a_value_in_evidence_paged_out_by_a_compaction(
    store: RedisStore, tenant: str
) -> None:
    compacted = [SYSTEM, {"role": "user", "content": "Summary: the user asked about an order. Go on."}]
    table = await lived(store, tenant, "s-evidence", "", order_lookup(), compacted)
    evidence = next(p for p, page in table.pages.items() if page.type is PageType.EVIDENCE)
    assert evidence not in table.order[-2:]  # not in the compacted transcript any more
    (answer,) = await resolve_all(searching(store, tenant, "s-evidence"), [search(CARD)], 10_000)
    assert answer.code == "ok" and answer.pages == (evidence,)
    assert f"[{evidence} evidence" in answer.text  # the page id heads its matching lines
    assert f"paid with {CARD}" in answer.text
    assert "#W0000003" not in answer.text  # only the lines that hold the query, not the whole page


async def test_a_query_without_page_ids_reads_the_project_and_the_users_own_part_only(
    store: RedisStore, tenant: str
) -> None:
    stated = [SYSTEM, {"role": "user", "content": "Hello. I prefer small commits."}]
    await lived(store, tenant, "s-alice-1", "u-alice", stated)
    alice = await resolve_all(searching(store, tenant, "s-alice-2", "u-alice"), [search("small commits")], 10_000)
    assert alice[0].code == "ok" and "I prefer small commits." in alice[0].text
    assert alice[0].pages and all(f"[{p} " in alice[0].text for p in alice[0].pages)
    bob = searching(store, tenant, "s-bob", "u-bob")
    (theirs,) = await resolve_all(bob, [search("small commits")], 10_000)
    assert theirs.code == "no_match"  # another user's part of the project is never searched
    (rule,) = await resolve_all(bob, [search("push to main")], 10_000)
    assert rule.code == "ok" and "never push to main" in rule.text  # the project's own rules are every user's
    for session in ("s-alice-1", "s-alice-2"):
        (foreign,) = await resolve_all(searching(store, tenant + "x", session, "u-alice"), [search("commits")], 10_000)
        assert foreign.code == "no_match"  # the same session and project ids in another tenant are not these


async def test_a_query_that_matches_nothing_says_so(store: RedisStore, tenant: str) -> None:
    await lived(store, tenant, "s-none", "", order_lookup())
    missed, empty = await resolve_all(searching(store, tenant, "s-none"), [search("gift_card_999"), search("")], 10_000)
    assert missed.code == "no_match" and "'gift_card_999'" in missed.text and "pages searched" in missed.text
    assert empty.code == "no_match" and '"query"' in empty.text and '"page_ids"' in empty.text


async def test_a_search_names_the_matching_pages_it_could_not_show(store: RedisStore, tenant: str) -> None:
    pairs = [tool_pair(f"c{n}", "get_order_details", f'{{"n": {n}}}', f"order {n}: shipped to Lyon") for n in range(9)]
    await lived(store, tenant, "s-many", "", [SYSTEM, {"role": "user", "content": "orders?"}, *sum(pairs, [])])
    (answer,) = await resolve_all(searching(store, tenant, "s-many"), [search("Lyon")], 10_000)
    assert answer.code == "ok" and len(answer.pages) == SEARCH_SHOWN
    assert "order 8: shipped" in answer.text  # the newest first
    assert f"[{9 - SEARCH_SHOWN} more pages hold 'Lyon': " in answer.text


async def test_a_search_while_the_store_is_down_is_a_backend_error(killable: EmbeddedRedis, tenant: str) -> None:
    store = RedisStore.from_url(killable.url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        await lived(store, tenant, "s-down", "", order_lookup())
        killable.kill()
        (answer,) = await resolve_all(searching(store, tenant, "s-down"), [search(CARD)], 10_000)
        assert answer.code == "backend_error" and "unavailable" in answer.text
    finally:
        await store.aclose()


def test_the_schema_offers_a_search_without_page_ids() -> None:
    function = tool_schema("clawvm_recall")["function"]
    assert "page_ids" not in function["parameters"].get("required", [])
    assert "search" in function["description"] and "without page_ids" in function["description"]


async def test_a_range_of_the_evidence_index_lists_and_searches_the_dropped_results(
    store: RedisStore, tenant: str
) -> None:
    pairs = [tool_pair(f"c{n}", "get_order_details", f'{{"n": {n}}}', f"order {n}: shipped to Lyon") for n in range(9)]
    compacted = [SYSTEM, {"role": "user", "content": "Summary: the user asked about orders. Go on."}]
    opened = [SYSTEM, {"role": "user", "content": "orders?"}, *sum(pairs, [])]
    table = await lived(store, tenant, "s-index", "", opened, compacted)
    index = paged_out(table)
    assert len(index) == 9
    handle = f"{index[2]}..{index[5]}"
    paging = searching(store, tenant, "s-index")
    calls = [recall({"page_ids": [handle]}), recall({"page_ids": [handle], "query": "order 4:"}, 1)]
    listing, found = await resolve_all(paging, calls, 10_000)
    assert listing.code == "ok" and f"[{handle}: 4 pages;" in listing.text
    assert f'{index[3]} get_order_details(3): "order 3: shipped to Lyon"' in listing.text  # the stored index line
    assert found.code == "ok" and found.pages == (index[4],) and "order 4: shipped to Lyon" in found.text
