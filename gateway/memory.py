"""Validated write-back, every request, before assembly (DESIGN §5).

The turn's new pages are staged as typed updates (`policies.writeback.stage`), validated and
merged against the scope's committed memory (`policies.writeback.apply`), and committed
atomically with their journal records (`gateway.journal`), one batch per scope: the session's
(plan, evidence, session rules) and the project's (preferences, project rules, whose pages are
also stored in that scope so a later session can carry them). Memory is cached in process
and trusted like page tables: the commit checks its version, and a stale copy is reloaded and
the batch validated again.

Project-scope state a user stated (their preferences, and any fact not from the system prompt)
is the user's: when the session's table names an end user (gateway.sessions), it is committed
to the user's part of the project (`user_scope`), never to the project's own memory, so it
reaches that user's later sessions only, even in a project several users name. Facts of the
system prompt (the agent's own rules) stay in the project's memory. Without a named user the
user's part is the project itself: one tenant key without user ids is one user.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.journal import WritebackJournal
from gateway.sessions import per_user
from gateway.store import Store, VersionConflict, project_scope, session_scope
from policies.pages import Page, PageType, Scope
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
        project, mine = project_scope(table.project), user_scope(table)
        agents = _agents(table) if mine != project else None
        for scope, scope_id, batch in _batches(table, updates, agents):
            if batch:
                report.add(await self._commit(table, scope, scope_id, batch))
        stored = _project_pages(new_pages, report)
        await self._store.put_pages(table.tenant, project, [p for p in stored if agents is None or p.id in agents])
        if agents is not None:
            await self._store.put_pages(table.tenant, mine, [p for p in stored if p.id not in agents])
        return report

    async def committed(self, table: PageTable) -> frozenset[str]:
        """The pages the session's, the project's and the user's committed memory hold."""
        held: set[str] = set()
        for scope_id in dict.fromkeys((session_scope(table.session), project_scope(table.project), user_scope(table))):
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


def user_scope(table: PageTable) -> str:
    """The scope of the session's end user's part of its project; the project's own scope when
    the session names no user."""
    return project_scope(per_user(table.project, table.user))


def _agents(table: PageTable) -> frozenset[str]:
    """Pages that are the agent's, not a user's: the system prompt's pages and the facts they state."""
    prompts = [p for p, page in table.pages.items() if page.type is PageType.BOOTSTRAP]
    return frozenset([*prompts, *(f for p in prompts for f in table.facts.get(p, ()))])


def _batches(
    table: PageTable, updates: Sequence[Update], agents: frozenset[str] | None
) -> list[tuple[Scope, str, list[Update]]]:
    """(scope, scope id, updates) per commit: the session's; the project's; with a named user
    (`agents` given) the project's takes the agent's updates only, the user's part the rest."""
    session = [u for u in updates if u.scope is Scope.SESSION]
    project = [u for u in updates if u.scope is Scope.PROJECT]
    batches = [(Scope.SESSION, session_scope(table.session), session)]
    if agents is None:
        return [*batches, (Scope.PROJECT, project_scope(table.project), project)]
    mine = [u for u in project if u.page_id not in agents]
    theirs = [u for u in project if u.page_id in agents]
    return [*batches, (Scope.PROJECT, project_scope(table.project), theirs), (Scope.PROJECT, user_scope(table), mine)]


def _context(table: PageTable, scope: Scope, updates: Sequence[Update]) -> Context:
    """What validation may consult: the provenance refs this turn's updates name that resolve."""
    refs = frozenset(u.source_ref for u in updates if u.source_ref in table.pages or u.source_ref in table.calls)
    return Context(scope=scope, allowed=frozenset({Scope.SESSION, Scope.PROJECT}), refs=refs)


def _project_pages(new_pages: Sequence[Page], report: WriteReport) -> list[Page]:
    committed = {u.page_id for u in report.committed if u.scope is Scope.PROJECT}
    return [p for p in new_pages if p.id in committed]
