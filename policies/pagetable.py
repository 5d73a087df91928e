"""The session's page table and incremental ingest.

`PageTable` is the session state the gateway persists: every page it knows, the order of the
transcript's message pages, the facts each message yielded, the last assembly's decisions.
`ingest` brings a new transcript into the table. Messages already seen are recognised by a
cheap positional key and are not re-classified, re-represented or re-counted: per-turn cost
follows the new content, not the session length.

The table also keeps `Changes`, what changed since its last `checkpoint` (its last save), so
that persisting a turn costs what the turn changed, not the session length. Every write to a
stored field goes through `ingest`, `set_level` or `replace_levels`, which record it.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from policies.classify import carrier_type, extract_facts
from policies.pages import LEVELS, Fidelity, Page, PageType, Pin, Provenance, Representation, Reprs, Scope
from policies.represent import represent, represent_fact, span_entry
from policies.tenant import TenantPolicy
from policies.tokens import IMAGE_TOKENS, TokenCounter
from policies.transcript import Message, ToolCall

CALL_ARGUMENTS_KEPT = 400
EDIT_TOOLS = ("edit", "write", "replace", "create", "patch", "update", "modify", "delete", "insert")
READ_TOOLS = ("read", "bash", "shell", "grep", "glob", "search", "list", "get", "find", "fetch", "cat", "ls")


@dataclass(slots=True)
class Changes:
    """What changed in a table since its last checkpoint. The head fields (turn, cost,
    plan_key) are small: they are remembered as they were and always written."""

    dirty_from: int  # positions from here on were (re)written
    head: tuple[int, int, str]  # turn, cost and plan_key at the checkpoint
    pages: set[str] = field(default_factory=set)  # pages added, with their per-page fields
    levels: set[str] = field(default_factory=set)  # pages whose level was set, changed or dropped
    calls: set[str] = field(default_factory=set)  # tool calls recorded


@dataclass(slots=True)
class PageTable:
    tenant: str
    session: str
    project: str
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
    in_order: set[str] = field(default_factory=set)  # derived from `order`; not stored
    view: object | None = None  # the last rendering, for the append fast path; not stored
    journal: object | None = field(default=None, repr=False, compare=False)  # the store's bookkeeping; opaque here
    changes: Changes = field(init=False, repr=False, compare=False)  # since the last checkpoint; not stored

    def __post_init__(self) -> None:
        if not self.in_order and self.order:
            self.in_order = set(self.order)
        self.changes = Changes(len(self.order), head(self))  # a table is built empty or as stored: nothing unsaved


def head(table: PageTable) -> tuple[int, int, str]:
    return (table.turn, table.cost, table.plan_key)


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
    """A cheap positional fingerprint: role, size and a checksum of both ends of the text."""
    text = message.text
    ends = (text[:64] + "\x00" + text[-64:]).encode("utf-8", "surrogatepass")
    calls = "".join(c.id for c in message.tool_calls)
    return f"{message.role}:{len(text)}:{zlib.crc32(ends):08x}:{message.tool_call_id or ''}:{calls}"


def content_digest(message: Message) -> str:
    calls = json.dumps([[c.id, c.name, c.arguments] for c in message.tool_calls], ensure_ascii=False)
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
    lengths = table.lengths
    agree = next((i for i in range(limit) if len(messages[i].text) != lengths[i]), limit)
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
) -> IngestResult:
    kept = known_prefix(table, messages)
    kind = "append" if kept == len(table.order) else "rewrite"
    if kind == "rewrite":
        _truncate(table, kept)
    created: list[Page] = []
    for index in range(kept, len(messages)):
        message = messages[index]
        page_id = _unique_id(f"p:{content_digest(message)[:10]}", table.in_order)
        if page_id not in table.pages:
            created.extend(_admit(table, message, index, page_id, policy, counter, recall_tool))
        table.order.append(page_id)
        table.in_order.add(page_id)
        table.keys.append(message_key(message))
        table.lengths.append(len(message.text))
    return IngestResult(kind=kind, kept=kept, new_pages=tuple(created))


def _truncate(table: PageTable, kept: int) -> None:
    for page_id in table.order[kept:]:
        table.in_order.discard(page_id)
    table.changes.dirty_from = min(table.changes.dirty_from, kept)
    del table.order[kept:]
    del table.keys[kept:]
    del table.lengths[kept:]
    table.view = None
    table.cost = -1


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
    policy: TenantPolicy,
    counter: TokenCounter,
    recall_tool: str,
) -> list[Page]:
    for call in message.tool_calls:
        table.calls[call.id] = (call.name, call.arguments[:CALL_ARGUMENTS_KEPT])
        table.changes.calls.add(call.id)
    answered = table.calls.get(message.tool_call_id) if message.tool_call_id else None
    call = ToolCall(message.tool_call_id or "", answered[0], answered[1]) if answered else None
    page = _message_page(message, index, page_id, call, policy, counter, recall_tool)
    table.pages[page_id] = page
    table.born[page_id] = table.turn
    if message.name:
        table.names[page_id] = message.name
    entry = span_entry(page_id, message, call=call)
    table.entries[page_id] = (entry, counter.count(entry))
    created = [page]
    fact_ids: list[str] = []
    for fact in extract_facts(message, policy.rules):
        fact_id = f"p:{hashlib.sha256(f'{fact.type}|{fact.text}'.encode()).hexdigest()[:10]}"
        fact_ids.append(fact_id)
        table.covering[f"{page_id}|{fact_id}"] = _covering_levels(page, fact.text)
        if fact_id in table.pages:
            continue
        fact_page = _fact_page(fact.type, fact.text, fact_id, page, policy, counter, recall_tool)
        table.pages[fact_id] = fact_page
        table.born[fact_id] = table.turn
        created.append(fact_page)
    table.facts[page_id] = tuple(dict.fromkeys(fact_ids))
    table.changes.pages.update(p.id for p in created)
    return created


def _message_page(
    message: Message,
    index: int,
    page_id: str,
    call: ToolCall | None,
    policy: TenantPolicy,
    counter: TokenCounter,
    recall_tool: str,
) -> Page:
    page_type = carrier_type(message)
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
        reprs=_with_images(
            represent(message, page_type, page_id, counter, recall_tool=recall_tool, call=call), message
        ),
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
    scope = Scope.PROJECT if parent.scope is Scope.PROJECT else rule.scope
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


def _covering_levels(parent: Page, fact_text: str) -> frozenset[Fidelity]:
    """The parent's levels whose text states the fact. Pointer never counts: a pointer-level
    page may be folded into a span stub, which shows its id and nothing else."""
    needle = " ".join(fact_text.split()).rstrip("…").strip()
    return frozenset(
        level
        for level in LEVELS
        if level is not Fidelity.POINTER and needle and needle in " ".join(parent.reprs.at(level).text.split())
    )


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
    name = (tool_name or "").lower()
    if any(word in name for word in EDIT_TOOLS):
        return 12.0
    if any(word in name for word in READ_TOOLS):
        return 8.0
    return 6.0


def effective_pin(page: Page, current_plan: str | None) -> Pin:
    if page.type is PageType.PLAN and page.id != current_plan:
        return Pin.SOFT
    return page.pin
