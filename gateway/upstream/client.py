"""Calls to the LLM upstream.

`OpenAICompatible` is a plain aiohttp passthrough to an upstream's `api_base`, whatever format it
speaks. Bytes are relayed as the upstream sent them (no decompression, no re-chunking of SSE), over
one pooled session. (Chat Completions to upstreams that do not speak OpenAI go through litellm:
`gateway.wire.chat_litellm`, which returns the same `UpstreamResponse`.)

It returns an `UpstreamResponse`. A non-2xx status from the upstream is an answer, not an error:
it is returned like any other (its body already is OpenAI-shaped). Only failures to get an answer
raise, as `UpstreamUnreachable` / `UpstreamTimeout` (safe to retry: see `map_transport_errors` and
gateway.upstream.retry) or `UpstreamError`; a failure once the body flows raises from the body's iterator
(`map_body_errors`: never retried). litellm reports upstream statuses as exceptions, which
`map_litellm_errors` turns into the matching `GatewayError`.

What the upstream says about the operator's account stays here: only `RELAYED` headers (and the
`RELAYED_PREFIXES` rate-limit families) of an answer reach the agent, so `openai-organization`,
`openai-project`, `set-cookie`, `anthropic-organization-id` and the like do not. A failure to get an
answer (`map_transport_errors`, `map_body_errors`, litellm's 5xx, timeouts and connection errors)
reaches the client as a generic message that names what failed and that it may be retried; the
detail (hosts, ports, library text) is logged here, never sent.

The key the gateway sends upstream never reaches the agent: credential headers of an answer are
not relayed, and an upstream that echoes the key (an error body quoting the request's
`Authorization`, a masked `sk-...abcd` in a 401, a litellm exception) has it replaced by
`[redacted]` in the relayed headers, in every non-2xx body and in error messages (`redact`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp

from gateway.api.errors import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

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
_CREDENTIALS = frozenset({"authorization", "api-key", "x-api-key"})  # never relayed to the agent
# Answer headers a client needs: the body's type, retry and rate-limit advice, ids for support.
RELAYED = frozenset(
    {
        "content-type",
        "content-disposition",
        "cache-control",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",  # read by gateway.upstream.retry, and by OpenAI's SDKs
        "x-request-id",
        "request-id",
        "openai-processing-ms",
        "openai-version",
    }
)
RELAYED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
UNREACHABLE = "the upstream could not be reached; the request may be retried"
TIMED_OUT = "the upstream did not answer in time; the request may be retried"
FAILED = "the upstream call failed; the request may be retried"
STALLED = "the upstream stalled mid-response; the request may be retried"
DROPPED = "the upstream connection dropped mid-response; the request may be retried"
REDACTED = "[redacted]"
POOL_LIMIT = 1000
log = logging.getLogger("clawvm.gateway")

Closer = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where and how to call: `timeout` bounds a whole answer, except for a stream (`send(...,
    stream=True)`), whose headers and every chunk must come within `stream_idle_timeout` instead."""

    api_base: str
    api_key: str | None
    timeout: float = 600.0
    stream_idle_timeout: float = 120.0
    key_header: str = "authorization"  # "authorization" (Bearer) or "x-api-key" (Anthropic's)


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
    """aiohttp failures before the response began -> `UpstreamTimeout` (504), `UpstreamUnreachable`
    (502; both safe to retry) or `UpstreamError` (502)."""
    try:
        yield
    except TimeoutError as exc:  # asyncio.TimeoutError and aiohttp.ServerTimeoutError alike
        raise UpstreamTimeout(_logged(TIMED_OUT, exc)) from exc
    except aiohttp.ClientConnectionError as exc:
        raise UpstreamUnreachable(_logged(UNREACHABLE, exc)) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(_logged(FAILED, exc)) from exc


@contextmanager
def map_body_errors() -> Iterator[None]:
    """aiohttp failures while the body flows (some of it may be with the agent already): a stall
    -> `UpstreamTimeout`; a drop -> `UpstreamError` with code `upstream_disconnected`. Never retried."""
    try:
        yield
    except TimeoutError as exc:
        raise UpstreamTimeout(_logged(STALLED, exc)) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(_logged(DROPPED, exc), code="upstream_disconnected") from exc


