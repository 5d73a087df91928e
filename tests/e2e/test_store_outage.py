"""Redis killed in the middle of a session: the openai SDK's requests keep succeeding (200,
marked degraded), /health and /ready say so, and once Redis is back on the same port and data
directory the deferred turns land: the stored table is the one an uninterrupted run stores, and
what was committed before the outage is unchanged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
import redis

from bench.fake_upstream import FakeUpstream, serve
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings
from gateway.store.embedded import EmbeddedRedis
from gateway.store.session_state import SessionState
from gateway.store.store import Keys, RedisStore, session_scope
from tests.e2e.conftest import Gateway
from tests.e2e.test_chat import long_session
from tests.e2e.test_recall import recall_call, tool_id_of

TENANT = "default"
WAIT_S = 30.0  # a generous bound on "eventually": never a timing assertion
DEGRADED = "x-clawvm-degraded"


@pytest.fixture
def outage_gateway(killable: EmbeddedRedis, offline: None) -> Callable[..., object]:
    """`with outage_gateway(fake=None, budget=None) as gw:` a gateway whose store is `killable`."""

    @contextmanager
    def start(fake: FakeUpstream | None = None, budget: int | None = None) -> Iterator[Gateway]:
        fake = fake or FakeUpstream()
        with serve(fake.app) as upstream_url:
            settings = load_settings(None, {}, Overrides(upstream=upstream_url, store=killable.url, budget=budget))
            with serve(create_app(settings)) as url:
                yield Gateway(url=url, fake=fake)

    return start


def ask(gw: Gateway, session: str, turns: int, *, stream: bool = False) -> httpx.Headers:
    """One turn of `long_session(turns)` through the openai SDK; its response headers."""
    sdk = openai.OpenAI(base_url=gw.url, api_key="sk-test", max_retries=0)
    headers = {"x-clawvm-session": session, "x-clawvm-project": f"project-{session}"}
    messages = long_session(turns)
    if stream:
        with sdk.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=messages, stream=True, extra_headers=headers
        ) as response:
            assert response.status_code == 200
            text = "".join(response.iter_lines())
            assert "[DONE]" in text
            return response.headers
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, extra_headers=headers)
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content == "ok"
    return raw.headers


def probe(gw: Gateway, path: str) -> tuple[int, dict]:
    response = httpx.get(gw.root + path)
    return response.status_code, response.json()


def drained(gw: Gateway) -> dict:
    deadline = time.monotonic() + WAIT_S
    while True:
        status, body = probe(gw, "/health")
        if body["queued"] == 0 or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def stored_table(url: str, session: str) -> tuple[dict[str, str], dict[str, str]]:
    """The session's stored table hash and its pages' JSON, as Redis holds them."""
    keys = Keys.of(TENANT, session_scope(session))
    with redis.Redis.from_url(url, decode_responses=True) as client:
        table = client.hgetall(keys.table)
        pages = {name: client.get(name) for name in client.keys(keys.page("*"))}
    return table, pages


def stored_order(url: str, session: str) -> list[str]:
    """The page order of the session's table as a fresh reader loads it from Redis (not the
    gateway's in-process copy)."""

    async def load() -> list[str]:
        async with RedisStore.from_url(url) as store:
            table = await SessionState(store).load(TENANT, session, "any")
            assert table.version > 0, f"no stored table for {session}"
            assert table.pages.keys() >= set(table.order)
            return table.order

    return asyncio.run(load())


def test_requests_succeed_through_an_outage_and_every_turn_lands(outage_gateway, killable: EmbeddedRedis) -> None:
    with outage_gateway() as gw:
        for turns in (1, 2):
            assert DEGRADED not in ask(gw, "outage", turns)
        committed_before, pages_before = stored_table(killable.url, "outage")
        assert probe(gw, "/ready") == (200, {"status": "ready", "store": "ok", "queued": 0})

        killable.kill()
        assert ask(gw, "outage", 3)[DEGRADED] == "store_unavailable"
        assert ask(gw, "outage", 4, stream=True)[DEGRADED] == "store_unavailable"
        assert ask(gw, "newcomer", 1)[DEGRADED] == "store_unavailable"  # no table cached: built from the request
        assert probe(gw, "/health") == (200, {"status": "degraded", "store": "unavailable", "queued": 3})
        assert probe(gw, "/ready") == (503, {"status": "not_ready", "store": "unavailable", "queued": 3})
        assert 'clawvm_store_unavailable_total{tenant="default"} 3.0' in httpx.get(gw.root + "/metrics").text

        killable.start()  # same port, same data directory
        assert drained(gw) == {"status": "ok", "store": "ok", "queued": 0}
        assert probe(gw, "/ready")[0] == 200
        assert DEGRADED not in ask(gw, "outage", 5)

        for turns in range(1, 6):  # the same session, never interrupted
            ask(gw, "reference", turns)
        assert stored_order(killable.url, "outage") == stored_order(killable.url, "reference")
        ask(gw, "reference-1", 1)
        assert stored_order(killable.url, "newcomer") == stored_order(killable.url, "reference-1")
        events = httpx.get(f"{gw.url}/clawvm/sessions/outage/events", headers={"authorization": "Bearer sk-test"})
        assert [e["event"] for e in events.json()["data"] if e.get("kind") == "store"] == ["STORE_UNAVAILABLE"] * 2

    committed_after, pages_after = stored_table(killable.url, "outage")
    assert int(committed_after["v"]) > int(committed_before["v"])
    assert all(pages_after[name] == page for name, page in pages_before.items())  # unchanged, none lost
    assert len(pages_after) > len(pages_before)


