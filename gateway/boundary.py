"""Lifecycle boundaries at the gateway's edge (DESIGN §5), around the pure detector.

`cross` runs before ingest, on every request:
- a session unused for `server.session_idle_seconds` has ended: that is recorded first;
- `policies.lifecycle.detect` says what the agent did to its history (append, prune,
  compaction, reset, ...), with its evidence;
- at the first request of a session, the newest session before it of the same project and the
  same end user (gateway.sessions: never another user's) decides what the new one starts with.
  If that session was still live (used within the idle time) the same agent has started over:
  a **reset**, and its rules, current plan, preferences and the user's intents carry over.
  Otherwise the new session starts with the project's committed write-back state (the agent's
  project rules) and the user's part of it (their preferences and who they are; gateway.memory)
  only: what the user asked for in another session is not this one's request
  (`policies.writeback.opens_sessions`). Sessions carry nothing between them when nothing says
  they are one agent's: no project named by the client and no system prompt.

Carried state goes into the table's `carried` list (policies.pagetable), which the assembly
keeps in the retained-state block until the transcript states it again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.journal import WritebackJournal
from gateway.memory import user_scope
from gateway.session_state import SessionState
from gateway.sessions import FINGERPRINT
from gateway.store import StoreError, project_scope
from policies.lifecycle import Boundary, Event, detect
from policies.pages import Page, PageType
from policies.pagetable import PageTable, known_prefix
from policies.transcript import Message
from policies.writeback import opens_sessions

CARRIED_TYPES = frozenset(
    {PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT, PageType.PLAN, PageType.BOOTSTRAP}
)


@dataclass(slots=True)
class Crossing:
    """What this request's boundary was, the events to record, and pages copied into the table."""

    boundary: Boundary
    events: list[dict[str, Any]] = field(default_factory=list)
    seeded: list[Page] = field(default_factory=list)

    @property
    def event(self) -> Event:
        return self.boundary.event


async def cross(
    sessions: SessionState,
    journal: WritebackJournal,
    table: PageTable,
    messages: Sequence[Message],
    *,
    hint: str | None,
    now: int,
    idle: int,
) -> Crossing:
    events: list[dict[str, Any]] = []
    if table.seen and now - table.seen > idle:
        events.append(record(Event.SESSION_END, f"idle for {now - table.seen} s (limit {idle} s)", table.turn))
    boundary = detect(table, messages, known_prefix(table, messages), hint)
    crossing = Crossing(boundary, events)
    if not table.order and _same_agent_known(table, messages):
        await _start(sessions, journal, table, crossing, now, idle)
    if crossing.event is not Event.APPEND and crossing.event is not Event.RESEND:
        events.append(record(crossing.event, crossing.boundary.evidence, table.turn, crossing.boundary.harness))
    return crossing


def _same_agent_known(table: PageTable, messages: Sequence[Message]) -> bool:
    """Whether sessions of this project are one agent's: the client named the project, or the
    transcript opens with a system prompt (the project is then its fingerprint). Without either,
    every conversation of the tenant would share one project, and nothing carries between them."""
    return not table.project.startswith(FINGERPRINT) or bool(messages and messages[0].is_instruction)


def record(event: Event, evidence: str, turn: int, harness: str = "") -> dict[str, Any]:
    return {"kind": "lifecycle", "event": str(event), "harness": harness, "evidence": evidence, "turn": turn}


async def _start(
    sessions: SessionState, journal: WritebackJournal, table: PageTable, crossing: Crossing, now: int, idle: int
) -> None:
    """The first request of a session: carry the project's state, and a live predecessor's (the
    same user's newest session of the project: one pointer per project and user)."""
    scope, mine = project_scope(table.project), user_scope(table)
    try:
        previous = await sessions.store.swap_recent(table.tenant, mine, table.session)
        carried = await _project_pages(sessions, journal, table, scope)
        if mine != scope:
            carried += await _project_pages(sessions, journal, table, mine)
        if previous is not None and previous != table.session:
            before = await sessions.read(table.tenant, previous)
            if before is not None and before.user == table.user and before.seen and now - before.seen <= idle:
                carried = [*_live_state(before), *carried]
                if crossing.event is Event.START:
                    evidence = f"new session after {previous!r} (same tenant and system prompt, {now - before.seen} s)"
                    crossing.boundary = Boundary(Event.RESET, 0, "session", evidence)
    except StoreError as exc:  # a start without carried state is still a start; say so
        crossing.events.append(record(Event.START, f"carried state unavailable: {type(exc).__name__}", table.turn))
        return
    crossing.seeded = seed(table, carried)


async def _project_pages(sessions: SessionState, journal: WritebackJournal, table: PageTable, scope: str) -> list[Page]:
    """The pages of a project scope's committed memory (validated write-back), oldest first."""
    memory = await journal.load(table.tenant, scope)
    ids = [entry.page_id for _, entry in sorted(memory.entries.items()) if opens_sessions(entry)]
    pages = await sessions.store.get_pages(table.tenant, scope, ids)
    return [pages[i] for i in ids if i in pages and pages[i].type in CARRIED_TYPES]


def _live_state(table: PageTable) -> list[Page]:
    """A session's rules, preferences, intents and current plan, stated or carried."""
    pages = table.pages
    facts = [f for p in table.order for f in table.facts.get(p, ())]
    plans = [p for p in table.order if pages[p].type is PageType.PLAN]
    ids = [*table.carried, *facts, *plans[-1:]]
    return [pages[i] for i in dict.fromkeys(ids) if pages[i].type in CARRIED_TYPES - {PageType.BOOTSTRAP}]


def seed(table: PageTable, pages: Sequence[Page]) -> list[Page]:
    """Put carried pages into a new table; returns the ones it did not hold (to be stored)."""
    added: list[Page] = []
    plans = [p for p in pages if p.type is PageType.PLAN]
    for page in pages:
        if page.type is PageType.PLAN and page is not plans[-1]:
            continue  # only the current plan carries
        if page.id not in table.pages:
            table.pages[page.id] = page
            table.born[page.id] = table.turn
            table.changes.pages.add(page.id)
            added.append(page)
        if page.id not in table.carried:
            table.carried.append(page.id)
    return added


def hint_of(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The agent's own word on its boundary: `X-ClawVM-Event`, else `metadata.clawvm_event`."""
    metadata = body.get("metadata")
    value = headers.get("x-clawvm-event") or (metadata.get("clawvm_event") if isinstance(metadata, dict) else None)
    return value if isinstance(value, str) else None
