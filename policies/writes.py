"""The turn's write-back, planned: which updates go to which scope, validated and merged against
the committed memory the gateway loaded (DESIGN §5). Pure.

The turn's new pages are staged as typed updates (`policies.writeback.stage`) and split into one
batch per scope: the session's (plan, evidence, session rules) and the project's (preferences,
project rules). Project-scope state a user stated (their preferences, and any fact not from the
system prompt) is the user's: when the session names an end user it goes to the user's part of
the project, never to the project's own memory. Facts of the system prompt (the agent's own
rules) stay in the project's memory. Without a named user the user's part is the project itself.

Each batch is validated and merged here (`policies.writeback.apply`); `gateway.store.memory` commits
it atomically with its journal records, checking the memory's version, and on a conflict
validates the batch again against the reloaded memory with the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.pages import Page, PageType, Scope
from policies.pagetable import PageTable
from policies.writeback import Context, Memory, Outcome, Update, apply, batch_id, plan_version, stage


@dataclass(frozen=True, slots=True)
class Memories:
    """The committed memory of the session's scopes, with their scope ids: the session's, the
    project's, and the user's part of the project (the project's own id when no user is named)."""

    session: tuple[str, Memory]
    project: tuple[str, Memory]
    user: tuple[str, Memory]


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """One scope's updates, validated against the memory they were planned on (`expected` its
    version); `outcome` is what that memory becomes."""

    scope: Scope
    scope_id: str
    updates: tuple[Update, ...]
    context: Context
    outcome: Outcome
    batch: str
    expected: int


@dataclass(frozen=True, slots=True)
class WritePlan:
    staged: int
    batches: tuple[WriteBatch, ...]  # in commit order; empty ones left out
    project: str  # the project's scope id
    user: str | None  # the user's part, when it is not the project itself
    agents: frozenset[str]  # with a user: the pages that are the agent's, kept in the project's scope

    def held(self, memories: Memories) -> frozenset[str]:
        """The pages the memories hold once every batch is committed."""
        after = {scope_id: memory for scope_id, memory in (memories.session, memories.project, memories.user)}
        after.update({b.scope_id: b.outcome.memory for b in self.batches})
        return frozenset(e.page_id for memory in after.values() for e in memory.entries.values())


def plan_writes(table: PageTable, new_pages: Sequence[Page], memories: Memories) -> WritePlan:
    """The turn's updates, staged, split by scope and validated against `memories`."""
    updates = stage(table, new_pages, plan_version(memories.session[1]))
    project, mine = memories.project[0], memories.user[0]
    agents = _agents(table) if mine != project else None
    known = dict([memories.session, memories.project, memories.user])
    batches = tuple(
        revalidate(table, scope, scope_id, batch, known[scope_id])
        for scope, scope_id, batch in _batches(updates, memories, agents)
        if batch
    )
    return WritePlan(len(updates), batches, project, None if agents is None else mine, agents or frozenset())


def revalidate(table: PageTable, scope: Scope, scope_id: str, updates: Sequence[Update], memory: Memory) -> WriteBatch:
    """One scope's batch validated and merged against `memory` (also after a version conflict)."""
    context = _context(table, scope, updates)
    outcome = apply(memory, updates, context)
    batch = batch_id(table.tenant, scope_id, updates)
    return WriteBatch(scope, scope_id, tuple(updates), context, outcome, batch, memory.version)


def stored_pages(
    plan: WritePlan, new_pages: Sequence[Page], committed: Sequence[Update]
) -> list[tuple[str, list[Page]]]:
    """(scope id, pages) to store so a later session can carry them: the new pages of committed
    project updates, the agent's in the project's scope, the user's in the user's part."""
    ids = {u.page_id for u in committed if u.scope is Scope.PROJECT}
    stored = [p for p in new_pages if p.id in ids]
    if plan.user is None:
        return [(plan.project, stored)]
    agents = plan.agents
    theirs, mine = [p for p in stored if p.id in agents], [p for p in stored if p.id not in agents]
    return [(plan.project, theirs), (plan.user, mine)]


def _agents(table: PageTable) -> frozenset[str]:
    """Pages that are the agent's, not a user's: the system prompt's pages and the facts they state."""
    prompts = [p for p, page in table.pages.items() if page.type is PageType.BOOTSTRAP]
    return frozenset([*prompts, *(f for p in prompts for f in table.facts.get(p, ()))])


def _batches(
    updates: Sequence[Update], memories: Memories, agents: frozenset[str] | None
) -> list[tuple[Scope, str, list[Update]]]:
    """(scope, scope id, updates) per commit: the session's; the project's; with a named user
    (`agents` given) the project's takes the agent's updates only, the user's part the rest."""
    session = [u for u in updates if u.scope is Scope.SESSION]
    project = [u for u in updates if u.scope is Scope.PROJECT]
    batches = [(Scope.SESSION, memories.session[0], session)]
    if agents is None:
        return [*batches, (Scope.PROJECT, memories.project[0], project)]
    mine = [u for u in project if u.page_id not in agents]
    theirs = [u for u in project if u.page_id in agents]
    return [*batches, (Scope.PROJECT, memories.project[0], theirs), (Scope.PROJECT, memories.user[0], mine)]


def _context(table: PageTable, scope: Scope, updates: Sequence[Update]) -> Context:
    """What validation may consult: the provenance refs this turn's updates name that resolve."""
    refs = frozenset(u.source_ref for u in updates if u.source_ref in table.pages or u.source_ref in table.calls)
    return Context(scope=scope, allowed=frozenset({Scope.SESSION, Scope.PROJECT}), refs=refs)
