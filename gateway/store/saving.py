"""A turn's save running beside its upstream call (README "What a crash can lose").

The save (the table's journal record or snapshot, its pages and bodies, and the session scope's
write-back batch, in one script: gateway.store.store.SAVE_SCRIPT) needs nothing the forwarded
prompt needs, so the gateway may start it as a task, forward the prompt meanwhile, and wait for it
only when the upstream's answer arrives, before relaying any byte of that answer. The task holds
the session's lock (gateway.store.session_state.SessionState.locked) until the save ends, so the
session's next turn in this process plans on the saved table, never on the stored one the save
is about to move past; a client hang-up cancels the upstream call, never the save (`result`
shields it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Generic, TypeVar

from gateway.store.store import VersionConflict

T = TypeVar("T")
log = logging.getLogger("clawvm.gateway")


class PendingSave(Generic[T]):
    """The outcome of a save, running (`start`) or already known (`done`)."""

    def __init__(self, outcome: asyncio.Future[T]) -> None:
        self._outcome = outcome
        outcome.add_done_callback(_observed)

    @classmethod
    def start(cls, save: Callable[[], Awaitable[T]], held: AsyncExitStack) -> PendingSave[T]:
        """Run `save` as a task that releases `held` (the session's lock) once it ends."""

        async def saving() -> T:
            async with held:
                return await save()

        return cls(asyncio.ensure_future(saving()))

    @classmethod
    def done(cls, value: T) -> PendingSave[T]:
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        outcome.set_result(value)
        return cls(outcome)

    async def result(self) -> T:
        """The save's value, or its error; waiting is cancellable, the save is not."""
        return await asyncio.shield(self._outcome)


def _observed(outcome: asyncio.Future[object]) -> None:
    """A save nobody waited for (its request failed otherwise) is logged, never silently dropped."""
    if outcome.cancelled():
        log.warning("a turn's save was cancelled before it ended: the turn is not committed")
    elif isinstance(outcome.exception(), VersionConflict):  # the turn is planned again on fresh state
        log.info("a turn's save lost to another writer: %s", outcome.exception())
    elif outcome.exception() is not None:
        log.warning("a turn's save failed: %r", outcome.exception())
