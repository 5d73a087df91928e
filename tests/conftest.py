"""Shared fixtures. Servers the tests need (Redis, the fake upstream, the gateway) are real
processes or threads on free loopback ports, started here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cluster import EmbeddedCluster
from bench.fake_upstream import Running, running
from gateway.store.embedded import EmbeddedRedis, free_port
from gateway.upstream.tokens import TiktokenCounter, Tokenizers, prepare_offline


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
def gpt4o_counter() -> Iterator[TiktokenCounter]:
    """The real tiktoken counter of gpt-4o, read from the bundled files (offline)."""
    env: dict[str, str] = {}
    prepare_offline(env)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", env["TIKTOKEN_CACHE_DIR"])
        yield Tokenizers().for_model("gpt-4o")  # loaded while the variable is set


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (gateway.store.embedded) on a free loopback port, for the whole test session.

    Tests share it: keep keys apart with a tenant or session id of their own."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own on a fixed port: `kill()` it (SIGKILL, as a crash) and
    `start()` it again where it was, as an outage does. It fsyncs before every reply
    (`appendfsync always`), so whatever the gateway saw committed survives the kill."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster on loopback (bench.cluster), for the whole test session:
    `redis+cluster://127.0.0.1:P1,...`. Shared like `redis_url`: keep keys apart by tenant."""
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture
def fake_upstream() -> Iterator[Running]:
    """A fresh fake OpenAI-compatible upstream (bench.fake_upstream) on a free port: `.url`, `.fake`."""
    with running() as served:
        yield served
