"""Validated write-back, every request, before assembly (DESIGN §5).

The turn's new pages are staged as typed updates (`policies.writeback.stage`), validated and
merged against the scope's committed memory (`policies.writeback.apply`), and committed
atomically with their journal records (`gateway.journal`), one batch per scope: the session's
(plan, evidence, session rules) and the project's (preferences, project rules, whose pages are
also stored in project scope so a later session can carry them). Memory is cached in process
and trusted like page tables: the commit checks its version, and a stale copy is reloaded and
the batch validated again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.journal import WritebackJournal
from gateway.store import Store, VersionConflict, project_scope, session_scope
from policies.pages import Page, Scope
from policies.pagetable import PageTable
from policies.writeback import Context, Memory, Outcome, Update, apply, batch_id, plan_version, stage

CACHE_CAPACITY = 4096


@dataclass(slots=True)
class WriteReport:
    """What one request's write-back did."""

    staged: int = 0
    committed: list[Update] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)  # reason code -> updates

    def add(self, outcome: Outcome) -> None:
        self.committed.extend(outcome.committed)
        for rejection in outcome.rejected:
            code = str(rejection.reason)
            self.rejected[code] = self.rejected.get(code, 0) + 1


class MemoryService:
    """Committed memory per (tenant, scope), cached, behind the journal."""

    def __init__(self, journal: WritebackJournal, store: Store, capacity: int = CACHE_CAPACITY) -> None:
        self.journal = journal
        self._store = store
        self._capacity = capacity
        self._cache: OrderedDict[tuple[str, str], Memory] = OrderedDict()

    async def write_back(self, table: PageTable, new_pages: Sequence[Page]) -> WriteReport:
        report = WriteReport()
        session = await self.memory(table.tenant, session_scope(table.session))
        updates = stage(table, new_pages, plan_version(session))
        report.staged = len(updates)
        scopes = ((Scope.SESSION, session_scope(table.session)), (Scope.PROJECT, project_scope(table.project)))
        for scope, scope_id in scopes:
            batch = [u for u in updates if u.scope is scope]
            if batch:
                report.add(await self._commit(table, scope, scope_id, batch))
        await self._store.put_pages(table.tenant, project_scope(table.project), _project_pages(new_pages, report))
        return report

    async def committed(self, table: PageTable) -> frozenset[str]:
        """The pages the session's and the project's committed memory hold."""
        held: set[str] = set()
        for scope_id in (session_scope(table.session), project_scope(table.project)):
            held.update(e.page_id for e in (await self.memory(table.tenant, scope_id)).entries.values())
        return frozenset(held)

    async def memory(self, tenant: str, scope_id: str) -> Memory:
        key = (tenant, scope_id)
        found = self._cache.get(key)
        if found is None:
            found = await self.journal.load(tenant, scope_id)
            self._keep(key, found)
        return found

    async def _commit(self, table: PageTable, scope: Scope, scope_id: str, updates: Sequence[Update]) -> Outcome:
        """Validate against the cached memory and commit; a stale cache is reloaded once."""
        try:
            return await self._try(table, scope, scope_id, updates)
        except VersionConflict:
            self._cache.pop((table.tenant, scope_id), None)
            return await self._try(table, scope, scope_id, updates)

    async def _try(self, table: PageTable, scope: Scope, scope_id: str, updates: Sequence[Update]) -> Outcome:
        memory = await self.memory(table.tenant, scope_id)
        outcome = apply(memory, updates, _context(table, scope, updates))
        batch = batch_id(table.tenant, scope_id, updates)
        version = await self.journal.commit(table.tenant, scope_id, outcome, updates, batch, memory.version)
        if version == outcome.memory.version:
            self._keep((table.tenant, scope_id), outcome.memory)
        else:  # a retry of a batch committed before: the stored memory is the truth
            self._cache.pop((table.tenant, scope_id), None)
        return outcome

    def _keep(self, key: tuple[str, str], memory: Memory) -> None:
        self._cache[key] = memory
        self._cache.move_to_end(key)
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)


def _context(table: PageTable, scope: Scope, updates: Sequence[Update]) -> Context:
    """What validation may consult: the provenance refs this turn's updates name that resolve."""
    refs = frozenset(u.source_ref for u in updates if u.source_ref in table.pages or u.source_ref in table.calls)
    return Context(scope=scope, allowed=frozenset({Scope.SESSION, Scope.PROJECT}), refs=refs)


def _project_pages(new_pages: Sequence[Page], report: WriteReport) -> list[Page]:
    committed = {u.page_id for u in report.committed if u.scope is Scope.PROJECT}
    return [p for p in new_pages if p.id in committed]
