"""The session's page table and incremental ingest.

`PageTable` is the session state the gateway persists: every page it knows, the order of the
transcript's message pages, the facts each message yielded, the last assembly's decisions.
`ingest` brings a new transcript into the table. Messages already seen are recognised by a
cheap positional key and are not re-classified, re-represented or re-counted: per-turn cost
follows the new content, not the session length.

Page ids are `p:` + a 3-hex tag of the tenant + 9 hex of the content digest: the same transcript
gives the same ids in every session of a tenant (and so the same assembly, byte for byte), and
the tag lets the gateway refuse (`denied`) a recall of another tenant's page without looking it
up, so a reply never tells whether some text exists elsewhere.

Boundaries the agent makes are absorbed here. When a rewrite drops messages (a compaction, a
reset inside one session), the state they carried (rules, preferences, the current plan, the
system prompt) goes to `carried`, and the layout keeps it in the retained-state block until the
transcript states it again. When the agent prunes a tool result (`pruned` positions), the
table keeps the original evidence page at that position and marks it `restored`: the selector
may show it again, at any level, when the budget allows. Tool results a rewrite drops for good
are `paged_out`: their entry becomes their evidence-index line (tool, arguments, first line of
the result), which the layout lists after the instructions (policies.layout).

The table also keeps `Changes`, what changed since its last `checkpoint` (its last save), so
that persisting a turn costs what the turn changed, not the session length. Every write to a
stored field goes through `ingest`, `set_level` or `replace_levels`, which record it.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import islice
from operator import attrgetter

from policies.classify import MEMO_NAME_CHARS, carrier_type, extract_facts
from policies.pages import LEVELS, Fidelity, Page, PageType, Pin, Provenance, Representation, Reprs, Scope
from policies.represent import bound_level, full_level, identifiers, index_entry, represent, represent_fact, span_entry
from policies.tenant import TenantPolicy
from policies.tokens import IMAGE_TOKENS, TokenCounter, at_most_bytes, count_once, framed
from policies.transcript import Message, ToolCall

CALL_ARGUMENTS_KEPT = 400
PAGE_ID = re.compile(r"p:[0-9a-f]{12}(?:~[1-9][0-9]{0,8})?")
EDIT_TOOLS = ("edit", "write", "replace", "create", "patch", "update", "modify", "delete", "insert")
TEXT = attrgetter("text")
READ_TOOLS = ("read", "bash", "shell", "grep", "glob", "search", "list", "get", "find", "fetch", "cat", "ls")


Head = tuple[int, int, str, tuple[str, ...], tuple[str, ...], tuple[tuple[str, int], ...], int]


@dataclass(slots=True)
class Changes:
    """What changed in a table since its last checkpoint. The head fields (turn, cost,
    plan_key, carried, restored, tally, seen) are small: they are remembered as they were and
    always written."""

    dirty_from: int  # positions from here on were (re)written
    head: Head  # the head fields at the checkpoint (see `head`)
    pages: set[str] = field(default_factory=set)  # pages added, with their per-page fields
    levels: set[str] = field(default_factory=set)  # pages whose level was set, changed or dropped
    calls: set[str] = field(default_factory=set)  # tool calls recorded


class Ingested:
    """The messages a table last ingested (the table's `keys` and `lengths` were taken from them),
    kept beside it, not stored. The gateway reuses its parse of a resent transcript
    (gateway.wire.chat_transcripts), so the next request begins with these very objects: `known_prefix`
    then recognises them by identity, in C, instead of reading every message's text. Messages
    are not changed in place once parsed, so a copy of the table shares them."""

    __slots__ = ("messages",)

    def __init__(self, messages: Sequence[Message]) -> None:
        self.messages = list(messages)

    def __deepcopy__(self, memo: dict[int, object]) -> Ingested:
        return self

    def begins(self, messages: Sequence[Message], count: int) -> bool:
        """Whether the first `count` of `messages` are the first `count` ingested: the same
        objects (compared by identity first, in C) or, where one is not, equal ones."""
        if count == 0 or len(self.messages) < count:
            return False
        head = list(islice(messages, count))
        return head[0] is self.messages[0] and head[-1] is self.messages[count - 1] and head == self.messages[:count]


@dataclass(frozen=True, slots=True)
class Deferred:
    """A message page admitted at its full level only (`ingest` with `defer`): what the rest
    of its admission (`finish`) needs, as its own turn had it. Under a counter `at_most_bytes`
    its tokens stand at their bound until counted (`count_pending`), and its facts are named
    when first needed (`name_pending`)."""

    page_id: str
    message: Message
    call: ToolCall | None
    full: tuple[Representation, int] | None  # the full level and its text's tokens (`full_level`); None: bounded
    facts: tuple[tuple[PageType, str, str], ...] | None  # (type, text, fact page id) of each fact; None: not named
    policy: TenantPolicy
    counter: TokenCounter
    recall_tool: str
    turn: int  # the table's turn when it was admitted (its fact pages are born then)


class Pending:
    """The deferred part of a table's last ingests, kept beside it, not stored: the pages still
    to finish, and the pages finished since the last `take` (the turn's new pages, in order)."""

    __slots__ = ("waiting", "finished")

    def __init__(self) -> None:
        self.waiting: list[Deferred] = []
        self.finished: list[Page] = []

    def __deepcopy__(self, memo: dict[int, object]) -> Pending:
        copy = Pending()
        copy.waiting, copy.finished = list(self.waiting), list(self.finished)
        return copy


@dataclass(slots=True)
class PageTable:
    tenant: str
    session: str
    project: str
    user: str = ""  # the end user who opened the session (a digest, gateway.turns.sessions); "" when unnamed
    pages: dict[str, Page] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # text length per position (a cheap change check)
    facts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    covering: dict[str, frozenset[Fidelity]] = field(default_factory=dict)
    entries: dict[str, tuple[str, int]] = field(default_factory=dict)
    born: dict[str, int] = field(default_factory=dict)
    levels: dict[str, Fidelity] = field(default_factory=dict)
    calls: dict[str, tuple[str, str]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    plan_key: str = ""
    turn: int = 0
    version: int = 0
    cost: int = -1  # the last assembly's accounted tokens; -1 when unknown
    carried: list[str] = field(default_factory=list)  # state pages kept across a boundary (see module doc)
    restored: list[str] = field(default_factory=list)  # evidence pages shown in place of the agent's pruning
    tally: dict[str, int] = field(default_factory=dict)  # the session's fault counts (policies.faults)
    seen: int = 0  # when the session was last used, in seconds; set by the caller (no clock here)
    plan: str = ""  # the current plan: the last plan page in `order` ("" when none); derived from `order`
    in_order: set[str] = field(default_factory=set)  # derived from `order`; not stored
    sent: int = -1  # tokens of the transcript as the client sent it (pages at full); derived, not stored
    signatures: dict[str, str] | None = field(default=None, repr=False, compare=False)  # see policies.duplicates
    signed: int = field(default=0, repr=False, compare=False)  # positions `signatures` covers; not stored
    view: object | None = None  # the last rendering, for the append fast path; not stored
    prefix: object | None = field(default=None, repr=False, compare=False)  # see policies.prefix; not stored
    ingested: Ingested | None = field(default=None, repr=False, compare=False)  # the last transcript; not stored
    journal: object | None = field(default=None, repr=False, compare=False)  # the store's bookkeeping; opaque here
    pending: Pending = field(default_factory=Pending, repr=False, compare=False)  # see `finish`; not stored
    changes: Changes = field(init=False, repr=False, compare=False)  # since the last checkpoint; not stored

    def __post_init__(self) -> None:
        if not self.in_order and self.order:
            self.in_order = set(self.order)
        if not self.plan and self.order:
            self.plan = current_plan(self.order, self.pages)
        if self.sent < 0:
            self.sent = sum(_sent(self, p) for p in self.order if p in self.pages)
        self.changes = Changes(len(self.order), head(self))  # a table is built empty or as stored: nothing unsaved


def current_plan(order: Sequence[str], pages: Mapping[str, Page]) -> str:
    """The last plan page in `order`, found from the end; "" when there is none."""
    for page_id in reversed(order):
        page = pages.get(page_id)
        if page is not None and page.type is PageType.PLAN:
            return page_id
    return ""


def head(table: PageTable) -> Head:
    """The small whole-table fields, as a value: a change to any of them is saved whole."""
    tally = tuple(sorted(table.tally.items()))
    return (table.turn, table.cost, table.plan_key, tuple(table.carried), tuple(table.restored), tally, table.seen)


def checkpoint(table: PageTable) -> None:
    """The table as it stands is saved: track changes afresh from here."""
    table.changes = Changes(len(table.order), head(table))


def unchanged(table: PageTable) -> bool:
    """Whether the table is as it was at its last checkpoint."""
    c = table.changes
    return c.dirty_from == len(table.order) and not (c.pages or c.levels or c.calls) and c.head == head(table)


def set_level(table: PageTable, page_id: str, level: Fidelity) -> None:
    table.levels[page_id] = level
    table.changes.levels.add(page_id)


def replace_levels(table: PageTable, levels: Mapping[str, Fidelity]) -> None:
    """A new plan: record the pages whose level it changes, sets or drops."""
    old, changed = table.levels, table.changes.levels
    changed.update(p for p, level in levels.items() if old.get(p) is not level)
    changed.update(p for p in old if p not in levels)
    table.levels = dict(levels)


@dataclass(frozen=True, slots=True)
class IngestResult:
    kind: str  # "append" | "rewrite"
    kept: int  # how many leading messages were already known
    new_pages: tuple[Page, ...]  # pages created by this ingest (to persist)


def message_key(message: Message) -> str:
    """A cheap positional fingerprint: role, size and a checksum of both ends of the text.
    Remembered on the message (`Message.key`): the gateway's reader hands the next request the
    very objects of the known prefix, whose keys the probes of `known_prefix` read again."""
    if message.key:
        return message.key
    text = message.text
    ends = (text[:64] + "\x00" + text[-64:]).encode("utf-8", "surrogatepass")
    calls = "".join(c.id for c in message.tool_calls)
    message.key = f"{message.role}:{len(text)}:{zlib.crc32(ends):08x}:{message.tool_call_id or ''}:{calls}"
    return message.key


def content_digest(message: Message) -> str:
    listed = [[c.id, c.name, c.arguments] for c in message.tool_calls]
    calls = json.dumps(listed, ensure_ascii=False) if listed else "[]"  # what json.dumps gives an empty list
    parts = (message.role, message.text, message.tool_call_id or "", message.name or "", calls)
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def known_prefix(table: PageTable, messages: Sequence[Message]) -> int:
    """How many leading messages of the incoming transcript the table already holds.

    Every known position is checked by the length of its text (a pruned tool result, a summary
    or a dropped message changes it), and the first, middle and last of the agreeing run by a
    fingerprint of both ends; only when a probe disagrees are fingerprints compared one by one.
    A same-length edit away from the probes goes unseen: the price of not hashing the whole
    transcript on every turn.
    """
    known = len(table.keys)
    if known == 0:
        return 0
    limit = min(known, len(messages))
    if isinstance(table.ingested, Ingested) and table.ingested.begins(messages, limit):
        agree = limit  # the very messages the lengths were taken from
    else:
        lengths = table.lengths
        sizes = list(map(len, map(TEXT, islice(messages, limit))))  # in C: no Python step per message
        agree = limit if sizes == lengths[:limit] else next(i for i in range(limit) if sizes[i] != lengths[i])
    if agree == 0:
        return 0
    if all(message_key(messages[i]) == table.keys[i] for i in {0, agree // 2, agree - 1}):
        return agree
    for index in range(agree):
        if message_key(messages[index]) != table.keys[index]:
            return index
    return agree


def ingest(
    table: PageTable,
    messages: Sequence[Message],
    policy: TenantPolicy,
    counter: TokenCounter,
    *,
    recall_tool: str = "clawvm_recall",
    pruned: Collection[int] = (),
    kept: int | None = None,
    defer: bool = False,
) -> IngestResult:
    """Bring `messages` into the table. `pruned` names positions where the agent replaced a
    known tool result by a placeholder or a cut (policies.lifecycle): the original evidence
    page stays at that position, restored. `kept` is `known_prefix(table, messages)` when the
    caller has it already (the lifecycle detector needs it first).

    With `defer`, each new message page is admitted at its full level only (its other levels
    stand in as the full one), with its facts named but not yet made pages: what sending the
    page whole needs. `finish` does the rest, as an ingest without `defer` would have, and
    must run before anything reads a lower level, a fact page, a span entry or a fact's
    coverage; the result's `new_pages` are then the admitted pages as they stood (`Pending`
    holds the finished ones). Anything an earlier ingest left pending is finished first."""
    finish(table)  # what an earlier ingest left: a later turn never sees a page unfinished
    bounded = defer and at_most_bytes(counter)  # its pages' tokens bounded, counted when needed
    counter = count_once(counter)  # this ingest's pages count each distinct text once, levels and all
    kept = known_prefix(table, messages) if kept is None else kept
    kind = "append" if kept == len(table.order) else "rewrite"
    dropped = _truncate(table, kept) if kind == "rewrite" else []
    tag = tenant_tag(table.tenant)
    created: list[Page] = []
    for index in range(kept, len(messages)):
        message = messages[index]
        page_id = _restorable(table, dropped, index - kept, message) if index in pruned else None
        if page_id is None:
            page_id = _unique_id(make_page_id(tag, content_digest(message)), table.in_order)
            if page_id not in table.entries:  # not yet a message of this table (maybe a carried page)
                deferred = _admit(table, message, index, page_id, (policy, counter, recall_tool), bounded)
                table.pending.waiting.append(deferred)
                created.append(table.pages[page_id])
        table.order.append(page_id)
        table.in_order.add(page_id)
        if table.pages[page_id].type is PageType.PLAN:
            table.plan = page_id
        table.keys.append(message_key(message))
        table.lengths.append(len(message.text))
        table.sent += _sent(table, page_id)
    table.ingested = Ingested(messages)
    if dropped or table.carried:  # what follows reads the new messages' facts
        name_pending(table)
    if dropped:
        _settle(table, dropped)
        _describe(table, dropped, counter)
    elif table.carried:
        _restated(table, kept)
    if not defer:
        finish(table)
        created = take(table)
    return IngestResult(kind=kind, kept=kept, new_pages=tuple(created))


@lru_cache(maxsize=1024)
def tenant_tag(tenant: str) -> str:
    """Three hex digits naming a tenant: the head of every page id of that tenant."""
    return hashlib.sha256(f"tenant\x1f{tenant}".encode("utf-8", "surrogatepass")).hexdigest()[:3]


def make_page_id(tag: str, digest: str) -> str:
    return f"p:{tag}{digest[:9]}"


def id_tag(page_id: str) -> str | None:
    """The scope tag of a well-formed page id, else None."""
    return page_id[2:5] if PAGE_ID.fullmatch(page_id) else None


def _truncate(table: PageTable, kept: int) -> list[str]:
    """Drop positions from `kept` on; returns the page ids dropped, in order."""
    dropped = table.order[kept:]
    for page_id in dropped:
        table.in_order.discard(page_id)
        table.sent -= _sent(table, page_id)
    table.changes.dirty_from = min(table.changes.dirty_from, kept)
    del table.order[kept:]
    del table.keys[kept:]
    del table.lengths[kept:]
    if table.plan in dropped:
        table.plan = current_plan(table.order, table.pages)
    table.view = None
    table.cost = -1
    return dropped


def _sent(table: PageTable, page_id: str) -> int:
    return framed(table.pages[page_id].tokens(Fidelity.FULL), named=page_id in table.names)


def _restorable(table: PageTable, dropped: Sequence[str], offset: int, message: Message) -> str | None:
    """The evidence page the agent pruned at this position, if it answers the same call."""
    if not 0 <= offset < len(dropped) or message.role != "tool":
        return None
    page = table.pages[dropped[offset]]
    if page.type is not PageType.EVIDENCE or page.provenance.tool_call_id != message.tool_call_id:
        return None
    if page.id in table.in_order:
        return None
    if page.id not in table.restored:
        table.restored.append(page.id)
    return page.id


def _settle(table: PageTable, dropped: Sequence[str]) -> None:
    """Carry the state that dropped messages held; forget carried state the transcript holds again."""
    order, pages = table.order, table.pages
    live = {f for p in order for f in table.facts.get(p, ())} | table.in_order
    has_plan = any(pages[p].type is PageType.PLAN for p in order)
    has_bootstrap = any(pages[p].type is PageType.BOOTSTRAP for p in order)
    candidates = [*table.carried, *_held(table, dropped, has_bootstrap)]
    plans = [p for p in candidates if pages[p].type is PageType.PLAN]
    keep = [p for p in dict.fromkeys(candidates) if p not in live and pages[p].type is not PageType.PLAN]
    if plans and not has_plan:
        keep.append(plans[-1])  # the current plan: the latest one the agent stated
    table.carried = keep
    table.restored = [p for p in table.restored if p in table.in_order]


def _describe(table: PageTable, dropped: Sequence[str], counter: TokenCounter) -> None:
    """Dropped tool results that the transcript no longer holds get their evidence-index line
    (tool, arguments, first line of the result) as their entry: the layout lists them there
    (`paged_out`), and a stub's line for a page no message shows is never needed again."""
    for page_id in dropped:
        page = table.pages[page_id]
        if page_id in table.in_order or page.type is not PageType.EVIDENCE or page_id not in table.entries:
            continue
        provenance = page.provenance
        entry = index_entry(page_id, provenance.tool_name, provenance.tool_arguments, page.reprs.full.text)
        if table.entries[page_id][0] != entry:
            table.entries[page_id] = (entry, counter.count(entry))
            table.changes.pages.add(page_id)


def paged_out(table: PageTable) -> list[str]:
    """The evidence index: the tool results the table holds that the transcript no longer does
    (dropped by a compaction, a reset or an edit), oldest first (by the turn each was made, then
    its place then). Pages pruned and restored in place are in the transcript, not here."""
    pages, in_order = table.pages, table.in_order
    found = [p for p in table.entries if p not in in_order and p in pages and pages[p].type is PageType.EVIDENCE]
    return sorted(found, key=lambda p: (table.born.get(p, 0), pages[p].provenance.message_index, p))


def named_in(table: PageTable, page_ids: Sequence[str], text: str) -> frozenset[str]:
    """The pages among `page_ids` whose tool call's arguments name an identifier (a path, an id,
    a number) that `text` holds: the evidence the current plan or the last turns refer to."""
    named = set()
    for page_id in page_ids:
        arguments = table.pages[page_id].provenance.tool_arguments
        if arguments and any(ident in text for ident in identifiers(arguments)):
            named.add(page_id)
    return frozenset(named)


def _restated(table: PageTable, kept: int) -> None:
    """After an append: carried state that the new messages state again is no longer carried
    (a new plan supersedes a carried one). Costs the new messages, not the session."""
    pages, fresh = table.pages, table.order[kept:]
    stated = {f for p in fresh for f in table.facts.get(p, ())} | set(fresh)
    new_plan = any(pages[p].type is PageType.PLAN for p in fresh)
    if stated & set(table.carried) or new_plan:
        table.carried = [
            p for p in table.carried if p not in stated and not (new_plan and pages[p].type is PageType.PLAN)
        ]


def _held(table: PageTable, dropped: Sequence[str], has_bootstrap: bool) -> list[str]:
    """The state pages that dropped messages carried: facts, plans, the system prompt (unless
    the transcript has a system prompt of its own, which then speaks for the operator)."""
    held: list[str] = []
    for page_id in dropped:
        page = table.pages[page_id]
        if page.type is PageType.BOOTSTRAP and has_bootstrap:
            continue
        if page.type in (PageType.PLAN, PageType.BOOTSTRAP):
            held.append(page_id)
        held.extend(table.facts.get(page_id, ()))
    return held


def _unique_id(base: str, seen: set[str]) -> str:
    candidate, n = base, 1
    while candidate in seen:
        n += 1
        candidate = f"{base}~{n}"
    return candidate


def _admit(
    table: PageTable,
    message: Message,
    index: int,
    page_id: str,
    rules: tuple[TenantPolicy, TokenCounter, str],
    bounded: bool,
) -> Deferred:
    """A new message's page at its full level (its tokens at their bound when `bounded`) and
    its tool calls; the rest waits for `finish` (`rules`: the policy, counter and recall tool)."""
    policy, counter, recall_tool = rules
    for call in message.tool_calls:
        table.calls[call.id] = (call.name, call.arguments[:CALL_ARGUMENTS_KEPT])
        table.changes.calls.add(call.id)
    answered = table.calls.get(message.tool_call_id) if message.tool_call_id else None
    call = ToolCall(message.tool_call_id or "", answered[0], answered[1]) if answered else None
    full = bound_level(message) if bounded else full_level(message, counter)
    table.pages[page_id] = _message_page(message, index, page_id, call, policy, full)
    table.born[page_id] = table.turn
    if message.name:
        table.names[page_id] = message.name
    return Deferred(page_id, message, call, None if bounded else full, None, policy, counter, recall_tool, table.turn)


def count_pending(table: PageTable) -> bool:
    """Count the waiting pages admitted at their bound exactly: each page's tokens, the table's
    `sent`, and its `cost` where the bound was added to it, corrected. Whether any was."""
    waiting = table.pending.waiting
    bounded = [i for i, deferred in enumerate(waiting) if deferred.full is None]
    for i in bounded:
        waiting[i] = _counted(table, waiting[i])
    return bool(bounded)


def _counted(table: PageTable, deferred: Deferred) -> Deferred:
    page_id, message = deferred.page_id, deferred.message
    full = full_level(message, deferred.counter)
    page = table.pages[page_id]
    counted = replace(page, reprs=_whole(full, message))
    table.pages[page_id] = counted
    change = counted.reprs.full.tokens - page.reprs.full.tokens  # the framing is the same
    table.sent += change
    if page_id in table.levels:  # only the fast path gives a page a level before it is finished,
        table.cost += change  # and it added the page to the cost at its bound
    return replace(deferred, full=full)


def name_pending(table: PageTable) -> None:
    """Name the facts the waiting pages state (`table.facts`), where not yet named."""
    waiting = table.pending.waiting
    for i, deferred in enumerate(waiting):
        if deferred.facts is None:
            waiting[i] = _named(table, deferred)


def _named(table: PageTable, deferred: Deferred) -> Deferred:
    message = deferred.message
    facts = () if _is_summary(message) else extract_facts(message, deferred.policy.rules)
    stated = tuple((fact.type, fact.text, _fact_id(table.tenant, fact.type, fact.text)) for fact in facts)
    table.facts[deferred.page_id] = tuple(dict.fromkeys(fact_id for _, _, fact_id in stated))
    return replace(deferred, facts=stated)


def finish(table: PageTable) -> None:
    """Finish the pages `ingest` admitted with `defer`, in the order they were admitted: their
    other levels, span entries, fact pages and the levels of each that state its facts."""
    pending = table.pending
    while pending.waiting:
        pending.finished.extend(_finished(table, pending.waiting.pop(0)))


def finish_for_plan(table: PageTable, whole: Collection[str]) -> frozenset[str]:
    """What a re-plan reads, made: every waiting page counted and its facts named, and finished
    but for those the plan sends `whole` (of the newest turn: policies.turn): their lower levels,
    span entries and fact pages wait for `finish`, after the request is on its way. Such a page
    waits only at the end of the waiting list (the pages finish in the order they were admitted)
    and only when its full level states every fact it names, so none of its facts needs a page or
    a line of the retained-state block while it is sent whole; its coverage at full is recorded
    now, `finish` records the rest. Returns the pages left waiting."""
    count_pending(table)
    name_pending(table)
    waiting = table.pending.waiting
    cut, covered = len(waiting), []
    while cut and waiting[cut - 1].page_id in whole:
        held = _held_whole(waiting[cut - 1])
        if held is None:
            break
        covered.append(held)
        cut -= 1
    left = waiting[cut:]
    del waiting[cut:]
    finish(table)
    waiting.extend(left)
    for held in covered:
        table.covering.update(held)
    return frozenset(deferred.page_id for deferred in left)


def _held_whole(deferred: Deferred) -> dict[str, frozenset[Fidelity]] | None:
    """The coverage of a waiting page's facts by its full level, or None when it misses one."""
    if not deferred.facts:
        return {}
    spoken = ((Fidelity.FULL, _collapsed(deferred.message.text)),)
    held = {f"{deferred.page_id}|{fact_id}": _covering_levels(spoken, text) for _, text, fact_id in deferred.facts}
    return held if all(held.values()) else None


def take(table: PageTable) -> list[Page]:
    """The pages finished since the last call (the new pages of the turns since), in order."""
    finished, table.pending.finished = table.pending.finished, []
    return finished


def _finished(table: PageTable, deferred: Deferred) -> list[Page]:
    if deferred.full is None:
        deferred = _counted(table, deferred)
    if deferred.facts is None:
        deferred = _named(table, deferred)
    page_id, message, call, counter = deferred.page_id, deferred.message, deferred.call, deferred.counter
    sent = table.pages[page_id]
    reprs = represent(
        message, sent.type, page_id, counter, recall_tool=deferred.recall_tool, call=call, counted=deferred.full
    )
    page = replace(sent, reprs=_with_images(reprs, message))
    table.pages[page_id] = page
    entry = span_entry(page_id, message, call=call)
    table.entries[page_id] = (entry, counter.count(entry))
    created = [page]
    spoken = _spoken(page) if deferred.facts else ()
    for fact_type, fact_text, fact_id in deferred.facts:
        table.covering[f"{page_id}|{fact_id}"] = _covering_levels(spoken, fact_text)
        if fact_id in table.pages:
            continue
        policy, recall_tool = deferred.policy, deferred.recall_tool
        fact_page = _fact_page(fact_type, fact_text, fact_id, page, policy, counter, recall_tool)
        table.pages[fact_id] = fact_page
        table.born[fact_id] = deferred.turn
        created.append(fact_page)
    table.changes.pages.update(p.id for p in created)
    return created


def _is_summary(message: Message) -> bool:
    """A harness's compaction summary (Claude Code's "This session is being continued ...", a
    LangChain summary ...): its sentences are the harness's words and its own one-turn orders
    ("Resume directly ..."), not rules, preferences or wishes anyone stated. The session's own
    facts cross the boundary as pages of their own (`carried`), so none are taken from it."""
    from policies.lifecycle import summary_marker  # lifecycle reads page tables: imported here, not at the top

    return message.role in ("user", "system") and bool(message.text) and summary_marker(message.text) is not None


def _message_page(
    message: Message,
    index: int,
    page_id: str,
    call: ToolCall | None,
    policy: TenantPolicy,
    full: tuple[Representation, int],
) -> Page:
    """A message's page at its full level; its other levels stand in as the full one until
    `finish` makes them."""
    page_type = carrier_type(message, call)
    rule = policy.type_policy(page_type)
    provenance = Provenance(
        message_index=index,
        role=message.role,
        tool_call_id=message.tool_call_id,
        tool_name=call.name if call else message.name,
        tool_arguments=call.arguments if call else None,
    )
    return Page(
        id=page_id,
        type=page_type,
        scope=rule.scope if page_type is PageType.BOOTSTRAP else Scope.SESSION,
        provenance=provenance,
        pin=rule.pin,
        floor=rule.floor,
        reprs=_whole(full, message),
        base_utility=rule.base_utility,
        recompute_cost=recompute_cost(page_type, provenance.tool_name),
    )


def _fact_page(
    page_type: PageType,
    text: str,
    fact_id: str,
    parent: Page,
    policy: TenantPolicy,
    counter: TokenCounter,
    recall_tool: str,
) -> Page:
    rule = policy.type_policy(page_type)
    provenance = Provenance(
        message_index=parent.provenance.message_index, role=parent.provenance.role, parent_id=parent.id
    )
    scope = fact_scope(page_type, parent, policy)
    return Page(
        id=fact_id,
        type=page_type,
        scope=scope,
        provenance=provenance,
        pin=rule.pin,
        floor=rule.floor,
        reprs=represent_fact(text, page_type, fact_id, parent.id, counter, recall_tool=recall_tool),
        base_utility=rule.base_utility,
        recompute_cost=0.0,
    )


def fact_scope(page_type: PageType, parent: Page, policy: TenantPolicy) -> Scope:
    """A fact stated in a project-scope page (the system prompt) is project scope; else its type's."""
    return Scope.PROJECT if parent.scope is Scope.PROJECT else policy.type_policy(page_type).scope


def _fact_id(tenant: str, page_type: PageType, text: str) -> str:
    digest = hashlib.sha256(f"{page_type}|{text}".encode("utf-8", "surrogatepass")).hexdigest()
    return make_page_id(tenant_tag(tenant), digest)


def _spoken(parent: Page) -> tuple[tuple[Fidelity, str], ...]:
    """The parent's levels that may state a fact, each with its text's whitespace collapsed
    (what `_covering_levels` searches): read once per page, whatever its number of facts; a
    text two levels share is collapsed once. Pointer never counts: a pointer-level page may be
    folded into a span stub, which shows its id and nothing else."""
    collapsed: dict[str, str] = {}
    spoken = []
    for level in LEVELS:
        if level is Fidelity.POINTER:
            continue
        text = parent.reprs.at(level).text
        if text not in collapsed:
            collapsed[text] = _collapsed(text)
        spoken.append((level, collapsed[text]))
    return tuple(spoken)


def _covering_levels(spoken: Sequence[tuple[Fidelity, str]], fact_text: str) -> frozenset[Fidelity]:
    """The levels whose text states the fact (`spoken`: the parent's levels, `_spoken`)."""
    needle = _collapsed(fact_text).rstrip("…").strip()
    return frozenset(level for level, text in spoken if needle and needle in text)


def _collapsed(text: str) -> str:
    """`text` with each run of whitespace one space: what a fact's coverage is searched in."""
    return " ".join(text.split())


def _whole(full: tuple[Representation, int], message: Message) -> Reprs:
    """A page sent whole: its full level stands in for the others until `finish` makes them."""
    return _with_images(Reprs(full[0], full[0], full[0], full[0]), message)


def _with_images(reprs: Reprs, message: Message) -> Reprs:
    """The full level forwards the client's own message, images and all: charge them there.
    Degraded levels carry text only."""
    if not message.images:
        return reprs
    full = reprs.full
    return replace(reprs, full=Representation(full.text, full.tokens + IMAGE_TOKENS * message.images, full.tool_calls))


def recompute_cost(page_type: PageType, tool_name: str | None) -> float:
    """What it costs the agent to get a page back by redoing its work (the paper's 6/8/12)."""
    if page_type is not PageType.EVIDENCE:
        return 1.0 if page_type is PageType.CONVERSATION else 0.0
    name = tool_name or ""
    return _known_tool_cost(name) if len(name) <= MEMO_NAME_CHARS else _tool_cost(name)


@lru_cache(maxsize=1024)
def _known_tool_cost(tool_name: str) -> float:
    """`_tool_cost`, remembered by the tool's name (an agent has a few tools)."""
    return _tool_cost(tool_name)


def _tool_cost(tool_name: str) -> float:
    name = tool_name.lower()
    if any(word in name for word in EDIT_TOOLS):
        return 12.0
    if any(word in name for word in READ_TOOLS):
        return 8.0
    return 6.0


def effective_pin(page: Page, current_plan: str | None) -> Pin:
    if page.type is PageType.PLAN and page.id != current_plan:
        return Pin.SOFT
    return page.pin
