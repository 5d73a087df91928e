"""TenantLimiter: requests in flight per tenant, refused past the limit, released once."""

from __future__ import annotations

import pytest

from gateway.api.errors import RateLimited
from gateway.api.limits import TenantLimiter
from gateway.settings import Tenant, TenantLimits, UpstreamSettings
from policies.tenant import TenantPolicy


def tenant(name: str, limit: int) -> Tenant:
    return Tenant(name, ("k",), TenantPolicy(name=name), UpstreamSettings(), TenantLimits(limit))


def test_a_tenant_at_its_limit_is_refused_and_others_are_not() -> None:
    seen: list[tuple[str, int]] = []
    limiter = TenantLimiter(lambda name, n: seen.append((name, n)))
    a, b = tenant("a", 2), tenant("b", 2)
    slots = [limiter.acquire(a), limiter.acquire(a)]
    with pytest.raises(RateLimited) as refused:
        limiter.acquire(a)
    assert refused.value.status_code == 429 and refused.value.code == "concurrency_limit_exceeded"
    assert "tenants.a.limits.max_concurrent_requests" in refused.value.message
    limiter.acquire(b).release()
    slots[0].release()
    slots[0].release()  # a second release frees nothing more
    assert limiter.in_flight("a") == 1
    limiter.acquire(a)
    assert limiter.in_flight("a") == 2
    assert seen == [("a", 1), ("a", 2), ("b", 1), ("b", 0), ("a", 1), ("a", 2)]


def test_zero_means_no_limit() -> None:
    limiter = TenantLimiter()
    free = tenant("free", 0)
    slots = [limiter.acquire(free) for _ in range(1000)]
    for slot in slots:
        slot.release()
    assert limiter.in_flight("free") == 0
