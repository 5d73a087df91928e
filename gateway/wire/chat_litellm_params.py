"""What of a client's chat body reaches litellm (the `anthropic/...`, `bedrock/...` route).

`litellm.acompletion(**kwargs)` takes, beside OpenAI's parameters, its own: where to send the
request (`api_base`, `base_url`), with which key (`api_key`, `aws_*`, ...), retries, fallbacks
to other models, canned answers (`mock_response`), logging callbacks and extra headers. A
client must choose none of these: the operator's config does.

- `OPENAI_PARAMS`: OpenAI's Chat Completions parameters (the `openai` package's
  `completion_create_params`, plus `stream`) are passed on, except `metadata`, which the gateway
  reads itself (`session_id`, `project_id`, `clawvm_event`) and litellm would hand to its hooks.
- `REFUSED` and `REFUSED_PREFIXES`: litellm's own destination, credential, retry, fallback, mock,
  callback and header parameters are refused with 400 naming the field (`param` = the field).
- Any other field (a vendor extension, a typo) is dropped: litellm never sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.api.errors import InvalidRequest

OPENAI_PARAMS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "modalities",
        "model",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
REFUSED = frozenset(
    {
        "base_url",
        "api_base",
        "api_key",
        "api_version",
        "api_type",
        "custom_llm_provider",
        "organization",
        "deployment_id",
        "region_name",
        "client",
        "fallbacks",
        "context_window_fallback_dict",
        "model_list",
        "num_retries",
        "max_retries",
        "timeout",
        "request_timeout",
        "mock_response",
        "callbacks",
        "success_callback",
        "failure_callback",
        "input_callback",
        "logger_fn",
        "headers",
        "extra_headers",
        "extra_body",
        "extra_query",
        "proxy_server_request",
        "base_model",
        "model_info",
        "input_cost_per_token",
        "output_cost_per_token",
    }
)
REFUSED_PREFIXES = ("api_", "aws_", "azure_", "vertex_", "watsonx_", "litellm_", "mock_", "bedrock_")


def provider_params(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `body` litellm may see; `InvalidRequest` (400, `param` = the field) for one
    that would choose the destination, the key, retries, fallbacks, mocking, callbacks or headers."""
    for name in body:
        if name in REFUSED or name.startswith(REFUSED_PREFIXES):
            raise InvalidRequest(
                f"'{name}' is not accepted by this gateway: the upstream, its key and how it is called "
                "are set in the gateway's configuration.",
                param=name,
            )
    return {name: value for name, value in body.items() if name in OPENAI_PARAMS}
