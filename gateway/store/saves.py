"""Saves announced: how a worker knows its cached table is current without asking the store.

Every save that moves a session table's version publishes `<table key> <version>` on
SAVED_CHANNEL from the save script itself (gateway.store.store), so no save goes unannounced.
Each worker listens (`SavesFeed`) and hands what it hears to the session cache
(gateway.store.session_state), which trusts a cached table only while

- the subscription has been up since the table came from the store (`epoch`: a resubscription,
  after a lost connection, may have missed saves, so tables held from before it are read again),
- and no save newer than the table's version has been heard.

A trusted table is planned on without a round trip. A save not heard yet (its message still on
its way when the next request arrives) is caught by the save's own version check: the turn is
planned again on the stored table (gateway.turns.pipeline.StaleTurn), never saved over it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.exceptions as rexc

from gateway.store.store import SAVED_CHANNEL, Client, StoreError, mapped_errors

log = logging.getLogger("clawvm.gateway")
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
_PREFIX, _SUFFIX, _SESSION = "cvm:{", "}:table", "s:"


class Heard(Protocol):
    def __call__(self, tenant: str, session: str, version: int) -> None: ...


def announced(data: object) -> tuple[str, str, int] | None:
    """(tenant, session, version) of a SAVED_CHANNEL message; None for anything else (a project
    table, or text that is not a save's announcement)."""
    if not isinstance(data, str):
        return None
    key, _, version = data.rpartition(" ")
    if not (version.isascii() and version.isdigit() and key.startswith(_PREFIX) and key.endswith(_SUFFIX)):
        return None
    tenant, _, scope = key[len(_PREFIX) : -len(_SUFFIX)].partition(":")
    if not tenant or not scope.startswith(_SESSION) or len(scope) == len(_SESSION):
        return None
    return tenant, scope[len(_SESSION) :], int(version)


class SavesFeed:
    """This worker's subscription to SAVED_CHANNEL, kept up by a background task."""

    def __init__(
        self,
        client: Client,
        heard: Heard,
        *,
        first: float = BACKOFF_FIRST_S,
        most: float = BACKOFF_MAX_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._heard = heard
        self._first, self._most, self._sleep = first, most, sleep
        self._task: asyncio.Task[None] | None = None
        self.epoch = 0  # bumped on every confirmed (re)subscription
        self.live = False  # subscribed now: every save from `epoch` on is heard

    @property
    def running(self) -> bool:
        """Whether the task still keeps (or tries to keep) the subscription up."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="clawvm-saves-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        self.live = False
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        delay = self._first
        while True:
            try:
                await self._listen()
            except StoreError as exc:
                if isinstance(exc.__cause__, rexc.NoPermissionError):  # not transient: ask no more
                    log.warning("saves feed refused (%s): cached tables are checked against the store", exc)
                    return
                log.info("saves feed lost (%s); cached tables are checked against the store meanwhile", exc)
            except Exception:  # a bug must not end the task: the cache would stay unchecked-for-ever
                log.exception("the saves feed failed")
            self.live = False
            await self._sleep(delay)
            delay = min(delay * 2, self._most)

    async def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            with mapped_errors():
                await pubsub.subscribe(SAVED_CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self.on_message(message)
        finally:
            self.live = False
            await _quietly_closed(pubsub)

    def on_message(self, message: dict[str, Any]) -> None:
        """A subscription's confirmation starts a new epoch; a save's announcement is heard."""
        kind = message.get("type")
        if kind == "subscribe":
            self.epoch += 1
            self.live = True
        elif kind == "message":
            found = announced(message.get("data"))
            if found is not None:
                self._heard(*found)


async def _quietly_closed(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except (rexc.RedisError, OSError) as exc:
        log.debug("closing the saves feed's connection: %r", exc)
