"""Bad inputs over real HTTP: hypothesis-generated bodies and headers, and OpenAI's edge cases.

One gateway for the module (uvicorn on a free port, the shared real Redis) in front of the fake
upstream, wrapped so that anything the fake itself cannot digest is answered as a real upstream
would, a 400 in OpenAI's shape: every 5xx seen here therefore comes from the gateway. Under
fuzzing: never a 500 (never a 5xx at all), every refusal is OpenAI error JSON with a sensible
status, every 200 is a whole completion that never mentions the gateway's own recall tool, and
the gateway still answers /health afterwards. The runs are derandomized (CI is deterministic).
The structure-aware sweep (bench.fuzz: every JSON path of valid requests, every JSON type) runs
over one keep-alive connection and also counts dropped connections and wrong types let through.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bench.fake_upstream import FakeUpstream, error, serve
from bench.fuzz import (
    BASES,
    OneConnection,
    arguments,
    auth_headers,
    chat_bodies,
    encode,
    header_sets,
    mutated_chat_bodies,
    raw_bodies,
    structural_mutations,
    sweep,
    upstream_answers,
    valid_chat_bodies,
)
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings
from gateway.upstream.tokens import prepare_offline

KEY = "sk-fuzz-tenant-key"
RECALL = "clawvm_recall"
CONFIG = f"""
server:
  max_header_bytes: 16384
  max_body_bytes: 400000
tenants:
  fuzz:
    api_keys: [{KEY}]
    budget: {{max_prompt_tokens: 3000}}
"""
REFUSALS = frozenset({400, 401, 403, 404, 405, 413, 422, 431})
PAGE = re.compile(r"p:[0-9a-f]{12}")
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Script:
    """What the fake model does next: recall calls (their raw `arguments`) to make while the
    gateway offers its tool, optionally mixed with one of the agent's own calls."""

    recalls: list[Any] = field(default_factory=list)
    mixed: bool = False
    answers: list[tuple[int, str, bytes]] = field(default_factory=list)  # raw upstream answers, first
    lock: threading.Lock = field(default_factory=threading.Lock)

    def respond(self, body: dict[str, Any]) -> dict[str, Any]:
        tools = body.get("tools") if isinstance(body.get("tools"), list) else []
        offered = any(isinstance(t, dict) and (t.get("function") or {}).get("name") == RECALL for t in tools)
        with self.lock:
            if not (offered and self.recalls):
                return {"content": "ok"}
            args = self.recalls.pop(0)
        calls = [{"id": f"rc{len(self.recalls)}", "function": {"name": RECALL, "arguments": args}}]
        if self.mixed:
            calls.append({"id": "agent_call", "function": {"name": "read_file", "arguments": "{}"}})
        return {"content": None, "tool_calls": calls}


class Tolerant:
    """The fake upstream, answering 400 in OpenAI's shape where the fake itself fails (Starlette
    sends its plain 500, then re-raises: that 500 is held back and replaced); and answering the
    script's raw answers, while it has any, instead of the fake."""

    def __init__(self, app: ASGIApp, script: Script) -> None:
        self.app = app
        self.script = script

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.script.lock:
            raw = self.script.answers.pop(0) if self.script.answers and scope["type"] == "http" else None
        if raw is not None:
            status, media_type, content = raw
            await Response(content, status_code=status, media_type=media_type)(scope, receive, send)
            return
        failed = False

        async def holding(message: dict[str, Any]) -> None:
            nonlocal failed
            failed = failed or (message["type"] == "http.response.start" and message["status"] == 500)
            if not failed:
                await send(message)

        try:
            await self.app(scope, receive, holding)
        except Exception:
            if not failed:
                raise
        if failed:
            await error(400, "upstream rejected the request")(scope, receive, send)


@dataclass(frozen=True)
class Fuzzed:
    root: str
    client: httpx.Client
    fake: FakeUpstream
    script: Script


