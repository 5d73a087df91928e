"""One turn of the policy engine as one pure call: `step(table, turn) -> Decision` (DESIGN §1).

The gateway loads what a turn needs (the session's table; at a session's first request its
`Start`; the committed memory of its scopes), runs the step, carries out its commands and
forwards the assembled transcript:

    boundary (policies.crossing) -> ingest (policies.turn) -> write-back planned
    (policies.writes) -> assembly (policies.turn; the recall room is given up when the pinned
    set alone does not fit) -> observation (policies.observation)

The decision holds the transcript to forward and what to carry out: the write-back batches to
commit (or, without the store, the new pages whose write-back is deferred), the pages to persist
with the table, the decision and event records, and the faults (in `observation`). The step
reads no clock: `clock`, when given, only times ingest and assembly apart (the bench's split,
and the gateway's `x-clawvm-assembly-us`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from policies import duplicates
from policies.budget import TokenBudget
from policies.crossing import Crossing, Start, cross
from policies.duplicates import Duplicate
from policies.observation import BOUNDARIES, QUIET, Observation, TurnFacts, observe
from policies.observer import state_of
from policies.pages import Fidelity, Page
from policies.pagetable import IngestResult, PageTable, finish, take
from policies.recall import recall_room
from policies.tenant import TenantPolicy
from policies.tokens import TokenCounter
from policies.transcript import Message
from policies.turn import TurnPlan, assemble_turn, ingest_turn, lay_out
from policies.writes import Memories, WritePlan, plan_writes

RECALL_TOOL = "clawvm_recall"


@dataclass(frozen=True, slots=True)
class TurnInput:
    """Everything one turn depends on besides the session's table."""

    messages: Sequence[Message]
    policy: TenantPolicy
    counter: TokenCounter
    budget: TokenBudget  # with the recall room taken out when the tool may be offered
    now: int  # seconds since the epoch, as the gateway read it
    idle: int = 1800  # seconds after which an unused session has ended
    hint: str | None = None  # the agent's own word on its boundary
    offers_recall: bool = False  # the recall tool may be offered (its room is in `budget`)
    recall_tool: str = RECALL_TOOL
    start: Start | None = None  # loaded at a session's first request (`policies.crossing.wants_start`)
    memories: Memories | None = None  # None: the store cannot take this turn's write-back; it is deferred


