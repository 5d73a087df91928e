"""Where a tenant's request goes and with which key: from its configuration, the client's key only
when the tenant forwards it."""

from __future__ import annotations

from typing import Any

from gateway.settings import Tenant, UpstreamSettings
from gateway.upstream.retry import RetryPolicy
from gateway.upstream.targets import anthropic_target, retry_policy, upstream_target
from policies.tenant import TenantPolicy


def tenant(**upstream: Any) -> Tenant:
    settings = UpstreamSettings(api_base="http://up.example/v1", api_key="sk-upstream", timeout=12.0, **upstream)
    return Tenant("acme", ("sk-client",), TenantPolicy(name="acme"), settings)


def test_the_target_uses_the_configured_upstream_key() -> None:
    target = upstream_target(tenant(), {"authorization": "Bearer sk-client"})
    assert (target.api_base, target.api_key, target.timeout) == ("http://up.example/v1", "sk-upstream", 12.0)


def test_the_target_forwards_the_client_key_when_configured() -> None:
    forwarding = tenant(forward_client_key=True)
    assert upstream_target(forwarding, {"authorization": "Bearer sk-client"}).api_key == "sk-client"
    assert upstream_target(forwarding, {"x-api-key": "sk-other"}).api_key == "sk-other"
    assert upstream_target(forwarding, {}).api_key is None


def test_the_anthropic_target_sends_the_anthropic_key_as_x_api_key() -> None:
    configured = tenant(anthropic_base="http://claude.example", anthropic_key="sk-ant")
    target = anthropic_target(configured, {"x-api-key": "sk-client"})
    assert (target.api_base, target.api_key, target.key_header) == ("http://claude.example", "sk-ant", "x-api-key")
    assert anthropic_target(tenant(forward_client_key=True), {"x-api-key": "sk-client"}).api_key == "sk-client"


def test_the_retry_policy_is_the_tenants() -> None:
    policy = retry_policy(tenant(retries=5, backoff=0.25, backoff_max=3.0, retry_after_max=9.0))
    assert policy == RetryPolicy(retries=5, backoff=0.25, backoff_cap=3.0, retry_after_cap=9.0)
