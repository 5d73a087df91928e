"""Store outages (issue 6): turns served while Redis is unreachable, their writes held in order.

When the store raises StoreUnavailable during a turn, the pipeline still plans it, on the
in-process page table (or on a fresh table built from the request's own messages), forwards it
and answers 200 with `x-clawvm-degraded: store_unavailable`. What the turn would have written is
*deferred* here, per session:

- its write-back batch (the turn's new pages, staged and validated when committed),
- the page table itself (its change tracking still holds everything since its last save) and the
  new pages and evidence bodies that save must carry,
- its audit records (decisions and events, with a `STORE_UNAVAILABLE` event).

A session's deferred work commits in order: the write-back batches in turn order, then one save
of the table with every deferred page, then the audit records. Sessions commit oldest first. The
drain task (`Drainer`, started and stopped by the app's lifespan) retries with exponential
backoff until the store answers; a later turn of a session with deferred work commits it inline
before its own (nothing commits out of order). Every step is the store's usual optimistic,
idempotent operation: a retry of a save or a write-back batch that did commit returns the stored
version, and a step is dropped from the queue only once it committed.

Committed state is never overwritten: the table's save carries the version it was loaded at. When
another writer moved the stored table meanwhile, or the table was built fresh during the outage
while a stored one exists (VersionConflict), the deferred pages are stored on their own (pages are
immutable: SET NX) and the in-process table is dropped, so the session's next request plans on the
stored table and ingests what it lacks from the transcript the agent sends again. (A Redis that
lost acknowledged writes in its own crash, as `appendfsync everysec` allows, reads the same way.)

Bounded by turns and by bytes: at most `capacity` deferred turns (`store.outage_queue`) and about
`byte_capacity` bytes (`store.outage_queue_bytes`) of deferred text: the pages' representations,
tool calls and arguments (an evidence body is its page's full text) and the audit records, each
page counted once per session however many deferred turns carry it (`turn_bytes`). A new turn is
refused with 503 `store_unavailable` (`admit`) when the queue is full, or when one more turn of
the queue's mean size would pass the byte bound; every deferred turn is kept: queued work is never
dropped to make room. (An empty queue admits any turn, and turns admitted together can each add
their own size past the byte bound: the bound holds to within what those turns carry.) Only a shutdown while the
store is still unreachable loses deferred (never committed) work, and says so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway import jsonio
from gateway.api.errors import ServiceUnavailable
from gateway.observability.audit import AuditLog
from gateway.observability.metrics import Metrics
from gateway.store.memory import MemoryService
from gateway.store.session_state import SessionState
from gateway.store.store import StoreError, VersionConflict, session_scope
from policies.pages import Page
from policies.pagetable import PageTable

log = logging.getLogger("clawvm.gateway")
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
DEGRADED_HEADER = "x-clawvm-degraded"
DEGRADED = "store_unavailable"
DEFAULT_CAPACITY = 10_000
DEFAULT_BYTES = 64 * 1024 * 1024
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
SHUTDOWN_FLUSH_S = 5.0

Records = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (decisions, events)


def store_event(detail: str, turn: int) -> dict[str, Any]:
    """The audit record of a turn served without its store."""
    return {"kind": "store", "event": STORE_UNAVAILABLE, "evidence": detail, "turn": turn}


@dataclass(slots=True)
class Pending:
    """One session's deferred work, in the order it commits."""

    table: PageTable
    pages: dict[str, Page] = field(default_factory=dict)  # every page the deferred saves carry
    writebacks: deque[list[Page]] = field(default_factory=deque)  # one batch per deferred turn
    records: deque[Records] = field(default_factory=deque)
    saved: bool = True  # the table holds nothing the store lacks
    turns: int = 0
    size: int = 0  # bytes counted against the queue's byte bound (turn_bytes)
    counted: set[str] = field(default_factory=set)  # ids of the pages already in `size`


