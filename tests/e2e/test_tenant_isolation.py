"""Zero cross-tenant reads: tenant B, with its own key, never reads tenant A's pages, sessions,
decisions, events or journal, nor recalls them through the model, even with A's exact session id,
project id and page ids.

Two setups: tenants whose page-id tags differ (A's ids are refused outright, 403 `denied`), and
two tenants chosen so their three-hex-digit tags collide (`tenant37`, `tenant73`): then the tag
check cannot tell them apart and the store's per-tenant key space alone must keep A's pages out
of B's reach (404 `no_match`). Everything B can see (every answer to B, and every request the
model received on B's behalf) is scanned for A's marker text and A's page ids; the count of those
cross-tenant reads must be 0.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from policies.pagetable import tenant_tag

SESSION = "shared-session"
PROJECT = "shared-project"
MARKER = "ALPHA-ONLY-7c41"  # in A's tool output, rules and plan: B must never see it
PAGE = re.compile(r"p:[0-9a-f]{12}")
RECALL = "clawvm_recall"
PAIRS = {"distinct_tags": ("alpha", "beta"), "colliding_tags": ("tenant37", "tenant73")}


@dataclass
class Model:
    """The fake model: recalls the queued page-id lists while the gateway offers its tool."""

    recalls: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def respond(self, body: dict[str, Any]) -> dict[str, Any]:
        tools = body.get("tools") or []
        with self.lock:
            if not self.recalls or not any(t["function"]["name"] == RECALL for t in tools):
                return {"content": "done"}
            args = self.recalls.pop(0)
        return {
            "tool_calls": [
                {"id": f"rc{len(self.recalls)}", "function": {"name": RECALL, "arguments": json.dumps(args)}}
            ]
        }


def conversation(owner: str, turns: int = 30) -> list[dict[str, Any]]:
    """A session long enough to be paged out at a 3,000-token budget; `owner`'s text throughout."""
    secret = MARKER if owner == "a" else "beta-text"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"You are the {secret} agent.\n- Never share {secret} data."},
        {"role": "user", "content": f"Plan: 1. read every module of {secret}. I prefer {secret} summaries."},
    ]
    for n in range(turns):
        call = {"id": f"c{n}", "type": "function", "function": {"name": "read_file", "arguments": f'{{"n":{n}}}'}}
        lines = "\n".join(f"{secret} line {k} of module {n}: value = {n * 1000 + k}" for k in range(30))
        messages += [
            {"role": "assistant", "content": f"Reading {secret} module {n}.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{n}", "content": lines},
        ]
    messages.append({"role": "user", "content": f"What was value 7 of {secret} module 3?"})
    return messages


