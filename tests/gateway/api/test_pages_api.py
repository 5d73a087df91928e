"""gateway.api.pages_api: the page's JSON answer, and store failures as OpenAI-shaped 503s.
(The route end to end, with tenants and a real chat turn: tests/e2e/test_pages_api.py.)"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis

from bench.fake_upstream import FakeUpstream, serve
from gateway.api.app import create_app
from gateway.api.pages_api import page_body
from gateway.settings import Overrides, load_settings
from gateway.store.codec import dump_page
from gateway.store.embedded import free_port
from gateway.store.store import Keys, session_scope
from policies.pages import Fidelity, PageType, Pin, Provenance, Scope
from policies.pagetable import make_page_id, tenant_tag
from policies.transcript import ToolCall
from tests.factories import make_page

_ids = itertools.count()
PAGE_ID = make_page_id(tenant_tag("default"), "00aa11bb22")


@pytest.fixture(autouse=True)
def _offline(offline: None) -> None:
    """Every test here runs with the offline tokenizer environment."""


@contextmanager
def start(store_url: str) -> Iterator[str]:
    with serve(FakeUpstream().app) as upstream_url:
        settings = load_settings(None, {}, Overrides(upstream=upstream_url, store=store_url))
        with serve(create_app(settings)) as url:
            yield url


@pytest.fixture(scope="module")
def gateway(redis_url: str) -> Iterator[str]:
    """An open gateway (tenant "default") on the shared Redis."""
    with start(redis_url) as url:
        yield url


def test_page_body_shows_the_asked_level_and_every_levels_tokens() -> None:
    prov = Provenance(message_index=2, role="constraint", parent_id="p:ffffffffffff")
    page = make_page(
        PAGE_ID,
        PageType.CONSTRAINT,
        "never cancel without asking first",
        scope=Scope.PROJECT,
        pin=Pin.HARD,
        floor=Fidelity.FULL,
        provenance=prov,
        version=3,
    )
    body = page_body(page, Fidelity.COMPRESSED)
    assert body == {
        "object": "clawvm.page",
        "id": PAGE_ID,
        "type": "constraint",
        "scope": "project",
        "level": "compressed",
        "text": page.reprs.compressed.text,
        "tool_calls": [],
        "tokens": page.reprs.compressed.tokens,
        "provenance": {
            "role": "constraint",
            "message_index": 2,
            "tool_call_id": None,
            "tool_name": None,
            "tool_arguments": None,
            "parent_id": "p:ffffffffffff",
        },
        "pin": "hard",
        "floor": "full",
        "version": 3,
        "levels": {"pointer": 1, "structured": 2, "compressed": page.reprs.compressed.tokens, "full": 5},
    }


def test_page_body_carries_the_levels_tool_calls_in_openai_shape() -> None:
    call = ToolCall(id="call_9", name="lookup", arguments='{"q":1}')
    page = make_page(PAGE_ID, PageType.CONVERSATION, "", tool_calls=(call,))
    assert page_body(page, Fidelity.FULL)["tool_calls"] == [
        {"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": '{"q":1}'}}
    ]
    assert page_body(page, Fidelity.POINTER)["tool_calls"] == []


def test_a_stored_page_is_served_in_an_open_gateway(gateway: str, redis_url: str) -> None:
    session = f"pages-{next(_ids)}"
    page = make_page(PAGE_ID, text="the stored evidence")
    redis.Redis.from_url(redis_url).set(Keys.of("default", session_scope(session)).page(PAGE_ID), dump_page(page))
    response = httpx.get(f"{gateway}/clawvm/pages/{PAGE_ID}", params={"session": session, "level": "full"})
    assert response.status_code == 200
    assert response.json() == page_body(page, Fidelity.FULL)


def test_a_free_form_session_id_is_hashed_like_the_chat_route(gateway: str, redis_url: str) -> None:
    session = f"a session with spaces {next(_ids)}"
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi there"}]}
    answer = httpx.post(f"{gateway}/chat/completions", json=chat, headers={"x-clawvm-session": session})
    stored = answer.headers["x-clawvm-session"]
    assert stored != session
    page = make_page(PAGE_ID, text="hashed session evidence")
    redis.Redis.from_url(redis_url).set(Keys.of("default", session_scope(stored)).page(PAGE_ID), dump_page(page))
    response = httpx.get(f"{gateway}/clawvm/pages/{PAGE_ID}", params={"session": session})
    assert response.status_code == 200 and response.json()["text"] == "hashed session evidence"


def test_an_unreadable_page_is_503_backend_error(gateway: str, redis_url: str) -> None:
    session = f"pages-{next(_ids)}"
    redis.Redis.from_url(redis_url).set(Keys.of("default", session_scope(session)).page(PAGE_ID), "{not json")
    response = httpx.get(f"{gateway}/clawvm/pages/{PAGE_ID}", params={"session": session})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "backend_error" and error["type"] == "api_error"


def test_an_unreachable_store_is_503_backend_error() -> None:
    with start(f"redis://127.0.0.1:{free_port()}/0") as url:
        response = httpx.get(f"{url}/clawvm/pages/{PAGE_ID}", params={"session": "s1"}, timeout=30)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "backend_error"
