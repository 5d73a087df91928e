"""Session page tables: loaded from the store, cached in process, saved atomically.

Requests for one session are serialised by a per-session lock in this process; across
processes the store's optimistic version check decides (a lost race re-plans on fresh state).
The in-process cache is trusted without a round trip: the save is optimistic (it carries the
version the table was loaded at), so a replica that planned on a table another replica has
moved past loses the save, drops its copy and plans again on the stored state.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from gateway.store import Store, TableRecord, body_digest, session_scope
from gateway.tables import dump_table, load_table, page_ids
from policies.pages import Page, PageType
from policies.pagetable import PageTable

CACHE_CAPACITY = 2048


@dataclass(slots=True)
class _Lock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SessionState:
    def __init__(self, store: Store, capacity: int = CACHE_CAPACITY) -> None:
        self.store = store
        self._capacity = capacity
        self._cache: OrderedDict[tuple[str, str], PageTable] = OrderedDict()
        self._locks: dict[tuple[str, str], _Lock] = {}

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

    async def load(self, tenant: str, session: str, project: str) -> PageTable:
        cached = self._cache.pop((tenant, session), None)  # the caller owns it until commit
        if cached is not None:
            return cached  # trusted: a stale copy loses the optimistic save and is reloaded
        record = await self.store.load_table(tenant, session_scope(session))
        if record is None:
            return PageTable(tenant=tenant, session=session, project=project)
        return await self._decode(tenant, session, record)

    async def _decode(self, tenant: str, session: str, record: TableRecord) -> PageTable:
        ids = page_ids(record.data)
        pages = await self.store.get_pages(tenant, session_scope(session), ids)
        return load_table(record.data, pages, record.version)

    async def commit(self, table: PageTable, new_pages: Sequence[Page]) -> None:
        """Persist the table, its new pages and their evidence bodies in one atomic save."""
        key = (table.tenant, table.session)
        bodies = {body_digest(p.reprs.full.text): p.reprs.full.text for p in new_pages if p.type is PageType.EVIDENCE}
        table.version = await self.store.save(
            table.tenant, session_scope(table.session), dump_table(table), new_pages, bodies, table.version
        )
        self._cache[key] = table
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def keep(self, table: PageTable) -> None:
        """Hand an unchanged table back to the cache without saving it."""
        self._cache[(table.tenant, table.session)] = table
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def forget(self, tenant: str, session: str) -> None:
        self._cache.pop((tenant, session), None)