@dataclass(frozen=True, slots=True)
class Decision:
    """The turn's transcript to forward, and the commands to carry out."""

    plan: TurnPlan
    crossing: Crossing
    observation: Observation
    duplicates: tuple[Duplicate, ...]  # repeated tool calls found at ingest
    writes: WritePlan | None  # the write-back batches to commit; None when deferred
    new_pages: tuple[Page, ...]  # the turn's new pages (a deferred write-back's input)
    pages: tuple[Page, ...]  # pages to persist with the table: the new ones and the seeded ones
    sent: int  # tokens of the transcript as the agent sent it
    ingest_ns: int = 0  # measured by `clock`, when given
    assembly_ns: int = 0

    @property
    def messages(self) -> list[Message]:
        return self.plan.messages

    @property
    def policy_ns(self) -> int:
        return self.ingest_ns + self.assembly_ns


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The first half of a turn (`forward`): the transcript to send, and what `complete` needs."""

    plan: TurnPlan  # its `ingest.new_pages` stand at their full level only; `complete` gives them whole
    crossing: Crossing
    dirty: list[str]  # state pages a boundary left (read before ingest)
    before: dict[str, Fidelity]  # the levels before assembly
    ingest_ns: int = 0
    assembly_ns: int = 0

    @property
    def messages(self) -> list[Message]:
        return self.plan.messages


def step(table: PageTable, turn: TurnInput, clock: Callable[[], int] | None = None) -> Decision:
    """One turn on `table` (updated in place, as the gateway then persists it): `forward`, then
    `complete`, the same decision either way."""
    return complete(table, turn, forward(table, turn, clock))


def forward(table: PageTable, turn: TurnInput, clock: Callable[[], int] | None = None) -> Forwarded:
    """What the forwarded transcript needs, and no more: the boundary, the new messages admitted
    at their full level (classified; under a counter `at_most_bytes`, their tokens bounded by
    their bytes and counted only when the bound does not fit), and the assembly. The fast path
    (an append that fits) sends the new pages whole and leaves the rest to `complete` (the
    count, the facts, the other levels, the repeated tool calls); a re-plan counts them and
    finishes those before the newest turn, whose pages it sends whole and leaves to `complete`
    too (policies.pagetable.finish_for_plan). `complete` must run before the table is persisted
    (any later ingest also finishes what is left first). `ingest_ns` times the ingest,
    `assembly_ns` the assembly (with, on a re-plan, what it finishes first)."""
    tick = clock or _no_clock
    finish(table)  # a turn whose `complete` did not run: its pages are finished before anything reads them
    crossing = cross(table, turn.messages, hint=turn.hint, now=turn.now, idle=turn.idle, start=turn.start)
    boundary = crossing.boundary  # its `kept` is the known prefix: ingest need not scan for it again
    dirty = state_of(table, range(boundary.kept, len(table.order))) if crossing.event in BOUNDARIES else []
    started = tick()
    result = ingest_turn(
        table,
        turn.messages,
        turn.policy,
        turn.counter,
        recall_tool=turn.recall_tool,
        pruned=boundary.pruned,
        kept=boundary.kept,
        defer=True,
    )
    ingested = tick()
    before = table.levels
    assembling = tick()
    plan = _assemble(table, turn, result)
    assembled = tick()
    return Forwarded(plan, crossing, dirty, before, ingested - started, assembled - assembling)


def complete(table: PageTable, turn: TurnInput, sent: Forwarded) -> Decision:
    """The rest of the turn `forward` planned, run once the transcript is on its way: the new
    pages finished (counted, their facts named, their other levels, span entries, fact pages
    and coverage), the repeated tool calls found (judged by the levels of the prompt before),
    the write-back planned, the turn observed. Pure, like `forward`; the decision is the one
    `step` gives, its assembly's tokens exact."""
    finish(table)
    lay_out(table)  # the next re-plan lays out only what comes after this turn
    repeated = tuple(duplicates.after_ingest(table, sent.plan.ingest, sent.before))
    assembly = replace(sent.plan.assembly, tokens=table.cost) if sent.plan.appended else sent.plan.assembly
    plan = replace(sent.plan, assembly=assembly, ingest=replace(sent.plan.ingest, new_pages=tuple(take(table))))
    crossing, dirty = sent.crossing, sent.dirty
    writes = plan_writes(table, plan.ingest.new_pages, turn.memories) if turn.memories is not None else None
    committed: frozenset[str] = frozenset()
    if crossing.event in BOUNDARIES:  # without the store, dropped state is taken as held (deferred, not lost)
        committed = writes.held(turn.memories) if writes is not None and turn.memories else frozenset(dirty)
    facts = TurnFacts(crossing.event, plan.messages, plan.assembly, sent.before, dirty, committed, repeated)
    observation = observe(table, facts)
    observation.events[:0] = crossing.events
    observation.event = "" if crossing.event in QUIET else crossing.event.value
    table.seen = turn.now
    pages = (*plan.ingest.new_pages, *crossing.seeded)  # no round trip when unchanged
    return Decision(
        plan,
        crossing,
        observation,
        repeated,
        writes,
        plan.ingest.new_pages,
        pages,
        table.sent,
        sent.ingest_ns,
        sent.assembly_ns,
    )


def _assemble(table: PageTable, turn: TurnInput, result: IngestResult) -> TurnPlan:
    plan = assemble_turn(table, turn.messages, result, turn.policy, turn.budget, recall_tool=turn.recall_tool)
    relief = recall_room(turn.budget.cap, turn.offers_recall)
    if plan.assembly.insufficient and relief:  # the pinned set comes first: give up the recall room
        roomless = replace(turn.budget, usable=turn.budget.usable + relief)
        plan = assemble_turn(table, turn.messages, result, turn.policy, roomless, recall_tool=turn.recall_tool)
    return plan


def _no_clock() -> int:
    return 0
