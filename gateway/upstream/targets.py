"""Where a tenant's request goes, with which key, and how often it is retried.

The destination and the key come from the tenant's configuration (`UpstreamSettings`), never
from the request: a client's own key is sent only when the tenant sets `forward_client_key`.
`upstream_target` is the OpenAI-compatible upstream (`api_base`, its key as `Authorization`),
`anthropic_target` the Messages API upstream (`anthropic_base`, its key as `x-api-key`).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.api.auth import client_key
from gateway.settings import Tenant
from gateway.upstream.client import UpstreamTarget
from gateway.upstream.retry import RetryPolicy


def upstream_target(tenant: Tenant, headers: Mapping[str, str]) -> UpstreamTarget:
    settings = tenant.upstream
    return _target(tenant, headers, settings.api_base, settings.api_key, "authorization")


def anthropic_target(tenant: Tenant, headers: Mapping[str, str]) -> UpstreamTarget:
    """The tenant's Messages API upstream (`anthropic_base`), its key sent as `x-api-key`: the
    client's own key only with `forward_client_key`, like OpenAI's."""
    settings = tenant.upstream
    return _target(tenant, headers, settings.anthropic_base, settings.anthropic_key, "x-api-key")


def _target(tenant: Tenant, headers: Mapping[str, str], base: str, key: str | None, key_header: str) -> UpstreamTarget:
    settings = tenant.upstream
    return UpstreamTarget(
        api_base=base,
        api_key=client_key(headers) if settings.forward_client_key else key,
        timeout=settings.timeout,
        stream_idle_timeout=settings.stream_idle_timeout,
        key_header=key_header,
    )


def retry_policy(tenant: Tenant) -> RetryPolicy:
    settings = tenant.upstream
    return RetryPolicy(settings.retries, settings.backoff, settings.backoff_max, settings.retry_after_max)
