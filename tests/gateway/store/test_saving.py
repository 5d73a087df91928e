from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import anyio
import pytest

from gateway.store.saving import PendingSave
from gateway.store.session_state import SessionState
from gateway.store.store import RedisStore, VersionConflict

pytestmark = pytest.mark.anyio


async def locked(state: SessionState, session: str) -> AsyncExitStack:
    held = AsyncExitStack()
    await held.enter_async_context(state.locked("t", session))
    return held


async def test_the_session_stays_locked_until_the_save_ends(store: RedisStore) -> None:
    state, release, order = SessionState(store), asyncio.Event(), []

    async def save() -> bool:
        await release.wait()
        order.append("saved")
        return False

    pending = PendingSave.start(save, await locked(state, "s"))

    async def next_turn() -> None:
        async with state.locked("t", "s"):
            order.append("next turn")

    waiting = asyncio.ensure_future(next_turn())
    for _ in range(20):
        await asyncio.sleep(0)
    assert order == []  # the next turn of the session waits for the save
    release.set()
    assert await pending.result() is False
    await waiting
    assert order == ["saved", "next turn"]


async def test_a_waiter_cancelled_leaves_the_save_running(store: RedisStore) -> None:
    state, release, saved = SessionState(store), asyncio.Event(), []

    async def save() -> bool:
        await release.wait()
        saved.append(True)
        return True

    pending = PendingSave.start(save, await locked(state, "s"))
    waiter = asyncio.ensure_future(pending.result())  # a forwarding the client hung up on
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    assert await pending.result() is True and saved == [True]


async def test_a_failed_save_raises_to_every_waiter_and_releases_the_lock(store: RedisStore) -> None:
    state = SessionState(store)

    async def save() -> bool:
        raise VersionConflict("moved", 1, 2)

    pending = PendingSave.start(save, await locked(state, "s"))
    for _ in range(2):
        with pytest.raises(VersionConflict):
            await pending.result()
    with anyio.fail_after(5):
        async with state.locked("t", "s"):
            pass


async def test_a_save_already_done_is_its_value() -> None:
    assert await PendingSave.done(True).result() is True
