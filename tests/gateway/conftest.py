"""Fixtures shared by the gateway's tests."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest

from gateway.store.store import RedisStore


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    """A `RedisStore` on the test session's real Redis server, closed after the test."""
    store = RedisStore.from_url(redis_url)
    yield store
    await store.aclose()


@pytest.fixture
def tenant(request: pytest.FixtureRequest) -> str:
    """A tenant of its own for each test (the Redis server is shared by the test session),
    named after the test: the same test gets the same tenant on every run."""
    return "t" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
