"""Validated write-back, every request, before assembly (DESIGN §5).

The turn's new pages are staged as typed updates, validated and merged against the scope's
committed memory by the pure turn step (`policies.writes`), and committed
atomically with their journal records (`gateway.store.journal`), one batch per scope: the session's
(plan, evidence, session rules) and the project's (preferences, project rules, whose pages are
also stored in that scope so a later session can carry them). Memory is cached in process
and trusted like page tables: the commit checks its version, and a stale copy is reloaded and
the batch validated again.

Project-scope state a user stated (their preferences, and any fact not from the system prompt)
is the user's: when the session's table names an end user (gateway.turns.sessions), it is committed
to the user's part of the project (`user_scope`), never to the project's own memory, so it
reaches that user's later sessions only, even in a project several users name. Facts of the
system prompt (the agent's own rules) stay in the project's memory. Without a named user the
user's part is the project itself: one tenant key without user ids is one user.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.store.journal import WritebackJournal, commit_args
from gateway.store.store import ScriptArg, Store, VersionConflict, project_scope, session_scope
from gateway.store.together import together
from gateway.turns.sessions import per_user
from policies.pages import Page
from policies.pagetable import PageTable
from policies.writeback import Memory, Outcome, Update
from policies.writes import Memories, WriteBatch, WritePlan, plan_writes, revalidate, stored_pages

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
        """Plan the write-back of `new_pages` on the committed memory and carry it out (a deferred
        turn's, from gateway.store.outage; a live turn's is planned by the pure turn step)."""
        return await self.execute(table, plan_writes(table, new_pages, await self.memories(table)), new_pages)

    async def memories(self, table: PageTable) -> Memories:
        """The committed memory of the session's, the project's and the user's scopes; those not
        cached are read together (`together`)."""
        ids = (session_scope(table.session), project_scope(table.project), user_scope(table))
        wanted = list(dict.fromkeys(ids))
        loaded = {scope_id: self._cache.get((table.tenant, scope_id)) for scope_id in wanted}
        missing = [scope_id for scope_id, memory in loaded.items() if memory is None]
        if missing:  # the common turn has all cached: no read to wait for
            read = await together(*(self.fresh(table.tenant, scope_id) for scope_id in missing))
            loaded.update(zip(missing, read, strict=True))
        return Memories(*((scope_id, loaded[scope_id]) for scope_id in ids))

    async def fresh(self, tenant: str, scope_id: str) -> Memory:
        """A scope's committed memory read from the store now, and cached unless the cache
        holds a later version (a commit of this process that ended while it was read)."""
        memory = await self.journal.load(tenant, scope_id)
        cached = self._cache.get((tenant, scope_id))
        if cached is None or cached.version <= memory.version:
            self._keep((tenant, scope_id), memory)
        return memory

    async def execute(self, table: PageTable, plan: WritePlan, new_pages: Sequence[Page]) -> WriteReport:
        """Commit a planned write-back, batch by batch, then store the project pages it committed."""
        report, _ = await self.execute_apart(table, plan, new_pages, joined=False)
        return report

    async def execute_apart(
        self, table: PageTable, plan: WritePlan, new_pages: Sequence[Page], *, joined: bool = True
    ) -> tuple[WriteReport, WriteBatch | None]:
        """Like `execute`, but with `joined` the session scope's batch is left out and returned: it
        commits with the table's save, in the same script (`joined_args`, then `settle`), so the
        common turn (no project-scope update) is one round trip."""
        report, held = WriteReport(staged=plan.staged), None
        session = session_scope(table.session)
        for batch in plan.batches:
            if joined and batch.scope_id == session:
                held = batch
            else:
                report.add(await self._commit(table, batch))
        for scope_id, pages in stored_pages(plan, new_pages, report.committed):
            await self._store.put_pages(table.tenant, scope_id, pages)
        return report, held

    @staticmethod
    def joined_args(batch: WriteBatch) -> list[ScriptArg]:
        """The session batch's part of the table's save script."""
        return commit_args(batch.outcome, batch.updates, batch.batch, batch.expected)

    def settle(self, tenant: str, batch: WriteBatch, report: WriteReport) -> None:
        """A joined batch committed with its table: its memory is the cached one now."""
        self._keep((tenant, batch.scope_id), batch.outcome.memory)
        report.add(batch.outcome)

    def forget(self, tenant: str, scope_id: str) -> None:
        """Drop a cached memory (a joined save found it stale)."""
        self._cache.pop((tenant, scope_id), None)

    async def committed(self, table: PageTable) -> frozenset[str]:
        """The pages the session's, the project's and the user's committed memory hold."""
        held: set[str] = set()
        for scope_id in dict.fromkeys((session_scope(table.session), project_scope(table.project), user_scope(table))):
            held.update(e.page_id for e in (await self.memory(table.tenant, scope_id)).entries.values())
        return frozenset(held)

    async def memory(self, tenant: str, scope_id: str) -> Memory:
        found = self._cache.get((tenant, scope_id))
        return found if found is not None else await self.fresh(tenant, scope_id)

    async def _commit(self, table: PageTable, batch: WriteBatch) -> Outcome:
        """Commit a batch planned on the cached memory; a stale cache is reloaded once and the
        batch validated again."""
        try:
            return await self._try(table.tenant, batch)
        except VersionConflict:
            self._cache.pop((table.tenant, batch.scope_id), None)
            memory = await self.memory(table.tenant, batch.scope_id)
            return await self._try(table.tenant, revalidate(table, batch.scope, batch.scope_id, batch.updates, memory))

    async def _try(self, tenant: str, batch: WriteBatch) -> Outcome:
        outcome, scope_id = batch.outcome, batch.scope_id
        version = await self.journal.commit(tenant, scope_id, outcome, batch.updates, batch.batch, batch.expected)
        if version == outcome.memory.version:
            self._keep((tenant, scope_id), outcome.memory)
        else:  # a retry of a batch committed before: the stored memory is the truth
            self._cache.pop((tenant, scope_id), None)
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
