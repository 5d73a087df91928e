"""The session inspector's routes, served for real: the gateway app on a free port with two
tenants, the shared real Redis, the fake upstream; sessions made by real chat turns."""

from __future__ import annotations

import base64
import itertools
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from bench.fake_upstream import FakeUpstream, serve
from gateway import jsonio
from gateway.api.app import create_app
from gateway.observability.inspector import InspectorKeys
from gateway.settings import Overrides, load_settings
from policies.pagetable import tenant_tag
from tests.factories import order_desk_conversation

CONFIG = "tenants:\n  uiacme:\n    api_keys: [sk-uiacme]\n  uiglobex:\n    api_keys: [sk-uiglobex]\n"
CONFIG += "ui:\n  prompts: 2\n"
_ids = itertools.count()


@dataclass(frozen=True)
class Served:
    url: str  # the gateway root
    client: httpx.Client


@pytest.fixture(autouse=True)
def _offline(offline: None) -> None:
    """Every test here runs with the offline tokenizer environment."""


@pytest.fixture(scope="module")
def served(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("ui-api") / "config.yaml"
    path.write_text(CONFIG)
    with serve(FakeUpstream().app) as upstream_url:
        settings = load_settings(path, {}, Overrides(upstream=upstream_url, store=redis_url, budget=400))
        with serve(create_app(settings)) as url, httpx.Client(timeout=30) as client:
            yield Served(url.removesuffix("/v1"), client)


def auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def new_session(served: Served, key: str = "sk-uiacme", turns: int = 3) -> str:
    """A session of `turns` requests, the transcript growing each time; returns its id."""
    session = f"ui-api-{next(_ids)}"
    messages = order_desk_conversation("You are the order desk agent. Never cancel an order without asking first.")
    for n in range(turns):
        grown = [*messages, *({"role": "user", "content": f"And question {i}?"} for i in range(n))]
        headers = {**auth(key), "x-clawvm-session": session}
        answer = served.client.post(
            served.url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": grown}, headers=headers
        )
        assert answer.status_code == 200, answer.text
    return session


def get(served: Served, path: str, key: str | None = "sk-uiacme", **params: str) -> httpx.Response:
    return served.client.get(f"{served.url}{path}", params=params, headers=auth(key))


def timeline(served: Served, session: str, turns: int, key: str = "sk-uiacme") -> dict:
    """The timeline once every turn's record is in (they are written after each answer)."""
    deadline = time.monotonic() + 10
    while True:
        body = get(served, f"/v1/clawvm/sessions/{session}/timeline", key).json()
        if len(body.get("turns", [])) >= turns or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def test_the_page_is_served_to_anyone_and_holds_no_data(served: Served) -> None:
    page = get(served, "/ui", key=None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "/ui/app.js" in page.text and "http" not in page.text.replace("http-equiv", "")  # nothing from a CDN
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = get(served, f"/ui/{name}", key=None)
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    assert get(served, "/ui/index.py", key=None).status_code == 404
    assert get(served, "/ui/..%2Fapp.py", key=None).status_code == 404


def test_every_data_route_needs_the_tenants_key(served: Served) -> None:
    session = new_session(served)
    paths = [
        "/v1/clawvm/sessions",
        f"/v1/clawvm/sessions/{session}/timeline",
        f"/v1/clawvm/sessions/{session}/prompts/1-0",
        f"/v1/clawvm/sessions/{session}/pages/p:{tenant_tag('uiacme')}000000000",
    ]
    for path in paths:
        for key in (None, "sk-wrong"):
            answer = get(served, path, key)
            assert answer.status_code == 401, (path, key)
            assert session not in answer.text


def test_the_sessions_list_is_the_tenants_own_newest_first(served: Served) -> None:
    older, newer = new_session(served, turns=2), new_session(served, turns=1)
    other = new_session(served, key="sk-uiglobex")
    timeline(served, older, 2)
    timeline(served, newer, 1)
    rows = get(served, "/v1/clawvm/sessions").json()["data"]
    ids = [r["id"] for r in rows]
    assert ids.index(newer) < ids.index(older) and other not in ids
    row = rows[ids.index(older)]
    assert row["turns"] == 2 and row["requests"] == 2 and row["lifecycle_events"] == 1  # its start (or reset)
    assert row["tokens_received"] > 0 and row["tokens_forwarded"] > 0
    assert [r["id"] for r in get(served, "/v1/clawvm/sessions", offset="1", limit="1").json()["data"]] == ids[1:2]
    assert other in [r["id"] for r in get(served, "/v1/clawvm/sessions", "sk-uiglobex").json()["data"]]
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"offset": "-1"}, {"limit": "x"}):
        answer = get(served, "/v1/clawvm/sessions", **bad)
        assert answer.status_code == 400 and answer.json()["error"]["param"] in bad