@pytest.fixture(scope="module")
def fuzzed(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(CONFIG)
    script = Script()
    fake = FakeUpstream(script.respond)
    with pytest.MonkeyPatch.context() as patch:
        env: dict[str, str] = {}
        prepare_offline(env)
        for name, value in env.items():
            patch.setenv(name, value)
        with serve(Tolerant(fake.app, script)) as upstream_url:
            config = load_settings(path, {}, Overrides(upstream=upstream_url, store=redis_url))
            with serve(create_app(config)) as url, httpx.Client(timeout=60) as client:
                yield Fuzzed(url.removesuffix("/v1"), client, fake, script)


def post(fz: Fuzzed, body: bytes, headers: dict[str, bytes] | None = None) -> httpx.Response:
    sent = {"authorization": f"Bearer {KEY}".encode(), "content-type": b"application/json"}
    return fz.client.post(fz.root + "/v1/chat/completions", content=body, headers=sent | (headers or {}))


def check(response: httpx.Response) -> None:
    """A sensible answer: a refusal in OpenAI's error shape, or a whole completion."""
    status = response.status_code
    if currently_in_test_context():
        event(f"status {status}")
    assert status < 500, f"{status}: {response.text[:2000]}"
    if status != 200:
        assert status in REFUSALS, f"{status}: {response.text[:2000]}"
        body = response.json()
        assert set(body) == {"error"}
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
        assert error["type"] in ("invalid_request_error", "permission_error")
        return
    assert RECALL not in response.text  # the agent never sees the gateway's own tool
    if response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.endswith("data: [DONE]\n\n")
        assert response.text.count("data: [DONE]") == 1
    else:
        assert response.json()["object"] == "chat.completion"


def healthy(fz: Fuzzed) -> None:
    response = fz.client.get(fz.root + "/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


# -- hypothesis ---------------------------------------------------------------------------------


@FUZZ
@given(body=raw_bodies())
def test_arbitrary_bodies_never_500(fuzzed: Fuzzed, body: bytes) -> None:
    response = post(fuzzed, body)
    check(response)
    assert response.status_code != 200 or body.lstrip().startswith(b"{")


@settings(FUZZ, max_examples=250)
@given(body=chat_bodies(), headers=header_sets(KEY))
def test_near_valid_chat_bodies_and_odd_headers_never_500(
    fuzzed: Fuzzed, body: dict[str, Any], headers: dict[str, bytes]
) -> None:
    response = post(fuzzed, encode(body), headers)
    check(response)
    session = response.headers.get("x-clawvm-session")
    if session is not None:  # whatever the client sent, the id the gateway uses is a plain store id
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,96}", session)


@settings(FUZZ, max_examples=300)
@given(body=mutated_chat_bodies(), session=st.sampled_from([b"mutated-1", b"mutated-2", b"mutated-3"]))
def test_conversations_broken_deep_inside_never_500(fuzzed: Fuzzed, body: dict[str, Any], session: bytes) -> None:
    """A few sessions take every mutated body in turn: boundaries, pairing and ingest see them all."""
    check(post(fuzzed, encode(body), {"x-clawvm-session": session}))


@settings(FUZZ, max_examples=120)
@given(body=valid_chat_bodies(), auth=auth_headers(KEY).filter(lambda h: KEY.encode() in b"".join(h.values())))
def test_well_formed_conversations_are_answered(fuzzed: Fuzzed, body: dict[str, Any], auth: dict[str, bytes]) -> None:
    before = len(fuzzed.fake.requests)
    response = post(fuzzed, encode(body), auth)
    if response.status_code == 401:  # a variant that only looks like the key ("Bearer <key>x" etc.)
        assert KEY not in response.text
        return
    assert response.status_code == 200, response.text[:2000]
    check(response)
    forwarded = fuzzed.fake.requests[before].body
    assert forwarded is not None and forwarded["messages"][-1] == body["messages"][-1]


def paged_session(turns: int = 40) -> list[dict[str, Any]]:
    """A conversation long enough that, at a 3,000-token budget, most of it is paged out."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful coding agent. Never push to main."},
        {"role": "user", "content": "Please fix the build."},
    ]
    for n in range(turns):
        call = {"id": f"c{n}", "type": "function", "function": {"name": "read_file", "arguments": f'{{"n":{n}}}'}}
        lines = "\n".join(f"line {k} of module {n}: value = {n * 1000 + k}" for k in range(40))
        messages += [
            {"role": "assistant", "content": f"Reading module {n}.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{n}", "content": lines},
        ]
    messages.append({"role": "user", "content": "What was value 7 of module 3?"})
    return messages


@settings(FUZZ, max_examples=100)
@given(
    recalls=st.lists(st.one_of(arguments(), st.just("PAGES"), st.just("RANGE")), min_size=1, max_size=4),
    mixed=st.booleans(),
    stream=st.booleans(),
)
def test_fuzzed_recall_arguments_on_a_paged_session(
    fuzzed: Fuzzed, recalls: list[Any], mixed: bool, stream: bool
) -> None:
    """The model calls the recall tool with anything at all: the agent still gets a clean answer."""
    body = {"model": "gpt-4o", "messages": paged_session(), "stream": stream}
    first = post(fuzzed, encode({**body, "stream": False}), {"x-clawvm-session": b"fuzz-paged"})
    assert first.status_code == 200, first.text[:2000]
    ids = PAGE.findall(json.dumps(fuzzed.fake.requests[-1].body))
    assert ids, "the session must be paged for this test to mean anything"
    real = {"PAGES": json.dumps({"page_ids": ids[:3]}), "RANGE": json.dumps({"page_ids": [f"{ids[0]}..{ids[-1]}"]})}
    with fuzzed.script.lock:
        fuzzed.script.recalls[:] = [real.get(r, r) if isinstance(r, str) else r for r in recalls]
        fuzzed.script.mixed = mixed
    try:
        response = post(fuzzed, encode(body), {"x-clawvm-session": b"fuzz-paged"})
    finally:
        with fuzzed.script.lock:
            fuzzed.script.recalls.clear()
            fuzzed.script.mixed = False
    if response.status_code == 400:  # the fake model itself refused what it asked for (a lone surrogate)
        assert response.json()["error"]["message"] == "upstream rejected the request"
        return
    assert response.status_code == 200, response.text[:2000]
    check(response)


@settings(FUZZ, max_examples=200)
@given(answers=st.lists(upstream_answers(), min_size=1, max_size=4), stream=st.booleans())
def test_garbage_from_the_upstream_is_never_a_500(
    fuzzed: Fuzzed, answers: list[tuple[int, str, bytes]], stream: bool
) -> None:
    """The model (a broken upstream) answers anything at all while the recall tool is offered: the
    gateway relays an upstream error, refuses with 502, or answers, but never fails itself."""
    body = encode({"model": "gpt-4o", "messages": paged_session(), "stream": stream})
    with fuzzed.script.lock:
        fuzzed.script.answers[:] = answers
    try:
        response = post(fuzzed, body, {"x-clawvm-session": b"fuzz-garbage"})
    finally:
        with fuzzed.script.lock:
            fuzzed.script.answers.clear()
    status = response.status_code
    event(f"status {status}")
    assert "this is a bug" not in response.text, response.text[:2000]
    assert status != 500 or 500 in {a[0] for a in answers}, response.text[:2000]  # only an upstream's 500, relayed
    if status == 200 and response.headers["content-type"].startswith("text/event-stream"):
        ended = response.text.endswith("data: [DONE]\n\n") or '"error"' in response.text.rsplit("data: ", 1)[-1]
        assert ended, response.text[-500:]  # a whole stream, or one that ends with an error event
    elif status != 200:
        assert status in {*REFUSALS, 429, 500, 502, 503, 504}, response.text[:2000]
        if status not in {a[0] for a in answers}:  # the gateway's own refusal: OpenAI's shape
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


_IDS = st.one_of(
    st.text(max_size=120),
    st.sampled_from(["fuzz-paged", "p:000000000000", "a}b{c", "..", "%2F", "x" * 97, "\ud800", ""]),
)


@settings(FUZZ, max_examples=150)
@given(
    route=st.sampled_from(["", "/decisions", "/events", "/journal", "PAGE"]),
    ident=_IDS,
    params=st.dictionaries(
        st.sampled_from(["after", "limit", "scope", "level", "session", "project"]), _IDS.filter(str.isprintable)
    ),
)
def test_audit_and_page_routes_never_500(fuzzed: Fuzzed, route: str, ident: str, params: dict[str, str]) -> None:
    quoted = quote(ident.encode("utf-8", "surrogatepass"), safe="")
    path = f"/v1/clawvm/pages/{quoted}" if route == "PAGE" else f"/v1/clawvm/sessions/{quoted}{route}"
    response = fuzzed.client.get(
        fuzzed.root + path,
        params={k: v.encode("utf-8", "surrogatepass") for k, v in params.items()},
        headers={"authorization": f"Bearer {KEY}"},
    )
    if response.status_code == 200:
        assert response.json()["object"] in ("list", "clawvm.session", "clawvm.page")
        return
    check(response)


@settings(FUZZ, max_examples=100)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    path=st.one_of(st.sampled_from(["models", "embeddings", "files/x", "chat/completions/x"]), st.text(max_size=40)),
    body=raw_bodies(),
)
def test_relayed_routes_never_500(fuzzed: Fuzzed, method: str, path: str, body: bytes) -> None:
    """Every other /v1 route goes to the upstream as it is: whatever is sent, a sensible answer."""
    quoted = quote(path.encode("utf-8", "surrogatepass"), safe="/")
    response = fuzzed.client.request(
        method, f"{fuzzed.root}/v1/{quoted}", content=body, headers={"authorization": f"Bearer {KEY}"}
    )
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text[:2000]
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"message", "type"}


# -- structure-aware -----------------------------------------------------------------------------


@pytest.mark.parametrize("base", sorted(BASES))
def test_every_type_at_every_json_path_is_answered_without_5xx_or_a_dropped_connection(
    fuzzed: Fuzzed, base: str
) -> None:
    """bench.fuzz's sweep of one valid request (chat, tools, tool calls and results, streaming,
    metadata): every JSON path given every JSON type, every key dropped, all on one keep-alive
    connection. Never a 5xx, never a dropped connection, every refusal in OpenAI's shape, and every
    wrongly-typed field the spec knows refused with a 400 naming its path."""
    mutations = [m for m in structural_mutations() if m.base == base]
    with OneConnection(fuzzed.root, {"authorization": f"Bearer {KEY}"}) as connection:
        tally = sweep(connection, mutations)
    assert tally.requests == len(mutations) > 50
    assert tally.problems == 0, "\n".join([str(tally.as_dict())[:600], *tally.examples])
    assert tally.statuses[200] and tally.statuses[400]  # both answered and refused: the sweep reached the gateway


@pytest.mark.parametrize("role", [{}, [], [None]], ids=["object", "array", "array_of_null"])
@pytest.mark.parametrize("plain", [True, False], ids=["plain_message", "message_with_name"])
def test_a_role_of_the_wrong_type_is_a_400_and_the_connection_serves_the_next_request(
    fuzzed: Fuzzed, role: Any, plain: bool
) -> None:
    """Issue 11: these were a 500 (TypeError) that also dropped the keep-alive connection."""
    message = {"role": role, "content": "hi"} if plain else {"role": role, "content": "hi", "name": "a"}
    before = len(fuzzed.fake.requests)
    with OneConnection(fuzzed.root, {"authorization": f"Bearer {KEY}"}) as connection:
        refused = connection.post("/v1/chat/completions", encode({"model": "gpt-4o", "messages": [message]}))
        good = {"model": "gpt-4o", "messages": [{"role": "user", "content": "and now?"}]}
        answered = connection.post("/v1/chat/completions", encode(good))
    assert refused.status == 400, refused.body
    error = json.loads(refused.body)["error"]
    assert (error["param"], error["code"], error["type"]) == (
        "messages.[0].role",
        "invalid_type",
        "invalid_request_error",
    )
    assert "messages[0].role" in error["message"]
    assert answered.status == 200 and not answered.dropped, answered
    assert len(fuzzed.fake.requests) == before + 1  # the refused one never went upstream


def test_the_gateway_is_healthy_after_the_fuzzing(fuzzed: Fuzzed) -> None:
    healthy(fuzzed)
    check(post(fuzzed, encode({"model": "gpt-4o", "messages": [{"role": "user", "content": "still there?"}]})))


# -- OpenAI's edge cases ------------------------------------------------------------------------

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}
DATA_IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}


def _call(call_id: str, arguments: str | None) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "get_order", "arguments": arguments}}


EDGE_CASES: dict[str, list[dict[str, Any]]] = {
    "empty_content": [{"role": "user", "content": ""}],
    "empty_content_after_system": [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
    "text_parts": [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}],
    "empty_parts": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": []},
        {"role": "user", "content": "?"},
    ],
    "image_url": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]}],
    "data_url_image_only": [{"role": "user", "content": [DATA_IMAGE]}],
    "input_audio": [{"role": "user", "content": [{"type": "text", "text": "Transcribe"}, AUDIO]}],
    "developer_role": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    "refusal_part": [
        {"role": "user", "content": "do a bad thing"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        {"role": "user", "content": "ok then"},
    ],
    "null_tool_arguments": [
        {"role": "user", "content": "Where is #1?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("call_a", None)]},
        {"role": "tool", "tool_call_id": "call_a", "content": "shipped"},
        {"role": "user", "content": "thanks"},
    ],
    "invalid_json_tool_arguments": [
        {"role": "user", "content": "Where is #1?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("call_a", '{"order_id": ')]},
        {"role": "tool", "tool_call_id": "call_a", "content": "shipped"},
        {"role": "user", "content": "thanks"},
    ],
    "parallel_tool_calls": [
        {"role": "user", "content": "Where are #1 and #2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [_call("call_1", '{"id":1}'), _call("call_2", '{"id":2}')],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "#1 shipped"},
        {"role": "tool", "tool_call_id": "call_2", "content": "#2 pending"},
        {"role": "user", "content": "thanks"},
    ],
    "parallel_results_out_of_order": [
        {"role": "user", "content": "Where are #1 and #2?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [_call("call_1", "{}"), _call("call_2", "{}")]},
        {"role": "tool", "tool_call_id": "call_2", "content": "#2 pending"},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "#1 shipped"}]},
    ],
    "tool_result_last": [
        {"role": "user", "content": "Where is #1?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("call_a", "{}")]},
        {"role": "tool", "tool_call_id": "call_a", "content": ""},
    ],
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_openai_edge_cases_are_forwarded_unchanged(fuzzed: Fuzzed, case: str, stream: bool) -> None:
    messages = EDGE_CASES[case]
    before = len(fuzzed.fake.requests)
    body = {"model": "gpt-4o", "messages": messages, "stream": stream}
    ids = {"x-clawvm-session": f"edge-{case}-{stream}".encode(), "x-clawvm-project": f"edge-{case}".encode()}
    response = post(fuzzed, encode(body), ids)  # a project of its own: no rules carried from other tests
    assert response.status_code == 200, response.text
    check(response)
    (received,) = [r.body for r in fuzzed.fake.requests[before:]]
    assert received is not None
    assert received["messages"] == messages  # small enough to go whole: byte-for-byte the agent's own
    assert received["stream"] is stream


def test_lone_surrogates_are_stored_and_read_back_through_every_route(fuzzed: Fuzzed) -> None:
    """JSON may carry lone surrogates as escapes (\\ud83d): answers, pages and the audit API write
    them as escapes again, never as invalid UTF-8 (nor a 500)."""
    messages = [
        {"role": "system", "content": "You are careful \ud83d. Never delete the \udfff files."},
        {"role": "user", "content": "Hello \ud800 there. I prefer short answers \udbff."},
    ]
    headers = {"x-clawvm-session": b"surrogates", "x-clawvm-project": b"surrogates"}
    for stream in (False, True):
        response = post(fuzzed, encode({"model": "gpt-4o", "messages": messages, "stream": stream}), headers)
        assert response.status_code == 200, response.text
    auth = {"authorization": f"Bearer {KEY}"}
    table = fuzzed.client.get(fuzzed.root + "/v1/clawvm/sessions/surrogates", headers=auth)
    assert table.status_code == 200, table.text
    ids = [p["id"] for p in table.json()["pages"]] + [f["id"] for f in table.json()["facts"]]
    texts = []
    for page_id in ids:
        page = fuzzed.client.get(f"{fuzzed.root}/v1/clawvm/pages/{page_id}?session=surrogates", headers=auth)
        assert page.status_code == 200, page.text
        texts.append(page.json()["text"])
    assert any("\ud800" in t for t in texts)  # read back exactly as sent
    for stream in ("decisions", "events", "journal"):
        listed = fuzzed.client.get(f"{fuzzed.root}/v1/clawvm/sessions/surrogates/{stream}", headers=auth)
        assert listed.status_code == 200, listed.text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_n_above_one_is_forwarded_without_the_recall_tool(fuzzed: Fuzzed, stream: bool) -> None:
    """n>1 cannot be resolved by the gateway's recall loop: it is forwarded as asked, with no tool of ours,
    even on a paged session."""
    before = len(fuzzed.fake.requests)
    body = {"model": "gpt-4o", "messages": paged_session(), "n": 2, "stream": stream}
    response = post(fuzzed, encode(body), {"x-clawvm-session": f"edge-n2-{stream}".encode()})
    assert response.status_code == 200, response.text
    check(response)
    (received,) = [r.body for r in fuzzed.fake.requests[before:]]
    assert received is not None and received["n"] == 2
    assert all(t["function"]["name"] != RECALL for t in received.get("tools") or [])
    assert PAGE.search(json.dumps(received["messages"]))  # paged all the same


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [200, 1000, 1023, 1030, 100_000])
@pytest.mark.parametrize("where", ["metadata", "tool_parameters", "image_url", "message_field"])
def test_deep_nesting_is_answered_or_refused_never_a_500(fuzzed: Fuzzed, where: str, depth: int) -> None:
    """JSON nested past what the encoders follow (the body is re-encoded to be forwarded): a 400."""
    deep = _nested(depth)
    user = b'{"role": "user", "content": "hi"}'
    if where == "image_url":
        user = b'{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "d": ' + deep + b"}}]}"
    elif where == "message_field":
        user = b'{"role": "user", "content": "hi", "extra": ' + deep + b"}"
    extra = {
        "metadata": b', "metadata": {"d": ' + deep + b"}",
        "tool_parameters": b', "tools": [{"type": "function", "function": {"name": "f", "parameters": {"d": '
        + deep
        + b"}}}]",
    }.get(where, b"")
    body = b'{"model": "gpt-4o", "messages": [' + user + b"]" + extra + b"}"
    response = post(fuzzed, body, {"x-clawvm-session": f"deep-{where}-{depth}".encode()})
    assert response.status_code in (200, 400), response.text[:500]
    check(response)
    if response.status_code == 400:
        assert "nested too deeply" in response.json()["error"]["message"]
    healthy(fuzzed)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "tool", "tool_call_id": "nobody", "content": "x"}], "messages.[0].tool_call_id"),
        ([{"role": "tool", "content": "x"}], "messages.[0].tool_call_id"),
        (
            [
                {"role": "assistant", "content": None, "tool_calls": [_call("c1", "{}")]},
                {"role": "user", "content": "?"},
            ],
            "messages.[0].tool_calls",
        ),
        ([{"role": "robot", "content": "x"}], "messages.[0].role"),
    ],
    ids=["unknown_tool_call_id", "missing_tool_call_id", "unanswered_call", "unknown_role"],
)
def test_broken_tool_pairing_is_a_400_naming_the_field(fuzzed: Fuzzed, messages: list[dict], param: str) -> None:
    before = len(fuzzed.fake.requests)
    response = post(fuzzed, encode({"model": "gpt-4o", "messages": messages}))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert len(fuzzed.fake.requests) == before  # refused before anything went upstream
