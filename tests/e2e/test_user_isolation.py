"""Users of one tenant: two people behind one tenant key whose agents share a system prompt.

User A states preferences (a language, a name to be called by, an e-mail address); user B,
with the same key and the same system prompt, must never find any of it in a prompt the model
received on B's behalf: not in B's own session, not after B starts over (a reset: a new
session while B's last one is live), not when B's opening is word for word A's, and not in a
project both name explicitly. A's own later session does get A's preferences carried.

Users are named each way a client can: OpenAI's `user`, `metadata.user_id`, `X-ClawVM-User`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import openai
import pytest

from bench.fake_upstream import FakeUpstream

_tenants = itertools.count()  # the test Redis is shared: each test its own tenant
SYSTEM = {"role": "system", "content": "You are a travel planning assistant."}
OPENING = {"role": "user", "content": "Help me plan a trip to Lisbon."}
EMAIL = "alice.a@example.com"
A_STATES = f"I prefer answers in Portuguese. Please always send the summary to {EMAIL}. Call me Captain Alice."
A_MARKERS = ("Portuguese", EMAIL, "Captain Alice")

Naming = Callable[[str], dict[str, Any]]
NAMINGS: dict[str, Naming] = {
    "openai_user": lambda user: {"user": user},
    "metadata_user_id": lambda user: {"extra_body": {"metadata": {"user_id": user}}},
    "header": lambda user: {"extra_headers": {"X-ClawVM-User": user}},
}


def one_tenant() -> tuple[str, str]:
    """(config, key): a tenant of the test's own, with one key shared by its users."""
    name = f"users{next(_tenants)}"
    return f"tenants:\n  {name}:\n    api_keys: [sk-{name}]\n", f"sk-{name}"


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def ask(c: openai.OpenAI, messages: list[dict[str, Any]], named: dict[str, Any]) -> str:
    """Send one turn; returns the boundary the gateway saw (`x-clawvm-event`)."""
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages, **named)  # type: ignore[arg-type]
    return raw.headers.get("x-clawvm-event", "")


def prompts_since(fake: FakeUpstream, start: int) -> str:
    """Every prompt the model received from `start` on, as one text."""
    return "\n".join(json.dumps(r.body.get("messages"), ensure_ascii=False) for r in fake.requests[start:])


def leaked(text: str) -> list[str]:
    return [marker for marker in A_MARKERS if marker in text]


def a_states_preferences(c: openai.OpenAI, named: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    first = [SYSTEM, OPENING]
    ask(c, first, {**named, **(extra or {})})
    second = [*first, {"role": "assistant", "content": "Gladly. When do you travel?"}]
    ask(c, [*second, {"role": "user", "content": A_STATES}], {**named, **(extra or {})})


B_SCENARIOS: dict[str, list[list[dict[str, Any]]]] = {
    "identical_opening": [  # word for word A's opening: without the user in it, A's session
        [SYSTEM, OPENING],
        [SYSTEM, OPENING, {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "Hotels?"}],
    ],
    "new_session": [[SYSTEM, {"role": "user", "content": "Plan a weekend in Porto."}]],
    "reset": [  # B starts over twice while B's session is live: each a reset of B's own
        [SYSTEM, {"role": "user", "content": "Plan a weekend in Porto."}],
        [SYSTEM, {"role": "user", "content": "Start over: a week in Madeira."}],
        [SYSTEM, {"role": "user", "content": "Start over again: two days in Sintra."}],
    ],
}


@pytest.mark.parametrize("scenario", sorted(B_SCENARIOS))
@pytest.mark.parametrize("naming", sorted(NAMINGS))
def test_a_users_preferences_and_email_never_reach_another_users_prompt(
    start_gateway, naming: str, scenario: str
) -> None:
    name = NAMINGS[naming]
    fake = FakeUpstream()
    config, key = one_tenant()
    with start_gateway(config_yaml=config, fake=fake) as gw:
        c = client(gw.url, key)
        a_states_preferences(c, name("alice@corp.example"))
        assert leaked(prompts_since(fake, len(fake.requests) - 1)) == list(A_MARKERS)

        start = len(fake.requests)
        events = [ask(c, messages, name("bob@corp.example")) for messages in B_SCENARIOS[scenario]]
        assert leaked(prompts_since(fake, start)) == []
        if scenario == "reset":
            assert events[1:] == ["reset", "reset"]  # B's own live session was B's predecessor

        start = len(fake.requests)
        ask(c, [SYSTEM, {"role": "user", "content": "Now a trip to Faro."}], name("alice@corp.example"))
        assert leaked(prompts_since(fake, start)) == list(A_MARKERS)  # A's own new session carries them


def test_users_naming_one_project_do_not_share_preferences(start_gateway) -> None:
    """An explicit project is shared deliberately, but what a user stated stays that user's."""
    fake = FakeUpstream()
    project = {"extra_headers": {"X-ClawVM-Project": "team-trips"}}
    config, key = one_tenant()
    with start_gateway(config_yaml=config, fake=fake) as gw:
        c = client(gw.url, key)
        a_states_preferences(c, {"user": "alice"}, project)
        start = len(fake.requests)
        ask(c, [SYSTEM, {"role": "user", "content": "Plan a weekend in Porto."}], {"user": "bob", **project})
        assert leaked(prompts_since(fake, start)) == []
        start = len(fake.requests)
        ask(c, [SYSTEM, {"role": "user", "content": "Now a trip to Faro."}], {"user": "alice", **project})
        assert leaked(prompts_since(fake, start)) == list(A_MARKERS)
