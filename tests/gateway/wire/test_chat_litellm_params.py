from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import completion_create_params

from gateway.api.errors import InvalidRequest
from gateway.wire.chat_litellm_params import OPENAI_PARAMS, REFUSED, provider_params

MESSAGES = [{"role": "user", "content": "hi"}]


def test_the_allowlist_is_openais_chat_parameters_less_the_gateways_metadata() -> None:
    openai_params = set(completion_create_params.CompletionCreateParamsBase.__annotations__) | {"stream"}
    assert OPENAI_PARAMS == openai_params - {"metadata"}


def test_openai_parameters_pass_and_metadata_and_unknown_fields_are_dropped() -> None:
    body: dict[str, Any] = {
        "model": "anthropic/claude-3-5-sonnet-20240620",
        "messages": MESSAGES,
        "temperature": 0.2,
        "tools": [],
        "stream": True,
        "user": "u1",
        "metadata": {"session_id": "s1", "clawvm_event": "task_end"},
        "vendor_extension": {"x": 1},
    }
    passed = provider_params(body)
    assert set(passed) == {"model", "messages", "temperature", "tools", "stream", "user"}
    assert passed["temperature"] == 0.2


@pytest.mark.parametrize(
    "field",
    sorted(REFUSED) + ["aws_secret_access_key", "vertex_credentials", "azure_ad_token", "litellm_logging_obj"],
)
def test_fields_choosing_the_destination_key_or_how_it_is_called_are_refused_naming_the_field(field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        provider_params({"model": "anthropic/x", "messages": MESSAGES, field: "http://127.0.0.1:1"})
    assert caught.value.status_code == 400 and caught.value.param == field
    assert field in caught.value.message
