"""`GET /v1/clawvm/pages/{id}` against the running gateway: pages made by a real chat turn,
read back per tenant and session from the real Redis store."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest

from gateway.store.store import RedisStore, session_scope
from gateway.store.tables import page_ids
from policies.pages import Page
from policies.pagetable import make_page_id, tenant_tag
from tests.factories import order_desk_conversation

CONFIG = "tenants:\n  acme:\n    api_keys: [sk-acme]\n  globex:\n    api_keys: [sk-globex]\n"
SESSION = "pages-api-1"
LEVELS = ("full", "compressed", "structured", "pointer")


def conversation() -> list[dict]:
    return order_desk_conversation("You are a support agent for the order desk.")


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def stored_pages(redis_url: str, tenant: str, session: str) -> dict[str, Page]:
    async def read() -> dict[str, Page]:
        async with RedisStore.from_url(redis_url) as store:
            record = await store.load_table(tenant, session_scope(session))
            assert record is not None, "the chat turn stored no table"
            return await store.get_pages(tenant, session_scope(session), page_ids(record.data))

    return anyio.run(read)


def chat(client: httpx.Client, gw, key: str, session: str, messages: list[dict]) -> None:
    headers = {**auth(key), "x-clawvm-session": session}
    response = client.post(
        gw.url + "/chat/completions", json={"model": "gpt-4o", "messages": messages}, headers=headers
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def served(start_gateway, redis_url: str) -> Iterator[tuple[object, httpx.Client, dict[str, Page]]]:
    with start_gateway(config_yaml=CONFIG) as gw, httpx.Client(timeout=30) as client:
        chat(client, gw, "sk-acme", SESSION, conversation())
        yield gw, client, stored_pages(redis_url, "acme", SESSION)


def fetch(client: httpx.Client, gw, page_id: str, key: str | None = "sk-acme", **params: str) -> httpx.Response:
    params.setdefault("session", SESSION)
    return client.get(f"{gw.url}/clawvm/pages/{page_id}", params=params, headers=auth(key) if key else {})


def message_page(pages: dict[str, Page], index: int) -> Page:
    return next(p for p in pages.values() if p.provenance.message_index == index and not p.extracted)


def test_full_text_is_the_original_message(served) -> None:
    gw, client, pages = served
    for index in (1, 3, 4):
        page = message_page(pages, index)
        body = fetch(client, gw, page.id).json()
        assert body["object"] == "clawvm.page" and body["id"] == page.id
        assert body["level"] == "full"
        assert body["text"] == conversation()[index]["content"]


def test_every_level_answers_its_representation(served) -> None:
    gw, client, pages = served
    page = message_page(pages, 3)
    for level in LEVELS:
        response = fetch(client, gw, page.id, level=level)
        assert response.status_code == 200
        body = response.json()
        shown = getattr(page.reprs, level)
        assert body["level"] == level
        assert body["text"] == shown.text and body["tokens"] == shown.tokens
        assert body["levels"] == {name: getattr(page.reprs, name).tokens for name in LEVELS}
    assert body["type"] == "evidence" and body["scope"] == page.scope.value
    assert body["pin"] == page.pin.value and body["floor"] == page.floor.label and body["version"] == page.version
    assert body["provenance"] == {
        "role": "tool",
        "message_index": 3,
        "tool_call_id": "call_1",
        "tool_name": "get_order",
        "tool_arguments": '{"id":"W123"}',
        "parent_id": None,
    }


def test_tool_calls_of_an_assistant_page_are_shown(served) -> None:
    gw, client, pages = served
    body = fetch(client, gw, message_page(pages, 2).id).json()
    assert body["tool_calls"] == conversation()[2]["tool_calls"]


def test_session_header_works_like_the_query_parameter(served) -> None:
    gw, client, pages = served
    page = message_page(pages, 1)
    headers = {**auth("sk-acme"), "x-clawvm-session": SESSION}
    response = client.get(f"{gw.url}/clawvm/pages/{page.id}", headers=headers)
    assert response.status_code == 200 and response.json()["id"] == page.id


def test_the_same_id_is_answered_byte_for_byte_the_same(served) -> None:
    gw, client, pages = served
    page = message_page(pages, 3)
    assert fetch(client, gw, page.id).content == fetch(client, gw, page.id).content


def unknown(tenant: str = "acme", suffix: str = "") -> str:
    return make_page_id(tenant_tag(tenant), "012345678") + suffix


def test_unknown_page_is_404_no_match(served) -> None:
    gw, client, _ = served
    response = fetch(client, gw, unknown())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_match"


def test_a_page_of_another_session_is_404(served) -> None:
    gw, client, pages = served
    response = fetch(client, gw, message_page(pages, 1).id, session="another-session")
    assert response.status_code == 404 and response.json()["error"]["code"] == "no_match"


def test_another_tenants_page_is_denied_whether_or_not_it_exists(served) -> None:
    gw, client, pages = served
    chat(client, gw, "sk-globex", SESSION, [{"role": "user", "content": "A question of globex's own."}])
    theirs = fetch(client, gw, message_page(pages, 3).id, key="sk-globex")
    missing = fetch(client, gw, unknown("acme"), key="sk-globex")
    assert theirs.status_code == missing.status_code == 403
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "denied"
    assert theirs.json()["error"]["type"] == "permission_error"
    assert "shipped" not in theirs.text


def test_no_key_is_401(served) -> None:
    gw, client, pages = served
    response = fetch(client, gw, message_page(pages, 1).id, key=None)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert fetch(client, gw, message_page(pages, 1).id, key="sk-wrong").status_code == 401


@pytest.mark.parametrize(
    "page_id",
    [
        "p:01234567890",
        "p:0123456789abc",
        "p:ABCDEF012345",
        "q:012345678901",
        "p:012345678901~",
        "p:012345678901~0",
        "p:*",
    ],
)
def test_bad_page_id_is_400(served, page_id: str) -> None:
    gw, client, _ = served
    response = fetch(client, gw, page_id)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "page_id"


def test_suffixed_page_id_is_accepted_and_looked_up(served) -> None:
    gw, client, _ = served
    response = fetch(client, gw, unknown(suffix="~2"))
    assert response.status_code == 404 and response.json()["error"]["code"] == "no_match"


@pytest.mark.parametrize("level", ["none", "FULL", "", "summary"])
def test_bad_level_is_400(served, level: str) -> None:
    gw, client, pages = served
    response = fetch(client, gw, message_page(pages, 1).id, level=level)
    assert response.status_code == 400 and response.json()["error"]["param"] == "level"


def test_missing_session_is_400_naming_the_parameter(served) -> None:
    gw, client, pages = served
    url = f"{gw.url}/clawvm/pages/{message_page(pages, 1).id}"
    response = client.get(url, headers=auth("sk-acme"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "session" and "session" in error["message"]
    assert not [r for r in gw.fake.requests if "pages" in r.path]  # never relayed upstream
