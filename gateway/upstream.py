"""Calls to the LLM upstream.

Two clients, one result type:

- `OpenAICompatible` is the hot path: a plain aiohttp passthrough to an OpenAI-compatible `api_base`.
  Bytes are relayed as the upstream sent them (no decompression, no re-chunking of SSE), over one
  pooled session.
- `LiteLLMProvider` is for upstreams that do not speak OpenAI (`anthropic/...`, `bedrock/...`):
  litellm translates, and its answer is re-encoded as OpenAI JSON or SSE. litellm costs milliseconds
  per call and its import seconds, so it is imported only when first used.

Both return an `UpstreamResponse`. A non-2xx status from the upstream is an answer, not an error:
it is returned like any other (its body already is OpenAI-shaped). Only failures to get an answer
raise, as `UpstreamError` / `UpstreamTimeout` (see `map_transport_errors`); litellm reports upstream
statuses as exceptions, which `map_litellm_errors` turns into the matching `GatewayError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import aiohttp

from gateway.errors import (
    ContextLengthExceeded,
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
    from_status,
)
from gateway.sse import DONE, encode_data

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# accept-encoding is replaced by "identity": bytes are relayed undecoded, and the gateway reads them.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "accept-encoding"}
_NOT_RELAYED = HOP_BY_HOP | {"date", "server", "content-length", "content-encoding"}
POOL_LIMIT = 1000

Closer = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    api_base: str
    api_key: str | None
    timeout: float = 600.0


class UpstreamResponse:
    """Status, relayable headers (lower-case names) and a body read once, as a stream or whole."""

    __slots__ = ("status", "headers", "_chunks", "_closer", "_closed")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        chunks: AsyncIterator[bytes],
        closer: Closer | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self._chunks = chunks
        self._closer = closer
        self._closed = False

    @property
    def is_stream(self) -> bool:
        return _media_type(self.headers) == "text/event-stream"

    async def aiter_raw(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives; releases the connection once exhausted or abandoned."""
        try:
            async for chunk in self._chunks:
                yield chunk
        finally:
            if isinstance(self._chunks, AsyncGenerator):  # closed here, in the task that iterated it
                await self._chunks.aclose()
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._closer is not None:
            await self._closer()


def _media_type(headers: list[tuple[str, str]]) -> str:
    for name, value in headers:
        if name == "content-type":
            return value.split(";", 1)[0].strip().lower()
    return ""


@contextmanager
def map_transport_errors() -> Iterator[None]:
    """aiohttp failures -> `UpstreamTimeout` (504) or `UpstreamError` (502)."""
    try:
        yield
    except TimeoutError as exc:  # asyncio.TimeoutError and aiohttp.ServerTimeoutError alike
        raise UpstreamTimeout(f"upstream timed out: {_describe(exc)}") from exc
    except aiohttp.ClientConnectionError as exc:
        raise UpstreamError(f"upstream unreachable: {_describe(exc)}") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"upstream failed: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class OpenAICompatible:
    """Passthrough to an OpenAI-compatible API. Owns (and closes) its session only if it created it."""

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._owns_session = session is None

    async def send(
        self,
        target: UpstreamTarget,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
        query: str = "",
    ) -> UpstreamResponse:
        """`path` is relative to `target.api_base`, e.g. "/chat/completions"."""
        with map_transport_errors():
            response = await self._client().request(
                method,
                _url(target.api_base, path, query),
                data=body,
                headers=forwarded_headers(target, headers),
                timeout=aiohttp.ClientTimeout(total=target.timeout),
                allow_redirects=False,
            )
        return UpstreamResponse(
            response.status, relayed_headers(response.raw_headers), _relay(response), _releaser(response)
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: aiohttp wants a running loop
            self._session = new_session()
            self._owns_session = True
        return self._session


def new_session() -> aiohttp.ClientSession:
    """One pooled session for all tenants: no cookie jar (cookies must not leak between clients)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL_LIMIT),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
    )


def _url(api_base: str, path: str, query: str) -> str:
    url = api_base.rstrip("/") + "/" + path.lstrip("/")
    query = query.lstrip("?")
    return f"{url}?{query}" if query else url


def forwarded_headers(target: UpstreamTarget, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """End-to-end request headers; the target's key, when it has one, replaces the client's."""
    dropped = _NOT_FORWARDED | _connection_tokens(headers.items())
    if target.api_key:
        dropped = dropped | {"authorization"}
    kept = [(name, value) for name, value in headers.items() if name.lower() not in dropped]
    kept.append(("Accept-Encoding", "identity"))
    if target.api_key:
        kept.append(("Authorization", f"Bearer {target.api_key}"))
    return kept


def relayed_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    decoded = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]
    dropped = _NOT_RELAYED | _connection_tokens(decoded)
    return [(name, value) for name, value in decoded if name not in dropped]


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Header names a `Connection` header marks as hop-by-hop (RFC 9110, 7.6.1)."""
    values = [value for name, value in headers if name.lower() == "connection"]
    return frozenset(t.strip().lower() for value in values for t in value.split(",") if t.strip())


async def _relay(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    with map_transport_errors():
        async for chunk in response.content.iter_any():
            yield chunk


def _releaser(response: aiohttp.ClientResponse) -> Closer:
    async def release() -> None:
        response.release()  # closes the connection instead when the body was not read to the end

    return release


class LiteLLMProvider:
    """Chat completions through litellm, answered in OpenAI's wire format."""

    async def chat(self, body: Mapping[str, Any], target: UpstreamTarget | None) -> UpstreamResponse:
        litellm = import_litellm()
        with map_litellm_errors(litellm):
            result = await litellm.acompletion(**body, **_litellm_target(target))
        if body.get("stream"):
            sse = [("content-type", "text/event-stream")]
            return UpstreamResponse(200, sse, _sse(result, litellm), result.aclose)
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


async def _sse(stream: Any, litellm: ModuleType) -> AsyncIterator[bytes]:
    with map_litellm_errors(litellm):
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
def map_litellm_errors(litellm: ModuleType) -> Iterator[None]:
    """litellm's exceptions (openai.APIError subclasses with a status) -> the matching `GatewayError`."""
    import openai

    try:
        yield
    except openai.APIError as exc:
        raise _litellm_error(exc, litellm) from exc


def _litellm_error(exc: Any, litellm: ModuleType) -> GatewayError:
    message = str(getattr(exc, "message", "") or exc)
    if isinstance(exc, litellm.ContextWindowExceededError):
        return ContextLengthExceeded(message)
    if isinstance(exc, litellm.Timeout):
        return UpstreamTimeout(message)
    if isinstance(exc, litellm.APIConnectionError):
        return UpstreamError(f"upstream unreachable: {message}")
    status = getattr(exc, "status_code", None)
    return from_status(status, message) if isinstance(status, int) else UpstreamError(message)