class OutageQueue:
    """Deferred turns per session, oldest session first; see the module docstring."""

    def __init__(
        self,
        sessions: SessionState,
        memory: MemoryService,
        audit: AuditLog,
        metrics: Metrics | None = None,
        capacity: int = DEFAULT_CAPACITY,
        byte_capacity: int = DEFAULT_BYTES,
    ) -> None:
        self._sessions = sessions
        self._memory = memory
        self._audit = audit
        self._metrics = metrics
        self.capacity = capacity
        self.byte_capacity = byte_capacity
        self._pending: dict[tuple[str, str], Pending] = {}
        self._queued = 0
        self._bytes = 0
        self.work = asyncio.Event()  # set when work is deferred: wakes the drain task

    @property
    def queued(self) -> int:
        """Deferred turns not yet committed."""
        return self._queued

    @property
    def queued_bytes(self) -> int:
        """Bytes of the deferred turns not yet committed (`turn_bytes`)."""
        return self._bytes

    @property
    def full(self) -> bool:
        """No room for one more turn: the turn bound is reached, or a turn of the queue's mean
        size would pass the byte bound."""
        mean = self._bytes // self._queued if self._queued else 0
        return self._queued >= self.capacity or self._bytes + mean > self.byte_capacity

    def admit(self) -> None:
        """Refuse a new turn while the queue is full (it could not be deferred)."""
        if self._queued >= self.capacity:
            bound = f"{self._queued} turns wait to be committed (the most the gateway holds, store.outage_queue)"
        elif self.full:
            bound = (
                f"{self._queued} turns ({self._bytes} bytes) wait to be committed (the gateway holds at most "
                f"{self.byte_capacity} bytes, store.outage_queue_bytes)"
            )
        else:
            return
        raise ServiceUnavailable(
            f"the page store is unavailable and {bound}; retry once the store is back", code=DEGRADED
        )

    def holds(self, tenant: str, session: str) -> bool:
        return (tenant, session) in self._pending

    def table(self, tenant: str, session: str) -> PageTable | None:
        """The session's table while it has deferred work: newer than anything stored."""
        entry = self._pending.get((tenant, session))
        return None if entry is None else entry.table

    def defer(
        self,
        table: PageTable,
        pages: Sequence[Page],
        writeback: Sequence[Page] | None,
        records: Records,
    ) -> None:
        """Queue one turn: its write-back batch (None: already committed), the table's save with
        `pages`, and its audit records. The table stays cached for the session's next turn."""
        key = (table.tenant, table.session)
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = Pending(table)
        entry.table = table
        added = turn_bytes([*pages, *(writeback or ())], records, entry.counted)
        entry.pages.update((p.id, p) for p in pages)
        entry.saved = False
        if writeback:
            entry.writebacks.append(list(writeback))
        if records[0] or records[1]:
            entry.records.append(records)
        entry.turns += 1
        entry.size += added
        self._bytes += added
        self._count(1)
        self._sessions.keep(table)
        self.work.set()

    def note(self, tenant: str, session: str, events: list[dict[str, Any]]) -> None:
        """Add audit events to a session's deferred work (written when the store is back)."""
        entry = self._pending.get((tenant, session))
        if entry is not None and events:
            entry.records.append(([], events))
            added = turn_bytes([], ([], events), entry.counted)
            entry.size += added
            self._bytes += added

    async def flush(self, tenant: str, session: str) -> None:
        """Commit one session's deferred work, in order. The caller holds the session's lock.
        Raises StoreUnavailable (or another StoreError) with what did not commit still queued."""
        entry = self._pending.get((tenant, session))
        if entry is None:
            return
        while entry.writebacks:
            await self._memory.write_back(entry.table, entry.writebacks[0])
            entry.writebacks.popleft()
        if not entry.saved:
            await self._save(entry)
            entry.saved = True
            entry.pages = {}
        while entry.records:
            decisions, events = entry.records[0]
            await self._audit.record(tenant, session, decisions, events)
            entry.records.popleft()
        del self._pending[(tenant, session)]
        self._bytes -= entry.size
        self._count(-entry.turns)

    async def _save(self, entry: Pending) -> None:
        table, pages = entry.table, list(entry.pages.values())
        try:
            await self._sessions.commit(table, pages)
        except VersionConflict as exc:  # newer state is stored: keep it, add the pages, plan on it next
            await self._sessions.store.put_pages(table.tenant, session_scope(table.session), pages)
            self._sessions.forget(table.tenant, table.session)
            log.warning(
                "session %s moved on in the store during the outage (%s): its deferred table was not saved, "
                "its %d pages were; the next request plans on the stored table",
                table.session,
                exc,
                len(pages),
            )

    async def drain(self) -> int:
        """Commit every session's deferred work, oldest first, each under its session's lock;
        returns the turns committed. Stops at the first failure, raising it."""
        done = 0
        for tenant, session in list(self._pending):
            entry = self._pending.get((tenant, session))
            if entry is None:
                continue
            async with self._sessions.locked(tenant, session):
                turns = entry.turns if self._pending.get((tenant, session)) is entry else 0
                await self.flush(tenant, session)
            done += turns
        return done

    def _count(self, n: int) -> None:
        self._queued += n
        if self._metrics is not None:
            self._metrics.outage_queued(self._queued)


def turn_bytes(pages: Sequence[Page], records: Records, counted: set[str]) -> int:
    """The bytes one deferred turn holds: every representation's text (UTF-8) of each page not in
    `counted` (then added to it), its tool calls and arguments, and the audit records as JSON.
    An evidence body is its page's full text: counted with the page."""
    size = 0
    for page in pages:
        if page.id in counted:
            continue
        counted.add(page.id)
        size += _page_bytes(page)
    for record in (*records[0], *records[1]):
        size += len(jsonio.dumps(record))
    return size


def _page_bytes(page: Page) -> int:
    reprs = page.reprs
    size = len(page.id) + len(page.provenance.tool_arguments or "")
    for shown in (reprs.full, reprs.compressed, reprs.structured, reprs.pointer):
        size += len(shown.text.encode("utf-8", "surrogatepass"))
        size += sum(len(c.id) + len(c.name) + len(c.arguments) for c in shown.tool_calls)
    return size


class Drainer:
    """The background task that commits deferred work when the store answers again."""

    def __init__(
        self,
        queue: OutageQueue,
        *,
        first: float = BACKOFF_FIRST_S,
        most: float = BACKOFF_MAX_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._queue = queue
        self._first = first
        self._most = most
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="clawvm-outage-drain")

    async def _run(self) -> None:
        delay = self._first
        while True:
            if not self._queue.queued:
                self._queue.work.clear()
                await self._queue.work.wait()
                continue
            try:
                done = await self._queue.drain()
            except StoreError as exc:
                log.info("store still unavailable (%s); %d turns deferred", type(exc).__name__, self._queue.queued)
            except Exception:  # a bug must not end the task: it would strand the queue
                log.exception("draining the outage queue failed")
            else:
                if done:
                    log.info("store is back: %d deferred turns committed", done)
                delay = self._first
                continue
            await self._sleep(delay)
            delay = min(delay * 2, self._most)

    async def stop(self, timeout: float = SHUTDOWN_FLUSH_S) -> None:
        """End the task, then commit what is still deferred if the store answers within `timeout`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self._queue.queued:
            return
        try:
            await asyncio.wait_for(self._queue.drain(), timeout)
        except (StoreError, TimeoutError) as exc:
            log.error(
                "shutting down with %d deferred turns not committed (store unavailable: %s)",
                self._queue.queued,
                type(exc).__name__,
            )
