"""Session page tables: loaded from the store, cached in process, saved atomically.

Requests for one session are serialised by a per-session lock in this process; across
processes the store's optimistic version check decides (a lost race re-plans on fresh state).
The in-process cache is trusted without a round trip: the save is optimistic (it carries the
version the table was loaded at), so a replica that planned on a table another replica has
moved past loses the save, drops its copy and plans again on the stored state.

A commit writes what the turn changed: one delta appended to the table's journal (see
gateway.store.tables), not the whole table. Every COMPACT_EVERY records, or when the journal would
outgrow the snapshot, the commit writes a fresh snapshot instead (which clears the journal), so
that a load replays a bounded journal and the per-turn write stays proportional to the change.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from gateway.store.board import VersionBoard
from gateway.store.store import ScriptArg, Store, StoreUnavailable, TableRecord, body_digest, session_scope
from gateway.store.tables import TableFormatError, dump_delta, dump_table, load_table, outline, page_ids
from policies.crossing import Live, Predecessor, live_ids, live_state_of
from policies.pages import Page, PageType
from policies.pagetable import PageTable, checkpoint, unchanged

CACHE_CAPACITY = 2048
COMPACT_EVERY = 64  # journal records between snapshots, at most
LIVE_TAIL = 32  # a live predecessor's newest pages read first, looking for its current plan (doubled as needed)


@dataclass(frozen=True, slots=True)
class Journal:
    """The stored form of a table as of its version: the snapshot's size and the records after it."""

    records: int
    size: int  # characters of the records, a newline before each
    base: int  # characters of the snapshot

    @classmethod
    def of(cls, data: str) -> Journal:
        snapshot = data.partition("\n")[0]
        return cls(data.count("\n"), len(data) - len(snapshot), len(snapshot))

    def takes(self, delta: str) -> bool:
        """Whether one more record keeps the journal within its bounds."""
        return self.records < COMPACT_EVERY and self.size + len(delta) <= self.base