def test_the_timeline_has_a_record_per_request_and_the_heat_map_a_row_per_page(served: Served) -> None:
    session = new_session(served, turns=3)
    body = timeline(served, session, 3)
    assert [t["turn"] for t in body["turns"]] == [1, 2, 3]
    assert body["heat"]["columns"] == 3 and len(body["heat"]["rows"]) == len(body["heat"]["pages"]) > 4
    assert {p["type"] for p in body["heat"]["pages"]} >= {"bootstrap", "evidence"}
    assert body["turns"][1]["prefix"]["messages"] > 0  # an append repeats the previous prompt's head
    first = body["events"][0]  # a start, or a reset: the same agent's earlier sessions share the project
    assert first["kind"] == "lifecycle" and first["event"] in ("start", "reset") and first["turn_index"] == 0
    assert body["turns"][0]["events"][0] == {k: v for k, v in first.items() if k not in ("id", "turn_index")}
    assert all("levels" not in t for t in body["turns"])  # the heat map carries them
    assert body["retention"] == {"turns": 1000, "prompts": 2}


def test_a_kept_prompt_comes_with_its_diff_and_older_ones_are_gone(served: Served) -> None:
    session = new_session(served, turns=3)
    turns = timeline(served, session, 3)["turns"]
    newest = get(served, f"/v1/clawvm/sessions/{session}/prompts/{turns[-1]['prompt']}").json()
    assert newest["object"] == "clawvm.prompt" and newest["received"] and newest["forwarded"]
    assert sum(op["received"][1] - op["received"][0] for op in newest["diff"]) == len(newest["received"])
    assert sum(op["forwarded"][1] - op["forwarded"][0] for op in newest["diff"]) == len(newest["forwarded"])
    gone = get(served, f"/v1/clawvm/sessions/{session}/prompts/{turns[0]['prompt']}")  # ui.prompts: 2
    assert gone.status_code == 404 and "ui.prompts" in gone.json()["error"]["message"]


def test_a_prompt_kept_by_the_earlier_version_reads_the_same_and_a_lost_one_is_404(
    served: Served, redis_url: str
) -> None:
    session = new_session(served, turns=2)
    newest_id = timeline(served, session, 2)["turns"][-1]["prompt"]
    newest = get(served, f"/v1/clawvm/sessions/{session}/prompts/{newest_id}").json()
    keys = InspectorKeys.of("uiacme", session)
    whole = {"received": newest["received"], "forwarded": newest["forwarded"]}
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        packed = base64.b64encode(zlib.compress(jsonio.dumps(whole), 1)).decode("ascii")
        earlier = client.xadd(keys.prompts, {"r": packed})  # as the earlier version wrote a prompt
        old = get(served, f"/v1/clawvm/sessions/{session}/prompts/{earlier}").json()
        assert [old[k] for k in ("received", "forwarded", "diff")] == [
            newest[k] for k in ("received", "forwarded", "diff")
        ]
        client.delete(keys.messages)  # lost (not expected): reads as not kept, never a 500
    lost = get(served, f"/v1/clawvm/sessions/{session}/prompts/{newest_id}")
    assert lost.status_code == 404 and lost.json()["error"]["code"] == "no_match"


def test_a_pages_view_holds_its_four_representations_and_decisions(served: Served) -> None:
    session = new_session(served, turns=3)
    body = timeline(served, session, 3)
    evidence = next(p["id"] for p in body["heat"]["pages"] if p["type"] == "evidence")
    view = get(served, f"/v1/clawvm/sessions/{session}/pages/{evidence}").json()
    assert view["type"] == "evidence" and view["provenance"]["role"] == "tool"
    assert list(view["representations"]) == ["pointer", "structured", "compressed", "full"]
    assert view["representations"]["full"]["text"] == view["text"]
    assert view["in_table"]["id"] == evidence and len(view["history"]) == 3
    assert all(d.get("page_id") == evidence or evidence in d.get("pages", ()) for d in view["decisions"])


def test_another_tenant_sees_none_of_it(served: Served) -> None:
    session = new_session(served)
    body = timeline(served, session, 3)
    page_id = body["heat"]["pages"][0]["id"]
    for path in ("timeline", f"pages/{page_id}", f"prompts/{body['turns'][-1]['prompt']}"):
        answer = get(served, f"/v1/clawvm/sessions/{session}/{path}", "sk-uiglobex")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "no_match"
        assert page_id not in answer.text
    mine = new_session(served, key="sk-uiglobex")  # globex's own session, acme's page id: refused unseen
    answer = get(served, f"/v1/clawvm/sessions/{mine}/pages/{page_id}", "sk-uiglobex")
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "denied"


def test_bad_ids_are_400_not_500(served: Served) -> None:
    session = new_session(served, turns=1)
    assert get(served, "/v1/clawvm/sessions/bad%20id/timeline").status_code == 400
    assert get(served, f"/v1/clawvm/sessions/{session}/pages/not-a-page").status_code == 400
    assert get(served, f"/v1/clawvm/sessions/{session}/prompts/not-an-id").status_code == 404
    assert get(served, "/v1/clawvm/sessions/no-such-session/timeline").status_code == 404
