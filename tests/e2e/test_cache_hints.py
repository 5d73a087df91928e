"""Provider prompt-cache hints in the forwarded body, through the real gateway.

OpenAI's route (the fake upstream records what it received): a `prompt_cache_key` per tenant and
session that names neither, the client's own key kept. Anthropic's route through litellm (a
fake Messages API records the translated body): `cache_control` breakpoints at the end of the
stable prefix and on the last message, the client's own kept, never more than four.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.fake_upstream import serve
from gateway.turns.stages import parse_header
from gateway.wire.cache_hints import KEY_PREFIX, MAX_BREAKPOINTS

Json = dict[str, Any]
CLAUDE = "anthropic/claude-3-5-sonnet-20240620"
CONVERSATION: list[Json] = [
    {"role": "system", "content": "You are a careful support agent. Always confirm the order id."},
    {"role": "user", "content": "Where is order #W7000001?"},
    {"role": "assistant", "content": "It shipped on Monday from the Austin warehouse."},
    {"role": "user", "content": "And when does it arrive?"},
]


def _client(gw: Any, session: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key="sk-x", default_headers={"X-ClawVM-Session": session})


def _forwarded(gw: Any) -> Json:
    bodies = [r.body for r in gw.fake.requests if r.path.endswith("/chat/completions") and r.body]
    return bodies[-1]


def test_openai_gets_one_cache_key_per_session_that_names_nothing(gateway: Any) -> None:
    keys = {}
    for session in ("alice-laptop-session", "alice-laptop-session", "bob-phone-session"):
        _client(gateway, session).chat.completions.create(model="gpt-4o", messages=CONVERSATION)
        keys.setdefault(session, set()).add(_forwarded(gateway)["prompt_cache_key"])
    assert len(keys["alice-laptop-session"]) == 1  # the same session keeps its key
    assert keys["alice-laptop-session"] != keys["bob-phone-session"]
    for (key,) in keys.values():
        assert key.startswith(KEY_PREFIX) and "alice" not in key and "bob" not in key


def test_the_clients_own_cache_key_is_kept(gateway: Any) -> None:
    client = _client(gateway, "s-own-key")
    client.chat.completions.create(model="gpt-4o", messages=CONVERSATION, extra_body={"prompt_cache_key": "mine"})
    assert _forwarded(gateway)["prompt_cache_key"] == "mine"


# ---------------------------------------------------------------- Anthropic through litellm


class FakeMessages:
    """Anthropic's Messages API, as far as litellm needs it: records each body, answers one text."""

    def __init__(self) -> None:
        self.bodies: list[Json] = []
        self.app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> JSONResponse:
        self.bodies.append(await request.json())
        return JSONResponse(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-3-5-sonnet-20240620",
                "content": [{"type": "text", "text": "Thursday."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 2},
            }
        )


@pytest.fixture
def anthropic(start_gateway: Callable[..., Any]) -> Iterator[tuple[str, FakeMessages]]:
    fake = FakeMessages()
    with serve(fake.app) as url:
        config = (
            "tenants:\n  acme:\n    api_keys: [sk-acme]\n"
            f"    upstream: {{api_base: '{url.removesuffix('/v1')}', api_key: sk-ant-test}}\n"
        )
        with start_gateway(config_yaml=config) as gw:
            yield gw.root, fake


@contextmanager
def _client_for(root: str) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60, headers={"authorization": "Bearer sk-acme", "x-clawvm-session": "s1"}) as client:
        yield client


def _marks(body: Json) -> list[tuple[int, str]]:
    """(message index, block type) of every breakpoint in an Anthropic body's messages; -1 for system."""
    found = []
    system = body.get("system")
    for block in system if isinstance(system, list) else []:
        if "cache_control" in block:
            found.append((-1, block["type"]))
    for index, message in enumerate(body["messages"]):
        content = message["content"]
        for block in content if isinstance(content, list) else []:
            if "cache_control" in block:
                found.append((index, block["type"]))
    return found


def test_anthropic_breakpoints_end_the_stable_prefix_and_the_request(anthropic: tuple[str, FakeMessages]) -> None:
    root, fake = anthropic
    with _client_for(root) as client:
        response = client.post(root + "/v1/chat/completions", json={"model": CLAUDE, "messages": CONVERSATION})
    assert response.status_code == 200, response.text
    sent = fake.bodies[-1]
    # messages after the system prompt: user, assistant (the end of the stable prefix), user (the newest turn)
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert _marks(sent) == [(1, "text"), (2, "text")]
    stages = ["receive", "parse", "ingest", "assemble", "store", "upstream", "persist"]
    assert list(parse_header(response.headers["server-timing"])) == stages


def test_the_clients_breakpoints_are_kept_and_four_is_the_most(anthropic: tuple[str, FakeMessages]) -> None:
    root, fake = anthropic
    marked = {"type": "text", "text": CONVERSATION[0]["content"], "cache_control": {"type": "ephemeral"}}
    own = [{"role": "system", "content": [marked]}, *CONVERSATION[1:]]
    with _client_for(root) as client:
        assert client.post(root + "/v1/chat/completions", json={"model": CLAUDE, "messages": own}).status_code == 200
        assert _marks(fake.bodies[-1]) == [(-1, "text"), (1, "text"), (2, "text")]
        parts = [{"type": "text", "text": word, "cache_control": {"type": "ephemeral"}} for word in ("Where", "is it?")]
        answer = [{"type": "text", "text": CONVERSATION[2]["content"], "cache_control": {"type": "ephemeral"}}]
        four = [own[0], {"role": "user", "content": parts}, {"role": "assistant", "content": answer}, CONVERSATION[3]]
        assert client.post(root + "/v1/chat/completions", json={"model": CLAUDE, "messages": four}).status_code == 200
    sent = fake.bodies[-1]
    assert _marks(sent) == [(-1, "text"), (0, "text"), (0, "text"), (1, "text")]  # the client's four, none of ours
    assert len(_marks(sent)) == MAX_BREAKPOINTS
