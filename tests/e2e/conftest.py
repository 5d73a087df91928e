"""The gateway, running for real: uvicorn on a free port, a real Redis, the fake upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.fake_upstream import FakeUpstream, serve
from gateway.api.app import create_app
from gateway.settings import Overrides, load_settings


@dataclass(frozen=True)
class Gateway:
    url: str  # "http://127.0.0.1:PORT/v1"
    fake: FakeUpstream

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")


GatewayFactory = Callable[..., "contextmanager[Gateway]"]


@pytest.fixture
def start_gateway(redis_url: str, tmp_path: Path, offline: None) -> Callable[..., object]:
    """`with start_gateway(config_yaml=None, budget=None, fake=None) as gw:` a fresh gateway."""

    @contextmanager
    def start(
        config_yaml: str | None = None, budget: int | None = None, fake: FakeUpstream | None = None
    ) -> Iterator[Gateway]:
        fake = fake or FakeUpstream()
        path = None
        if config_yaml is not None:
            path = tmp_path / "config.yaml"
            path.write_text(config_yaml)
        with serve(fake.app) as upstream_url:
            settings = load_settings(path, {}, Overrides(upstream=upstream_url, budget=budget, store=redis_url))
            with serve(create_app(settings)) as url:
                yield Gateway(url=url, fake=fake)

    return start


@pytest.fixture
def gateway(start_gateway: Callable[..., object]) -> Iterator[Gateway]:
    with start_gateway() as gw:  # type: ignore[attr-defined]
        yield gw