@dataclass(slots=True)
class _Lock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SessionState:
    def __init__(self, store: Store, capacity: int = CACHE_CAPACITY, board: VersionBoard | None = None) -> None:
        self.store = store
        self._capacity = capacity
        self._board = board  # the versions this gateway's processes last saved or read (embedded store)
        self._cache: OrderedDict[tuple[str, str], PageTable] = OrderedDict()
        self._locks: dict[tuple[str, str], _Lock] = {}
        # Set once a save of this process lost to another writer (another worker or replica):
        # from then on a cached table is version-checked before it is planned on (`current`).
        self.shared = False

    @asynccontextmanager
    async def locked(self, tenant: str, session: str) -> AsyncIterator[None]:
        key = (tenant, session)
        entry = self._locks.setdefault(key, _Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    async def load(self, tenant: str, session: str, project: str, user: str = "") -> PageTable:
        cached = self._cache.pop((tenant, session), None)  # the caller owns it until commit
        if cached is not None:
            return cached  # trusted: a stale copy loses the optimistic save and is reloaded
        record = await self.store.load_table(tenant, session_scope(session))
        if record is None:
            table = PageTable(tenant=tenant, session=session, project=project, user=user)
        else:
            table = await self._decode(tenant, session, record)
        if self._board is not None:  # the stored version, just read: no need to ask it again
            self._board.put(tenant, session, table.version)
        return table

    async def current(self, tenant: str, session: str) -> bool:
        """Whether the cached table (if any) may be planned on: always while no other writer has
        been seen; else only when its version is the stored one (one HGET), a stale copy being
        dropped so that `load` reads the stored table and the turn is planned once, not twice.
        An unreachable store keeps the cached copy (the outage path plans on it)."""
        cached = self._cache.get((tenant, session))
        if cached is None or not self.shared or not await self.moved(cached):
            return True
        self.forget(tenant, session)
        return False

    def holds(self, tenant: str, session: str) -> bool:
        """Whether a copy of the session's table is cached (else `load` reads the stored one)."""
        return (tenant, session) in self._cache

    def stale(self, tenant: str, session: str) -> bool:
        """Whether the versions board holds the session at another version than the cached
        table's: another worker saved it since (or the store lost writes). The copy is dropped, so
        that `load` reads the stored table instead of planning on this one and planning again once
        its save is refused; the caller drops what it cached with it (the session's memory)."""
        cached = self._cache.get((tenant, session))
        if cached is None or self._board is None:
            return False
        if self._board.get(tenant, session) in (None, cached.version):
            return False
        self.forget(tenant, session)
        return True

    async def moved(self, table: PageTable) -> bool:
        """Whether another writer has saved the session past `table` (one HGET): a turn whose save
        runs beside its upstream call (gateway.store.saving) asks before it forwards, since that
        save's own version check would tell it too late. An unreachable store answers False (the
        outage path plans on the copy it has). The versions board, when this gateway keeps one,
        answers instead of the store when it confirms the table's version."""
        if self.confirmed(table):
            return False
        try:
            stored = await self.store.table_version(table.tenant, session_scope(table.session))
        except StoreUnavailable:
            return False
        return stored != table.version

    def confirmed(self, table: PageTable) -> bool:
        """Whether the versions board holds the session at `table`'s version: no store round trip
        is needed to know that it is current."""
        return self._board is not None and self._board.get(table.tenant, table.session) == table.version

    async def read(self, tenant: str, session: str) -> PageTable | None:
        """The session's table for reading (the audit API, recall): the cached copy, left in the
        cache, else decoded from the store; None when the session has no stored table. (A new
        session's predecessor is read by `live`.)"""
        cached = self._cache.get((tenant, session))
        if cached is not None:
            return cached
        record = await self.store.load_table(tenant, session_scope(session))
        if record is None:
            return None
        return await self._decode(tenant, session, record)

    async def live(self, tenant: str, session: str, wanted: Callable[[Predecessor], bool]) -> Live | None:
        """The session as a new session's start needs it (`policies.crossing.Live`), or None
        when it has no stored table or `wanted` does not take it (read from the table record
        alone). A cached copy answers whole; else its table record, then the pages it carries
        (its carried state, its facts' pages and its current plan, which the record names): what
        carries, not the session's length. A record stored before it named its plan has its
        newest pages read back to the plan (LIVE_TAIL first, then twice as many, and so on)."""
        cached = self._cache.get((tenant, session))
        if cached is not None:
            return Live.of(cached) if wanted(Predecessor.of(cached)) else None
        scope = session_scope(session)
        record = await self.store.load_table(tenant, scope)
        if record is None:
            return None
        shape = outline(record.data)
        if not wanted(shape.who):
            return None
        known = live_ids(shape.order, shape.facts, shape.carried, shape.plan or "")
        pages: dict[str, Page] = {}
        tail = 0 if shape.plan is not None else LIVE_TAIL
        while True:
            asked = [*known, *(shape.order[-tail:] if tail else [])]
            pages.update(await self.store.get_pages(tenant, scope, [p for p in asked if p not in pages]))
            state = live_state_of(shape.order, shape.facts, shape.carried, pages, shape.plan)
            if state is not None:
                return Live(shape.who, tuple(state))
            if shape.plan is not None or tail >= len(shape.order):
                raise TableFormatError(f"stored table of session {session!r} names pages the store does not hold")
            tail *= 2

    async def _decode(self, tenant: str, session: str, record: TableRecord) -> PageTable:
        ids = page_ids(record.data)
        pages = await self.store.get_pages(tenant, session_scope(session), ids)
        table = load_table(record.data, pages, record.version)
        table.journal = Journal.of(record.data)
        return table

    async def commit(self, table: PageTable, new_pages: Sequence[Page], writeback: Sequence[ScriptArg] = ()) -> None:
        """Persist what changed in the table, its new pages and their evidence bodies, and the
        session scope's write-back batch when given (`MemoryService.joined_args`), in one atomic
        save: one round trip. A failed save leaves the table's change tracking as it was. A stored
        table that has not changed since its last save is cached again without a round trip."""
        if not writes(table, new_pages, bool(writeback)):
            self.keep(table)
            return
        bodies = {body_digest(p.reprs.full.text): p.reprs.full.text for p in new_pages if p.type is PageType.EVIDENCE}
        scope = session_scope(table.session)
        journal = table.journal if isinstance(table.journal, Journal) and table.version > 0 else None
        delta = dump_delta(table) if journal is not None else ""
        if journal is not None and journal.takes(delta):
            table.version = await self.store.append(
                table.tenant, scope, delta, new_pages, bodies, table.version, writeback
            )
            table.journal = Journal(journal.records + 1, journal.size + len(delta) + 1, journal.base)
        else:
            snapshot = dump_table(table)
            table.version = await self.store.save(
                table.tenant, scope, snapshot, new_pages, bodies, table.version, writeback
            )
            table.journal = Journal(0, 0, len(snapshot))
        if self._board is not None:  # before the turn's answer is relayed (gateway.store.saving)
            self._board.put(table.tenant, table.session, table.version)
        checkpoint(table)
        self.keep(table)

    def keep(self, table: PageTable) -> None:
        """Hand an unchanged table back to the cache without saving it."""
        self._cache[(table.tenant, table.session)] = table
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def forget(self, tenant: str, session: str) -> None:
        self._cache.pop((tenant, session), None)


def writes(table: PageTable, new_pages: Sequence[Page], writeback: bool) -> bool:
    """Whether committing the turn writes anything: a table not stored yet or changed since its
    last save, new pages, or a write-back batch (else `commit` only caches the table again)."""
    return table.version == 0 or bool(new_pages) or writeback or not unchanged(table)
