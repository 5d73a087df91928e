"""Every error on Anthropic's routes comes in Anthropic's shape, whoever raised it (a route or a
middleware before any route): checked through the real `anthropic` SDK, which raises its typed
errors from the status and reads `error.type` from the body."""

from __future__ import annotations

import anthropic
import pytest

import gateway.turns.pipeline
from bench.fake_anthropic import FakeAnthropic
from bench.fake_upstream import serve

HELLO = [{"role": "user", "content": "hi"}]


def _config(url: str, extra: str = "") -> str:
    return f"upstream:\n  anthropic_base: {url.removesuffix('/v1')}\n{extra}"


def _agent(root: str, key: str = "sk-agent") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=root, api_key=key, max_retries=0)


def _shape(error: anthropic.APIStatusError, kind: str) -> None:
    body = error.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == kind, body
    assert error.type == kind and "code" not in body["error"]


def test_header_and_body_limits_answer_in_anthropics_shape(start_gateway) -> None:
    limits = "server:\n  max_body_bytes: 2000\n  max_header_bytes: 4000\n"
    with serve(FakeAnthropic().app) as url, start_gateway(config_yaml=_config(url, limits)) as gw:
        agent = _agent(gw.root)
        with pytest.raises(anthropic.RequestHeaderFieldsTooLargeError) as refused:
            agent.messages.create(model="m", max_tokens=8, messages=HELLO, extra_headers={"x-big": "x" * 5000})
        _shape(refused.value, "invalid_request_error")
        big = [{"role": "user", "content": "x" * 5000}]
        with pytest.raises(anthropic.ContentTooLargeError) as refused:
            agent.messages.create(model="m", max_tokens=8, messages=big)
        _shape(refused.value, "request_too_large")
        with pytest.raises(anthropic.ContentTooLargeError) as refused:
            agent.messages.count_tokens(model="m", messages=big)
        _shape(refused.value, "request_too_large")


def test_a_wrong_key_and_a_bug_answer_in_anthropics_shape(start_gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    tenants = "tenants:\n  team:\n    api_keys: [sk-team]\n"
    with serve(FakeAnthropic().app) as url, start_gateway(config_yaml=_config(url, tenants)) as gw:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            _agent(gw.root, "sk-wrong").messages.count_tokens(model="m", messages=HELLO)
        _shape(refused.value, "authentication_error")

        async def broken(*args: object) -> None:
            raise RuntimeError("a planted bug")

        monkeypatch.setattr(gateway.turns.pipeline, "_serve", broken)
        with pytest.raises(anthropic.InternalServerError) as failed:
            _agent(gw.root, "sk-team").messages.create(model="m", max_tokens=8, messages=HELLO)
        assert failed.value.status_code == 500
        _shape(failed.value, "api_error")
        assert "this is a bug" in failed.value.body["error"]["message"]
