"""The audit routes and /metrics, served for real: the gateway app on a free port, the shared
real Redis, the fake upstream. Sessions are made by real chat turns; the decision and event
streams and the write-back journal are seeded straight into Redis (the writers are elsewhere)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import httpx
import pytest

from bench.fake_upstream import FakeUpstream, serve
from gateway.api.app import create_app
from gateway.observability.audit import AuditLog
from gateway.settings import Overrides, load_settings
from gateway.store.store import Keys, RedisStore, project_scope, session_scope
from tests.factories import order_desk_conversation

CONFIG = "tenants:\n  acme:\n    api_keys: [sk-acme]\n  globex:\n    api_keys: [sk-globex]\n"
_ids = itertools.count()


@dataclass(frozen=True)
class Served:
    url: str  # the gateway root
    client: httpx.Client
    redis_url: str


@pytest.fixture(autouse=True)
def _offline(offline: None) -> None:
    """Every test here runs with the offline tokenizer environment."""


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("audit-api") / "config.yaml"
    path.write_text(CONFIG)
    with serve(FakeUpstream().app) as upstream_url:
        settings = load_settings(path, {}, Overrides(upstream=upstream_url, store=redis_url))
        with serve(create_app(settings)) as url, httpx.Client(timeout=30) as client:
            yield Served(url.removesuffix("/v1"), client, redis_url)


def auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def conversation() -> list[dict]:
    return order_desk_conversation("You are the order desk agent. Never cancel an order without asking first.")


def new_session(served: Served, key: str = "sk-acme", project: str = "proj-audit") -> str:
    """A session made by one real chat turn; returns its id."""
    session = f"audit-api-{next(_ids)}"
    headers = {**auth(key), "x-clawvm-session": session, "x-clawvm-project": project}
    body = {"model": "gpt-4o", "messages": conversation()}
    response = served.client.post(served.url + "/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-clawvm-session"] == session
    return session


def get(served: Served, path: str, key: str | None = "sk-acme", **params: str) -> httpx.Response:
    return served.client.get(f"{served.url}/v1/clawvm/sessions/{path}", params=params, headers=auth(key))


def seed(served: Served, tenant: str, session: str, decisions: list[dict], events: list[dict]) -> None:
    async def write() -> None:
        async with RedisStore.from_url(served.redis_url) as store:
            await AuditLog(store.client).record(tenant, session, decisions, events)

    anyio.run(write)


def seed_journal(served: Served, key: str, rows: list[dict[str, str]]) -> None:
    async def write() -> None:
        async with RedisStore.from_url(served.redis_url) as store:
            for row in rows:
                await store.client.xadd(key, row)

    anyio.run(write)


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param
    return error


def test_the_session_shows_every_page_in_transcript_order(served: Served) -> None:
    session = new_session(served)
    body = get(served, session).json()
    assert (body["object"], body["id"], body["project"], body["turn"]) == ("clawvm.session", session, "proj-audit", 1)
    assert body["version"] >= 1
    pages = body["pages"]
    assert [p["provenance"]["message_index"] for p in pages] == [0, 1, 2, 3, 4]
    assert [p["provenance"]["role"] for p in pages] == ["system", "user", "assistant", "tool", "user"]
    assert pages[0]["type"] == "bootstrap" and pages[0]["pin"] == "hard"
    assert pages[3]["type"] == "evidence" and pages[3]["provenance"]["tool_name"] == "get_order"
    levels = {"none", "pointer", "structured", "compressed", "full"}
    for row in pages:
        assert row["level"] in levels and row["floor"] in levels
        assert row["tokens"]["full"] > 0
        if row["level"] == "full":
            assert row["tokens"]["shown"] == row["tokens"]["full"]
    assert pages[4]["level"] == "full"  # the newest turn


def test_the_session_lists_facts_with_their_parent_and_the_tally(served: Served) -> None:
    session = new_session(served)
    body = get(served, session).json()
    system_id = body["pages"][0]["id"]
    rules = [f for f in body["facts"] if f["type"] == "constraint"]
    assert rules and all(f["parent"] == system_id for f in rules)
    assert any("cancel" in f["text"].lower() for f in rules)
    assert body["tally"] == {"faults": {}, "alerts": 0, "hits": 0, "insufficient": 0, "thrash": 0.0}


def test_no_key_is_401_on_every_route(served: Served) -> None:
    session = new_session(served)
    for path in (session, f"{session}/decisions", f"{session}/events", f"{session}/journal"):
        assert_error(get(served, path, key=None), 401)
        assert_error(get(served, path, key="sk-wrong"), 401)


def test_another_tenant_cannot_see_the_session(served: Served) -> None:
    session = new_session(served)
    seed(served, "acme", session, [{"n": 1}], [{"n": 1}])
    for path in (session, f"{session}/decisions", f"{session}/events", f"{session}/journal"):
        assert get(served, path).status_code == 200
        assert_error(get(served, path, key="sk-globex"), 404, "session_id")


def test_an_unknown_session_is_404(served: Served) -> None:
    for path in ("never-seen", "never-seen/decisions", "never-seen/events", "never-seen/journal"):
        error = assert_error(get(served, path), 404, "session_id")
        assert error["code"] == "no_match"


def test_decisions_page_forward_with_after_and_limit(served: Served) -> None:
    session = new_session(served)
    before = get(served, f"{session}/decisions", limit="1000").json()["data"]  # what the chat turn recorded
    records = [{"page_id": f"p:{i}", "action": "degrade", "reason": "budget"} for i in range(5)]
    seed(served, "acme", session, records, [])
    seen: list[dict] = []
    after = ""
    while True:
        body = get(served, f"{session}/decisions", limit="2", **({"after": after} if after else {})).json()
        assert body["object"] == "list" and len(body["data"]) <= 2
        seen += body["data"]
        if not body["has_more"]:
            break
        after = body["next_after"]
    assert seen[: len(before)] == before
    assert [{k: v for k, v in r.items() if k != "id"} for r in seen[len(before) :]] == records
    assert len({r["id"] for r in seen}) == len(seen)
    everything = get(served, f"{session}/decisions", limit="1000").json()
    assert everything["data"] == seen and everything["has_more"] is False
    assert everything["next_after"] == seen[-1]["id"]
    tail = get(served, f"{session}/decisions", after=seen[-1]["id"]).json()
    assert tail == {"object": "list", "data": [], "has_more": False, "next_after": None}


def test_events_are_their_own_stream(served: Served) -> None:
    session = new_session(served)
    seed(served, "acme", session, [{"page_id": "p:x"}], [{"type": "fault", "kind": "refetch", "page_id": "p:x"}])
    data = get(served, f"{session}/events").json()["data"]
    assert data[-1] == {"type": "fault", "kind": "refetch", "page_id": "p:x", "id": data[-1]["id"]}
    assert all(r.get("page_id") != "p:x" or r.get("kind") == "refetch" for r in data)
    decided = get(served, f"{session}/decisions").json()["data"]
    assert decided[-1]["page_id"] == "p:x" and "kind" not in decided[-1]


def test_the_journal_reads_the_session_or_the_project_stream(served: Served) -> None:
    session = new_session(served, project="proj-journal")
    own_key = Keys.of("acme", session_scope(session)).writeback
    seed_journal(served, own_key, [{"op": "append", "status": "committed", "seeded": "session"}])
    project_key = Keys.of("acme", project_scope("proj-journal")).writeback
    seed_journal(served, project_key, [{"op": "set", "status": "rejected", "seeded": "project"}])
    own = get(served, f"{session}/journal", limit="1000").json()["data"]
    assert own[-1] == {"op": "append", "status": "committed", "seeded": "session", "id": own[-1]["id"]}
    assert all(isinstance(v, str) for r in own for v in r.values())  # flat field maps
    shared = get(served, f"{session}/journal", scope="project", limit="1000").json()["data"]
    assert shared[-1]["seeded"] == "project"
    assert not any(r.get("seeded") == "session" for r in shared)
    headers = {**auth("sk-acme"), "x-clawvm-project": "proj-other"}
    other = served.client.get(f"{served.url}/v1/clawvm/sessions/{session}/journal?scope=project", headers=headers)
    assert other.status_code == 200
    assert not any(r.get("seeded") for r in other.json()["data"])
    assert_error(get(served, f"{session}/journal", scope="tenant"), 400, "scope")


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten", "1.5", ""])
def test_a_bad_limit_is_400(served: Served, limit: str) -> None:
    session = new_session(served)
    for route in ("decisions", "events", "journal"):
        assert_error(get(served, f"{session}/{route}", limit=limit), 400, "limit")


def test_limit_bounds_are_accepted(served: Served) -> None:
    session = new_session(served)
    for limit in ("1", "1000"):
        assert get(served, f"{session}/decisions", limit=limit).status_code == 200


def test_a_bad_cursor_is_400(served: Served) -> None:
    session = new_session(served)
    assert_error(get(served, f"{session}/decisions", after="yesterday"), 400, "after")


@pytest.mark.parametrize("bad", ["has space", "x" * 97, "semi;colon", "%C3%A9t%C3%A9"])
def test_a_bad_session_id_is_400(served: Served, bad: str) -> None:
    for suffix in ("", "/decisions", "/journal"):
        assert_error(get(served, bad + suffix), 400, "session_id")


def test_metrics_are_served_without_a_key(served: Served) -> None:
    response = served.client.get(served.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "clawvm_policy_seconds_bucket" in response.text
    assert "clawvm_requests" in response.text


def long_conversation() -> list[dict]:
    messages: list[dict] = [{"role": "system", "content": "You are the order desk agent."}]
    for i in range(6):
        call = {"id": f"call_{i}", "type": "function", "function": {"name": "get_order", "arguments": f'{{"id":{i}}}'}}
        messages += [
            {"role": "user", "content": f"Look up order {i}."},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": f'{{"order":{i},"line":"widget"}}\n' * 60},
        ]
    return [*messages, {"role": "user", "content": "Summarise every order."}]


def test_levels_and_shown_tokens_match_the_last_prompt(redis_url: str) -> None:
    with serve(FakeUpstream().app) as upstream_url:
        settings = load_settings(None, {}, Overrides(upstream=upstream_url, store=redis_url, budget=1500))
        with serve(create_app(settings)) as url, httpx.Client(timeout=30) as client:
            root = url.removesuffix("/v1")
            session = f"audit-api-{next(_ids)}"
            body = {"model": "gpt-4o", "messages": long_conversation()}
            sent = client.post(url + "/chat/completions", json=body, headers={"x-clawvm-session": session})
            assert sent.status_code == 200, sent.text
            table = client.get(f"{root}/v1/clawvm/sessions/{session}").json()
            degraded = [p for p in table["pages"] if p["level"] not in ("full", "none")]
            assert degraded, "the budget should have forced some pages below full"
            for row in degraded:
                page = client.get(f"{url}/clawvm/pages/{row['id']}", params={"session": session, "level": row["level"]})
                assert row["tokens"]["shown"] == page.json()["tokens"] <= row["tokens"]["full"]
            assert any(p["tokens"]["shown"] < p["tokens"]["full"] for p in degraded)


def test_the_journal_reads_what_the_sessions_user_stated(served: Served) -> None:
    """`scope=user`: the journal of the session's end user's part of the project, where their
    preferences are committed; the project's journal does not hold them."""
    session = f"audit-api-{next(_ids)}"
    headers = {**auth("sk-acme"), "x-clawvm-session": session, "x-clawvm-user": "alice@example.com"}
    said = [{"role": "system", "content": "You are the order desk agent. Never cancel an order without asking."}]
    said.append({"role": "user", "content": "I prefer answers in Portuguese."})
    body = {"model": "gpt-4o", "messages": said}
    assert served.client.post(served.url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
    mine = get(served, f"{session}/journal", scope="user", limit="1000").json()["data"]
    assert [(r["status"], r["type"]) for r in mine] == [("committed", "preference")]
    project = get(served, f"{session}/journal", scope="project", limit="1000").json()["data"]
    assert [r["type"] for r in project] == ["constraint"]  # the agent's own rule