@dataclass
class Setup:
    root: str
    client: httpx.Client
    fake: FakeUpstream
    model: Model
    a: str
    b: str

    def headers(self, tenant: str, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer sk-{tenant}", **extra}

    def chat(self, tenant: str, messages: list[dict[str, Any]], stream: bool = False) -> httpx.Response:
        headers = self.headers(tenant, **{"x-clawvm-session": SESSION, "x-clawvm-project": PROJECT})
        body = {"model": "gpt-4o", "messages": messages, "stream": stream}
        return self.client.post(self.root + "/v1/chat/completions", json=body, headers=headers)

    def get(self, tenant: str, path: str, **params: str) -> httpx.Response:
        headers = self.headers(tenant, **{"x-clawvm-project": PROJECT})
        return self.client.get(self.root + path, params=params, headers=headers)


@pytest.fixture(params=sorted(PAIRS))
def setup(request: pytest.FixtureRequest, start_gateway) -> Iterator[Setup]:
    a, b = PAIRS[request.param]
    assert (tenant_tag(a) == tenant_tag(b)) is (request.param == "colliding_tags")
    config = "".join(
        f"  {name}:\n    api_keys: [sk-{name}]\n    budget: {{max_prompt_tokens: 3000}}\n" for name in (a, b)
    )
    model = Model()
    with start_gateway(config_yaml="tenants:\n" + config, fake=FakeUpstream(model.respond)) as gw:
        with httpx.Client(timeout=60) as client:
            yield Setup(gw.root, client, gw.fake, model, a, b)


def audit_paths() -> list[tuple[str, dict[str, str]]]:
    base = f"/v1/clawvm/sessions/{SESSION}"
    return [
        (base, {}),
        (base + "/decisions", {}),
        (base + "/events", {}),
        (base + "/journal", {}),
        (base + "/journal", {"scope": "project"}),
    ]


def test_tenant_b_never_reads_tenant_a(setup: Setup) -> None:
    s = setup
    leaks: list[str] = []
    scanned: list[str] = []

    def scan(where: str, text: str, ids: set[str]) -> None:
        scanned.append(where)
        if MARKER in text or ids & set(PAGE.findall(text)):
            leaks.append(where)

    # Tenant A works: two turns, so its pages are paged out and it has decisions, events, a journal.
    first = s.chat(s.a, conversation("a"))
    assert first.status_code == 200, first.text
    second = s.chat(s.a, [*conversation("a"), {"role": "assistant", "content": "7"}, {"role": "user", "content": "ok"}])
    assert second.status_code == 200, second.text
    table = s.get(s.a, f"/v1/clawvm/sessions/{SESSION}").json()
    all_ids = {p["id"] for p in table["pages"]} | {f["id"] for f in table["facts"]}
    # Page ids are content digests: the same text in both tenants has the same id (each tenant
    # holding its own copy), so a leak is A's marker, or the id of a page that holds it.
    a_ids = {i for i in all_ids if MARKER in s.get(s.a, f"/v1/clawvm/pages/{i}", session=SESSION, project=PROJECT).text}
    assert len(a_ids) > 60 and MARKER in json.dumps(table)  # A reads its own: the test can see a leak
    for path, params in audit_paths()[1:4]:
        assert s.get(s.a, path, **params).json()["data"], path  # A has records on every stream

    # B, before it has any session: A's session, project and pages are unknown or refused.
    for path, params in audit_paths():
        response = s.get(s.b, path, **params)
        assert response.status_code == 404, (path, response.text)
        scan(f"B {path} {params}", response.text, a_ids)
    expected = 404 if tenant_tag(s.a) == tenant_tag(s.b) else 403
    for page_id in sorted(a_ids):
        for params in ({"session": SESSION}, {"session": SESSION, "project": PROJECT}):
            response = s.get(s.b, f"/v1/clawvm/pages/{page_id}", **params)
            assert response.status_code == expected, response.text
            assert response.json()["error"]["code"] == ("no_match" if expected == 404 else "denied")
            scan(f"B page {page_id}", response.text.replace(page_id, ""), a_ids)  # its own id echoed back is not a read

    # B works in the very same session and project ids, while its model recalls A's page ids.
    ordered = sorted(a_ids)
    recalls = [{"page_ids": ordered[i : i + 8]} for i in range(0, 24, 8)]
    before = len(s.fake.requests)
    with s.model.lock:
        s.model.recalls[:] = recalls
    answer = s.chat(s.b, conversation("b"))
    assert answer.status_code == 200, answer.text
    scan("B chat answer", answer.text, a_ids)
    b_requests = s.fake.requests[before:]
    assert len(b_requests) == 1 + len(recalls)  # the model did recall, every round
    for number, recorded in enumerate(b_requests):
        scan(f"upstream request {number} for B", outside_recalls(recorded.body), a_ids)
        assert recall_codes(recorded.body) <= {"denied", "no_match"} and (number == 0) == (
            not recall_codes(recorded.body)
        )

    # A range of A's ids and a query for A's marker, in B's now existing session: nothing.
    with s.model.lock:
        s.model.recalls[:] = [{"page_ids": [f"{ordered[0]}..{ordered[-1]}"], "query": MARKER}]
    before = len(s.fake.requests)
    more = [*conversation("b"), {"role": "assistant", "content": "7"}, {"role": "user", "content": "more"}]
    ranged = s.chat(s.b, more, stream=True)
    assert ranged.status_code == 200
    scan("B ranged answer", ranged.text, a_ids)
    codes: set[str] = set()
    for recorded in s.fake.requests[before:]:
        scan("upstream request for B's range", outside_recalls(recorded.body), a_ids)
        codes |= recall_codes(recorded.body)
    assert codes and codes <= {"denied", "no_match"}

    # B's own session under the shared id is B's alone, and so is every stream of it.
    for path, params in audit_paths():
        response = s.get(s.b, path, **params)
        assert response.status_code in (200, 404), response.text
        rows = response.json().get("data") if response.status_code == 200 else None
        if isinstance(rows, list):  # B's record of its own refused recalls names the ids B asked for
            refused = [r for r in rows if r.get("kind") == "recall" and r.get("code") != "ok"]
            assert all(MARKER not in json.dumps(r) for r in refused)
            shown = json.dumps([r for r in rows if r not in refused])
        else:
            shown = response.text
        scan(f"B {path} {params} after its turns", shown, a_ids)
    b_table = s.get(s.b, f"/v1/clawvm/sessions/{SESSION}").json()
    assert b_table["pages"] and not a_ids & {p["id"] for p in b_table["pages"]}

    # And A still reads its own, untouched by B's turns in the same ids.
    assert {p["id"] for p in s.get(s.a, f"/v1/clawvm/sessions/{SESSION}").json()["pages"]} == {
        p["id"] for p in table["pages"]
    }
    assert len(scanned) > 2 * len(a_ids) > 120  # every route, every page id of A, every model request for B
    assert leaks == [], f"cross-tenant reads: {leaks}"  # zero cross-tenant reads


def _recall_parts(message: dict[str, Any]) -> bool:
    """The recall tool's own calls and answers in a request the model received: B's ids and query
    asked for (B's input, not a read), with the code the gateway answered."""
    calls = message.get("tool_calls") or []
    return any(c["function"]["name"] == RECALL for c in calls) or str(message.get("tool_call_id", "")).startswith("rc")


def outside_recalls(body: dict[str, Any]) -> str:
    return json.dumps([m for m in body["messages"] if not _recall_parts(m)])


def recall_codes(body: dict[str, Any]) -> set[str]:
    """The codes of the recall answers in a request: `ok` would mean something was served."""
    answers = [m["content"] for m in body["messages"] if str(m.get("tool_call_id", "")).startswith("rc")]
    return {re.match(r"\[recall: (\w+)\]", text).group(1) for text in answers}  # type: ignore[union-attr]
