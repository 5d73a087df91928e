"""A tenant cannot reach another tenant's uploaded files through the upstream key they share:
a turn naming a `file_id` (or another account object) is refused with 403 `permission_error` in
the route's own shape, through the real `anthropic` and `openai` SDKs; with its own key it passes."""

from __future__ import annotations

import anthropic
import openai
import pytest

from bench.fake_anthropic import FakeAnthropic
from bench.fake_upstream import serve

SHARED = "sk-ant-shared"
TENANTS = "tenants:\n  acme:\n    api_keys: [sk-acme]\n  globex:\n    api_keys: [sk-globex]\n"
OWN = "    upstream:\n      anthropic_key: sk-ant-globex-own\n"
DOCUMENT = {"type": "document", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}}


def _messages_config(url: str, tenants: str) -> str:
    return f"upstream:\n  anthropic_base: {url.removesuffix('/v1')}\n  anthropic_key: {SHARED}\n{tenants}"


def test_a_file_reference_through_the_shared_anthropic_key_is_refused(start_gateway) -> None:
    fake = FakeAnthropic()
    with serve(fake.app) as url, start_gateway(config_yaml=_messages_config(url, TENANTS)) as gw:
        acme = anthropic.Anthropic(base_url=gw.root, api_key="sk-acme", max_retries=0)
        content = [DOCUMENT, {"type": "text", "text": "Summarise this document."}]
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            acme.messages.create(model="claude-x", max_tokens=64, messages=[{"role": "user", "content": content}])
        assert refused.value.type == "permission_error"
        assert refused.value.body["type"] == "error"
        assert "messages.0.content.0.source.file_id" in refused.value.body["error"]["message"]
        with pytest.raises(anthropic.PermissionDeniedError):
            acme.messages.count_tokens(model="claude-x", messages=[{"role": "user", "content": content}])
        assert fake.requests == []  # nothing reached the upstream


def test_a_tenant_with_its_own_anthropic_key_may_name_its_files(start_gateway) -> None:
    fake = FakeAnthropic()
    tenants = TENANTS + OWN
    with serve(fake.app) as url, start_gateway(config_yaml=_messages_config(url, tenants)) as gw:
        globex = anthropic.Anthropic(base_url=gw.root, api_key="sk-globex", max_retries=0)
        content = [DOCUMENT, {"type": "text", "text": "Summarise this document."}]
        answer = globex.messages.create(
            model="claude-x", max_tokens=64, messages=[{"role": "user", "content": content}]
        )
        assert answer.content[0].text == "ok"
        assert fake.requests[-1].headers["x-api-key"] == "sk-ant-globex-own"
        assert DOCUMENT in fake.requests[-1].body["messages"][0]["content"]


def test_responses_and_chat_file_references_through_the_shared_key_are_refused(start_gateway) -> None:
    with start_gateway(config_yaml=TENANTS) as gw:
        acme = openai.OpenAI(base_url=gw.url, api_key="sk-acme", max_retries=0)
        part = {"type": "input_file", "file_id": "file-abc123"}
        item = {"role": "user", "content": [part, {"type": "input_text", "text": "What does it say?"}]}
        with pytest.raises(openai.PermissionDeniedError) as refused:
            acme.responses.create(model="gpt-4o", input=[item])
        assert refused.value.code == "account_object_refused"
        assert "input.0.content.0.file_id" in refused.value.message
        with pytest.raises(openai.PermissionDeniedError):
            acme.responses.create(model="gpt-4o", input="hello", conversation="conv_123")
        chat_part = {"type": "file", "file": {"file_id": "file-abc123"}}
        with pytest.raises(openai.PermissionDeniedError) as refused:
            acme.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": [chat_part, {"type": "text", "text": "hi"}]}]
            )
        assert refused.value.code == "account_object_refused"
        assert gw.fake.requests == []


def _long_chat(turns: int) -> list[dict]:
    """A conversation long enough for the gateway to keep its body (and read the next one's new part)."""
    messages: list[dict] = [{"role": "system", "content": "You are terse. " * 200}]
    for n in range(turns):
        messages += [{"role": "user", "content": f"question {n} " * 100}, {"role": "assistant", "content": f"a{n}"}]
    return messages


def test_a_file_reference_appended_to_a_checked_conversation_is_refused(start_gateway) -> None:
    """The check reads only what a request appends to a conversation that passed it, never less."""
    chat_part = {"type": "file", "file": {"file_id": "file-abc123"}}
    with start_gateway(config_yaml=TENANTS) as gw:
        acme = openai.OpenAI(base_url=gw.url, api_key="sk-acme", max_retries=0)
        messages = _long_chat(20)
        headers = {"x-clawvm-session": "appended-refs"}
        acme.chat.completions.create(model="gpt-4o", messages=messages, extra_headers=headers)
        sneaked = [*messages, {"role": "user", "content": [chat_part, {"type": "text", "text": "and this?"}]}]
        with pytest.raises(openai.PermissionDeniedError) as refused:
            acme.chat.completions.create(model="gpt-4o", messages=sneaked, extra_headers=headers)
        assert f"messages.{len(messages)}.content.0.file.file_id" in refused.value.message
        later = [*sneaked, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "go on"}]
        with pytest.raises(openai.PermissionDeniedError):  # extends the refused body: checked whole again
            acme.chat.completions.create(model="gpt-4o", messages=later, extra_headers=headers)
        assert len(gw.fake.requests) == 1
