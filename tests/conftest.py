"""Shared fixtures. Servers the tests need (Redis, the fake upstream, the gateway) are real
processes or threads on free loopback ports, started here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.fake_upstream import Running, running
from gateway.embedded import EmbeddedRedis
from gateway.tokens import prepare_offline


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken reads litellm's bundled files (and litellm its bundled model map) for this test."""
    env: dict[str, str] = {}
    prepare_offline(env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (gateway.embedded) on a free loopback port, for the whole test session.

    Tests share it: keep keys apart with a tenant or session id of their own."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def fake_upstream() -> Iterator[Running]:
    """A fresh fake OpenAI-compatible upstream (bench.fake_upstream) on a free port: `.url`, `.fake`."""
    with running() as served:
        yield served
