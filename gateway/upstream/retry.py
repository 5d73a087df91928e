"""Retrying an upstream call whose response has not begun, with capped, jittered backoff.

What is retried (and only while no byte of an answer has reached the agent: the loop wraps the
call up to the response's status line, never the body):

- a failure to get any response: connection refused, reset or closed before the status line
  (`UpstreamUnreachable`), or no status line within the timeout (`UpstreamTimeout`);
- a status that says "not processed, try again": 408, 429, 502, 503, 504 — unless the upstream
  says `x-should-retry: false`.

Not retried: 400/401/403/404/409/422 and other 4xx (the same request fails the same way), and
500: an upstream's 500 may come after the model ran (and was billed), and is as often a
deterministic failure on this input as a transient one. It is relayed at once, as 500.

The wait before retry n (0-based) is `backoff_delay`: equal jitter over `base * 2**n`, at most
`cap`. A 429/503 with `retry-after-ms` or `Retry-After` (seconds or an HTTP date) is waited for
as asked when that is at most `retry_after_cap`; a longer ask ends the retries and the answer,
with its header, goes to the agent, whose client can wait as long as the upstream wants.
`backoff_delay`, `retry_after` and `delay` are pure (the jitter and the clock are arguments).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from gateway.api.errors import UpstreamTimeout, UpstreamUnreachable
from gateway.upstream.client import UpstreamResponse

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})

Attempt = Callable[[], Awaitable[UpstreamResponse]]
Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[str], None]  # called with the reason ("429", "timeout", "unreachable", ...)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2  # attempts after the first; 0 turns retrying off
    backoff: float = 0.5  # seconds before the first retry (before jitter); doubles each time
    backoff_cap: float = 8.0  # longest backoff wait
    retry_after_cap: float = 30.0  # longest Retry-After waited for; a longer ask is relayed instead


def backoff_delay(policy: RetryPolicy, retry: int, jitter: float) -> float:
    """Seconds before retry `retry` (0-based); `jitter` in [0, 1) spreads it over [d/2, d)."""
    ceiling = min(policy.backoff_cap, policy.backoff * 2.0**retry)
    return ceiling / 2 + ceiling / 2 * jitter


def schedule(policy: RetryPolicy, jitter: Callable[[], float]) -> list[float]:
    """The backoff waits before each retry, in order, when the upstream names no Retry-After."""
    return [backoff_delay(policy, retry, jitter()) for retry in range(policy.retries)]


def retry_after(headers: Iterable[tuple[str, str]], now: float) -> float | None:
    """Seconds the upstream asked us to wait (`retry-after-ms`, else `Retry-After`), or None.

    `now` is the current Unix time, for the HTTP-date form. Header names are lower-case."""
    found = dict(headers)
    millis = _number(found.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = found.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def delay(policy: RetryPolicy, retry: int, jitter: float, asked: float | None) -> float | None:
    """The wait before retry `retry`, or None when the upstream asked for longer than we wait."""
    if asked is None:
        return backoff_delay(policy, retry, jitter)
    return asked if asked <= policy.retry_after_cap else None


def should_retry(response: UpstreamResponse) -> bool:
    if response.status not in RETRY_STATUSES:
        return False
    return dict(response.headers).get("x-should-retry", "").strip().lower() != "false"


async def with_retries(
    attempt: Attempt,
    policy: RetryPolicy,
    *,
    on_retry: OnRetry | None = None,
    jitter: Callable[[], float] | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> UpstreamResponse:
    """`attempt()` until it gives an answer worth relaying or the retries run out.

    Returns the last response (a retryable status included, once retries are exhausted) and
    raises the last `UpstreamUnreachable` / `UpstreamTimeout`; any other error at once."""
    for retry in range(policy.retries + 1):
        last = retry == policy.retries
        try:
            response = await attempt()
        except (UpstreamUnreachable, UpstreamTimeout) as exc:
            if last:
                raise
            reason, asked = ("timeout" if isinstance(exc, UpstreamTimeout) else "unreachable"), None
        else:
            if last or not should_retry(response):
                return response
            reason, asked = str(response.status), retry_after(response.headers, clock())
            if asked is not None and asked > policy.retry_after_cap:
                return response  # the upstream wants longer than we hold the agent: its client decides
            await response.aclose()  # the error body is dropped, its connection released
        jitter = jitter or random.Random().random  # seeded from the OS, only when a retry happens
        if on_retry is not None:
            on_retry(reason)
        await sleep(delay(policy, retry, jitter(), asked) or 0.0)
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover
