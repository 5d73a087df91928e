"""Chat Completions through litellm, for upstreams that do not speak OpenAI (`anthropic/...`,
`bedrock/...`): the chat adapter's other route.

litellm translates the chat body (what of it may reach litellm: `gateway.wire.chat_litellm_params`),
and its answer is re-encoded as OpenAI JSON or SSE, returned as an `UpstreamResponse` like the
passthrough's. litellm costs milliseconds per call and its import seconds, so it is imported only
when first used. litellm reports upstream statuses as exceptions, which `map_litellm_errors` turns
into the matching `GatewayError`, with the upstream key redacted.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from gateway.api.errors import ContextLengthExceeded, GatewayError, UpstreamError, UpstreamTimeout, from_status
from gateway.upstream.client import (
    FAILED,
    TIMED_OUT,
    UNREACHABLE,
    UpstreamResponse,
    UpstreamTarget,
    redact_text,
    secrets_of,
)
from gateway.upstream.sse import DONE, encode_data
from gateway.wire.chat_litellm_params import provider_params

log = logging.getLogger("clawvm.gateway")


class LiteLLMProvider:
    """Chat completions through litellm, answered in OpenAI's wire format."""

    async def chat(self, body: Mapping[str, Any], target: UpstreamTarget | None) -> UpstreamResponse:
        litellm = import_litellm()
        secrets = secrets_of(target)
        own = provider_params(body)  # refuses a client-chosen destination, key, retries, ...
        own["messages"] = copy.deepcopy(body.get("messages"))  # litellm may edit messages in place
        with map_litellm_errors(litellm, secrets):
            result = await litellm.acompletion(**own, **_litellm_target(target))
        if body.get("stream"):
            sse = [("content-type", "text/event-stream")]
            return UpstreamResponse(200, sse, _sse(result, litellm, secrets), result.aclose)
        return UpstreamResponse(200, [("content-type", "application/json")], _once(_json(result)))


def import_litellm() -> ModuleType:
    """litellm, imported offline: the bundled model map, no tokenizer downloads, no debug banners."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def _litellm_target(target: UpstreamTarget | None) -> dict[str, Any]:
    if target is None:
        return {}
    return {"api_base": target.api_base, "api_key": target.api_key, "timeout": target.timeout}


def _json(model: Any) -> bytes:
    return json.dumps(model.model_dump(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _sse(stream: Any, litellm: ModuleType, secrets: tuple[str, ...] = ()) -> AsyncIterator[bytes]:
    with map_litellm_errors(litellm, secrets):
        async for chunk in stream:
            yield encode_data(_chunk_json(chunk))
    yield DONE


def _chunk_json(chunk: Any) -> dict[str, Any]:
    """A chunk without litellm's null padding, but with `finish_reason` on every choice as OpenAI has."""
    data: dict[str, Any] = chunk.model_dump(exclude_none=True)
    for choice in data.get("choices", []):
        choice.setdefault("finish_reason", None)
    return data


@contextmanager
def map_litellm_errors(litellm: ModuleType, secrets: tuple[str, ...] = ()) -> Iterator[None]:
    """litellm's exceptions (openai.APIError subclasses with a status) -> the matching `GatewayError`,
    with `secrets` redacted from the message."""
    import openai

    try:
        yield
    except openai.APIError as exc:
        raise _litellm_error(exc, litellm, secrets) from exc


def _litellm_error(exc: Any, litellm: ModuleType, secrets: tuple[str, ...] = ()) -> GatewayError:
    """A provider's 4xx keeps its words (redacted); a timeout, a connection failure or a 5xx gets
    a generic message, its text (which may quote hosts, or the request) never leaving the gateway:
    only its type and status are logged."""
    message = redact_text(str(getattr(exc, "message", "") or exc), secrets)
    status = getattr(exc, "status_code", None)
    if isinstance(exc, litellm.ContextWindowExceededError):
        return ContextLengthExceeded(message)
    if isinstance(exc, litellm.Timeout):
        return UpstreamTimeout(_litellm_logged(TIMED_OUT, exc, status))
    if isinstance(exc, litellm.APIConnectionError):
        return UpstreamError(_litellm_logged(UNREACHABLE, exc, status))
    if isinstance(status, int) and 400 <= status < 500:
        return from_status(status, message)
    generic = _litellm_logged(FAILED, exc, status)
    return from_status(status, generic) if isinstance(status, int) and status >= 500 else UpstreamError(generic)


def _litellm_logged(message: str, exc: BaseException, status: object) -> str:
    log.warning("%s: litellm %s (status %s)", message, type(exc).__name__, status)
    return message