def _logged(message: str, exc: BaseException) -> str:
    """`message` for the client; the transport's own words (host, port, errno) only in the log."""
    log.warning("%s: %s: %s", message, type(exc).__name__, _describe(exc))
    return message


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
        *,
        stream: bool = False,
    ) -> UpstreamResponse:
        """One attempt (gateway.upstream.retry makes more). `path` is relative to `target.api_base`, e.g.
        "/chat/completions"; `stream` when the body asks for an event stream (see `UpstreamTarget`)."""
        secrets = secrets_of(target)
        with map_transport_errors():
            response = await self._client().request(
                method,
                _url(target.api_base, path, query),
                data=body,
                headers=forwarded_headers(target, headers),
                timeout=_timeout(target, stream),
                allow_redirects=False,
            )
        chunks = _relay(response)
        if secrets and not 200 <= response.status < 300:
            chunks = _redacted(chunks, secrets)  # error bodies are small: read whole, then redacted
        headers = redact_headers(relayed_headers(response.raw_headers), secrets)
        return UpstreamResponse(response.status, headers, chunks, _releaser(response))

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: aiohttp wants a running loop
            self._session = new_session()
            self._owns_session = True
        return self._session


def _timeout(target: UpstreamTarget, stream: bool) -> aiohttp.ClientTimeout:
    if stream:  # a live stream may last any time; a silent one ends (sock_read covers the headers too)
        return aiohttp.ClientTimeout(total=None, connect=target.timeout, sock_read=target.stream_idle_timeout)
    return aiohttp.ClientTimeout(total=target.timeout)


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
        dropped = dropped | _CREDENTIALS
    kept = [(name, value) for name, value in headers.items() if name.lower() not in dropped]
    kept.append(("Accept-Encoding", "identity"))
    if target.api_key and target.key_header == "x-api-key":
        kept.append(("x-api-key", target.api_key))
    elif target.api_key:
        kept.append(("Authorization", f"Bearer {target.api_key}"))
    return kept


def relayed_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """The answer headers a client may see: `RELAYED` and the `RELAYED_PREFIXES` families, less
    hop-by-hop ones. Account headers (organization, project, cookies) and credentials stay here."""
    decoded = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]
    dropped = _NOT_RELAYED | _CREDENTIALS | _connection_tokens(decoded)
    return [(name, value) for name, value in decoded if name not in dropped and _relayable(name)]


def _relayable(name: str) -> bool:
    return name in RELAYED or name.startswith(RELAYED_PREFIXES)


def secrets_of(target: UpstreamTarget | None) -> tuple[str, ...]:
    """What must never be relayed back from this target: its API key."""
    return (target.api_key,) if target is not None and target.api_key else ()


def redact(data: bytes, secrets: Iterable[str]) -> bytes:
    """`data` with each secret replaced by `[redacted]`: as it is, JSON-escaped, and in the masked
    form OpenAI quotes in a 401 (`sk-...****abcd`, a run of `*` then the key's last four)."""
    for secret in secrets:
        for form in _forms(secret):
            data = data.replace(form, REDACTED.encode())
        if len(secret) >= 12:
            masked = rb"[\w.-]*\*{4,}[\w.*-]*" + re.escape(secret[-4:].encode("utf-8", "surrogatepass"))
            data = re.sub(masked, REDACTED.encode(), data)
    return data


def redact_text(text: str, secrets: Iterable[str]) -> str:
    return redact(text.encode("utf-8", "surrogatepass"), secrets).decode("utf-8", "surrogatepass")


def redact_headers(headers: list[tuple[str, str]], secrets: Iterable[str]) -> list[tuple[str, str]]:
    secrets = tuple(secrets)
    if not secrets:
        return headers
    return [(name, redact(value.encode("latin-1"), secrets).decode("latin-1")) for name, value in headers]


def _forms(secret: str) -> list[bytes]:
    plain = secret.encode("utf-8", "surrogatepass")
    escaped = json.dumps(secret)[1:-1].encode("ascii")
    return list(dict.fromkeys([plain, escaped, escaped.replace(b"/", b"\\/")]))


async def _redacted(chunks: AsyncIterator[bytes], secrets: tuple[str, ...]) -> AsyncIterator[bytes]:
    try:
        body = b"".join([chunk async for chunk in chunks])
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
    yield redact(body, secrets)


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Header names a `Connection` header marks as hop-by-hop (RFC 9110, 7.6.1)."""
    values = [value for name, value in headers if name.lower() == "connection"]
    return frozenset(t.strip().lower() for value in values for t in value.split(",") if t.strip())


async def _relay(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    with map_body_errors():
        async for chunk in response.content.iter_any():
            yield chunk


def _releaser(response: aiohttp.ClientResponse) -> Closer:
    async def release() -> None:
        response.release()  # closes the connection instead when the body was not read to the end

    return release
