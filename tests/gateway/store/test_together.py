"""Reads awaited together: results in order, and a failure raised only once every read ended."""

from __future__ import annotations

import anyio
import pytest

from gateway.store.store import StoreUnavailable
from gateway.store.together import together

pytestmark = pytest.mark.anyio


async def test_results_come_in_the_order_asked() -> None:
    async def read(value: int, delay: float) -> int:
        await anyio.sleep(delay)
        return value

    assert await together(read(1, 0.02), read(2, 0), read(3, 0.01)) == [1, 2, 3]
    assert await together() == []


async def test_the_first_failure_is_raised_once_every_read_ended() -> None:
    ended: list[str] = []

    async def fails(name: str, delay: float) -> None:
        await anyio.sleep(delay)
        ended.append(name)
        raise StoreUnavailable(name)

    async def slow() -> str:
        await anyio.sleep(0.05)
        ended.append("slow")
        return "done"

    with pytest.raises(StoreUnavailable, match="first"):
        await together(slow(), fails("first", 0.02), fails("second", 0))
    assert sorted(ended) == ["first", "second", "slow"]
