"""Chat Completions through litellm (`gateway.wire.chat_litellm`): other providers, their errors mapped."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import respx

from bench.fake_upstream import Running
from gateway.api.errors import (
    InvalidRequest,
    RateLimited,
    UpstreamError,
    error_body,
    error_response,
)
from gateway.upstream.client import (
    FAILED,
    UNREACHABLE,
    UpstreamTarget,
)
from gateway.upstream.sse import DONE, event_data
from gateway.wire.chat_litellm import LiteLLMProvider, import_litellm

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "say something"}]

# --- litellm: other providers. respx sees litellm's calls only with its aiohttp transport off. ---

ANTHROPIC_MESSAGES = "https://api.anthropic.com/v1/messages"
CLAUDE = "anthropic/claude-3-5-sonnet-20240620"


class TestLiteLLMProvider:
    @pytest.fixture(autouse=True)
    def httpx_transport(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        monkeypatch.setenv("DISABLE_AIOHTTP_TRANSPORT", "True")
        litellm = import_litellm()
        monkeypatch.setattr(litellm, "disable_aiohttp_transport", True)
        litellm.in_memory_llm_clients_cache.flush_cache()  # no client built with aiohttp may be reused
        yield
        litellm.in_memory_llm_clients_cache.flush_cache()

    async def test_openai_compatible_provider_answers_openai_json(self) -> None:
        completion = {
            "id": "chatcmpl-mocked",
            "object": "chat.completion",
            "created": 1,
            "model": "some-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "mocked"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        with respx.mock(assert_all_mocked=True, assert_all_called=True) as mock:
            route = mock.post("https://compat.test/v1/chat/completions").respond(200, json=completion)
            body = {"model": "openai/some-model", "messages": MESSAGES}
            response = await LiteLLMProvider().chat(body, UpstreamTarget("https://compat.test/v1", "sk-c"))
            answer = json.loads(await response.read())
        sent = route.calls.last.request
        assert sent.headers["authorization"] == "Bearer sk-c"
        assert json.loads(sent.content)["model"] == "some-model"
        assert (response.status, response.is_stream) == (200, False)
        assert answer["choices"][0]["message"]["content"] == "mocked"
        assert answer["usage"]["total_tokens"] == 4

    async def test_anthropic_is_translated_both_ways(self) -> None:
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-sonnet-20240620",
            "content": [{"type": "text", "text": "hi from claude"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 4},
        }
        with respx.mock(assert_all_mocked=True, assert_all_called=True) as mock:
            route = mock.post(ANTHROPIC_MESSAGES).respond(200, json=message)
            body = {"model": CLAUDE, "messages": MESSAGES}
            response = await LiteLLMProvider().chat(body, UpstreamTarget(ANTHROPIC_MESSAGES, "sk-ant"))
            answer = json.loads(await response.read())
        sent = route.calls.last.request
        assert sent.headers["x-api-key"] == "sk-ant"
        assert json.loads(sent.content)["model"] == "claude-3-5-sonnet-20240620"
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == "hi from claude"
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == (10, 4)

    async def test_provider_429_becomes_rate_limited_in_openai_shape(self) -> None:
        refusal = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
        with respx.mock(assert_all_mocked=True, assert_all_called=True) as mock:
            mock.post(ANTHROPIC_MESSAGES).respond(429, json=refusal)
            with pytest.raises(RateLimited) as caught:
                body = {"model": CLAUDE, "messages": MESSAGES}
                await LiteLLMProvider().chat(body, UpstreamTarget(ANTHROPIC_MESSAGES, "sk-ant"))
        response = error_response(caught.value)
        assert response.status_code == 429
        assert json.loads(bytes(response.body)) == error_body(caught.value)
        assert "slow down" in caught.value.message and caught.value.code == "rate_limit_exceeded"

    async def test_a_client_chosen_destination_is_refused_before_any_call(self) -> None:
        with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
            anthropic = mock.post(ANTHROPIC_MESSAGES).respond(200, json={})
            attacker = mock.post(url__startswith="http://127.0.0.1").respond(200, json={})
            for field in ("base_url", "api_base", "custom_llm_provider", "extra_headers"):
                body = {"model": CLAUDE, "messages": MESSAGES, field: "http://127.0.0.1:9/v1"}
                with pytest.raises(InvalidRequest) as caught:
                    await LiteLLMProvider().chat(body, UpstreamTarget(ANTHROPIC_MESSAGES, "sk-ant"))
                assert caught.value.param == field
        assert not anthropic.called and not attacker.called

    async def test_the_gateways_metadata_and_unknown_fields_do_not_reach_the_provider(self) -> None:
        completion = {
            "id": "chatcmpl-mocked",
            "object": "chat.completion",
            "created": 1,
            "model": "some-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        with respx.mock(assert_all_mocked=True, assert_all_called=True) as mock:
            route = mock.post("https://compat.test/v1/chat/completions").respond(200, json=completion)
            body = {
                "model": "openai/some-model",
                "messages": MESSAGES,
                "temperature": 0.5,
                "metadata": {"session_id": "s1", "project_id": "p1"},
                "vendor_extension": "x",
            }
            await LiteLLMProvider().chat(body, UpstreamTarget("https://compat.test/v1", "sk-c"))
        sent = json.loads(route.calls.last.request.content)
        assert sent["temperature"] == 0.5
        assert "metadata" not in sent and "vendor_extension" not in sent

    async def test_a_connection_failure_does_not_quote_the_host(self) -> None:
        with respx.mock(assert_all_mocked=True) as mock:
            mock.post(ANTHROPIC_MESSAGES).mock(side_effect=httpx.ConnectError("Cannot connect to 10.1.2.3:8443"))
            with pytest.raises(UpstreamError) as caught:
                body = {"model": CLAUDE, "messages": MESSAGES}
                await LiteLLMProvider().chat(body, UpstreamTarget(ANTHROPIC_MESSAGES, "sk-ant"))
        assert caught.value.message in (UNREACHABLE, FAILED)  # litellm reports it as a 500 for some providers
        assert "10.1.2.3" not in caught.value.message

    async def test_provider_500_keeps_its_status(self) -> None:
        failure = {"error": {"message": "exploded", "type": "server_error", "param": None, "code": None}}
        with respx.mock(assert_all_mocked=True) as mock:
            mock.post("https://compat.test/v1/chat/completions").respond(500, json=failure)
            with pytest.raises(UpstreamError) as caught:
                body = {"model": "openai/some-model", "messages": MESSAGES}
                await LiteLLMProvider().chat(body, UpstreamTarget("https://compat.test/v1", "sk-c"))
        assert caught.value.status_code == 500 and "exploded" not in caught.value.message  # only logged

    async def test_stream_is_reencoded_as_openai_sse(self, fake_upstream: Running) -> None:
        fake_upstream.fake.responder = lambda req: {"content": "streamed through litellm"}
        body = {"model": "openai/fake-model", "messages": MESSAGES, "stream": True}
        response = await LiteLLMProvider().chat(body, UpstreamTarget(fake_upstream.url, "sk-f"))
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
        assert response.is_stream and events[-1] == DONE
        chunks = [json.loads(event_data(e) or "") for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text == "streamed through litellm"
        assert all("finish_reason" in c["choices"][0] for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert fake_upstream.fake.requests[0].headers["authorization"] == "Bearer sk-f"