def test_a_recall_during_the_outage_is_answered_from_the_gateways_own_table(
    outage_gateway, killable: EmbeddedRedis
) -> None:
    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return {"content": last["content"].splitlines()[0]}
        return {"tool_calls": [recall_call([tool_id_of(body, 3)])]}

    with outage_gateway(fake=FakeUpstream(responder), budget=9000) as gw:
        sdk = openai.OpenAI(base_url=gw.url, api_key="sk-test", max_retries=0)
        headers = {"x-clawvm-session": "recalling"}
        sdk.chat.completions.create(model="gpt-4o", messages=long_session(29), extra_headers=headers)
        killable.kill()
        raw = sdk.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=long_session(30), extra_headers=headers
        )
        assert raw.status_code == 200 and raw.headers[DEGRADED] == "store_unavailable"
        assert raw.parse().choices[0].message.content == "[recall: ok]"
        killable.start()
        assert drained(gw)["queued"] == 0


def test_a_recall_the_store_cannot_answer_says_so(outage_gateway, killable: EmbeddedRedis) -> None:
    def responder(body: dict) -> dict:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return {"content": last["content"]}
        known = tool_id_of(body, 3)
        return {"tool_calls": [recall_call([known[:-1] + ("1" if known.endswith("0") else "0")])]}  # held nowhere

    with outage_gateway(fake=FakeUpstream(responder), budget=9000) as gw:
        sdk = openai.OpenAI(base_url=gw.url, api_key="sk-test", max_retries=0)
        killable.kill()
        answer = sdk.chat.completions.create(
            model="gpt-4o", messages=long_session(30), extra_headers={"x-clawvm-session": "unreachable"}
        )
        text = answer.choices[0].message.content
        assert text.startswith("[recall: backend_error]") and "unavailable right now; retry later" in text


def test_a_gateway_stopped_after_an_outage_leaves_every_turn_stored(outage_gateway, killable: EmbeddedRedis) -> None:
    with outage_gateway() as gw:
        ask(gw, "stopping", 1)
        killable.kill()
        assert ask(gw, "stopping", 2)[DEGRADED] == "store_unavailable"
        killable.start()
    # the lifespan's shutdown committed what was still deferred (or the drain task had already)
    ask_order = stored_order(killable.url, "stopping")
    with outage_gateway() as gw:
        ask(gw, "stopped-reference", 2)
    assert ask_order == stored_order(killable.url, "stopped-reference")


def test_a_queue_at_its_byte_bound_answers_503_and_keeps_what_it_holds(
    killable: EmbeddedRedis, offline: None, tmp_path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("store: {outage_queue_bytes: 1}\n")  # one deferred turn passes it
    fake = FakeUpstream()
    with serve(fake.app) as upstream_url:
        settings = load_settings(config, {}, Overrides(upstream=upstream_url, store=killable.url))
        with serve(create_app(settings)) as url:
            gw = Gateway(url=url, fake=fake)
            ask(gw, "bytes", 1)
            killable.kill()
            assert ask(gw, "bytes", 2)[DEGRADED] == "store_unavailable"  # an empty queue admits a turn
            refused = httpx.post(
                f"{gw.url}/chat/completions",
                json={"model": "gpt-4o", "messages": long_session(3)},
                headers={"x-clawvm-session": "bytes"},
            )
            assert refused.status_code == 503
            error = refused.json()["error"]
            assert error["code"] == "store_unavailable" and "store.outage_queue_bytes" in error["message"]
            assert probe(gw, "/health")[1]["queued"] == 1  # nothing dropped
            killable.start()
            assert drained(gw)["queued"] == 0
            assert DEGRADED not in ask(gw, "bytes", 3)
