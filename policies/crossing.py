"""Lifecycle boundaries of one request (DESIGN §5), around the pure detector. Pure.

`cross` runs before ingest, on every request:
- a session unused for `idle` seconds has ended: that is recorded first;
- `policies.lifecycle.detect` says what the agent did to its history (append, prune,
  compaction, reset, ...), with its evidence;
- at the first request of a session (`wants_start`), the newest session before it of the same
  project and the same end user (never another user's) decides what the new one starts with.
  If that session was still live (used within the idle time) and may be the same conversation
  (`may_continue`: the user is named, or neither session was named by the client) the same agent
  has started over: a **reset**, and its rules, current plan, preferences and the user's intents
  carry over.
  Otherwise the new session starts with the project's committed write-back state (the agent's
  project rules) and the user's part of it (their preferences and who they are) only: what the
  user asked for in another session is not this one's request
  (`policies.writeback.opens_sessions`). Sessions carry nothing between them when nothing says
  they are one agent's: no project named by the client and no system prompt.

What a start needs from the store (who the predecessor is and, if it is live, the pages it
carries: `Live`, `live_state_of`; the project's committed pages) is loaded by the gateway
(`gateway.turns.boundary.load_start`) and handed in as a `Start`. Carried state goes into the
table's `carried` list (policies.pagetable), which the assembly keeps in the retained-state block
until the transcript states it again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policies.lifecycle import Boundary, Event, detect
from policies.pages import Page, PageType
from policies.pagetable import PageTable, known_prefix
from policies.transcript import Message

FINGERPRINT = "fp-"  # the head of an id the gateway derived from the transcript (gateway.turns.sessions)
CARRIED_TYPES = frozenset(
    {PageType.CONSTRAINT, PageType.PREFERENCE, PageType.INTENT, PageType.PLAN, PageType.BOOTSTRAP}
)


@dataclass(frozen=True, slots=True)
class Live:
    """An earlier session as a start needs it: whose it is and when it was last used, and the
    pages it carries if it is live (`live_state`: its rules, preferences, intents and current
    plan), not the rest of its pages."""

    who: Predecessor
    state: tuple[Page, ...]

    @classmethod
    def of(cls, table: PageTable) -> Live:
        return cls(Predecessor.of(table), tuple(live_state(table)))


@dataclass(frozen=True, slots=True)
class Start:
    """What the store holds for a session's first request: the committed pages of its project
    (and of the user's part of it), oldest first; the same user's newest earlier session of the
    project, if any; or why it could not be read (`failed`: the exception's name)."""

    project: Sequence[Page] = ()
    previous: Live | None = None
    failed: str = ""


@dataclass(slots=True)
class Crossing:
    """What this request's boundary was, the events to record, and pages copied into the table."""

    boundary: Boundary
    events: list[dict[str, Any]] = field(default_factory=list)
    seeded: list[Page] = field(default_factory=list)

    @property
    def event(self) -> Event:
        return self.boundary.event


def wants_start(table: PageTable, messages: Sequence[Message]) -> bool:
    """Whether this request opens a session that may carry state: a `Start` is loaded for it."""
    return not table.order and _same_agent_known(table, messages)


def cross(
    table: PageTable,
    messages: Sequence[Message],
    *,
    hint: str | None,
    now: int,
    idle: int,
    start: Start | None = None,
) -> Crossing:
    events: list[dict[str, Any]] = []
    if table.seen and now - table.seen > idle:
        events.append(record(Event.SESSION_END, f"idle for {now - table.seen} s (limit {idle} s)", table.turn))
    boundary = detect(table, messages, known_prefix(table, messages), hint)
    crossing = Crossing(boundary, events)
    if start is not None and wants_start(table, messages):
        _start(table, crossing, start, now, idle)
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


def _start(table: PageTable, crossing: Crossing, start: Start, now: int, idle: int) -> None:
    """The first request of a session: carry the project's state, and a live predecessor's (the
    same user's newest session of the project)."""
    if start.failed:  # a start without carried state is still a start; say so
        crossing.events.append(record(Event.START, f"carried state unavailable: {start.failed}", table.turn))
        return
    carried = list(start.project)
    before = start.previous
    if before is not None and may_carry(table, before.who, now, idle):
        carried = [*before.state, *carried]
        if crossing.event is Event.START:
            who = before.who
            evidence = f"new session after {who.session!r} (same tenant and system prompt, {now - who.seen} s)"
            crossing.boundary = Boundary(Event.RESET, 0, "session", evidence)
    crossing.seeded = seed(table, carried)


@dataclass(frozen=True, slots=True)
class Predecessor:
    """What decides whether an earlier session may carry into a new one: whose it is, its id, and
    when it was last used (0: never). The store reads these without the session's pages."""

    session: str
    user: str
    seen: int

    @classmethod
    def of(cls, table: PageTable) -> Predecessor:
        return cls(table.session, table.user, table.seen)


def may_carry(table: PageTable, before: Predecessor, now: int, idle: int) -> bool:
    """Whether `before` carries its live state into the new session `table`: it may be the same
    conversation started over (`may_continue`), and it is live (used within `idle` seconds)."""
    return may_continue(table, before) and bool(before.seen) and now - before.seen <= idle


def may_continue(table: PageTable, before: PageTable | Predecessor) -> bool:
    """Whether a new session may be `before`'s conversation started over (a reset): the same end
    user, and either that user is named or the gateway derived both session ids itself. A client
    that names its sessions says where each conversation starts: an agent that starts over inside
    one keeps its name (a reset the detector sees within the session), and a new name is a new
    conversation. Under one tenant key that names no user, that conversation may be another
    person's (a support bot's next customer), whose plan, requests and identity must not carry."""
    if before.user != table.user:
        return False
    return bool(table.user) or (table.session.startswith(FINGERPRINT) and before.session.startswith(FINGERPRINT))


def live_state(table: PageTable) -> list[Page]:
    """A session's rules, preferences, intents and current plan, stated or carried."""
    found = live_state_of(table.order, table.facts, table.carried, table.pages, table.plan)
    if found is None:  # a table holds every page it names
        raise KeyError(f"session {table.session!r} names a page it does not hold")
    return found


def live_state_of(
    order: Sequence[str],
    facts: Mapping[str, Sequence[str]],
    carried: Sequence[str],
    pages: Mapping[str, Page],
    current: str | None = None,
) -> list[Page] | None:
    """`live_state` of a session known by its order, facts and carried ids and some of its
    `pages`: the carried pages, the fact pages its messages state, and its current plan
    (`current`: its id, "" for none, as the table keeps it, `PageTable.plan`; None when not known:
    the last plan page in order, found from the end). None when `pages` lacks a page that
    decides it (read more and ask again): a stored session's pages are read only as far back as
    its current plan, and not at all when the plan is known."""
    plan = current or ""
    for page_id in reversed(order) if current is None else ():
        page = pages.get(page_id)
        if page is None:
            return None
        if page.type is PageType.PLAN:
            plan = page_id
            break
    ids = live_ids(order, facts, carried, plan)
    if any(i not in pages for i in ids):
        return None
    return [pages[i] for i in ids if pages[i].type in CARRIED_TYPES - {PageType.BOOTSTRAP}]


def live_ids(order: Sequence[str], facts: Mapping[str, Sequence[str]], carried: Sequence[str], plan: str) -> list[str]:
    """The ids of the pages a session may carry, in order, once each: its carried state, the fact
    pages its messages state, and its current plan (`plan`, "" for none)."""
    stated = (f for p in order for f in facts.get(p, ()))
    return list(dict.fromkeys([*carried, *stated, *([plan] if plan else [])]))


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
